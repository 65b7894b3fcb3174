"""How much work waits on the broker: each queue's depth, the age of the oldest callback, and
(on Redis) the task messages in flight and those found lost, on their way back.

Read when asked (a Prometheus scrape, the console's overview), in one round trip on Redis,
without walking a queue: a list's length, and its oldest message (kombu pushes on the left
and pops on the right, so the oldest is at the right end). Other brokers report each queue's
ready messages (a declare of the queue); they cannot show a message without delivering it,
so the oldest callback's age is unknown there.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from datetime import datetime

import orjson
import redis

from pipeline.brokers.envelope import Envelope
from pipeline.brokers.inflight import DUE_KEY, SUSPECTS_KEY
from pipeline.brokers.kind import BrokerKind
from pipeline.brokers.messages import body_of
from pipeline.brokers.queues import (
    ACTIONS_QUEUE,
    DEAD_LETTER_QUEUE,
    DEFAULT_CONNECT_TIMEOUT_S,
    INGEST_QUEUE,
    connection,
    dead_letter_queue,
    task_queues,
)
from pipeline.errors import BrokerUnavailable, PermanentError
from pipeline.settings import Settings

WATCHED_QUEUES = (INGEST_QUEUE, ACTIONS_QUEUE, DEAD_LETTER_QUEUE)


@dataclass(frozen=True, slots=True)
class Depths:
    # Messages waiting on each of WATCHED_QUEUES.
    messages: dict[str, int]
    # When the oldest callback waiting on ``ingest`` was received: None when the queue is
    # empty, or the broker cannot show it (``age_known`` False).
    oldest_ingest_received_at: datetime | None
    age_known: bool
    # Task messages published and not finished (waiting, held by a worker, running), and
    # of those the ones found on no queue and held by no live worker, being published
    # again (``pipeline.brokers.inflight``). None where the broker keeps them itself.
    in_flight: int | None = None
    lost: int | None = None

    def oldest_ingest_age_s(self, now: datetime) -> float | None:
        """How long the oldest waiting callback has waited (0 when none waits), or None when
        the broker cannot tell."""
        if not self.age_known:
            return None
        if self.oldest_ingest_received_at is None:
            return 0.0
        return max(0.0, (now - self.oldest_ingest_received_at).total_seconds())


def received_at_of(message: bytes) -> datetime | None:
    """The received time of the callback in a kombu Redis message, or None when the message
    is not a cicb ingest task."""
    try:
        args = body_of(message)[0]
        return Envelope.from_json(args[0]).received_at
    except (orjson.JSONDecodeError, binascii.Error, LookupError, TypeError, PermanentError):
        return None


class QueueDepths:
    """Reads ``Depths`` from the broker; ``BrokerUnavailable`` when it does not answer."""

    def __init__(self, settings: Settings, kind: BrokerKind) -> None:
        self._settings = settings
        self._redis = (
            kind.broker.client(timeout_s=DEFAULT_CONNECT_TIMEOUT_S)
            if kind.broker is not None
            else None
        )

    def read(self) -> Depths:
        if self._redis is not None:
            try:
                return self._read_redis(self._redis)
            except (redis.RedisError, OSError) as exc:
                raise BrokerUnavailable(f"broker did not answer: {exc}") from exc
        try:
            return self._read_declared()
        except Exception as exc:  # kombu raises each transport's own errors
            raise BrokerUnavailable(f"broker did not answer: {exc}") from exc

    def _read_redis(self, client: redis.Redis) -> Depths:
        pipe = client.pipeline(transaction=False)
        for name in WATCHED_QUEUES:
            pipe.llen(name)
        pipe.lindex(INGEST_QUEUE, -1)
        pipe.zcard(DUE_KEY)
        pipe.hlen(SUSPECTS_KEY)
        *lengths, oldest, in_flight, lost = pipe.execute()
        return Depths(
            messages=dict(zip(WATCHED_QUEUES, (int(n) for n in lengths), strict=True)),
            oldest_ingest_received_at=received_at_of(oldest) if oldest else None,
            age_known=True,
            in_flight=int(in_flight),
            lost=int(lost),
        )

    def _read_declared(self) -> Depths:
        messages = {}
        declared_queues = {
            q.name: q for q in [*task_queues(self._settings), dead_letter_queue(self._settings)]
        }
        with connection(self._settings) as conn:
            conn.ensure_connection(max_retries=1, timeout=DEFAULT_CONNECT_TIMEOUT_S)
            for name in WATCHED_QUEUES:
                # Declaring a queue that exists changes nothing and answers its counts.
                declared = declared_queues[name](conn.default_channel).queue_declare()
                messages[name] = int(declared.message_count)
        return Depths(messages=messages, oldest_ingest_received_at=None, age_known=False)

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
