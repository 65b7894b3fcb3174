"""``pipeline.brokers.inflight`` against a real Valkey: each task message is written with its
record or not at all, and the sweep brings back exactly the messages nobody has: not those
waiting on their queue, held by a live worker or running."""

from __future__ import annotations

import base64
import json
import time

import pytest
import redis

from pipeline.brokers.inflight import Inflight

CONFIRM_S = 0.3
ALIVE_S = 1.0


@pytest.fixture
def client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url)


@pytest.fixture
def inflight(client: redis.Redis) -> Inflight:
    return Inflight(client, first_check_s=0, confirm_s=CONFIRM_S, recheck_s=0.1, alive_s=ALIVE_S)


def message(task_id: str, tag: str) -> bytes:
    """A task message as kombu's Redis transport writes it (only what the sweep reads)."""
    return json.dumps(
        {
            "body": "e30=",
            "headers": {"id": task_id, "task": "cicb.notify"},
            "properties": {"delivery_tag": tag, "delivery_info": {"routing_key": "actions"}},
        }
    ).encode()


def publish(inflight: Inflight, task_id: str, tag: str | None = None) -> bytes:
    raw = message(task_id, tag or f"tag-{task_id}")
    inflight.publish("actions", [(task_id, raw, tag or f"tag-{task_id}")])
    return raw


def take(client: redis.Redis) -> bytes:
    """What a worker's BRPOP and kombu's bookkeeping do: off the list, into ``unacked``."""
    raw = client.rpop("actions")
    assert isinstance(raw, bytes)
    tag = json.loads(raw)["properties"]["delivery_tag"]
    client.hset("unacked", tag, json.dumps([json.loads(raw), "actions", "actions"]))
    client.zadd("unacked_index", {tag: time.time()})
    return raw


def sweep_until_settled(inflight: Inflight, *, rounds: int = 6) -> dict[str, int]:
    """Sweep every due record a few times, ``CONFIRM_S`` apart: what a worker's thread does."""
    states: dict[str, int] = {}
    for _ in range(rounds):
        time.sleep(CONFIRM_S / 2 + 0.05)
        ids = inflight.due()
        if ids:
            found = inflight.sweep({}, ids)
            for state, n in found.states.items():
                states[state] = states.get(state, 0) + n
    return states


def test_a_message_goes_out_with_its_record(inflight: Inflight, client: redis.Redis) -> None:
    raw = publish(inflight, "t1")
    assert client.lrange("actions", 0, -1) == [raw]
    assert client.hget("cicb:inflight:messages", "t1") == raw
    meta = json.loads(client.hget("cicb:inflight:meta", "t1"))  # type: ignore[arg-type]
    assert (meta["q"], meta["tag"]) == ("actions", "tag-t1")
    assert inflight.count() == 1


def test_a_record_that_cannot_be_written_stops_the_message(
    inflight: Inflight, client: redis.Redis
) -> None:
    client.set("cicb:inflight:messages", "not a hash")
    with pytest.raises(redis.ResponseError):
        publish(inflight, "t1")
    assert client.llen("actions") == 0


def test_messages_waiting_on_their_queue_are_left_there(
    inflight: Inflight, client: redis.Redis
) -> None:
    publish(inflight, "a")
    publish(inflight, "b")
    inflight.heartbeat("w1", [], disturbed=True)  # a connection broke: look for them
    states = sweep_until_settled(inflight)
    assert set(states) == {"waiting"}
    assert client.llen("actions") == 2


def test_a_message_a_live_worker_holds_is_left_alone(
    inflight: Inflight, client: redis.Redis
) -> None:
    publish(inflight, "a")
    take(client)
    for _ in range(4):
        inflight.heartbeat("w1", ["a"])
        states = sweep_until_settled(inflight, rounds=1)
        assert set(states) <= {"held"}
    assert client.llen("actions") == 0 and inflight.lost_count() == 0


def test_a_message_its_worker_dropped_is_pushed_again_once_with_a_new_tag(
    inflight: Inflight, client: redis.Redis
) -> None:
    publish(inflight, "a")
    take(client)
    # The worker lost its broker connection and, back, holds nothing any more.
    inflight.heartbeat("w1", [], disturbed=True)
    found = inflight.sweep({}, inflight.due() or ["a"])
    assert found.states == {"suspect": 1} and found.republished == []
    assert inflight.lost_count() == 1
    time.sleep(CONFIRM_S + 0.05)
    found = inflight.sweep({}, ["a"])
    assert found.republished == ["a"]
    [again] = client.lrange("actions", 0, -1)
    again_message = json.loads(again)
    assert again_message["headers"]["id"] == "a"
    assert again_message["properties"]["delivery_tag"] != "tag-a"
    assert again_message["properties"]["delivery_info"]["redelivered"] is True
    # kombu's record of the old delivery is gone: it will not come back a second time.
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
    assert inflight.lost_count() == 0
    assert client.hget("cicb:inflight:messages", "a") == again
    # Now on its queue: waiting, not lost again.
    assert set(sweep_until_settled(inflight)) == {"waiting"}
    assert client.llen("actions") == 1


