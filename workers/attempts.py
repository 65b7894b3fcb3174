"""The attempt record of the step a worker thread is running (``pipeline.attempts``).

``PipelineTask`` opens a record when a run starts (``begin``) and closes it with how the run
ended (``write_of``): the write goes on the pipeline that records the run's end, so it costs
no round trip. While it runs, an action adds what it did with ``note`` (notify: each target
tried; copy_output: what it copied; retry_job: what it decided).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline.attempts import Attempt, AttemptLog, Waiting, job_of, now_iso

# Message headers of a route's steps (``workers.tasks.dispatch``).
ROUTE_HEADER = "cicb_route"
RECEIVED_AT_HEADER = "cicb_received_at"
LAST_STEP_HEADER = "cicb_last_step"
STEP_HEADER = "cicb_step"
STEP_ID_HEADER = "cicb_step_id"
# What a dead letter and a retry's message keep, so the step counts under its route again.
STEP_HEADERS = (ROUTE_HEADER, RECEIVED_AT_HEADER, LAST_STEP_HEADER, STEP_HEADER, STEP_ID_HEADER)

_current = threading.local()


def begin() -> None:
    """A run starts on this thread: nothing noted yet."""
    _current.started_s = time.time()
    _current.detail = {}
    _current.retry_kwargs = None


def note(**detail: Any) -> None:
    """Add to what the running step's attempt record says it did."""
    _current.detail.update(detail)


def retrying_with(kwargs: dict[str, Any]) -> None:
    """The keyword arguments the run's retry is sent with (the targets still pending)."""
    _current.retry_kwargs = kwargs


def headers_of(request: Any) -> dict[str, Any]:
    """The step headers ``request`` carries (none for a task outside a route)."""
    return {name: request.get(name) for name in STEP_HEADERS if request.get(name) is not None}


def queue_of(task: Any, request: Any) -> str:
    """The queue ``request``'s message came from, else the one ``task`` names (a Celery
    task has none unless its decorator gives it one), else ""."""
    routing_key: str | None = (request.delivery_info or {}).get("routing_key")
    return routing_key or getattr(task, "queue", None) or ""


def write_of(
    log: AttemptLog | None,
    task: Any,
    outcome: str,
    *,
    worker: str,
    exc: BaseException | None = None,
    wait_s: float | None = None,
) -> list[Callable[[Any], None]]:
    """The write that records this run of ``task`` (its ``request``) as ``outcome``, for the
    pipeline that records its end; none when the log is off or the task is not a step of a
    job (its first argument is not an event)."""
    request = task.request
    job_id = job_of(request.args or ())
    if log is None or job_id is None or request.id is None:
        return []
    ended_s = time.time()
    started_s = getattr(_current, "started_s", ended_s)
    due_s = ended_s + wait_s if wait_s is not None else None
    step = request.get(STEP_HEADER)
    attempt = Attempt(
        task=task.name,
        task_id=request.id,
        step_id=request.get(STEP_ID_HEADER) or request.id,
        job_id=job_id,
        route=request.get(ROUTE_HEADER) or "",
        step=int(step) if step is not None else None,
        attempt=request.retries + 1,
        worker=request.hostname or worker,
        started_at=now_iso(started_s),
        ended_at=now_iso(ended_s),
        outcome=outcome,
        seconds=round(ended_s - started_s, 4),
        error=type(exc).__name__ if exc is not None else None,
        reason=str(exc) if exc is not None else None,
        wait_s=round(wait_s, 3) if wait_s is not None else None,
        due_at=now_iso(due_s) if due_s is not None else None,
        detail=dict(getattr(_current, "detail", {})),
    )
    waiting = None
    if due_s is not None:
        kwargs = getattr(_current, "retry_kwargs", None)
        waiting = Waiting(
            task_id=request.id,
            task=task.name,
            args=list(request.args or ()),
            kwargs=kwargs if kwargs is not None else dict(request.kwargs or {}),
            queue=queue_of(task, request),
            retries=request.retries + 1,
            headers=headers_of(request),
            chain=request.chain or None,
            due_at=attempt.due_at or "",
        )

    def write(pipe: Any) -> None:
        log.record_in(pipe, attempt, waiting)

    return [write]
