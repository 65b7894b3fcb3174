"""The guard's promises against a real Valkey: deduplication claims."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from pipeline.guard import Guard, GuardUnavailable
from tests.support import free_port


@pytest.fixture
def guard(broker_url: str) -> Guard:
    client = redis.Redis.from_url(broker_url)
    return Guard(client, dedup_ttl_s=60, claim_ttl_s=30)


def test_a_key_is_claimed_once_until_released(guard: Guard, broker_url: str) -> None:
    assert guard.claim("TaskFinish:j1:Success", owner="task-a")
    assert not guard.claim("TaskFinish:j1:Success", owner="task-b")
    # The same task delivered again (its worker died) still holds its claim.
    assert guard.claim("TaskFinish:j1:Success", owner="task-a")
    guard.release("TaskFinish:j1:Success", owner="task-b")  # not b's to release
    assert not guard.claim("TaskFinish:j1:Success", owner="task-b")
    guard.release("TaskFinish:j1:Success", owner="task-a")
    assert guard.claim("TaskFinish:j1:Success", owner="task-b")


def test_a_confirmed_key_stays_taken_for_the_retention_window(
    guard: Guard, broker_url: str
) -> None:
    assert guard.claim("WorkflowFinish:r1:Success", owner="a")
    guard.confirm("WorkflowFinish:r1:Success")
    assert not guard.claim("WorkflowFinish:r1:Success", owner="a")
    ttl = redis.Redis.from_url(broker_url).ttl("cicb:dedup:WorkflowFinish:r1:Success")
    assert 50 < ttl <= 60


def test_concurrent_claims_have_one_winner(guard: Guard) -> None:
    wins: list[str] = []

    def claim(owner: str) -> None:
        if guard.claim("TaskFinish:race:Failed", owner=owner):
            wins.append(owner)

    threads = [threading.Thread(target=claim, args=(f"t{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1


def test_an_unreachable_redis_is_a_transient_error() -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    guard = Guard(client, dedup_ttl_s=60)
    with pytest.raises(GuardUnavailable):
        guard.claim("TaskFinish:j1:Success", owner="a")


def test_a_claim_its_worker_never_finished_expires(broker_url: str) -> None:
    # A worker killed while starting a route leaves its claim; it must not block the
    # callback's next delivery for longer than the claim's time to live.
    guard = Guard(redis.Redis.from_url(broker_url), dedup_ttl_s=60, claim_ttl_s=1)
    assert guard.claim("TaskFinish:j9:Success", owner="dead-task")
    ttl = redis.Redis.from_url(broker_url).ttl("cicb:dedup:TaskFinish:j9:Success")
    assert 0 < ttl <= 1
    time.sleep(1.2)
    assert guard.claim("TaskFinish:j9:Success", owner="next-delivery")


def test_giving_a_claim_back_never_raises_when_redis_is_away() -> None:
    client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    guard = Guard(client, dedup_ttl_s=60)
    guard.release("TaskFinish:j1:Success", owner="a")  # the claim expires by itself