def test_a_message_taken_and_lost_unrecorded_is_pushed_again(
    inflight: Inflight, client: redis.Redis
) -> None:
    # A worker took it (BRPOP) and its connection broke before kombu recorded it.
    publish(inflight, "a")
    client.rpop("actions")
    inflight.heartbeat("w1", [], disturbed=True)
    sweep_until_settled(inflight)
    assert [json.loads(m)["headers"]["id"] for m in client.lrange("actions", 0, -1)] == ["a"]


def test_a_message_published_after_the_last_disturbance_is_not_looked_for(
    inflight: Inflight, client: redis.Redis
) -> None:
    inflight.gone("w1")  # a worker stopped: a disturbance
    time.sleep(0.01)
    publish(inflight, "a")
    client.rpop("actions")  # a loss nothing reported: nobody looks on the list for it
    assert set(sweep_until_settled(inflight)) == {"waiting"}


def test_what_a_silent_worker_held_is_pushed_again(inflight: Inflight, client: redis.Redis) -> None:
    publish(inflight, "a")
    take(client)
    inflight.heartbeat("w-dead", ["a"])
    assert set(sweep_until_settled(inflight, rounds=1)) == {"held"}
    time.sleep(ALIVE_S + 0.1)  # it said nothing since: dead
    sweep_until_settled(inflight)
    assert client.llen("actions") == 1
    assert client.zscore("cicb:workers", "w-dead") is None


def test_running_and_finished_tasks_take_no_look_at_the_broker(
    inflight: Inflight, client: redis.Redis
) -> None:
    publish(inflight, "running")
    publish(inflight, "finished")
    client.delete("actions")  # neither is on its queue
    inflight.heartbeat("w1", [], disturbed=True)
    for _ in range(4):
        time.sleep(CONFIRM_S)
        ids = inflight.due()
        inflight.sweep({"running": "running", "finished": "done"}, ids)
    assert client.llen("actions") == 0
    assert inflight.count() == 1  # the finished one is forgotten, the running one kept


def test_a_finished_task_whose_chain_goes_on_is_looked_for_and_pushed_again(
    inflight: Inflight, client: redis.Redis
) -> None:
    # Its task finished, then Celery could not send the chain's next step (the broker was
    # away) and the message was acked: only this record can bring the next step about.
    rest = [{"task": "cicb.retry_job", "args": [], "kwargs": {}, "options": {}}]
    body = json.dumps([[{}], {}, {"chain": rest, "callbacks": None}]).encode()
    chained = json.loads(message("chained", "tag-chained"))
    chained.update(body=base64.b64encode(body).decode())
    chained["properties"]["body_encoding"] = "base64"
    raw = json.dumps(chained).encode()
    inflight.publish("actions", [("chained", raw, "tag-chained")])
    publish(inflight, "finished")
    client.delete("actions")
    inflight.heartbeat("w1", [], disturbed=True)
    for _ in range(6):
        time.sleep(CONFIRM_S / 2 + 0.05)
        inflight.sweep({"chained": "done", "finished": "done"}, inflight.due())
    [again] = client.lrange("actions", 0, -1)
    assert json.loads(again)["headers"]["id"] == "chained"
    assert inflight.count() == 1  # the one without a chain is forgotten


def test_a_record_that_changed_since_it_was_found_lost_is_left_alone(
    inflight: Inflight, client: redis.Redis
) -> None:
    publish(inflight, "a")
    take(client)
    inflight.heartbeat("w1", [], disturbed=True)
    inflight.sweep({}, ["a"])
    time.sleep(CONFIRM_S + 0.05)
    # Its task published it again meanwhile (a retry): that message is the one kept.
    newer = publish(inflight, "a", tag="tag-retry")
    client.hset("cicb:inflight:lost", "a", 0)  # as if found lost long ago
    inflight.sweep({}, ["a"])
    assert client.lrange("actions", 0, -1) == [newer]


def test_forgotten_messages_leave_no_trace(inflight: Inflight, client: redis.Redis) -> None:
    publish(inflight, "a")
    publish(inflight, "b")
    inflight.forget("a", "b")
    assert inflight.count() == 0
    for key in ("cicb:inflight:messages", "cicb:inflight:meta", "cicb:inflight:lost"):
        assert client.hlen(key) == 0


def test_one_sweeper_at_a_time(inflight: Inflight, client: redis.Redis) -> None:
    assert inflight.lock("w1", ttl_s=5)
    assert inflight.lock("w1", ttl_s=5)  # kept by its holder
    assert not inflight.lock("w2", ttl_s=5)
    client.delete("cicb:inflight:sweeping")  # its holder died: the lock expired
    assert inflight.lock("w2", ttl_s=5)
    assert 0 < client.pttl("cicb:inflight:sweeping") <= 5000


def test_a_stopping_worker_holds_nothing(inflight: Inflight, client: redis.Redis) -> None:
    inflight.heartbeat("w1", ["a", "b"])
    assert client.smembers("cicb:held:w1") == {b"a", b"b"}
    inflight.gone("w1")
    assert client.exists("cicb:held:w1") == 0
    assert client.zscore("cicb:workers", "w1") is None
    assert client.exists("cicb:inflight:disturbed") == 1
