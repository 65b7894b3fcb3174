"""cicb on RabbitMQ's quorum queues (``CICB_QUEUE_TYPE=quorum``), on a node of its own: the
queues are quorum queues, a retry's countdown waits in cicb's Redis
(``pipeline.brokers.countdowns``), neither in a worker holding the message nor in RabbitMQ's
delay queues, and a message that kills its worker every time is dead-lettered with its body
after the delivery limit, not dropped by RabbitMQ. The three-node cluster's scenarios are in
tests/cluster."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from amqp.exceptions import PreconditionFailed
from kombu import Connection

from pipeline.brokers.countdowns import DUE_KEY, TASKS_KEY
from pipeline.brokers.queues import INGEST_QUEUE, queue
from tests.rabbitmq import RabbitMQ
from tests.support import (
    SAMPLES,
    Stack,
    Target,
    metric,
    user_routes,
    wait_until,
)

pytestmark = pytest.mark.integration

TTS_JOB_ID = b"j707f4864f86811ecb90d0b03267ce0e5"


@pytest.fixture(scope="module")
def quorum_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A RabbitMQ node of this module's own: its queues are declared quorum here."""
    server = RabbitMQ(tmp_path_factory.mktemp("rabbitmq-quorum"))
    try:
        server.start()
        yield server.url
    finally:
        server.close()


def callback(job_id: str, tag: str = "Tts") -> bytes:
    body = (SAMPLES / "tts_success.xml").read_bytes().replace(TTS_JOB_ID, job_id.encode())
    return body.replace(b"<Tag>Tts</Tag>", f"<Tag>{tag}</Tag>".encode())


def test_queues_are_quorum_and_a_retry_waits_in_redis(
    make_stack: Callable[..., Stack], quorum_url: str, broker_url: str, target: Target
) -> None:
    # The first notification is refused for now, and the target asks for 3 s.
    target.replies.append((503, b"busy", {"Retry-After": "3"}))
    stack = make_stack(
        CICB_BROKER_URL=quorum_url,
        CICB_REDIS_URL=broker_url,
        CICB_QUEUE_TYPE="quorum",
        CICB_NOTIFY_URLS=target.url,
        CICB_RETRY_BACKOFF_MAX_S="10",  # above what the target asks for
    )
    assert stack.post(callback("jquorum1")).status_code == 200
    wait_until(lambda: target.received, what="the first try")
    refused_at = target.received[0]["at"]
    # While the retry waits, the worker holds nothing, and neither does RabbitMQ: the
    # countdown is kept in cicb's Redis.
    time.sleep(1)
    assert metric(stack.worker_metrics(), "cicb_tasks_scheduled") == 0
    state = redis.Redis.from_url(broker_url)
    [waiting] = state.zrange(DUE_KEY, 0, -1)
    assert b"jquorum1" in state.hget(TASKS_KEY, waiting)  # type: ignore[operator]
    with Connection(quorum_url) as conn:
        channel = conn.default_channel
        delayed = [
            channel.queue_declare(f"celery_delayed_{level}", passive=True).message_count
            for level in range(28)
        ]
    assert delayed == [0] * 28
    [event] = target.wait_for(1, timeout_s=30)
    assert event["job_id"] == "jquorum1"
    delivered = [r for r in target.received if r["status"] == 200]
    assert delivered[0]["at"] - refused_at >= 2.9
    assert state.zcard(DUE_KEY) == 0 and state.hlen(TASKS_KEY) == 0
    # ingest is a quorum queue: declaring it classic is refused.
    with Connection(quorum_url) as conn, pytest.raises(PreconditionFailed):
        queue(INGEST_QUEUE)(conn.default_channel).declare()


def test_a_message_that_kills_its_worker_is_dead_lettered_after_the_delivery_limit(
    make_stack: Callable[..., Stack], quorum_url: str, broker_url: str, tmp_path: Path
) -> None:
    routes = user_routes(
        tmp_path,
        "poison",
        "import os, signal\n"
        "@route(tag='Poison')\n"
        "@app.task(base=PipelineTask, name='poison.kill')\n"
        "def kill(event):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n",
    )
    stack = make_stack(
        CICB_BROKER_URL=quorum_url,
        CICB_REDIS_URL=broker_url,
        CICB_QUEUE_TYPE="quorum",
        # The dead worker's lease holds the next delivery back this long each time.
        CICB_STEP_LEASE_S="3",
        CICB_STEP_LEASE_RENEW_S="1",
        **routes,
    )
    assert stack.post(callback("jpoison", tag="Poison")).status_code == 200
    [letter] = wait_until(stack.dead_letters, timeout_s=120, what="the dead letter")
    assert letter["task"] == "poison.kill"
    assert letter["error"] == "RedeliveryLimit"
    # CICB_MAX_DELIVERIES (3) runs killed the worker; the fourth delivery, one RabbitMQ's
    # own limit (4) still allows, dead-lettered it.
    assert "delivered 4 times" in letter["reason"]
    shown = stack.cli("dlq", "show", letter["id"]).stdout
    assert "jpoison" in shown
