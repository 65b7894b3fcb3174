"""Tasks waiting for their countdown in Redis (RabbitMQ's quorum queues), on a real Valkey."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
import redis

from pipeline.brokers import countdowns as module
from pipeline.brokers.countdowns import DUE_KEY, TASKS_KEY, Countdowns, Due


@pytest.fixture
def client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url)


def schedule(countdowns: Countdowns, delay_s: float, task_id: str) -> None:
    options = {"headers": {"cicb_route": "tts"}, "retries": 2, "expires": datetime.now(UTC)}
    countdowns.schedule(delay_s, task_id, "cicb.notify", [{"job_id": task_id}], {}, options)


def test_a_task_is_published_once_due_with_what_it_was_given(client: redis.Redis) -> None:
    countdowns = Countdowns(client)
    schedule(countdowns, 0.5, "t1")
    published: list[Due] = []
    assert countdowns.publish_due(published.append) == 0
    time.sleep(0.6)
    assert countdowns.publish_due(published.append) == 1
    [due] = published
    assert (due.task_id, due.name) == ("t1", "cicb.notify")
    assert (due.args, due.kwargs) == ([{"job_id": "t1"}], {})
    assert due.options["headers"] == {"cicb_route": "tts"} and due.options["retries"] == 2
    assert isinstance(due.options["expires"], datetime)
    # Published once: gone from Redis.
    assert countdowns.publish_due(published.append) == 0
    assert client.zcard(DUE_KEY) == 0 and client.hlen(TASKS_KEY) == 0


def test_what_could_not_be_published_is_kept_and_tried_again_after_its_claim(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "CLAIM_S", 0.5)
    countdowns = Countdowns(client)
    for task_id in ("t1", "t2", "t3"):
        schedule(countdowns, 0, task_id)
    published: list[str] = []

    def publish(due: Due) -> None:
        if due.task_id == "t2":
            raise ConnectionError("broker away")
        published.append(due.task_id)

    with pytest.raises(ConnectionError):
        countdowns.publish_due(publish)
    # What went out before the failure is removed; the rest waits for its claim to run out.
    assert published == ["t1"]
    assert sorted(client.zrange(DUE_KEY, 0, -1)) == [b"t2", b"t3"]
    assert countdowns.publish_due(publish) == 0  # claimed: another worker does not take them
    time.sleep(0.6)
    assert countdowns.publish_due(lambda due: published.append(due.task_id)) == 2
    assert published == ["t1", "t2", "t3"]


def test_two_workers_never_publish_the_same_entry_from_one_claim(client: redis.Redis) -> None:
    first, second = Countdowns(client), Countdowns(client)
    for n in range(50):
        schedule(first, 0, f"t{n}")
    taken: list[str] = []

    def take_and_race(due: Due) -> None:
        taken.append(due.task_id)
        if len(taken) == 1:  # while the first claim is being published
            second.publish_due(lambda other: taken.append(other.task_id))

    first.publish_due(take_and_race)
    assert sorted(taken) == sorted(f"t{n}" for n in range(50))
