"""What the receiver, the workers and the CLI share about the broker.

Queue names, the transport options every process must agree on, and ``Publisher``: the
receiver's way to put an envelope on ``ingest`` as an ordinary Celery task message, without
importing the worker's tasks.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Queue

from pipeline.errors import BrokerUnavailable
from pipeline.inflight import Inflight, track_publishes
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
    }


def connection(settings: Settings) -> Connection:
    return Connection(settings.broker_url, transport_options=transport_options(settings))


def ping(conn: Connection) -> None:
    """Raise ``BrokerUnavailable`` unless the broker answers now."""
    try:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=DEFAULT_CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise BrokerUnavailable(f"broker unreachable: {exc}") from exc


class Publisher:
    """Sends task messages by name. Thread-safe: producers come from a pool."""

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("cicb-publisher", set_as_current=False)
        self._app.conf.update(
            broker_url=settings.broker_url,
            broker_transport_options=transport_options(settings),
            broker_connection_retry_on_startup=True,
            task_serializer="json",
            task_queues=[queue(INGEST_QUEUE), queue(ACTIONS_QUEUE)],
            # No task-sent events from the receiver: publishing one retries without a bound
            # while the broker is down, which would hang a request instead of answering 503.
            # Flower still sees each callback from the worker's received/started events.
            task_send_sent_event=False,
            # A receiver must answer 503 quickly when the broker is down, not hang.
            task_publish_retry_policy={
                "max_retries": 2,
                "interval_start": 0,
                "interval_step": 0.2,
                "interval_max": 0.5,
            },
        )
        if settings.redis_url and settings.broker_is_redis:
            # Keep each message until its task finishes (see pipeline.inflight).
            track_publishes(Inflight.from_url(settings.redis_url, lost_after_s=0))

    def send(
        self,
        task: str,
        args: list[Any] | tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        *,
        queue_name: str,
        chain: list[dict[str, Any]] | None = None,
    ) -> str:
        """Publish one task message (``chain``: the steps to run after it).

        Returns the task id; raises ``BrokerUnavailable``.
        """
        try:
            result = self._app.send_task(
                task, args=args, kwargs=kwargs or {}, queue=queue_name, chain=chain
            )
        except Exception as exc:  # kombu raises OperationalError and socket errors alike
            raise BrokerUnavailable(f"broker did not take the message: {exc}") from exc
        return str(result.id)

    def ingest(self, envelope: dict[str, Any]) -> str:
        return self.send(INGEST_TASK, [envelope], queue_name=INGEST_QUEUE)

    def ping(self) -> None:
        with self._app.connection_for_write() as conn:
            ping(conn)

    def close(self) -> None:
        self._app.close()
