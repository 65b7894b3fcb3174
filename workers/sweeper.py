"""The worker's part in keeping every message: forget finished tasks, republish lost ones.

``Sweeper`` is a worker bootstep: every ``SWEEP_INTERVAL_S`` one worker (a Redis lock
decides which) publishes again the messages ``pipeline.brokers.inflight`` has kept for longer than
the visibility timeout plus a grace period.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import bootsteps
from celery.signals import task_failure, task_success

from pipeline import logs
from pipeline.brokers.inflight import Inflight, track_publishes
from workers.base import PipelineTask
from workers.resources import resources

SWEEP_INTERVAL_S = 10.0

log = logs.get_logger("cicb.sweeper")


def keep_messages(inflight: Inflight) -> None:
    """Keep every task message this process publishes until its task finishes."""
    track_publishes(inflight)
    forget_finished(inflight)


def forget_finished(inflight: Inflight) -> None:
    """A task that failed for good (and was dead-lettered) is no longer kept, nor is one
    that succeeded; a ``PipelineTask`` forgets its own, with its completion record."""

    def forget(task: Any) -> None:
        task_id = getattr(getattr(task, "request", None), "id", None)
        if task_id:
            try:
                inflight.forget(task_id)
            except redis.RedisError as exc:
                # Kept: the sweep publishes it again later, and its completion record
                # makes that copy a no-op.
                log.warning("inflight.not_forgotten", task_id=task_id, error=str(exc))

    def succeeded(sender: Any = None, **_: Any) -> None:
        if not isinstance(sender, PipelineTask):
            forget(sender)

    def failed(sender: Any = None, **_: Any) -> None:
        forget(sender)

    task_success.connect(succeeded, weak=False)
    task_failure.connect(failed, weak=False)


class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: it starts again with the consumer after a lost broker connection,
    whose restart clears the timers of the one before."""

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.tref: Any = None

    def start(self, consumer: Any) -> None:
        inflight = resources().inflight
        if inflight is not None:
            self.tref = consumer.timer.call_repeatedly(
                SWEEP_INTERVAL_S, self.sweep, (consumer, inflight), priority=10
            )

    def stop(self, consumer: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop

    def sweep(self, worker: Any, inflight: Inflight) -> None:
        def republish(
            body: Any,
            exchange: str,
            routing_key: str,
            headers: dict[str, Any],
            properties: dict[str, Any],
        ) -> None:
            with worker.app.producer_pool.acquire(block=True) as producer:
                producer.publish(
                    body,
                    exchange=exchange,
                    routing_key=routing_key,
                    headers=headers,
                    serializer="json",
                    delivery_mode="persistent",
                    retry=True,
                    **properties,
                )

        try:
            inflight.sweep(republish)
        except Exception as exc:  # a failed sweep is tried again at the next interval
            log.warning("inflight.sweep_failed", error=repr(exc))
