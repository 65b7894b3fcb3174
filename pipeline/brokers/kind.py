"""The one place that tells brokers apart.

A Redis broker (one address, or Sentinels: ``pipeline.endpoints``) gets the receiver's fast
path, and every task message on it is kept in flight (its transport can drop a message a
worker took): published through cicb's Redis transport (``redis_transport``), which writes
each message with its record. RabbitMQ keeps a message until it is acked and goes through
Celery's own publishing. Every other module asks ``BrokerKind`` for the part it needs
instead of looking at the broker's URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from pipeline.brokers.fastpath import RedisEnqueuer
from pipeline.brokers.inflight import Inflight
from pipeline.brokers.publishing import CeleryEnqueuer, Enqueuer, Publisher
from pipeline.brokers.queues import QUORUM, task_queues, transport_options
from pipeline.brokers.redis_transport import SENTINEL_TRANSPORT, TRANSPORT
from pipeline.endpoints import REDIS_SCHEMES, RedisEndpoint, Replicas
from pipeline.settings import Settings


@dataclass(frozen=True, slots=True)
class BrokerKind:
    broker_url: str
    # Where workers keep deduplication keys, completion records, leases and the archive:
    # ``CICB_REDIS_URL``, else the broker when it is Redis, else nowhere.
    state_url: str | None
    is_redis: bool
    # The broker, when it is Redis, and the state's Redis, each as a client finds it.
    broker: RedisEndpoint | None = None
    state: RedisEndpoint | None = None

    @property
    def keeps_inflight(self) -> bool:
        """Whether task messages are kept on the broker until their task finishes."""
        return self.is_redis

    def keeps_countdowns(self, settings: Settings) -> bool:
        """Whether cicb's tasks wait for their countdowns in cicb's Redis
        (``pipeline.brokers.countdowns``): on RabbitMQ's quorum queues."""
        return not self.is_redis and settings.queue_type == QUORUM

    def state_client(self, *, timeout_s: float = 5.0) -> redis.Redis | None:
        """A client of the state's Redis (None without one)."""
        return self.state.client(timeout_s=timeout_s) if self.state is not None else None

    def inflight(self, client: redis.Redis | None = None) -> Inflight | None:
        """The in-flight records (on the broker; ``client`` when it is the broker's)."""
        if self.broker is None:
            return None
        if client is None or self.state_url != self.broker_url:
            client = self.broker.client()
        return Inflight(client)

    def celery_options(self, settings: Settings) -> dict[str, Any]:
        """The broker part of a Celery app's configuration: the broker, the queues and, on
        quorum queues, what Celery needs there (no global QoS; countdowns of tasks that are
        not cicb's through RabbitMQ's native delayed delivery, cicb's in its Redis:
        ``pipeline.brokers.countdowns``)."""
        options: dict[str, Any] = {
            "broker_url": self.broker_url,
            "broker_transport_options": transport_options(settings),
            "task_queues": task_queues(settings),
        }
        if settings.queue_type == QUORUM:
            options["task_default_queue_type"] = QUORUM
            options["broker_native_delayed_delivery_queue_type"] = QUORUM
            options["worker_detect_quorum_queues"] = True
        if self.broker is not None:
            options["broker_transport"] = (
                SENTINEL_TRANSPORT if self.broker.is_sentinel else TRANSPORT
            )
        return options

    def publisher(self, settings: Settings) -> Publisher:
        return Publisher(self.celery_options(settings))

    def enqueuer(self, settings: Settings) -> Enqueuer:
        """The receiver's way onto ``ingest``: the fast path on Redis, Celery's elsewhere."""
        if self.broker is not None:
            return RedisEnqueuer(self.broker, replicas=replicas_of(settings))
        return CeleryEnqueuer(self.publisher(settings))


def replicas_of(settings: Settings) -> Replicas:
    """The replicas a write that must outlive a failover waits for (``CICB_MIN_REPLICAS``)."""
    return Replicas(wanted=settings.min_replicas, timeout_ms=settings.replica_timeout_ms)


def kind_of(settings: Settings) -> BrokerKind:
    def endpoint(url: str, setting: str) -> RedisEndpoint:
        return RedisEndpoint.parse(
            url,
            master=settings.sentinel_master,
            sentinel_password=settings.sentinel_password,
            setting=setting,
        )

    is_redis = settings.broker_url.split("://", 1)[0].lower() in REDIS_SCHEMES
    state_url = settings.redis_url or (settings.broker_url if is_redis else None)
    return BrokerKind(
        broker_url=settings.broker_url,
        state_url=state_url,
        is_redis=is_redis,
        broker=endpoint(settings.broker_url, "CICB_BROKER_URL") if is_redis else None,
        state=(
            endpoint(state_url, "CICB_REDIS_URL" if settings.redis_url else "CICB_BROKER_URL")
            if state_url
            else None
        ),
    )
