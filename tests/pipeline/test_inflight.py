"""``pipeline.brokers.inflight`` against a real Valkey: every message is kept until its task
finishes, and only those kept too long are published again."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from pipeline.brokers.inflight import Inflight

LOST_AFTER_S = 100.0


class Republished(list[tuple[str, str, str]]):
    """Records (task id, exchange, routing key) of each message published again."""

    def __call__(
        self,
        body: Any,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
        properties: dict[str, Any],
    ) -> None:
        assert body == {"args": [headers["id"]]}
        self.append((headers["id"], exchange, routing_key))


@pytest.fixture
def inflight(broker_url: str) -> Inflight:
    return Inflight(redis.Redis.from_url(broker_url), lost_after_s=LOST_AFTER_S)


def record(inflight: Inflight, task_id: str, queue: str = "actions") -> None:
    inflight.record(
        body={"args": [task_id]},
        exchange=queue,
        routing_key=queue,
        headers={"id": task_id, "task": "cicb.notify"},
        properties={"correlation_id": task_id, "priority": 0, "reply_to": "ignored"},
    )


def test_only_messages_kept_longer_than_the_limit_are_published_again(
    inflight: Inflight,
) -> None:
    start = time.time()
    for task_id in ("a", "b", "c"):
        record(inflight, task_id)
    republish = Republished()
    assert inflight.sweep(republish, now=start + LOST_AFTER_S - 5) == 0
    assert republish == []
    inflight.forget("b")  # its task finished
    assert inflight.sweep(republish, now=start + LOST_AFTER_S + 5) == 2
    assert sorted(republish) == [("a", "actions", "actions"), ("c", "actions", "actions")]


def test_a_message_published_again_waits_the_full_limit_before_the_next_time(
    inflight: Inflight,
) -> None:
    start = time.time()
    record(inflight, "a", "ingest")
    republish = Republished()
    first = start + LOST_AFTER_S + 1
    assert inflight.sweep(republish, now=first) == 1
    assert inflight.sweep(republish, now=first + LOST_AFTER_S - 1) == 0
    assert inflight.sweep(republish, now=first + LOST_AFTER_S + 1) == 1
    assert republish == [("a", "ingest", "ingest")] * 2
    assert inflight.count() == 1  # still kept until its task finishes


def test_what_is_published_again_is_the_message_as_recorded(
    inflight: Inflight, broker_url: str
) -> None:
    record(inflight, "a")
    seen: list[tuple[Any, ...]] = []
    inflight.sweep(lambda *message: seen.append(message), now=time.time() + LOST_AFTER_S + 1)
    body, exchange, routing_key, headers, properties = seen[0]
    assert (body, exchange, routing_key) == ({"args": ["a"]}, "actions", "actions")
    assert headers == {"id": "a", "task": "cicb.notify"}
    # Only what identifies the message again: no reply_to, no delivery tag.
    assert properties == {"correlation_id": "a", "priority": 0}
    stored = json.loads(redis.Redis.from_url(broker_url).hget("cicb:inflight:messages", "a"))
    assert stored["headers"] == headers


def test_forgetting_on_a_pipeline_waits_for_the_pipeline(
    inflight: Inflight, broker_url: str
) -> None:
    record(inflight, "a")
    pipe = redis.Redis.from_url(broker_url).pipeline()
    inflight.forget("a", pipe)
    assert inflight.count() == 1
    pipe.execute()
    assert inflight.count() == 0
    assert inflight.sweep(Republished(), now=time.time() + LOST_AFTER_S + 1) == 0


def test_one_sweep_at_a_time(inflight: Inflight, broker_url: str) -> None:
    record(inflight, "a")
    client = redis.Redis.from_url(broker_url)
    client.set("cicb:inflight:sweeping", "1", ex=60)  # another worker is sweeping
    republish = Republished()
    assert inflight.sweep(republish, now=time.time() + LOST_AFTER_S + 1) == 0
    client.delete("cicb:inflight:sweeping")
    assert inflight.sweep(republish, now=time.time() + LOST_AFTER_S + 1) == 1
    assert client.exists("cicb:inflight:sweeping") == 0  # the lock is given back


def test_a_failed_republish_keeps_the_message_for_the_next_sweep(inflight: Inflight) -> None:
    record(inflight, "a")

    def broker_away(*_: Any) -> None:
        raise ConnectionError("broker away")

    later = time.time() + LOST_AFTER_S + 1
    with pytest.raises(ConnectionError):
        inflight.sweep(broker_away, now=later)
    republish = Republished()
    assert inflight.sweep(republish, now=later + 1) == 1
    assert republish == [("a", "actions", "actions")]


def test_a_record_without_its_message_is_dropped(inflight: Inflight, broker_url: str) -> None:
    record(inflight, "a")
    redis.Redis.from_url(broker_url).hdel("cicb:inflight:messages", "a")
    republish = Republished()
    inflight.sweep(republish, now=time.time() + LOST_AFTER_S + 1)
    assert republish == []
    assert inflight.count() == 0


def test_the_sweep_lock_expires_if_its_sweeper_dies(inflight: Inflight, broker_url: str) -> None:
    record(inflight, "a")
    client = redis.Redis.from_url(broker_url)
    ttls: list[int] = []

    def republish(*_: Any) -> None:
        ttls.append(int(client.ttl("cicb:inflight:sweeping")))

    inflight.sweep(republish, now=time.time() + LOST_AFTER_S + 1)
    assert len(ttls) == 1 and 0 < ttls[0] <= 60


def test_a_record_without_its_message_does_not_stop_the_others(
    inflight: Inflight, broker_url: str
) -> None:
    client = redis.Redis.from_url(broker_url)
    record(inflight, "a")
    record(inflight, "b")
    client.zadd("cicb:inflight", {"a": 1.0, "b": 2.0})  # a is swept first
    client.hdel("cicb:inflight:messages", "a")
    republish = Republished()
    inflight.sweep(republish)  # now: the real time
    assert republish == [("b", "actions", "actions")]
