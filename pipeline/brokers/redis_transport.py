"""kombu's Redis transport, with each Celery task message recorded as it is published.

Every task message a cicb process publishes on a Redis broker (a route's steps, retries,
resubmissions, replays, reconcile's callbacks) goes out through ``Channel._put``, which
writes the message and its in-flight record in one script (``pipeline.brokers.inflight``):
a record that cannot be written stops the publish, which raises, so no message is ever out
without it. A message kombu puts back (a worker's warm shutdown, a worker lost under its
task, the visibility timeout) takes its record with it.

Inside ``held_publishes()`` a thread's task messages are kept instead, for its caller to
write in a round trip of its own (``Inflight.publish``): the ingest task writes the first step
of a route with what says the route started (``workers.tasks``).

Celery uses it through ``broker_transport`` (``kind.BrokerKind.celery_options``), for one
Redis address (``Transport``) or through Sentinels (``SentinelTransport``); everything else is
kombu's own Redis transport.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from kombu.log import get_logger
from kombu.transport import redis as kombu_redis
from kombu.utils.json import dumps

from pipeline.brokers.inflight import Inflight, task_message_id

TRANSPORT = "pipeline.brokers.redis_transport:Transport"
SENTINEL_TRANSPORT = "pipeline.brokers.redis_transport:SentinelTransport"

crit = get_logger(__name__).critical


class HeldPublish(NamedTuple):
    """A task message kept by ``held_publishes``: for ``Inflight.publish``."""

    queue_key: str
    task_id: str
    raw: str
    tag: str


_held = threading.local()


@contextmanager
def held_publishes() -> Iterator[list[HeldPublish]]:
    """Keep the task messages this thread publishes in the block (in the list yielded)
    instead of writing them; what the caller does not write is never published."""
    held: list[HeldPublish] = []
    _held.publishes = held
    try:
        yield held
    finally:
        _held.publishes = None


class Recording(kombu_redis.Channel):  # type: ignore[misc]
    """What cicb's channels add to kombu's: each task message written with its record."""

    _inflight: Inflight | None = None

    @property
    def inflight(self) -> Inflight:
        if self._inflight is None:
            self._inflight = Inflight(self._create_client())
        return self._inflight

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        task_id = task_message_id(message)
        if task_id is None:
            super()._put(queue, message, **kwargs)
            return
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        tag = message["properties"]["delivery_tag"]
        held = getattr(_held, "publishes", None)
        if held is not None:
            held.append(HeldPublish(key, task_id, dumps(message), tag))
            return
        with self.conn_or_acquire() as client:
            self.inflight.publish(key, [(task_id, dumps(message), tag)], client=client)

    def _do_restore_message(
        self,
        payload: dict[str, Any],
        exchange: str,
        routing_key: str,
        pipe: Any,
        leftmost: bool = False,
    ) -> None:
        task_id = task_message_id(payload)
        if task_id is None:
            super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
            return
        try:
            payload["headers"]["redelivered"] = True
            properties = payload["properties"]
            properties.setdefault("delivery_info", {})["redelivered"] = True
            raw = dumps(payload)
            for queue in self._lookup(exchange, routing_key):
                key = self._q_for_pri(queue, self._get_message_priority(payload, reverse=False))
                (pipe.lpush if leftmost else pipe.rpush)(key, raw)
                self.inflight.record_restored(pipe, key, task_id, raw, properties["delivery_tag"])
        except self.connection_errors:
            raise  # abort the transaction: the message stays where it was
        except Exception:
            crit("Could not restore message: %r", payload, exc_info=True)


class Channel(Recording):
    pass


class SentinelChannel(Recording, kombu_redis.SentinelChannel):  # type: ignore[misc]
    pass


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel

    @property
    def supports_batch_publish(self) -> bool:
        # Each task message goes out with its record in a script of its own.
        return False


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel

    @property
    def supports_batch_publish(self) -> bool:
        return False
