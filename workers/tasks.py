"""The ingest task: parse a callback and start its route's chain of actions."""

from __future__ import annotations

import functools
import uuid
from typing import Any

from celery import chain

from pipeline import logs
from pipeline.brokers.queues import INGEST_TASK
from pipeline.errors import ConfigError
from pipeline.ingest import ingest as ingest_envelope
from pipeline.routing import Route, RouteTable, table_for
from workers.app import app
from workers.base import PipelineTask
from workers.resources import resources

log = logs.get_logger("cicb.tasks")

TASK_ID_NAMESPACE = uuid.UUID("0b7a6c1e-4f1d-5c2a-9e57-1c1b0f6d2a11")
# What Flower shows of a step's argument: which callback it is. Celery's own repr of the
# whole event would cost more than a short step does.
SHOWN_FIELDS = ("event", "job_id", "run_id", "tag", "state")


@functools.cache
def route_table() -> RouteTable:
    return table_for(resources().settings)


def dispatch(route: Route, event: dict[str, Any], key: str) -> None:
    """Start the route's chain on ``actions``; every task gets the event, not the last result.

    Each step's task id is derived from the callback's deduplication key, so if this
    dispatch happens twice (its worker died before recording it), the second copy of a step
    that already ran finds its completion record and does nothing.
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
            task_id=str(uuid.uuid5(TASK_ID_NAMESPACE, f"{key}|{route.name}|{i}|{name}")),
            argsrepr=shown,
        )
        for i, name in enumerate(route.chain)
    ]
    chain(*steps).apply_async()


@app.task(base=PipelineTask, bind=True, name=INGEST_TASK)
def ingest(self: PipelineTask, envelope: dict[str, Any]) -> list[dict[str, Any]]:
    """Parse one callback and start its route (``envelope``: ``Envelope.to_json()``)."""
    res = resources()
    outcomes = ingest_envelope(
        envelope, table=route_table(), dispatch=dispatch, guard=res.guard, owner=self.request.id
    )
    for outcome in outcomes:
        res.counters.add(outcome["outcome"])
    return outcomes
