"""The ``cicb`` command through its installed entry point."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    CICB,
    SAMPLES,
    TOKEN,
    Process,
    Stack,
    Target,
    cicb_env,
    run_cli,
    start_receiver,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def env(broker_url: str) -> dict[str, str]:
    return cicb_env(broker_url)


def commands_listed(help_text: str) -> set[str]:
    """The command names a ``--help`` lists under "Commands:" (not words found anywhere in
    it: the send command's line says "receiver" too)."""
    section = help_text.split("\nCommands:\n", 1)[1]
    return set(re.findall(r"^  (\S+)", section, flags=re.MULTILINE))


def test_help_lists_every_command(env: dict[str, str]) -> None:
    assert commands_listed(run_cli("--help", env=env).stdout) == {
        *("up", "receiver", "worker", "send", "parse", "routes", "dlq"),
        *("archive", "replay"),
        *("reconcile", "beat"),
        "console",
        "ci",
        "doctor",
        "attempts",
    }
    ci = run_cli("ci", "--help", env=env).stdout
    assert commands_listed(ci) == {"queues", "connect"}
    attempts = run_cli("attempts", "--help", env=env).stdout
    assert commands_listed(attempts) == {"show", "retry-now"}
    dlq = run_cli("dlq", "--help", env=env).stdout
    assert commands_listed(dlq) == {"list", "show", "replay", "purge"}
    archive = run_cli("archive", "--help", env=env).stdout
    assert commands_listed(archive) == {"list", "show", "export"}


def test_the_console_will_not_start_without_a_token(env: dict[str, str], tmp_path: Path) -> None:
    done = run_cli("console", env={**env, "CICB_DATA_DIR": str(tmp_path)}, check=False)
    assert done.returncode == 2
    assert "set CICB_CONSOLE_TOKEN (or run cicb up, which makes one)" in done.stderr


def test_parse_prints_the_event_and_refuses_garbage(env: dict[str, str], tmp_path: Path) -> None:
    event = json.loads(
        run_cli("parse", str(SAMPLES / "workflowfinish_success.xml"), env=env).stdout
    )
    assert event["event"] == "WorkflowFinish"
    assert event["run_id"] == "i70ae991a152911ecb184525400a8700f"
    assert event["tasks"][0]["job_id"] == "j70bab192152911ecab79bba409874f7f"

    bad = tmp_path / "bad.json"
    bad.write_text('{"EventName": "TaskFinish", "JobsDetail": {"Tag": "Tts"}}')
    done = run_cli("parse", str(bad), env=env, check=False)
    assert done.returncode == 1
    assert "JobsDetail" in done.stderr and "JobId" in done.stderr
    assert done.stdout == ""


def test_routes_explain_says_unrouted(env: dict[str, str], tmp_path: Path) -> None:
    paused = tmp_path / "paused.json"
    paused.write_text(
        '{"EventName": "TaskFinish", "JobsDetail": [{"JobId": "j1", "Tag": "Transcode", '
        '"State": "Pause"}, {"JobId": "j2", "Tag": "Transcode", "State": "Success"}]}'
    )
    out = run_cli("routes", "explain", str(paused), env=env).stdout.splitlines()
    assert out[0].endswith("-> unrouted")
    assert "route job-succeeded: cicb.notify" in out[1]


def test_bad_routes_setting_is_a_clear_error(env: dict[str, str]) -> None:
    done = run_cli("routes", env={**env, "CICB_ROUTES": "no_such_module"}, check=False)
    assert done.returncode == 2
    assert "no_such_module" in done.stderr
    assert "Traceback" not in done.stderr


def test_dlq_commands_guard_against_mistakes(env: dict[str, str]) -> None:
    assert run_cli("dlq", "purge", env=env, check=False).returncode == 2
    assert run_cli("dlq", "replay", env=env, check=False).returncode == 2
    missing = run_cli("dlq", "show", "nope", env=env, check=False)
    assert missing.returncode == 1 and "nope" in missing.stderr


def test_cicb_worker_consumes_what_the_receiver_takes(
    env: dict[str, str], target: Target, tmp_path: Path
) -> None:
    env = {**env, "CICB_NOTIFY_URLS": target.url}
    worker = Process([CICB, "worker", "-c", "1"], env, tmp_path / "worker.log").start()
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    try:
        wait_until(lambda: " ready." in worker.log(), timeout_s=60, what="worker ready")
        sent = run_cli(
            "send",
            str(SAMPLES / "tts_success.xml"),
            "--url",
            f"{url}/callbacks",
            "--token",
            TOKEN,
            "--json",
            env=env,
        )
        assert json.loads(sent.stdout)[0]["status"] == 200
        [event] = target.wait_for(1)
        assert event["tag"] == "Tts"
        assert httpx.get(f"{url}/readyz").json()["status"] == "ready"
    finally:
        receiver.stop()
        worker.stop()


def test_parse_format_option_forces_the_format(env: dict[str, str]) -> None:
    sample = str(SAMPLES / "tts_success.json")
    as_json = run_cli("parse", "--format", "json", sample, env=env)
    assert json.loads(as_json.stdout)["tag"] == "Tts"
    forced = run_cli("parse", "--format", "xml", sample, env=env, check=False)
    assert forced.returncode == 1 and "error:" in forced.stderr


def test_parse_prints_a_list_for_several_jobs(env: dict[str, str], tmp_path: Path) -> None:
    two = tmp_path / "two.json"
    two.write_text(
        '{"EventName": "TaskFinish", "JobsDetail": [{"JobId": "j1", "Tag": "Transcode", '
        '"State": "Success"}, {"JobId": "j2", "Tag": "Snapshot", "State": "Failed"}]}'
    )
    events = json.loads(run_cli("parse", str(two), env=env).stdout)
    assert [(e["job_id"], e["tag"], e["state"]) for e in events] == [
        ("j1", "Transcode", "Success"),
        ("j2", "Snapshot", "Failed"),
    ]


def test_cicb_finds_route_modules_from_the_current_directory(
    env: dict[str, str], tmp_path: Path
) -> None:
    # As `celery -A` does: a user's package in the folder the command runs in.
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "__init__.py").write_text("")
    (tmp_path / "myapp" / "routes.py").write_text(
        "from pipeline import Route\n"
        "routes = [Route('covers', ['notify'], tag='SmartCover', state='Success')]\n"
    )
    user_env = {**env, "CICB_ROUTES": "myapp.routes"}
    user_env.pop("PYTHONPATH", None)
    done = run_cli("routes", "--json", env=user_env, cwd=tmp_path)
    first = json.loads(done.stdout)[0]
    assert (first["name"], first["tag"], first["chain"]) == (
        "covers",
        ["SmartCover"],
        ["cicb.notify"],
    )


