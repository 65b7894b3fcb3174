"""The dead-letter queue against a real Valkey: put, list, get, replay by id or all, purge;
nothing leaves the queue unless it was sent back."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue, NotFound
from pipeline.brokers.envelope import Envelope
from pipeline.brokers.queues import connection
from pipeline.settings import Settings

ENVELOPE = Envelope.received_now(
    b"\xff not utf-8", content_type="application/xml", remote_addr="10.0.0.1", request_id="r7"
).to_json()


def letter(task: str, **fields: Any) -> DeadLetter:
    return DeadLetter(
        task=task,
        queue="actions",
        args=[{"job_id": task}],
        kwargs={},
        error="TargetsRejected",
        reason="HTTP 404",
        attempts=1,
        **fields,
    )


@pytest.fixture
def queue(broker_url: str) -> DeadLetterQueue:
    dead = DeadLetterQueue(lambda: connection(Settings(broker_url=broker_url)))
    dead.purge()
    return dead


def test_letters_are_kept_in_order_and_reading_them_takes_none_away(
    queue: DeadLetterQueue,
) -> None:
    letters = [letter("a"), letter("b", task_id="t-b", chain=[{"task": "next"}])]
    for one in letters:
        queue.put(one)
    assert queue.entries() == letters
    assert queue.entries() == letters  # read again: still there
    assert queue.get(letters[1].id) == letters[1]
    with pytest.raises(NotFound):
        queue.get("no-such-id")


def test_replaying_one_sends_only_it_and_takes_only_it_away(queue: DeadLetterQueue) -> None:
    a, b, c = letter("a"), letter("b"), letter("c")
    for one in (a, b, c):
        queue.put(one)
    sent: list[str] = []
    assert queue.replay(lambda one: sent.append(one.task), b.id) == 1
    assert sent == ["b"]
    assert [one.task for one in queue.entries()] == ["a", "c"]
    with pytest.raises(NotFound):
        queue.replay(lambda one: sent.append(one.task), b.id)
    assert queue.replay(lambda one: sent.append(one.task), None) == 2
    assert sent == ["b", "a", "c"]
    assert queue.entries() == []


def test_a_letter_whose_resend_fails_stays(queue: DeadLetterQueue) -> None:
    queue.put(letter("a"))

    def broker_away(_: DeadLetter) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(ConnectionError):
        queue.replay(broker_away, None)
    assert [one.task for one in queue.entries()] == ["a"]


def test_purge_counts_what_it_deleted(queue: DeadLetterQueue) -> None:
    for task in ("a", "b", "c"):
        queue.put(letter(task))
    assert queue.purge() == 3
    assert queue.entries() == [] and queue.purge() == 0


def test_a_callbacks_letter_gives_its_envelope_and_summary(queue: DeadLetterQueue) -> None:
    callback = DeadLetter(
        task="cicb.ingest",
        queue="ingest",
        args=[ENVELOPE],
        kwargs={},
        error="ParseError",
        reason="body is not UTF-8",
        attempts=1,
    )
    queue.put(callback)
    [kept] = queue.entries()
    envelope = kept.envelope()
    assert envelope is not None and envelope.body == b"\xff not utf-8"
    assert kept.summary() == {
        "id": callback.id,
        "task": "cicb.ingest",
        "queue": "ingest",
        "error": "ParseError",
        "reason": "body is not UTF-8",
        "attempts": 1,
        "failed_at": callback.failed_at,
        "request_id": "r7",
    }
    # A step's letter holds an event, not a callback; neither do several arguments.
    assert letter("a").envelope() is None
    assert letter("a").summary()["request_id"] is None
    assert DeadLetter(**{**callback.to_json(), "args": [ENVELOPE, {}]}).envelope() is None
    assert DeadLetter(**{**callback.to_json(), "args": ["body"]}).envelope() is None
