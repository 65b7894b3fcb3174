"""``cicb doctor`` against real processes: a ``cicb up`` stack (embedded broker, receiver,
worker, beat...) and a receiver with a worker and no beat, with the CI stand-in serving the
queue APIs through the real SDK."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.ci_queues import BUCKET, ci_env, ci_queue
from tests.peers import CiServer
from tests.support import CICB, ROOT, TOKEN, Process, Stack, UpPorts, wait_until

pytestmark = pytest.mark.integration


def connect(ci: CiServer, public_url: str, token: str = TOKEN) -> None:
    url = f"{public_url}?token={token}"
    ci.queues[(BUCKET, "media")] = [ci_queue("pmedia000000000000000000000000001", url=url)]
    ci.queues[(BUCKET, "asr")] = [
        ci_queue("pasr00000000000000000000000000002", url=url, events="TaskFinish")
    ]


def doctor(env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CICB, "doctor", "--json"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def statuses(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    checks: list[dict[str, Any]] = json.loads(done.stdout)
    return {c["check"]: c["status"] for c in checks}


def found(done: subprocess.CompletedProcess[str], name: str) -> str:
    [check] = [c for c in json.loads(done.stdout) if c["check"] == name]
    return f"{check['found']}  -> {check['fix']}"


def test_doctor_passes_on_a_healthy_up_stack_and_fails_on_a_queue_with_a_wrong_token(
    tmp_path: Path, ci_server: CiServer
) -> None:
    ports = UpPorts()
    public_url = f"http://127.0.0.1:{ports.receiver}/callbacks"
    env = ports.env(CICB_RECEIVER_TOKEN=TOKEN, **ci_env(ci_server.endpoint, public_url=public_url))
    connect(ci_server, public_url)
    up = Process([CICB, "up"], env, tmp_path / "up.log", cwd=tmp_path).start()
    try:
        assert wait_until(lambda: "cicb doctor" in up.log(), what="the banner")
        said: list[subprocess.CompletedProcess[str]] = []

        def healthy_now() -> bool:
            said[:] = [doctor(env, tmp_path)]
            return said[0].returncode == 0

        try:
            wait_until(healthy_now, timeout_s=90, what="every check to pass")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; doctor said:\n{said[0].stdout if said else ''}") from None
        healthy = said[0]
        assert set(statuses(healthy).values()) == {"pass"}, healthy.stdout
        assert found(healthy, "queues").startswith("2 queue(s) in 1 bucket(s) connected")
        assert found(healthy, "receiver").endswith("ready, token accepted  -> None")

        text = subprocess.run(
            [CICB, "doctor"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert text.returncode == 0
        assert [line.split()[:2] for line in text.stdout.splitlines()][:3] == [
            ["pass", "broker"],
            ["pass", "state"],
            ["pass", "receiver"],
        ]

        connect(ci_server, public_url, token="typo")  # CI's queues keep an old token
        wrong = doctor(env, tmp_path)
        assert wrong.returncode == 1
        assert {n for n, s in statuses(wrong).items() if s != "pass"} == {"queues"}
        assert "2 of 2 not connected" in found(wrong, "queues")
        assert "wrong token" in found(wrong, "queues") and "typo" not in wrong.stdout
        assert "cicb ci connect" in found(wrong, "queues")
    finally:
        up.stop()


def test_doctor_fails_naming_the_beat_when_none_runs_and_the_workers_once_stopped(
    make_stack: Any, ci_server: CiServer
) -> None:
    stack: Stack = make_stack()
    public_url = f"{stack.url}/callbacks"
    connect(ci_server, public_url)
    env = {
        **stack.env,
        "CICB_RECEIVER_URL": public_url,
        **ci_env(ci_server.endpoint, public_url=public_url),
    }

    no_beat = doctor(env)
    assert no_beat.returncode == 1
    assert {n for n, s in statuses(no_beat).items() if s != "pass"} == {"beat"}, no_beat.stdout
    assert "no beat sending reconcile passes" in found(no_beat, "beat")
    assert "cicb beat" in found(no_beat, "beat")

    other_token = doctor({**env, "CICB_RECEIVER_TOKEN": "not-the-receivers"})
    assert statuses(other_token)["receiver"] == "fail"
    assert "refuses doctor's token (401)" in found(other_token, "receiver")

    stack.worker.stop()
    stopped = doctor(env)
    assert stopped.returncode == 1
    assert statuses(stopped)["workers"] == "fail" and statuses(stopped)["receiver"] == "pass"
    assert "no worker answered" in found(stopped, "workers")
