"""``pipeline.runs`` against a real Valkey: one run at a time under a lease, none after the
task finished or a retry superseded the attempt, and deliveries counted per attempt."""

from __future__ import annotations

import time

import pytest
import redis

from pipeline.brokers.inflight import Inflight
from pipeline.guard import Guard
from pipeline.runs import RunsUnavailable, TaskRuns
from tests.support import free_port

LEASE_S = 1.0


@pytest.fixture
def client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url)


@pytest.fixture
def runs(client: redis.Redis) -> TaskRuns:
    return TaskRuns(client, ttl_s=60, max_deliveries=3, lease_s=LEASE_S)


def test_a_second_copy_finds_the_lease_held_and_waits_about_its_length(runs: TaskRuns) -> None:
    first = runs.start("t1", 0, "w/1")
    assert (first.state, first.deliveries) == ("run", 1)
    second = runs.start("t1", 0, "w/2")
    assert second.state == "leased"
    assert 0.5 < second.wait_s <= LEASE_S
    # A copy that waits is no delivery: it does not count toward CICB_MAX_DELIVERIES.
    runs.finish("t1", "w/1")
    assert runs.start("t1", 0, "w/2").state == "done"


def test_a_lease_whose_holder_died_expires_and_the_next_copy_runs(runs: TaskRuns) -> None:
    assert runs.start("t1", 0, "dead/1").state == "run"
    assert runs.start("t1", 0, "w/2").state == "leased"
    time.sleep(LEASE_S + 0.1)
    taken = runs.start("t1", 0, "w/2")
    assert (taken.state, taken.deliveries) == ("run", 2)


def test_a_renewed_lease_outlives_its_length_and_only_its_owner_renews_it(
    runs: TaskRuns, client: redis.Redis
) -> None:
    assert runs.start("t1", 0, "w/1").state == "run"
    for _ in range(3):
        time.sleep(LEASE_S / 2)
        assert runs.renew({"t1": "w/1", "t-other": "w/1"}) == 1
    assert runs.start("t1", 0, "w/2").state == "leased"
    assert runs.renew({"t1": "w/2"}) == 0  # not its lease
    # A task whose lease is not taken yet is not given one by a renewal.
    assert runs.renew({"t-new": "w/1"}) == 0
    assert client.exists("cicb:lease:t-new") == 0


def test_finishing_releases_only_its_own_lease(runs: TaskRuns, client: redis.Redis) -> None:
    assert runs.start("t1", 0, "w/1").state == "run"
    runs.release("t1", "w/2")  # not w/2's
    assert client.get("cicb:lease:t1") == b"w/1"
    runs.release("t1", "w/1")
    assert runs.start("t1", 0, "w/2").state == "run"
    runs.finish("t1", "w/2")
    assert client.exists("cicb:lease:t1") == 0
    assert client.ttl("cicb:done:t1") > 50


def test_a_retry_supersedes_the_attempts_before_it(runs: TaskRuns) -> None:
    assert runs.start("t1", 0, "w/1").state == "run"
    runs.retried("t1", 0, "w/1")
    # An older copy of attempt 0 (one that waited for the lease) does not run...
    assert runs.start("t1", 0, "w/2").state == "superseded"
    # ...the retry does, and so does a later one; deliveries are counted per attempt.
    retry = runs.start("t1", 1, "w/2")
    assert (retry.state, retry.deliveries) == ("run", 1)
    runs.retried("t1", 1, "w/2")
    runs.retried("t1", 0, "w/2")  # out of order: never lowers the mark
    assert runs.start("t1", 1, "w/3").state == "superseded"
    assert runs.start("t1", 2, "w/3").state == "run"


def test_deliveries_are_counted_per_attempt(runs: TaskRuns) -> None:
    for n in (1, 2, 3, 4):
        started = runs.start("t1", 0, f"w/{n}")
        assert (started.state, started.deliveries) == ("run", n)
        runs.release("t1", f"w/{n}")  # its worker died: the next delivery runs
    assert runs.start("t1", 1, "w/5").deliveries == 1


def test_finishing_forgets_the_message_in_the_same_script(
    runs: TaskRuns, client: redis.Redis
) -> None:
    inflight = Inflight(client)
    inflight.publish("actions", [("t1", b'{"m": 1}', "tag-1")])
    assert runs.start("t1", 0, "w/1").state == "run"
    runs.finish("t1", "w/1", forget=inflight)
    assert inflight.count() == 0
    assert client.hlen("cicb:inflight:messages") == 0
    assert client.hlen("cicb:inflight:meta") == 0


def test_finishing_forgets_the_message_on_another_redis_too(
    runs: TaskRuns, client: redis.Redis, broker_url: str
) -> None:
    other = Inflight(redis.Redis.from_url(broker_url))  # another client: another server
    other.publish("actions", [("t1", b'{"m": 1}', "tag-1")])
    runs.finish("t1", "w/1", forget=other)
    assert other.count() == 0
    assert client.exists("cicb:done:t1") == 1


def test_settled_says_which_tasks_are_done_and_which_run(runs: TaskRuns) -> None:
    runs.start("running", 0, "w/1")
    runs.start("done", 0, "w/1")
    runs.finish("done", "w/1")
    assert runs.settled(["running", "done", "other"]) == {"running": "running", "done": "done"}


def test_an_unreachable_redis_is_a_transient_error() -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(RunsUnavailable):
        TaskRuns(client, ttl_s=60, max_deliveries=3).start("t", 0, "w/1")


def test_a_run_makes_its_claims_with_its_lease(runs: TaskRuns, client: redis.Redis) -> None:
    guard = Guard(client, dedup_ttl_s=60, claim_ttl_s=30)
    assert guard.claim("TaskFinish:other:Success", owner="t0")
    client.set("cicb:dedup:TaskFinish:old:Success", "done")
    keys = ["TaskFinish:new:Success", "TaskFinish:other:Success", "TaskFinish:old:Success"]
    started = runs.start("t1", 0, "w/1", claims=guard.claims(keys, owner="t1"))
    assert started.state == "run"
    assert started.claimed == dict(zip(keys, [True, False, False], strict=True))
    assert client.get("cicb:dedup:TaskFinish:new:Success") == b"claimed:t1"
    assert 25 < client.ttl("cicb:dedup:TaskFinish:new:Success") <= 30
    # The same message delivered again (its worker died) still has its own claim.
    runs.release("t1", "w/1")
    again = runs.start("t1", 0, "w/2", claims=guard.claims(keys[:1], owner="t1"))
    assert again.claimed == {"TaskFinish:new:Success": True}


@pytest.mark.parametrize("why", ["done", "leased", "superseded", "delivered too often"])
def test_a_run_that_will_not_run_claims_nothing(
    runs: TaskRuns, client: redis.Redis, why: str
) -> None:
    if why == "done":
        client.set("cicb:done:t1", 1)
    elif why == "leased":
        assert runs.start("t1", 0, "w/0").state == "run"
    elif why == "superseded":
        client.set("cicb:retried:t1", 0)
    else:
        client.set("cicb:deliveries:t1:0", 3)  # max_deliveries: this is the fourth
    guard = Guard(client, dedup_ttl_s=60)
    started = runs.start("t1", 0, "w/1", claims=guard.claims(["TaskFinish:j:Success"], owner="t1"))
    assert started.claimed == {}
    assert client.get("cicb:dedup:TaskFinish:j:Success") is None
