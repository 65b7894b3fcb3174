"""The archive, written by a real worker: each body ``cicb.ingest`` is done with is kept with
what became of it (routed, duplicate, unrouted, dead-lettered), and ``cicb replay`` sends it
through ingest again."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from click.testing import CliRunner, Result

from pipeline.archive import Archive, ArchiveEntry
from pipeline.cli import main as cicb
from tests.workers.conftest import Tier


def archived(tier: Tier) -> list[ArchiveEntry]:
    """Everything in the archive, newest first."""
    archive = Archive(tier.redis, retention_s=3600, max_entries=1000)
    return archive.list(limit=1000)


def run(*args: str) -> Result:
    result = CliRunner().invoke(cicb, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def as_json(*args: str) -> Any:
    return json.loads(run(*args, "--json").stdout)


def test_a_routed_callback_is_archived_with_its_envelope_and_route(tier: Tier) -> None:
    body = tier.callback("jarch-routed", tag="Steps")
    task_id = tier.ingest(body)
    tier.idle()
    [entry] = archived(tier)
    assert entry.body == body
    assert (entry.task_id, entry.request_id, entry.source, entry.scope) == (
        task_id,
        "req-1",
        "callback",
        None,
    )
    assert (entry.content_type, entry.remote_addr) == ("application/xml", "127.0.0.1")
    assert entry.outcome == "dispatched" and entry.error is None
    assert entry.events == (
        {
            "event": "TaskFinish",
            "job_id": "jarch-routed",
            "run_id": None,
            "tag": "Steps",
            "state": "Success",
            "source": "callback",
            "route": "steps",
            "outcome": "dispatched",
            "key": "TaskFinish:jarch-routed:Success",
        },
    )


def test_a_duplicate_and_an_unrouted_callback_are_archived_too(tier: Tier) -> None:
    body = tier.callback("jarch-twice", tag="Steps")
    tier.ingest(body)
    tier.ingest(body)
    tier.ingest(tier.callback("jarch-running", state="Running"))
    tier.idle()
    # The tier's two threads may take the two copies in either order: one runs the route.
    by_outcome = {entry.outcome: entry for entry in archived(tier)}
    assert sorted(by_outcome) == ["dispatched", "duplicate", "unrouted"]
    routed, duplicate = by_outcome["dispatched"], by_outcome["duplicate"]
    unrouted = by_outcome["unrouted"]
    assert duplicate.body == routed.body == body
    assert duplicate.events[0]["route"] == "steps"
    assert unrouted.events[0]["route"] is None
    assert unrouted.events[0]["state"] == "Running"
    assert tier.runs() == ["first:jarch-twice", "second:jarch-twice"]


def test_garbage_is_archived_as_dead_lettered_byte_for_byte(tier: Tier) -> None:
    garbage = b"\xff\xfe<not a callback>\x00\r\n"
    task_id = tier.ingest(garbage)
    tier.wait_for_dead_letters(1)
    tier.idle()
    [entry] = archived(tier)
    assert entry.body == garbage
    assert (entry.outcome, entry.error, entry.task_id) == ("dead_lettered", "ParseError", task_id)
    assert entry.reason and entry.events == ()

    shown = run("archive", "show", entry.id, "--body")
    assert shown.stdout_bytes == garbage
    record = json.loads(run("archive", "show", entry.id).stdout)
    assert record["body_encoding"] == "base64" and record["error"] == "ParseError"
    listed = as_json("archive", "list", "--outcome", "dead_lettered")
    assert [e["id"] for e in listed["entries"]] == [entry.id]


def test_a_callback_whose_route_cannot_start_is_archived_with_its_events(tier: Tier) -> None:
    # The "broken" route names a task no worker has: ingest refuses to dispatch it.
    body = tier.callback("jarch-broken", tag="Broken")
    tier.ingest(body)
    tier.wait_for_dead_letters(1)
    tier.idle()
    [entry] = archived(tier)
    assert (entry.outcome, entry.error) == ("dead_lettered", "ConfigError")
    [event] = entry.events
    assert (event["job_id"], event["tag"], event["route"], event["outcome"]) == (
        "jarch-broken",
        "Broken",
        "broken",
        "dead_lettered",
    )
    found = as_json("archive", "list", "--tag", "broken", "--outcome", "dead_lettered")
    assert found["count"] == 1
    assert as_json("archive", "list", "--tag", "Steps")["count"] == 0


def test_replay_runs_nothing_twice_unless_forced(tier: Tier) -> None:
    tier.ingest(tier.callback("jarch-replay", tag="Steps"))
    tier.idle()
    [original] = archived(tier)

    dry = run("replay", "--job-id", "jarch-replay", "--dry-run")
    assert original.id in dry.stdout and "dry run: nothing sent" in dry.stdout
    tier.idle()
    assert len(archived(tier)) == 1

    report = as_json("replay", "--job-id", "jarch-replay")
    assert (report["matched"], report["sent"], report["scope"]) == (1, 1, None)
    tier.idle()
    replayed, _ = archived(tier)
    assert (replayed.source, replayed.outcome, replayed.request_id) == (
        "replay",
        "duplicate",
        original.request_id,
    )
    assert tier.runs() == ["first:jarch-replay", "second:jarch-replay"]

    # Forced: a new deduplication scope, so the route runs again; earlier replays are not sent.
    forced = as_json("replay", "--job-id", "jarch-replay", "--force")
    assert forced["matched"] == 1 and forced["sent"] == 1
    assert forced["scope"].startswith("replay-")
    tier.idle()
    again = archived(tier)[0]
    assert (again.source, again.scope, again.outcome) == ("replay", forced["scope"], "dispatched")
    assert again.events[0]["source"] == "replay"
    assert tier.runs()[2:] == ["first:jarch-replay", "second:jarch-replay"]


def test_replay_keeps_to_its_rate_and_needs_a_filter(tier: Tier) -> None:
    for n in range(3):
        tier.ingest(tier.callback(f"jarch-rate{n}", state="Running"))
    tier.idle()
    started = time.monotonic()
    report = as_json("replay", "--outcome", "unrouted", "--rate", "5")
    assert report["sent"] == 3
    assert time.monotonic() - started >= 0.4  # three sends, 0.2 s apart
    tier.idle()
    assert [e.source for e in archived(tier)] == ["replay"] * 3 + ["callback"] * 3

    refused = CliRunner().invoke(cicb, ["replay"])
    assert refused.exit_code == 2 and "at least one filter" in refused.output


def test_export_writes_one_json_object_a_line_oldest_first(tier: Tier) -> None:
    bodies = [
        tier.callback("jarch-export1", tag="Steps"),
        b"\x00\xff garbage",
        tier.callback("jarch-export2"),
    ]
    for body in bodies:
        tier.ingest(body)
    tier.wait_for_dead_letters(1)
    tier.idle()
    lines = run("archive", "export").stdout_bytes.splitlines()
    exported = [json.loads(line) for line in lines]
    # Each body with what became of it (the tier's two threads may archive them in any
    # order), and in the archive's order, oldest first.
    assert sorted((base64.b64decode(e["body"]), e["outcome"]) for e in exported) == sorted(
        zip(bodies, ["dispatched", "dead_lettered", "dispatched"], strict=True)
    )
    assert {e["body_encoding"] for e in exported} == {"base64"}
    assert [e["id"] for e in exported] == [e.id for e in reversed(archived(tier))]
    steps = run("archive", "export", "--tag", "Steps").stdout_bytes.splitlines()
    assert [json.loads(line)["events"][0]["job_id"] for line in steps] == ["jarch-export1"]
