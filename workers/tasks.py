"""The ingest task: parse a callback and start its route's chain of actions."""

from __future__ import annotations

import contextlib
import functools
from datetime import datetime
from typing import Any

from pipeline import logs
from pipeline.archive import DEAD_LETTERED, dead_lettered_outcomes
from pipeline.brokers.envelope import Envelope
from pipeline.brokers.inflight import Inflight
from pipeline.brokers.queues import INGEST_TASK
from pipeline.brokers.redis_transport import HeldPublish, held_publishes
from pipeline.errors import ConfigError, PipelineError
from pipeline.guard import Guard
from pipeline.ingest import events_of_envelope
from pipeline.ingest import ingest as ingest_envelope
from pipeline.parsing.events import SOURCE_CALLBACK, Event
from pipeline.routing import Route, RouteTable, table_for
from workers.app import app
from workers.attempts import (
    LAST_STEP_HEADER,
    RECEIVED_AT_HEADER,
    ROUTE_HEADER,
    STEP_HEADER,
    STEP_ID_HEADER,
)
from workers.base import PipelineTask, publishing
from workers.metrics import worker_metrics
from workers.reconcile import learn
from workers.resources import resources

log = logs.get_logger("cicb.tasks")

# What Flower shows of a step's argument: which callback it is. Celery's own repr of the
# whole event would cost more than a short step does.
SHOWN_FIELDS = ("event", "job_id", "run_id", "tag", "state")


@functools.cache
def route_table() -> RouteTable:
    return table_for(resources().settings)


def dispatch(route: Route, event: dict[str, Any], key: str, *, received_at: datetime) -> None:
    """Start the route's chain on ``actions``; every task gets the event, not the last result.

    Each step's task id is derived from the callback's deduplication key (``Route.step_ids``),
    so if this dispatch happens twice (its worker died before recording it), the second copy
    of a step that already ran finds its completion record and does nothing. Each step's
    headers name the route, when the callback was received, the step's place and id; the
    last's say it is the last (``workers.attempts``).
    """
    unknown = [name for name in route.chain if name not in app.tasks]
    if unknown:
        # A message for a task no worker knows is discarded by Celery: refuse to send it.
        raise ConfigError(f"route {route.name!r} names unregistered task(s): {unknown}")
    shown = repr([{k: event[k] for k in SHOWN_FIELDS if event.get(k) is not None}])
    steps = [
        app.signature(
            name,
            args=(event,),
            immutable=True,
            task_id=task_id,
            argsrepr=shown,
            headers={
                ROUTE_HEADER: route.name,
                RECEIVED_AT_HEADER: received_at.isoformat(),
                LAST_STEP_HEADER: i == len(route.chain) - 1,
                STEP_HEADER: i,
                STEP_ID_HEADER: task_id,
            },
        )
        for i, (name, task_id) in enumerate(zip(route.chain, route.step_ids(key), strict=True))
    ]
    first, *rest = steps
    # A broker that cannot take it: retried, with the deduplication key given back
    # (pipeline.ingest).
    with publishing(f"route {route.name!r} not started"):
        # What ``chain(*steps).apply_async()`` sends, without building the canvas: the
        # later steps ride in the first's message, last first, and Celery sends each when
        # the one before it succeeds.
        first.apply_async(chain=rest[::-1] or None)


class IngestTask(PipelineTask):
    """``cicb.ingest``'s base: the shared policy, the callback's deduplication keys claimed
    with the task's lease, and the archive's record of a body whose ingest failed for good,
    written before it is dead-lettered."""

    def claims(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
        """The keys of the body's events, claimed in the round trip that takes the lease.
        None for what cannot be read: the run raises why."""
        try:
            return [event.dedup_key for event in events_of_envelope(Envelope.from_json(args[0]))]
        except Exception:
            return []

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        archive_dead_letter(exc, task_id, args)
        worker_metrics().callbacks.labels("", DEAD_LETTERED).inc()
        super().on_failure(exc, task_id, args, kwargs, einfo)


def archive_dead_letter(exc: BaseException, task_id: str, args: Any) -> None:
    """Archive the envelope in ``args`` as ``dead_lettered``, with the error and, when the
    body can be read, its events; never raises (the dead letter matters more)."""
    try:
        archive = resources().archive
        if archive is None:
            return
        envelope = Envelope.from_json(args[0])
        try:
            table = route_table()
        except PipelineError:
            table = None
        archive.record(
            envelope,
            task_id=task_id,
            outcomes=dead_lettered_outcomes(envelope, table),
            outcome=DEAD_LETTERED,
            error=type(exc).__name__,
            reason=str(exc),
        )
    except Exception as failure:  # not an envelope (no body to keep), or no resources
        log.warning("archive.not_written", task_id=task_id, error=repr(failure))


@app.task(base=IngestTask, bind=True, name=INGEST_TASK)
def ingest(self: PipelineTask, envelope: dict[str, Any]) -> list[dict[str, Any]]:
    """Parse one callback and start its route (``envelope``: ``Envelope.to_json()``)."""
    res = resources()
    # Raises PermanentError (dead-lettered) for what is not an envelope.
    received = Envelope.from_json(envelope)
    received_at = received.received_at

    def seen(event: Event) -> None:
        learn(event)  # the queues, Tags and workflows the reconciler lists
        ended_at = getattr(event, "ended_at", None)
        if event.source == SOURCE_CALLBACK and ended_at is not None:
            delay_s = (received_at - ended_at).total_seconds()
            worker_metrics().delivery_delay.labels(event.tag or "").observe(max(0.0, delay_s))

    # The routes' first steps, the keys that say they started, and the archive's entry go
    # with the task's completion record, in its last round trip (in one Redis: otherwise
    # the steps are published as they are dispatched).
    confirmed: list[str] = []
    holding: contextlib.AbstractContextManager[list[HeldPublish]] = (
        held_publishes() if res.one_redis else contextlib.nullcontext([])
    )
    with holding as held:
        outcomes = ingest_envelope(
            received,
            table=route_table(),
            dispatch=functools.partial(dispatch, received_at=received_at),
            guard=res.guard,
            owner=self.request.id,
            claimed=self.claimed,
            seen=seen,
            confirm=confirmed.append,
        )
    if held and res.inflight is not None:
        self.end_with(functools.partial(publish_held, res.inflight, held))
    if res.guard is not None and confirmed:
        self.end_with(functools.partial(confirm_keys, res.guard, confirmed))
    if res.archive is not None:
        self.end_with(
            functools.partial(
                res.archive.record_in, envelope=received, task_id=self.request.id, outcomes=outcomes
            )
        )
    callbacks = worker_metrics().callbacks
    for outcome in outcomes:
        callbacks.labels(outcome["route"] or "", outcome["outcome"]).inc()
    return outcomes


def publish_held(inflight: Inflight, held: list[HeldPublish], pipe: Any) -> None:
    """Queue the held task messages on ``pipe``, with their in-flight records."""
    for message in held:
        inflight.publish_in(pipe, message.queue_key, [(message.task_id, message.raw, message.tag)])


def confirm_keys(guard: Guard, keys: list[str], pipe: Any) -> None:
    for key in keys:
        guard.confirm_in(pipe, key)
