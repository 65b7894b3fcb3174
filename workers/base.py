"""``PipelineTask``: the retry and dead-letter policy every cicb task shares.

``TransientError`` is retried with exponential backoff and full jitter, up to
``CICB_MAX_RETRIES``; anything else, and a transient error whose retries are used up, goes
to the dead-letter queue with the task's arguments, the error and the attempt count. A
user's action gets the same policy with ``@app.task(base=PipelineTask)``.
"""

from __future__ import annotations

from typing import Any, NoReturn

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from pipeline import logs
from pipeline.deadletter import DeadLetter, DeadLetterQueue
from pipeline.envelope import Envelope
from pipeline.errors import PermanentError, TransientError
from workers.stores import counters, finished, guard, settings

log = logs.get_logger("cicb.task")


class RedeliveryLimit(PermanentError):
    """A message was delivered again and again without finishing: it kills its worker."""

    def __init__(self, deliveries: int) -> None:
        self.deliveries = deliveries
        super().__init__(
            f"delivered {deliveries} times without finishing (its worker died each time); "
            f"CICB_MAX_DELIVERIES is {settings.max_deliveries}"
        )


class PipelineTask(Task):  # type: ignore[misc]
    autoretry_for = (TransientError,)
    max_retries = settings.max_retries
    retry_backoff = settings.retry_backoff_s
    retry_backoff_max = settings.retry_backoff_max_s
    retry_jitter = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        logs.clear()
        task_id = self.request.id
        logs.bind(task=self.name, task_id=task_id, attempt=self.request.retries + 1)
        if guard is None or task_id is None:  # no Redis, or called directly
            return super().__call__(*args, **kwargs)
        try:
            completed, deliveries = guard.start(task_id, self.request.retries)
        except TransientError as exc:
            self.retry_later(exc)
        if completed:
            # Its worker died after the work and before the ack: do not do it twice.
            log.warning("task.already_completed")
            finished(task_id)
            return None
        if deliveries > guard.max_deliveries:
            raise RedeliveryLimit(deliveries)
        result = super().__call__(*args, **kwargs)
        finished(task_id)
        return result

    def retry_later(
        self, exc: TransientError, *, at_least_s: float | None = None, **kwargs: Any
    ) -> NoReturn:
        """Retry with the shared backoff, replacing the keyword arguments given.

        ``at_least_s`` (a peer's Retry-After) lengthens the wait, up to the backoff cap.
        """
        countdown = get_exponential_backoff_interval(
            factor=self.retry_backoff,
            retries=self.request.retries,
            maximum=self.retry_backoff_max,
            full_jitter=self.retry_jitter,
        )
        if at_least_s is not None:
            countdown = min(max(countdown, at_least_s), self.retry_backoff_max)
        raise self.retry(exc=exc, countdown=countdown, kwargs={**self.request.kwargs, **kwargs})

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        envelope = None
        if self.name == "cicb.ingest" and args:
            try:
                envelope = Envelope.from_json(args[0])
            except PermanentError:
                envelope = None
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
            received_at=envelope.received_at.isoformat() if envelope else None,
        )
        dead_letters().put(letter)
        counters.add("dead_lettered")
        log.error(
            "dead_lettered",
            dead_letter_id=letter.id,
            error=letter.error,
            reason=letter.reason,
            attempts=letter.attempts,
        )


def dead_letters() -> DeadLetterQueue:
    from workers.app import app

    return DeadLetterQueue(app.connection_for_write)
