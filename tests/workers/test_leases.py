"""One run at a time, none twice, and no message out without its record: a step's lease and
the record-or-refuse publish, run by the tier's real worker (two threads)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from pipeline.brokers.envelope import Envelope
from pipeline.brokers.inflight import Inflight
from pipeline.errors import BrokerUnavailable
from tests.support import wait_until
from tests.workers.conftest import Tier

LEASE_S = 3.0  # the tier's CICB_STEP_LEASE_S


def event(job_id: str, tag: str = "Blocking") -> dict[str, Any]:
    return {"event": "TaskFinish", "job_id": job_id, "tag": tag, "state": "Success"}


def logged(caplog: pytest.LogCaptureFixture, name: str, task_id: str) -> list[dict[str, Any]]:
    return [
        r.msg
        for r in caplog.records
        if isinstance(r.msg, dict)
        and r.msg.get("event") == name
        and r.msg.get("task_id") == task_id
    ]


def test_two_copies_started_together_run_the_step_once(
    tier: Tier, caplog: pytest.LogCaptureFixture
) -> None:
    # Two copies of one message (a redelivery beside the original, the sweep's copy beside
    # kombu's restore), on the tier's two threads at once.
    for _ in range(2):
        tier.app.send_task("tests.blocking", args=[event("jtwin")], task_id="t-twin")
    wait_until(lambda: tier.runs() == ["blocking:jtwin"], what="one copy running")
    # The other finds the lease held and goes back to wait; it does not run meanwhile.
    wait_until(lambda: logged(caplog, "task.deferred", "t-twin"), what="the other deferred")
    time.sleep(LEASE_S + 1)  # the lease is renewed while its holder runs
    assert tier.runs() == ["blocking:jtwin"]
    from tests.workers.steps import RELEASE_KEY

    tier.redis.rpush(RELEASE_KEY, 1)
    # Once the holder finished, the waiting copy finds the step done.
    wait_until(lambda: logged(caplog, "task.already_completed", "t-twin"), timeout_s=15)
    tier.idle()
    assert tier.runs() == ["blocking:jtwin"]
    assert tier.count("cicb_tasks_total", task="tests.blocking", outcome="done") == 1
    assert tier.count("cicb_tasks_total", task="tests.blocking", outcome="skipped") == 1
    assert tier.count("cicb_tasks_total", task="tests.blocking", outcome="deferred") >= 1
    assert tier.dead_letters() == []


def test_a_lease_whose_holder_died_is_taken_over(
    tier: Tier, caplog: pytest.LogCaptureFixture
) -> None:
    # A worker died running this step: its lease is not renewed any more.
    tier.redis.set("cicb:lease:t-orphan", "gone-host/1/2", px=1500)
    sent = time.time()
    tier.app.send_task("tests.first", args=[event("jorphan", "Steps")], task_id="t-orphan")
    wait_until(lambda: tier.runs() == ["first:jorphan"], timeout_s=15, what="the step run")
    assert time.time() - sent >= 1.4  # not before the dead holder's lease expired
    assert logged(caplog, "task.deferred", "t-orphan")
    tier.idle()
    assert tier.runs() == ["first:jorphan"]
    assert tier.redis.exists("cicb:done:t-orphan") == 1
    assert tier.redis.exists("cicb:lease:t-orphan") == 0  # released with the completion


def test_an_older_attempt_does_not_run_after_its_retry_was_scheduled(
    tier: Tier, caplog: pytest.LogCaptureFixture
) -> None:
    # Attempt 0 scheduled its retry (attempt 1) before this copy of attempt 0 came back.
    tier.redis.set("cicb:retried:t-old", 0)
    tier.app.send_task("tests.first", args=[event("jold", "Steps")], task_id="t-old")
    wait_until(lambda: logged(caplog, "task.superseded", "t-old"), what="the copy dropped")
    time.sleep(0.5)
    assert tier.runs() == []
    # The task's record stays: it is the retry's, still on its way.
    assert tier.redis.zscore("cicb:inflight", "t-old") is not None
    Inflight(tier.redis).forget("t-old")


def test_every_task_message_goes_out_with_its_record_byte_for_byte(tier: Tier) -> None:
    # A queue no worker reads: the message stays there to be compared with its record.
    tier.app.send_task(
        "tests.first", args=[event("jkept", "Steps")], task_id="t-kept", queue="kept"
    )
    [message] = tier.redis.lrange("kept", 0, -1)
    assert tier.redis.hget("cicb:inflight:messages", "t-kept") == message
    assert tier.redis.zscore("cicb:inflight", "t-kept") is not None
    tier.redis.delete("kept")
    tier.redis.zrem("cicb:inflight", "t-kept")


def test_a_publish_whose_record_cannot_be_written_raises_and_sends_nothing(tier: Tier) -> None:
    tier.redis.set("cicb:inflight:messages", "not a hash")  # every record write fails
    try:
        envelope = Envelope.received_now(
            b"<Response/>", content_type="application/xml", remote_addr="127.0.0.1", request_id="r"
        ).to_json()
        with pytest.raises(BrokerUnavailable):
            tier.publisher.ingest(envelope)
        # The workers' own publishing (a route's steps, retries) through Celery's app.
        with pytest.raises(OperationalError):
            tier.app.send_task("tests.first", args=[event("jnone", "Steps")], queue="kept")
        assert tier.redis.llen("ingest") == 0
        assert tier.redis.llen("kept") == 0
    finally:
        tier.redis.delete("cicb:inflight:messages", "kept")
    assert tier.runs() == []
