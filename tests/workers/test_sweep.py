"""The sweep, run by the worker's own consumer step: a task message the Redis transport lost
(taken off the queue by a worker that died before recording it) is published again from
its in-flight record, with the same task id, and runs once."""

from __future__ import annotations

import time

from tests.support import wait_until
from tests.workers.conftest import Tier

# The tier's visibility timeout (30 s) plus the sweep's grace (20 s): kept longer than this,
# a message counts as lost.
LOST_AFTER_S = 50


def lose(tier: Tier, task_id: str, job_id: str, *, kept_for_s: float) -> None:
    """Record a ``tests.first`` message in flight, as its publication did, then lose it: it
    is on no queue, and was kept ``kept_for_s`` ago."""
    from workers.resources import resources

    inflight = resources().inflight
    assert inflight is not None
    event = {"event": "TaskFinish", "job_id": job_id, "tag": "Steps", "state": "Success"}
    message = tier.app.amqp.as_task_v2(task_id, "tests.first", args=(event,))
    inflight.record(
        body=message.body,
        exchange="actions",
        routing_key="actions",
        headers=message.headers,
        properties=message.properties,
    )
    tier.redis.zadd("cicb:inflight", {task_id: time.time() - kept_for_s})


def test_a_lost_message_is_published_again_and_runs_once(tier: Tier) -> None:
    lose(tier, "t-lost", "jlost", kept_for_s=LOST_AFTER_S + 5)
    # The sweep runs every 10 s.
    wait_until(lambda: tier.runs() == ["first:jlost"], timeout_s=30, what="the republished task")
    tier.idle()
    time.sleep(0.5)
    assert tier.runs() == ["first:jlost"]
    assert tier.redis.exists("cicb:done:t-lost") == 1


def test_a_message_kept_less_than_the_limit_is_left_alone(tier: Tier) -> None:
    lose(tier, "t-young", "jyoung", kept_for_s=LOST_AFTER_S - 30)
    time.sleep(12)  # more than one sweep interval
    assert tier.runs() == []
    assert tier.redis.zscore("cicb:inflight", "t-young") is not None
    tier.redis.zrem("cicb:inflight", "t-young")  # so the next test starts idle
    tier.redis.hdel("cicb:inflight:messages", "t-young")
