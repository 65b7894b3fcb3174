"""Archive and replay with real processes: receiver -> Valkey -> Celery worker -> notify target,
then ``cicb archive`` and ``cicb replay`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    CICB,
    SAMPLES,
    Stack,
    Target,
    start_worker,
    user_routes,
    wait_until,
)

pytestmark = pytest.mark.integration

SAMPLE_JOB_IDS = {
    "snapshot_success.xml": b"j8a8e3b2af86c11ec8c5d0b03267ce0e5",
    "snapshot_failed.xml": b"j8a8e3b2af86c11ec8c5d0b03267ce0e5",
    "tts_success.xml": b"j707f4864f86811ecb90d0b03267ce0e5",
    "transcode_success.xml": b"j7d0eafdaf86c11ecbdf419856486c0ab",
}
# The TTS route's second step names a task the first version of the module does not have,
# so ingest refuses to start it and dead-letters the callback; the fix adds the task.
ROUTES_BROKEN = "routes = [Route('tts-kept', ['notify', 'arch_routes.keep'], tag='Tts')]\n"
ROUTES_FIXED = ROUTES_BROKEN + (
    "@app.task(base=PipelineTask, name='arch_routes.keep')\ndef keep(event):\n    return None\n"
)


def callback(sample: str, job_id: str) -> bytes:
    """The project's own sample, as job ``job_id``."""
    return (SAMPLES / sample).read_bytes().replace(SAMPLE_JOB_IDS[sample], job_id.encode())


def cli_json(stack: Stack, *args: str) -> Any:
    return json.loads(stack.cli(*args, "--json").stdout)


def archived(stack: Stack) -> list[dict[str, Any]]:
    """What ``cicb archive list --json`` shows, newest first."""
    entries: list[dict[str, Any]] = cli_json(stack, "archive", "list", "--limit", "100")["entries"]
    return entries


def wait_for_archived(stack: Stack, count: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = wait_until(
        lambda: (a := archived(stack)) and len(a) >= count and a,
        timeout_s=60,
        what=f"{count} archived callbacks",
    )
    return found


def job_ids(entries: list[dict[str, Any]]) -> list[str]:
    return [e["events"][0]["job_id"] for e in entries]


def test_replay_lists_by_filter_reruns_what_failed_and_forces_what_ran(
    make_stack: object, target: Target, tmp_path: Path
) -> None:
    routes = user_routes(tmp_path, "arch_routes", ROUTES_BROKEN)
    stack: Stack = make_stack(CICB_NOTIFY_URLS=target.url, **routes)  # type: ignore[operator]
    posted = {
        "jarch-snap-ok": callback("snapshot_success.xml", "jarch-snap-ok"),
        "jarch-snap-failed": callback("snapshot_failed.xml", "jarch-snap-failed"),
        "jarch-tts": callback("tts_success.xml", "jarch-tts"),
        "jarch-transcode": callback("transcode_success.xml", "jarch-transcode"),
    }
    for body in posted.values():
        assert stack.post(body).status_code == 200
    entries = wait_for_archived(stack, 4)
    outcomes = {e["events"][0]["job_id"]: e["outcome"] for e in entries}
    assert outcomes == {
        "jarch-snap-ok": "dispatched",
        "jarch-snap-failed": "dispatched",
        "jarch-tts": "dead_lettered",
        "jarch-transcode": "dispatched",
    }
    [tts] = [e for e in entries if e["events"][0]["job_id"] == "jarch-tts"]
    assert tts["error"] == "ConfigError" and tts["events"][0]["route"] == "tts-kept"
    shown = subprocess.run(
        [CICB, "archive", "show", tts["id"], "--body"], env=stack.env, capture_output=True
    )
    assert shown.returncode == 0 and shown.stdout == posted["jarch-tts"]
    first_round = target.wait_for(3)
    assert sorted(n["job_id"] for n in first_round) == [
        "jarch-snap-failed",
        "jarch-snap-ok",
        "jarch-transcode",
    ]

    # A dry run lists exactly the Snapshot callbacks, and sends nothing.
    dry = cli_json(stack, "replay", "--since", "1h", "--tag", "Snapshot", "--dry-run")
    assert sorted(job_ids(dry["entries"])) == ["jarch-snap-failed", "jarch-snap-ok"]
    assert (dry["matched"], dry["sent"], dry["dry_run"]) == (2, 0, True)
    text = stack.cli("replay", "--since", "1h", "--tag", "Snapshot", "--dry-run").stdout
    listed = [line for line in text.splitlines() if line.startswith(tuple("0123456789"))]
    assert len(listed) == 2 and all("Snapshot" in line for line in listed)
    assert "matched 2" in text and "dry run: nothing sent" in text

    # The route is fixed, the worker restarted: a replay runs only what never completed.
    stack.worker.stop()
    user_routes(tmp_path, "arch_routes", ROUTES_FIXED)
    stack.worker = start_worker(stack.env, tmp_path / "worker-fixed.log")
    report = stack.cli("replay", "--since", "1h", "--json")
    assert json.loads(report.stdout)["sent"] == 4
    [logged] = [json.loads(x) for x in report.stderr.splitlines() if '"event": "replay"' in x]
    assert (logged["matched"], logged["sent"], logged["force"]) == (4, 4, False)
    assert list(logged["filters"]) == ["since"]  # a time an hour ago, as ISO 8601
    replays = [e for e in wait_for_archived(stack, 8) if e["source"] == "replay"]
    assert {e["events"][0]["job_id"]: e["outcome"] for e in replays} == {
        "jarch-snap-ok": "duplicate",
        "jarch-snap-failed": "duplicate",
        "jarch-tts": "dispatched",
        "jarch-transcode": "duplicate",
    }
    assert [n["job_id"] for n in target.wait_for(4)][3:] == ["jarch-tts"]

    # Forced: the routed Snapshot runs its route again, under a new notification id.
    forced = cli_json(
        stack, "replay", "--since", "1h", "--tag", "Snapshot", "--state", "Success", "--force"
    )
    assert (forced["matched"], forced["sent"]) == (1, 1)
    notified = target.wait_for(5)
    assert len(notified) == 5 and notified[4]["job_id"] == "jarch-snap-ok"
    ids = [r["headers"]["webhook-id"] for r in target.received if b"jarch-snap-ok" in r["body"]]
    assert ids == [
        "TaskFinish:jarch-snap-ok:Success",
        f"TaskFinish:jarch-snap-ok:Success@{forced['scope']}",
    ]
    newest = wait_for_archived(stack, 9)[0]
    assert (newest["source"], newest["scope"], newest["outcome"]) == (
        "replay",
        forced["scope"],
        "dispatched",
    )
