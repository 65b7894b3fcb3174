"""The bounded reads the console relies on, against a real Valkey: a page of the archive
with a cursor and a scan limit, the oldest dead letters read in place, a group replayed
while the others keep their place, the last reconcile pass per queue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from pipeline.archive import Archive, Filters
from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.envelope import Envelope
from pipeline.brokers.queues import connection
from pipeline.console.queries import duration, pretty_body
from pipeline.reconcile.store import ReconcileStore
from pipeline.settings import Settings


@pytest.fixture
def client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url)


@pytest.fixture
def archive(client: redis.Redis) -> Archive:
    return Archive(client, retention_s=3600, max_entries=1000, page_size=7)


def put(archive: Archive, job_id: str, *, request_id: str = "r", source: str = "callback") -> str:
    envelope = Envelope(
        body=b"<a/>",
        content_type=None,
        received_at=datetime.now(UTC),
        remote_addr=None,
        request_id=request_id,
        source=source,
    )
    event = {"event": "TaskFinish", "job_id": job_id, "run_id": None, "outcome": "dispatched"}
    entry_id = archive.record(envelope, task_id=None, outcomes=[event])
    assert entry_id is not None
    return entry_id


def test_a_page_goes_on_from_its_cursor_and_never_reads_past_its_scan_limit(
    archive: Archive,
) -> None:
    ids = [put(archive, f"j{i}") for i in range(30)]
    newest = ids[::-1]
    first = archive.page(limit=10, max_scanned=100)
    assert [e.id for e in first.entries] == newest[:10]
    assert first.next_before == newest[9]
    second = archive.page(limit=10, before=first.next_before, max_scanned=100)
    assert [e.id for e in second.entries] == newest[10:20]
    last = archive.page(limit=50, before=newest[19], max_scanned=100)
    assert [e.id for e in last.entries] == newest[20:]
    assert last.next_before is None

    # Looking for one old job stops at the scan limit, saying where to go on from.
    bounded = archive.page(Filters(job_id="j2"), limit=10, max_scanned=12)
    assert (bounded.entries, bounded.scanned, bounded.next_before) == ([], 12, newest[11])
    rest = archive.page(Filters(job_id="j2"), limit=10, before=newest[11], max_scanned=100)
    assert [e.id for e in rest.entries] == [ids[2]]


def test_a_cursor_that_is_not_an_archive_id_is_refused(archive: Archive) -> None:
    with pytest.raises(ValueError, match="not an archive id"):
        archive.page(limit=1, before="1-0) OR", max_scanned=1)


def test_any_id_matches_a_job_run_or_request_id_and_source_filters_where_it_came_from(
    archive: Archive,
) -> None:
    by_job = put(archive, "jx", request_id="r1")
    by_request = put(archive, "jy", request_id="jx-request", source="replay")
    assert [e.id for e in archive.list(Filters(any_id="jx"), limit=10)] == [by_job]
    assert [e.id for e in archive.list(Filters(any_id="jx-request"), limit=10)] == [by_request]
    assert [e.id for e in archive.list(Filters(source="Replay"), limit=10)] == [by_request]


def letter(task: str, n: int) -> DeadLetter:
    return DeadLetter(
        task=task,
        queue="actions",
        args=[{"job_id": f"j{n}"}],
        kwargs={},
        error="E",
        reason="r",
        attempts=1,
    )


@pytest.fixture
def dead(broker_url: str) -> DeadLetterQueue:
    return DeadLetterQueue(lambda: connection(Settings(broker_url=broker_url)))


def test_peek_reads_the_oldest_in_place(dead: DeadLetterQueue) -> None:
    letters = [letter("t", n) for n in range(5)]
    for one in letters:
        dead.put(one)
    peeked, total = dead.peek(2)
    assert ([d.id for d in peeked], total) == ([d.id for d in letters[:2]], 5)
    assert [d.id for d in dead.entries()] == [d.id for d in letters]
    assert dead.peek(0) == ([], 5)


def test_replay_some_sends_the_selected_and_the_others_keep_their_place(
    dead: DeadLetterQueue,
) -> None:
    letters = [letter("a" if n % 2 else "b", n) for n in range(6)]
    for one in letters:
        dead.put(one)
    sent: list[str] = []
    count = dead.replay_some(lambda d: sent.append(d.id), lambda d: d.task == "a", limit=4)
    # Among the oldest 4 only: letters 1 and 3; letter 5 is beyond the limit.
    assert (count, sent) == (2, [letters[1].id, letters[3].id])
    assert [d.id for d in dead.entries()] == [letters[n].id for n in (0, 2, 4, 5)]


def test_a_letter_stays_when_sending_it_fails(dead: DeadLetterQueue) -> None:
    dead.put(letter("a", 1))

    def broken(_: DeadLetter) -> None:
        raise OSError("broker gone")

    with pytest.raises(OSError):
        dead.replay_some(broken, lambda d: True, limit=10)
    assert len(dead.entries()) == 1


def test_the_last_pass_of_each_queue_is_kept_most_recent_first(client: redis.Redis) -> None:
    store = ReconcileStore(client, retention_s=60)
    early, late = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    summary: dict[str, Any] = {"listed": 1, "found": 0, "pending": 0, "busy": False, "error": None}
    store.record_pass("q1", {**summary, "target": "q1"}, at=early)
    store.record_pass("q2", {**summary, "target": "q2"}, at=early)
    store.record_pass("q1", {**summary, "target": "q1", "found": 3}, at=late)
    passes = store.last_passes(10)
    assert [(p["target"], p["found"], p["at"]) for p in passes] == [
        ("q1", 3, late.isoformat()),
        ("q2", 0, early.isoformat()),
    ]
    assert len(store.last_passes(1)) == 1


@pytest.mark.parametrize(
    ("body", "fmt", "shown"),
    [
        (b'{"a":{"b":1}}', "json", '{\n  "a": {\n    "b": 1\n  }\n}'),
        (b"<a><b>1</b></a>", "xml", "<a>\n  <b>1</b>\n</a>"),
        (b'<?xml version="1.0"?><a/>', "xml", '<?xml version="1.0" ?>\n<a/>'),
        (b"<a><b>1</b", "text", "<a><b>1</b"),
        (
            b'<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>',
            "text",
            '<!DOCTYPE a [<!ENTITY x "y">]><a>&x;</a>',
        ),
        (b"\xff\xfe garbage", "text", "\ufffd\ufffd garbage"),
    ],
)
def test_a_body_is_indented_when_well_formed_and_shown_as_it_is_otherwise(
    body: bytes, fmt: str, shown: str
) -> None:
    assert pretty_body(body) == (fmt, shown)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (3.4, "3 s"),
        (119, "119 s"),
        (900, "15 min"),
        (7260, "2 h 1 min"),
        (139466595, "1614 d"),
        (-5, "-5 s"),
    ],
)
def test_how_late_reads_at_a_glance(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown
