"""Queue depths and the oldest callback's age, read from a real Valkey as a scrape would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis
from kombu import Connection

from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.depths import QueueDepths
from pipeline.brokers.kind import kind_of
from pipeline.errors import BrokerUnavailable
from pipeline.settings import Settings
from tests.support import free_port


def envelope(received_at: datetime, request_id: str) -> dict[str, str]:
    return {
        "body": "<Response/>",
        "body_encoding": "utf-8",
        "content_type": "application/xml",
        "received_at": received_at.isoformat(),
        "remote_addr": "127.0.0.1",
        "request_id": request_id,
    }


def depths_of(settings: Settings) -> QueueDepths:
    return QueueDepths(settings, kind_of(settings))


def test_empty_queues_read_zero_and_no_wait(broker_url: str) -> None:
    depths = depths_of(Settings(broker_url=broker_url)).read()
    assert depths.messages == {"ingest": 0, "actions": 0, "dead_letter": 0}
    assert depths.oldest_ingest_age_s(datetime.now(UTC)) == 0.0


def test_depths_count_each_queue_and_age_is_the_oldest_callbacks(broker_url: str) -> None:
    settings = Settings(broker_url=broker_url)
    publisher = kind_of(settings).publisher(settings)
    now = datetime.now(UTC)
    for minutes, request_id in ((7, "oldest"), (3, "middle"), (1, "newest")):
        publisher.ingest(envelope(now - timedelta(minutes=minutes), request_id))
    DeadLetterQueue(lambda: Connection(broker_url)).put(
        DeadLetter(
            task="cicb.notify",
            queue="actions",
            args=[],
            kwargs={},
            error="E",
            reason="r",
            attempts=1,
        )
    )
    depths = depths_of(settings).read()
    assert depths.messages == {"ingest": 3, "actions": 0, "dead_letter": 1}
    assert depths.oldest_ingest_age_s(now) == pytest.approx(7 * 60)
    # A worker takes the oldest: the age is the next one's.
    redis.Redis.from_url(broker_url).rpop("ingest")
    assert depths_of(settings).read().oldest_ingest_age_s(now) == pytest.approx(3 * 60)


def test_a_message_that_is_no_callback_leaves_the_age_unknown_not_an_error(
    broker_url: str,
) -> None:
    redis.Redis.from_url(broker_url).lpush("ingest", b"not a kombu message")
    depths = depths_of(Settings(broker_url=broker_url)).read()
    assert depths.messages["ingest"] == 1
    assert depths.oldest_ingest_received_at is None


def test_a_broker_that_does_not_answer_is_broker_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerUnavailable):
        depths_of(Settings(broker_url=url)).read()
