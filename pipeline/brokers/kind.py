"""The one place that tells brokers apart.

A Redis broker gets the receiver's fast path and needs every task message kept in flight
(its transport can drop a message a worker took); RabbitMQ keeps a message until it is
acked and goes through Celery's own publishing. Every other module asks ``BrokerKind``
for the part it needs instead of looking at the broker's URL.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from pipeline.brokers.fastpath import RedisEnqueuer
from pipeline.brokers.inflight import Inflight
from pipeline.brokers.publishing import CeleryEnqueuer, Enqueuer, Publisher
from pipeline.settings import Settings

REDIS_SCHEMES = ("redis://", "rediss://")


@dataclass(frozen=True, slots=True)
class BrokerKind:
    broker_url: str
    # Where workers keep deduplication keys, completion records and the archive:
    # ``CICB_REDIS_URL``, else the broker when it is Redis, else nowhere.
    state_url: str | None
    is_redis: bool

    @property
    def keeps_inflight(self) -> bool:
        """Whether task messages are kept until their task finishes (``inflight``)."""
        return self.is_redis and self.state_url is not None

    def inflight(self, client: redis.Redis, *, lost_after_s: float) -> Inflight | None:
        return Inflight(client, lost_after_s=lost_after_s) if self.keeps_inflight else None

    def publisher(self, settings: Settings) -> Publisher:
        """A publisher that keeps what it publishes in flight where the broker needs it."""
        inflight = None
        if self.keeps_inflight and self.state_url is not None:
            inflight = Inflight.from_url(self.state_url, lost_after_s=0)
        return Publisher(settings, inflight=inflight)

    def enqueuer(self, settings: Settings) -> Enqueuer:
        """The receiver's way onto ``ingest``: the fast path on Redis, Celery's elsewhere."""
        if self.is_redis:
            # Inflight records go in the callback's own transaction: only if kept there.
            return RedisEnqueuer(
                self.broker_url,
                track_inflight=self.keeps_inflight and self.state_url == self.broker_url,
            )
        return CeleryEnqueuer(self.publisher(settings))


def kind_of(settings: Settings) -> BrokerKind:
    is_redis = settings.broker_url.startswith(REDIS_SCHEMES)
    state_url = settings.redis_url or (settings.broker_url if is_redis else None)
    return BrokerKind(broker_url=settings.broker_url, state_url=state_url, is_redis=is_redis)
