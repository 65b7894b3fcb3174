"""``PipelineTask``: the one retry and dead-letter policy every cicb task shares.

The exception decides. A ``TransientError`` is retried after ``backoff_s`` (exponential,
full jitter, capped), waiting at least the ``retry_after_s`` it carries, with the keyword
arguments its ``replay_kwargs`` name (the notify targets still pending); once
``CICB_MAX_RETRIES`` retries are used up it is dead-lettered like anything else, with the
task's arguments, the error and the attempt count. A user's task gets the same policy from
``pipeline.task`` (or ``@app.task(base=PipelineTask)``).

Around each run, the guard (``pipeline.guard``) skips a message whose task already finished
and dead-letters one delivered more than ``CICB_MAX_DELIVERIES`` times.

Each run is counted (``cicb_tasks_total``: done, retried, skipped, dead_lettered) and timed.
A step of a route carries the route's name, when its callback was received and whether it
is the route's last step in its message headers (``ROUTE_HEADER`` ...); the last step's end
is the callback's end-to-end latency.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval

from pipeline import logs
from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.errors import PermanentError, TransientError
from pipeline.settings import Settings
from workers.metrics import worker_metrics
from workers.resources import resources

log = logs.get_logger("cicb.task")

# Message headers of a route's steps (``workers.tasks.dispatch``).
ROUTE_HEADER = "cicb_route"
RECEIVED_AT_HEADER = "cicb_received_at"
LAST_STEP_HEADER = "cicb_last_step"


class RedeliveryLimit(PermanentError):
    """A message was delivered again and again without finishing: it kills its worker."""

    def __init__(self, deliveries: int, limit: int) -> None:
        self.deliveries = deliveries
        super().__init__(
            f"delivered {deliveries} times without finishing (its worker died each time); "
            f"CICB_MAX_DELIVERIES is {limit}"
        )


def backoff_s(retries: int, settings: Settings, *, at_least_s: float | None = None) -> float:
    """The wait before retry number ``retries + 1``: exponential from
    ``CICB_RETRY_BACKOFF_S`` with full jitter, at least ``at_least_s`` (a peer's
    Retry-After), and never over ``CICB_RETRY_BACKOFF_MAX_S``."""
    wait_s: float = get_exponential_backoff_interval(
        factor=settings.retry_backoff_s,
        retries=retries,
        maximum=settings.retry_backoff_max_s,
        full_jitter=True,
    )
    if at_least_s is not None:
        wait_s = max(wait_s, at_least_s)
    return min(wait_s, settings.retry_backoff_max_s)


class PipelineTask(Task):  # type: ignore[misc]
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        logs.clear()
        logs.bind(task=self.name, task_id=self.request.id, attempt=self.request.retries + 1)
        started = time.perf_counter()
        try:
            outcome, result = self._guarded(args, kwargs)
        except Retry as retry:
            self._count("retried", type(retry.exc).__name__ if retry.exc else "")
            raise
        finally:
            worker_metrics().task_seconds.labels(self.name).observe(time.perf_counter() - started)
        self._count(outcome)
        if outcome == "done" and self.request.get(LAST_STEP_HEADER):
            self._observe_latency()
        return result

    def _guarded(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
        """Run the task unless the guard says otherwise: ("done" or "skipped", result)."""
        task_id = self.request.id
        res = resources()
        if res.guard is None or task_id is None:  # no Redis, or called directly
            return "done", self._run(args, kwargs)
        try:
            completed, deliveries = res.guard.start(task_id, self.request.retries)
        except TransientError as exc:
            self.retry_later(exc)
        if completed:
            # Its worker died after the work and before the ack: do not do it twice.
            log.warning("task.already_completed")
            res.finished(task_id)
            return "skipped", None
        if deliveries > res.guard.max_deliveries:
            raise RedeliveryLimit(deliveries, res.guard.max_deliveries)
        result = self._run(args, kwargs)
        res.finished(task_id)
        return "done", result

    def _count(self, outcome: str, error: str = "") -> None:
        route = self.request.get(ROUTE_HEADER) or ""
        worker_metrics().tasks.labels(self.name, route, outcome, error).inc()

    def _observe_latency(self) -> None:
        try:
            received_at = datetime.fromisoformat(self.request.get(RECEIVED_AT_HEADER))
        except (TypeError, ValueError):
            return
        latency_s = (datetime.now(UTC) - received_at).total_seconds()
        worker_metrics().latency.labels(self.request.get(ROUTE_HEADER) or "").observe(latency_s)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except TransientError as exc:
            self.retry_later(exc)

    def retry_later(self, exc: TransientError) -> NoReturn:
        """Retry after the shared backoff, with what the error says a retry must carry;
        re-raise ``exc`` (to be dead-lettered) when the retries are used up."""
        settings = resources().settings
        raise self.retry(
            exc=exc,
            countdown=backoff_s(self.request.retries, settings, at_least_s=exc.retry_after_s),
            max_retries=settings.max_retries,
            kwargs={**(self.request.kwargs or {}), **exc.replay_kwargs},
        )

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        letter = DeadLetter(
            task=self.name,
            queue=(self.request.delivery_info or {}).get("routing_key") or self.queue or "",
            args=list(args),
            kwargs={**kwargs, **getattr(exc, "replay_kwargs", {})},
            error=type(exc).__name__,
            reason=str(exc),
            attempts=self.request.retries + 1,
            task_id=task_id,
            chain=self.request.chain or None,
        )
        if (envelope := letter.envelope()) is not None:
            letter = dataclasses.replace(letter, received_at=envelope.received_at.isoformat())
        DeadLetterQueue(self.app.connection_for_write).put(letter)
        self._count("dead_lettered", letter.error)
        log.error(
            "dead_lettered",
            dead_letter_id=letter.id,
            error=letter.error,
            reason=letter.reason,
            attempts=letter.attempts,
        )
