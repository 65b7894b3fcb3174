"""The one place that tells brokers apart.

A Redis broker gets the receiver's fast path, and every task message on it is kept in flight
(its transport can drop a message a worker took): published through cicb's Redis transport
(``redis_transport``), which writes each message with its record. RabbitMQ keeps a message
until it is acked and goes through Celery's own publishing. Every other module asks
``BrokerKind`` for the part it needs instead of looking at the broker's URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from pipeline.brokers.fastpath import RedisEnqueuer
from pipeline.brokers.inflight import Inflight
from pipeline.brokers.publishing import CeleryEnqueuer, Enqueuer, Publisher
from pipeline.brokers.queues import transport_options
from pipeline.brokers.redis_transport import TRANSPORT
from pipeline.settings import Settings

REDIS_SCHEMES = ("redis://", "rediss://")


@dataclass(frozen=True, slots=True)
class BrokerKind:
    broker_url: str
    # Where workers keep deduplication keys, completion records, leases and the archive:
    # ``CICB_REDIS_URL``, else the broker when it is Redis, else nowhere.
    state_url: str | None
    is_redis: bool

    @property
    def keeps_inflight(self) -> bool:
        """Whether task messages are kept on the broker until their task finishes."""
        return self.is_redis

    def inflight(self, client: redis.Redis | None = None) -> Inflight | None:
        """The in-flight records (on the broker; ``client`` when it is the broker's)."""
        if not self.keeps_inflight:
            return None
        if client is None or self.state_url != self.broker_url:
            client = redis.Redis.from_url(self.broker_url, socket_timeout=5)
        return Inflight(client)

    def celery_options(self, settings: Settings) -> dict[str, Any]:
        """The broker part of a Celery app's configuration."""
        options: dict[str, Any] = {
            "broker_url": self.broker_url,
            "broker_transport_options": transport_options(settings),
        }
        if self.is_redis:
            options["broker_transport"] = TRANSPORT
        return options

    def publisher(self, settings: Settings) -> Publisher:
        return Publisher(self.celery_options(settings))

    def enqueuer(self, settings: Settings) -> Enqueuer:
        """The receiver's way onto ``ingest``: the fast path on Redis, Celery's elsewhere."""
        if self.is_redis:
            return RedisEnqueuer(self.broker_url)
        return CeleryEnqueuer(self.publisher(settings))


def kind_of(settings: Settings) -> BrokerKind:
    is_redis = settings.broker_url.startswith(REDIS_SCHEMES)
    state_url = settings.redis_url or (settings.broker_url if is_redis else None)
    return BrokerKind(broker_url=settings.broker_url, state_url=state_url, is_redis=is_redis)
