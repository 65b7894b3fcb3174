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


def queue(name: str) -> Queue:
    """A durable queue on a direct exchange of the same name (Celery's own convention)."""
    return Queue(name, Exchange(name, type="direct"), routing_key=name, durable=True)


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
