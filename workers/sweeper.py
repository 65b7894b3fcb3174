"""The worker's part in keeping every task message: say what it holds, keep its leases, and
bring back what was lost.

``Sweeper`` is a consumer bootstep. When the worker's consumer first starts, it starts a
thread in the worker's main process that, every ``HEARTBEAT_S``:

- writes the task ids this worker holds (prefetched, waiting for a countdown, running) to
  the broker (``Inflight.heartbeat``): the sweep takes a message nobody holds, taken off
  its queue, for lost;
- every ``CICB_STEP_LEASE_RENEW_S``, renews the leases of the tasks its pool runs
  (``TaskRuns.renew``), so a lease expires only when its holder is gone;
- if it holds the sweep's lock (one worker at a time), sweeps the records that are due
  (``Inflight.sweep``): a lost message is published again within seconds;
- on RabbitMQ's quorum queues, publishes the tasks whose countdown is over
  (``pipeline.brokers.countdowns``).

It runs in a thread of its own, not on the consumer's timer: it goes on while the consumer
reconnects after a broker outage and while a solo pool runs a task. Each (re)start of the
consumer is a disturbance (a broken connection may have lost a message it had just taken),
which the next heartbeat reports. On a RabbitMQ broker there are no records to keep.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from celery import bootsteps
from celery.signals import task_failure, task_success
from celery.worker import state
from celery.worker.request import Request

from pipeline import logs
from pipeline.brokers.countdowns import Due
from pipeline.brokers.inflight import HEARTBEAT_S, Inflight
from pipeline.brokers.publishing import PUBLISH_TIMEOUT_S
from workers.base import PipelineTask
from workers.resources import Resources, resources

log = logs.get_logger("cicb.sweeper")


def forget_finished(inflight: Inflight) -> None:
    """A task that is no ``PipelineTask`` (which forgets its own, with its completion record)
    is no longer kept once it succeeded or failed."""

    def forget(sender: Any = None, **_: Any) -> None:
        task_id = getattr(getattr(sender, "request", None), "id", None)
        if task_id and not isinstance(sender, PipelineTask):
            try:
                inflight.forget(task_id)
            except redis.RedisError as exc:
                log.warning("inflight.not_forgotten", task_id=task_id, error=str(exc))

    task_success.connect(forget, weak=False, dispatch_uid="cicb.forget_succeeded")
    task_failure.connect(forget, weak=False, dispatch_uid="cicb.forget_failed")


def _requests(collect: Callable[[], Iterable[Request]]) -> list[Request]:
    """A snapshot of a set the consumer changes from its own thread."""
    for _ in range(5):
        try:
            return list(collect())
        except RuntimeError:  # changed during iteration: take it again
            continue
    return []


class Keeper(threading.Thread):
    """The heartbeat, lease and sweep thread of one worker (see the module)."""

    def __init__(self, res: Resources) -> None:
        super().__init__(name="cicb-keeper", daemon=True)
        self.res = res
        self.consumer: Any = None
        self.disturbed = threading.Event()
        self.stopping = threading.Event()
        self._renewed_at = 0.0

    def held(self) -> tuple[set[str], dict[str, str]]:
        """The task ids this worker holds, and the lease owner of each one running."""
        requests = _requests(lambda: state.reserved_requests)
        running = _requests(lambda: state.active_requests)
        timer = getattr(self.consumer, "timer", None)
        if timer is not None:
            for entry in _requests(lambda: timer.schedule.queue):
                args = getattr(entry.entry, "args", None) or ()
                if args and isinstance(args[0], Request):
                    requests.append(args[0])
        held = {r.id for r in [*requests, *running] if r.id}
        owners = {
            r.id: f"{self.res.worker}/{r.worker_pid}" for r in running if r.id and r.worker_pid
        }
        return held, owners

    def run(self) -> None:
        while not self.stopping.wait(HEARTBEAT_S):
            try:
                self.beat()
            except Exception as exc:  # Redis away: the next beat tries again
                log.info("keeper.beat_failed", error=repr(exc))

    def beat(self) -> None:
        held, owners = self.held()
        runs, inflight = self.res.runs, self.res.inflight
        now = time.monotonic()
        if runs is not None and now - self._renewed_at >= self.res.settings.step_lease_renew_s:
            runs.renew(owners)
            self._renewed_at = now
        countdowns = self.res.countdowns if self.consumer is not None else None
        if countdowns is not None and (sent := countdowns.publish_due(self.publish)):
            log.info("countdowns.published", count=sent)
        if inflight is None:
            return
        disturbed = self.disturbed.is_set()
        inflight.heartbeat(self.res.worker, held, disturbed=disturbed)
        if disturbed:
            self.disturbed.clear()
        if runs is not None and inflight.lock(self.res.worker, ttl_s=HEARTBEAT_S * 5):
            ids = inflight.due()
            if ids:
                found = inflight.sweep(runs.settled(ids), ids)
                if found.republished:
                    log.warning("inflight.swept", states=found.states)

    def publish(self, due: Due) -> None:
        """Publish a task whose countdown is over, routed by its name."""
        self.consumer.app.send_task(
            due.name,
            due.args,
            due.kwargs,
            task_id=due.task_id,
            timeout=PUBLISH_TIMEOUT_S,
            confirm_timeout=PUBLISH_TIMEOUT_S,
            **due.options,
        )

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=HEARTBEAT_S * 5)
        if self.res.inflight is not None:
            try:
                self.res.inflight.gone(self.res.worker)
            except redis.RedisError as exc:
                log.info("keeper.not_gone", error=str(exc))


class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: it starts the keeper with the first consumer, tells it of every
    restart of the consumer (a lost broker connection), and stops it with the worker."""

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.keeper: Keeper | None = None

    def start(self, consumer: Any) -> None:
        res = resources()
        if res.runs is None and res.inflight is None:
            return
        if self.keeper is None:
            self.keeper = Keeper(res)
            self.keeper.start()
        self.keeper.consumer = consumer
        self.keeper.disturbed.set()

    def shutdown(self, consumer: Any) -> None:
        if self.keeper is not None:
            self.keeper.stop()
            self.keeper = None
