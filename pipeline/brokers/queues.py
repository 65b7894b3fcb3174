"""What every process shares about the broker: queue names, transport options, connections."""

from __future__ import annotations

from typing import Any

from kombu import Connection, Exchange, Queue

from pipeline.endpoints import SENTINEL_SCHEME, RedisEndpoint
from pipeline.errors import BrokerUnavailable
from pipeline.settings import Settings

INGEST_QUEUE = "ingest"
ACTIONS_QUEUE = "actions"
DEAD_LETTER_QUEUE = "dead_letter"
INGEST_TASK = "cicb.ingest"

# How long a process waits for a broker that does not answer before giving up on it.
DEFAULT_CONNECT_TIMEOUT_S = 2.0


CLASSIC, QUORUM = "classic", "quorum"


def queue(name: str, *, queue_type: str = CLASSIC, delivery_limit: int | None = None) -> Queue:
    """A durable queue on an exchange of the same name (Celery's own convention).

    ``classic``: a direct exchange. ``quorum`` (RabbitMQ, ``CICB_QUEUE_TYPE``): a quorum
    queue, Raft-replicated over the cluster's nodes, with RabbitMQ's own bound on deliveries
    (``delivery_limit``), on a topic exchange, which Celery's native delayed delivery can
    route countdowns through (a direct exchange cannot).
    """
    if queue_type != QUORUM:
        return Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)
    arguments: dict[str, Any] = {"x-queue-type": QUORUM}
    if delivery_limit is not None:
        arguments["x-delivery-limit"] = delivery_limit
    return Queue(
        name,
        Exchange(name, type="topic"),
        routing_key=name,
        durable=True,
        queue_arguments=arguments,
    )


def task_queues(settings: Settings) -> list[Queue]:
    """``ingest`` and ``actions``, as ``CICB_QUEUE_TYPE`` says. On quorum queues RabbitMQ
    lets a message be delivered once more than cicb does (``CICB_MAX_DELIVERIES``): cicb
    dead-letters it, with its body, on that last delivery, before RabbitMQ would drop it."""
    limit = settings.max_deliveries + 1 if settings.queue_type == QUORUM else None
    return [
        queue(name, queue_type=settings.queue_type, delivery_limit=limit)
        for name in (INGEST_QUEUE, ACTIONS_QUEUE)
    ]


def dead_letter_queue(settings: Settings) -> Queue:
    """``dead_letter``, as ``CICB_QUEUE_TYPE`` says, with no bound on deliveries: reading the
    dead letters in place delivers them and gives them back."""
    return queue(DEAD_LETTER_QUEUE, queue_type=settings.queue_type)


def transport_options(settings: Settings) -> dict[str, Any]:
    """Options for every connection to the broker.

    The visibility timeout (Redis) must outlast the longest retry countdown, or a message
    waiting for its countdown is delivered a second time.
    """
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        # Sweep for messages held by a dead worker every 10 s (kombu's default is about
        # every 100 s), and do not let a worker that died mid-sweep block sweeps for long.
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 60,
        "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT_S,
        "socket_keepalive": True,
        # RabbitMQ: a publish returns once the broker has the message (publisher confirms,
        # sent once a persistent message is on disk), not once it is written to the socket;
        # without them a callback answered 200 is lost if RabbitMQ dies just after. Redis
        # ignores it.
        "confirm_publish": True,
        # Through Sentinels: which primary they name, and their own password.
        **broker_endpoint(settings).transport_options(),
    }


def broker_endpoint(settings: Settings) -> RedisEndpoint:
    """The broker as a Redis endpoint (what kombu's Sentinel transport needs of it); a
    RabbitMQ URL gives an endpoint with no Sentinels."""
    if settings.broker_url.startswith(SENTINEL_SCHEME + "://"):
        return RedisEndpoint.parse(
            settings.broker_url,
            master=settings.sentinel_master,
            sentinel_password=settings.sentinel_password,
        )
    return RedisEndpoint(url=settings.broker_url)


def connection(settings: Settings) -> Connection:
    return Connection(settings.broker_url, transport_options=transport_options(settings))


def ping(conn: Connection) -> None:
    """Raise ``BrokerUnavailable`` unless the broker answers now."""
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=DEFAULT_CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise BrokerUnavailable(f"broker unreachable: {exc}") from exc