def test_attempts_retry_now_sends_a_waiting_step_at_once(
    make_stack: Callable[..., Stack], target: Target
) -> None:
    stack = make_stack(CICB_NOTIFY_URLS=target.url, CICB_RETRY_BACKOFF_MAX_S="900")
    target.replies.append((503, b"maintenance", {"Retry-After": "600"}))
    assert stack.post((SAMPLES / "tts_success.xml").read_bytes()).status_code == 200
    job_id = "j707f4864f86811ecb90d0b03267ce0e5"

    def waiting() -> dict[str, Any] | None:
        shown = json.loads(stack.cli("attempts", job_id, "--json").stdout)
        found = [s for job in shown["jobs"] for s in job["steps"] if s["waiting_until"]]
        return found[0] if found else None

    step = wait_until(waiting, timeout_s=30, what="the step waiting for its retry")
    task_id = step["attempts"][0]["task_id"]
    assert stack.cli("attempts", "retry-now", "nothing", check=False).returncode == 1
    asked = time.time()
    sent = stack.cli("attempts", "retry-now", task_id)
    assert f"sent cicb.notify {task_id} (try 2) now" in sent.stdout
    wait_until(lambda: len(target.received) == 2, timeout_s=5, what="the retry, sent now")
    assert target.received[1]["at"] - asked < 5
    assert target.received[1]["status"] == 200
    text = stack.cli("attempts", job_id).stdout
    assert re.search(r"cicb.notify \(route job-succeeded step 0\): done, 2 attempt\(s\)", text)
