"""The archive store on a real Valkey: bodies kept byte for byte, trimmed by age and by count,
read newest first a page at a time, selected by filters."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.archive import (
    DEAD_LETTERED,
    MIXED,
    Archive,
    Filters,
    NotArchived,
    dead_lettered_outcomes,
    overall_outcome,
)
from pipeline.brokers.envelope import Envelope
from pipeline.routing import Route, RouteTable
from pipeline.times import parse_duration, parse_time
from tests.support import free_port

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "tts_success.xml"
NOW = datetime.now(UTC)


@pytest.fixture
def client(broker_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(broker_url)
    yield client
    client.close()


def store(client: redis.Redis, **options: Any) -> Archive:
    return Archive(
        client,
        retention_s=options.pop("retention_s", 3600),
        max_entries=options.pop("max_entries", 10_000),
        **options,
    )


def envelope(
    body: bytes = b"<Response/>",
    *,
    received_at: datetime | None = None,
    request_id: str = "req-1",
    **fields: Any,
) -> Envelope:
    defaults: dict[str, Any] = {"content_type": "application/xml", "remote_addr": "10.0.0.7"}
    return Envelope(
        body=body,
        received_at=received_at or datetime.now(UTC),
        request_id=request_id,
        **{**defaults, **fields},
    )


def outcome(
    tag: str | None = "Tts",
    state: str = "Success",
    result: str = "dispatched",
    *,
    job_id: str | None = "j1",
    run_id: str | None = None,
    event: str = "TaskFinish",
) -> dict[str, Any]:
    return {
        "event": event,
        "job_id": job_id,
        "run_id": run_id,
        "tag": tag,
        "state": state,
        "source": "callback",
        "route": None if result == "unrouted" else "job-succeeded",
        "outcome": result,
    }


# -- what is kept -----------------------------------------------------------------------------

BODIES = [
    SAMPLE.read_bytes(),
    b"\xff\xfe<not a callback>\x00\r\n",
    bytes(range(256)),
    "<Response><Message>转码完成</Message></Response>".encode("gb18030"),
    b"",
]


@pytest.mark.parametrize("body", BODIES, ids=["xml", "utf16-bom", "all-bytes", "gb18030", "empty"])
def test_a_body_is_kept_byte_for_byte_with_its_envelope(client: redis.Redis, body: bytes) -> None:
    archive = store(client)
    received = datetime(2026, 5, 1, 8, 30, 15, 123456, tzinfo=UTC)
    sent = envelope(body, received_at=received, request_id="req-42")
    entry_id = archive.record(sent, task_id="task-9", outcomes=[outcome()])
    assert entry_id is not None

    entry = archive.get(entry_id)
    assert entry.body == body
    assert (entry.request_id, entry.received_at, entry.task_id) == ("req-42", received, "task-9")
    assert (entry.content_type, entry.remote_addr, entry.source, entry.scope) == (
        "application/xml",
        "10.0.0.7",
        "callback",
        None,
    )
    assert entry.outcome == "dispatched" and entry.events == (outcome(),)
    assert entry.error is None and entry.reason is None
    exported = entry.to_json()
    assert exported["body_encoding"] == "base64"
    assert base64.b64decode(exported["body"]) == body
    assert exported["body_bytes"] == len(body)
    shown = entry.to_json(text_body=True)
    if shown["body_encoding"] == "utf-8":
        assert shown["body"].encode() == body
    else:
        assert base64.b64decode(shown["body"]) == body


def test_what_the_envelope_did_not_have_reads_back_as_none(client: redis.Redis) -> None:
    archive = store(client)
    sent = envelope(content_type=None, remote_addr=None, source="replay", scope="replay-1a2b")
    entry = archive.get(str(archive.record(sent, task_id=None, outcomes=[])))
    assert (entry.content_type, entry.remote_addr, entry.task_id) == (None, None, None)
    assert (entry.source, entry.scope) == ("replay", "replay-1a2b")


def test_a_dead_letter_keeps_its_error_and_reason(client: redis.Redis) -> None:
    archive = store(client)
    entry_id = archive.record(
        envelope(b"garbage"),
        task_id="t1",
        outcomes=[],
        outcome=DEAD_LETTERED,
        error="ParseError",
        reason="not XML nor JSON",
    )
    entry = archive.get(str(entry_id))
    assert (entry.outcome, entry.error, entry.reason) == (
        DEAD_LETTERED,
        "ParseError",
        "not XML nor JSON",
    )


def test_the_overall_outcome_is_the_events_one_or_mixed() -> None:
    assert overall_outcome([outcome(result="duplicate")]) == "duplicate"
    assert overall_outcome([outcome(), outcome(job_id="j2")]) == "dispatched"
    assert overall_outcome([outcome(), outcome(result="duplicate")]) == MIXED


def test_a_dead_lettered_body_names_the_events_it_holds_when_it_can_be_read() -> None:
    table = RouteTable((Route("tts", ["notify"], tag="Tts"),))
    body = SAMPLE.read_bytes()
    [event] = dead_lettered_outcomes(envelope(body), table)
    assert event == {
        "event": "TaskFinish",
        "job_id": "j707f4864f86811ecb90d0b03267ce0e5",
        "run_id": None,
        "tag": "Tts",
        "state": "Success",
        "source": "callback",
        "route": "tts",
        "outcome": DEAD_LETTERED,
        "key": "TaskFinish:j707f4864f86811ecb90d0b03267ce0e5:Success",
    }
    [replayed] = dead_lettered_outcomes(envelope(body, source="replay", scope="s1"), None)
    assert (replayed["source"], replayed["route"]) == ("replay", None)
    assert replayed["key"] == "TaskFinish:j707f4864f86811ecb90d0b03267ce0e5:Success@s1"
    assert dead_lettered_outcomes(envelope(b"\x00garbage"), table) == []


def test_a_replay_sends_the_same_body_and_request_id_marked_as_a_replay(
    client: redis.Redis,
) -> None:
    archive = store(client)
    received = NOW - timedelta(hours=5)
    entry_id = archive.record(envelope(b"\xffbody", received_at=received), task_id="t", outcomes=[])
    entry = archive.get(str(entry_id))
    again = entry.replay_envelope(scope="replay-abcd")
    assert (again.body, again.request_id, again.content_type) == (
        b"\xffbody",
        "req-1",
        "application/xml",
    )
    assert (again.source, again.scope) == ("replay", "replay-abcd")
    assert again.received_at > received
    assert Envelope.from_json(again.to_json()) == again
    assert entry.replay_envelope(scope=None).scope is None


def test_an_archive_turned_off_writes_nothing(client: redis.Redis) -> None:
    for archive in (store(client, retention_s=0), store(client, max_entries=0)):
        assert not archive.enabled
        assert archive.record(envelope(), task_id="t", outcomes=[]) is None
    assert store(client).count() == 0


def test_a_redis_that_does_not_answer_loses_the_entry_without_failing() -> None:
    away = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    assert store(away).record(envelope(), task_id="t", outcomes=[]) is None


def test_an_unknown_or_malformed_id_is_not_archived(client: redis.Redis) -> None:
    archive = store(client)
    archive.record(envelope(), task_id="t", outcomes=[])
    for wrong in ("1-0", "not-an-id", "99999999999999-0"):
        with pytest.raises(NotArchived):
            archive.get(wrong)


# -- trimming -----------------------------------------------------------------------------------


def test_the_stream_is_trimmed_by_count_as_it_is_written(client: redis.Redis) -> None:
    archive = store(client, max_entries=100)
    ids = [archive.record(envelope(), task_id=str(i), outcomes=[]) for i in range(450)]
    # Redis trims whole stream nodes (100 entries each by default): a node's worth over at most.
    assert 100 <= archive.count() < 200
    newest = archive.list(limit=500)
    assert newest[0].id == ids[-1]
    assert [e.id for e in newest] == list(reversed(ids))[: len(newest)]


def test_the_stream_is_trimmed_by_age_and_nothing_older_is_shown(client: redis.Redis) -> None:
    archive_clock = time.time()
    archive = store(client, retention_s=3600, clock=lambda: archive_clock)
    old = [archive.record(envelope(), task_id=str(i), outcomes=[]) for i in range(250)]
    assert archive.count() == 250

    # An hour after the moment between the old entries and the next one (Redis's own clock
    # writes the ids): the next write trims what is older than the retention.
    time.sleep(0.05)
    archive_clock = time.time() + 3600
    time.sleep(0.05)
    new = archive.record(envelope(request_id="late"), task_id="late", outcomes=[])
    # Whole nodes go; the last one, shared with the new entry, stays until it is all old.
    assert archive.count() <= 251 - 200
    assert [e.id for e in archive.list(limit=1000)] == [new]
    with pytest.raises(NotArchived):
        archive.get(str(old[-1]))


# -- reading ------------------------------------------------------------------------------------


def xrevrange_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_xrevrange", {}).get("calls", 0))


def test_entries_come_newest_first_a_page_at_a_time(client: redis.Redis) -> None:
    archive = store(client, page_size=7)
    ids = []
    for i in range(30):
        tag = "Snapshot" if i % 3 == 0 else "Tts"
        ids.append(archive.record(envelope(), task_id=str(i), outcomes=[outcome(tag)]))

    client.config_resetstat()
    assert [e.id for e in archive.list(limit=3)] == ids[::-1][:3]
    assert xrevrange_calls(client) == 1  # the limit stops the reading

    assert [e.id for e in archive.list(limit=25)] == ids[::-1][:25]
    assert [e.id for e in archive.list(limit=100)] == ids[::-1]
    assert [e.id for e in archive.entries(newest_first=False)] == ids
    snapshots = [e.id for e in archive.list(Filters(tag="Snapshot"), limit=100)]
    assert snapshots == ids[27::-3]
    client.config_resetstat()
    assert len(archive.list(Filters(tag="Snapshot"), limit=4)) == 4
    assert xrevrange_calls(client) == 2  # 4 snapshots are in the 14 newest entries


@pytest.fixture
def varied(client: redis.Redis) -> dict[str, str]:
    """Entries received at different times, with different events and outcomes, by name."""
    archive = store(client)
    hours = timedelta(hours=1)
    made = {
        "old-tts": (NOW - 30 * hours, [outcome("Tts")]),
        "snapshot-ok": (NOW - 2 * hours, [outcome("Snapshot", job_id="jsnap1")]),
        "snapshot-failed": (
            NOW - hours,
            [outcome("Snapshot", "Failed", "duplicate", job_id="jsnap2")],
        ),
        "workflow": (
            NOW - 0.5 * hours,
            [
                outcome(
                    None, "Success", "unrouted", job_id=None, run_id="run-7", event="WorkflowFinish"
                )
            ],
        ),
        "mixed": (
            NOW - 0.2 * hours,
            [
                outcome("Snapshot", job_id="jm1"),
                outcome("Transcode", "Failed", "duplicate", job_id="jm2"),
            ],
        ),
        "garbage": (NOW - 0.1 * hours, []),
    }
    ids = {}
    for name, (received, events) in made.items():
        dead = {"outcome": DEAD_LETTERED, "error": "ParseError"} if not events else {}
        ids[name] = str(
            archive.record(
                envelope(received_at=received, request_id=name),
                task_id=name,
                outcomes=events,
                **dead,
            )
        )
    return ids


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), ["garbage", "mixed", "workflow", "snapshot-failed", "snapshot-ok", "old-tts"]),
        (
            Filters(since=NOW - timedelta(hours=1, minutes=30)),
            ["garbage", "mixed", "workflow", "snapshot-failed"],
        ),
        (Filters(until=NOW - timedelta(hours=1, minutes=30)), ["snapshot-ok", "old-tts"]),
        (
            Filters(since=NOW - timedelta(hours=3), until=NOW - timedelta(minutes=45)),
            ["snapshot-failed", "snapshot-ok"],
        ),
        (Filters(tag="Snapshot"), ["mixed", "snapshot-failed", "snapshot-ok"]),
        (Filters(tag="snapshot", state="failed"), ["snapshot-failed"]),
        # Tag and state must hold for one event: mixed has a Snapshot success, a Transcode failure.
        (Filters(tag="Transcode", state="Failed"), ["mixed"]),
        (Filters(tag="Snapshot", state="Failed", job_id="jm1"), []),
        (Filters(event="WorkflowFinish"), ["workflow"]),
        (Filters(job_id="run-7"), ["workflow"]),
        (Filters(job_id="jsnap1"), ["snapshot-ok"]),
        (Filters(outcome="duplicate"), ["mixed", "snapshot-failed"]),
        (Filters(outcome="mixed"), ["mixed"]),
        (Filters(outcome="dead_lettered"), ["garbage"]),
        (Filters(outcome="unrouted", since=NOW - timedelta(minutes=20)), []),
    ],
)
def test_filters_select_by_received_time_event_and_outcome(
    client: redis.Redis, varied: dict[str, str], filters: Filters, expected: list[str]
) -> None:
    found = store(client).list(filters, limit=100)
    assert [e.request_id for e in found] == expected


def test_filters_say_which_are_set() -> None:
    assert not Filters().any()
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    filters = Filters(since=since, tag="Snapshot")
    assert filters.any()
    assert filters.to_json() == {"since": "2026-01-02T03:04:05+00:00", "tag": "Snapshot"}


# -- the command line's times ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172_800), ("1h30m", 5400), ("1.5h", 5400)],
)
def test_a_duration_is_a_number_and_a_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "10", "1x", "1h garbage", "-1h"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_time_is_iso_8601_or_a_duration_ago() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_time("90m", now=now) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_time("2026-02-28T08:00:00+08:00") == datetime(2026, 2, 28, 0, 0, tzinfo=UTC)
    naive = parse_time("2026-02-28 08:00")
    assert naive.tzinfo is not None  # taken as local time
    assert naive == datetime(2026, 2, 28, 8, 0).astimezone()
    with pytest.raises(ValueError):
        parse_time("yesterday")
