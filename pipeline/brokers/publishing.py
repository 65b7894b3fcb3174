"""Task messages sent through Celery: ``Publisher`` (any broker kombu supports), and the
receiver's ``Enqueuer`` interface with its Celery implementation.

``Publisher`` sends by task name, so the receiver and the CLI need not import the worker's
tasks.
"""

from __future__ import annotations

from typing import Any, Protocol

import anyio.to_thread
from celery import Celery

from pipeline.brokers.envelope import shown
from pipeline.brokers.queues import INGEST_QUEUE, INGEST_TASK, ping
from pipeline.errors import BrokerUnavailable

# How long one publish may wait for the broker to take it (and, on RabbitMQ, confirm it).
PUBLISH_TIMEOUT_S = 3.0


class Publisher:
    """Sends task messages by name. Thread-safe: producers come from a pool.

    ``broker``: the broker part of Celery's configuration (``BrokerKind.celery_options``:
    on Redis, the transport that records each message in flight as it publishes it).
    """

    def __init__(self, broker: dict[str, Any]) -> None:
        self._app = Celery("cicb-publisher", set_as_current=False)
        self._app.conf.update(
            {
                **broker,
                "broker_transport_options": {
                    **broker.get("broker_transport_options", {}),
                    # RabbitMQ (py-amqp's socket timeouts): every wait for the broker's answer
                    # is bounded, not only the confirm's. A connection new to a queue declares
                    # it first, and a node cut off from its cluster can hold that answer until
                    # the cut ends. kombu's Redis transport ignores both.
                    "read_timeout": PUBLISH_TIMEOUT_S,
                    "write_timeout": PUBLISH_TIMEOUT_S,
                },
            },
            broker_connection_retry_on_startup=True,
            task_serializer="json",
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

    def send(
        self,
        task: str,
        args: list[Any] | tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        *,
        queue_name: str,
        chain: list[dict[str, Any]] | None = None,
        headers: dict[str, Any] | None = None,
        task_id: str | None = None,
        retries: int = 0,
        argsrepr: str | None = None,
    ) -> str:
        """Publish one task message (``chain``: the steps to run after it; ``headers``: its
        message headers; ``task_id`` and ``retries``: a given message's, sent again;
        ``argsrepr``: what Flower shows of ``args``, Celery's repr of them if not given).

        Returns the task id; raises ``BrokerUnavailable``.
        """
        try:
            result = self._app.send_task(
                task,
                args=args,
                kwargs=kwargs or {},
                queue=queue_name,
                chain=chain,
                headers=headers or None,
                task_id=task_id,
                retries=retries,
                argsrepr=argsrepr,
                # A node that takes the message and never confirms it (cut off, stuck) is
                # given up on: the retry policy tries the next node, then the caller is told.
                timeout=PUBLISH_TIMEOUT_S,
                confirm_timeout=PUBLISH_TIMEOUT_S,
            )
        except Exception as exc:  # kombu raises OperationalError and socket errors alike
            raise BrokerUnavailable(f"broker did not take the message: {exc}") from exc
        return str(result.id)

    def ingest(self, envelope: dict[str, Any]) -> str:
        return self.send(INGEST_TASK, [envelope], queue_name=INGEST_QUEUE, argsrepr=shown(envelope))

    def ping(self) -> None:
        with self._app.connection_for_write() as conn:
            ping(conn)

    def close(self) -> None:
        self._app.close()


class Enqueuer(Protocol):
    async def ingest(self, envelope: dict[str, Any]) -> str:
        """Put the envelope on ``ingest``; return the task id. Raises BrokerUnavailable."""
        ...

    async def ping(self) -> None:
        """Raise BrokerUnavailable unless the broker answers."""
        ...

    async def aclose(self) -> None: ...


class CeleryEnqueuer:
    """Through Celery's ``send_task``, in a thread: any broker kombu supports."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def ingest(self, envelope: dict[str, Any]) -> str:
        return await anyio.to_thread.run_sync(self._publisher.ingest, envelope)

    async def ping(self) -> None:
        await anyio.to_thread.run_sync(self._publisher.ping)

    async def aclose(self) -> None:
        self._publisher.close()
