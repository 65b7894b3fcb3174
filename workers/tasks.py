"""The ingest task: parse a callback and start its route's chain of actions."""

from __future__ import annotations

import functools
from typing import Any

from celery import chain

from pipeline import logs
from pipeline.broker import INGEST_TASK
from pipeline.errors import ConfigError
from pipeline.ingest import ingest as ingest_envelope
from pipeline.routing import Route, RouteTable, table_for
from workers.app import app, settings
from workers.base import PipelineTask, counters, guard

log = logs.get_logger("cicb.tasks")


@functools.cache
def route_table() -> RouteTable:
    return table_for(settings)


def dispatch(route: Route, event: dict[str, Any]) -> None:
    """Start the route's chain on ``actions``; every task gets the event, not the last result."""
    unknown = [name for name in route.chain if name not in app.tasks]
    if unknown:
        # A message for a task no worker knows is discarded by Celery: refuse to send it.
        raise ConfigError(f"route {route.name!r} names unregistered task(s): {unknown}")
    steps = [app.signature(name, args=(event,), immutable=True) for name in route.chain]
    chain(*steps).apply_async()


@app.task(base=PipelineTask, bind=True, name=INGEST_TASK)
def ingest(self: PipelineTask, envelope: dict[str, Any]) -> list[dict[str, Any]]:
    """Parse one callback and start its route. The envelope is ``pipeline.envelope``'s JSON."""
    outcomes = ingest_envelope(
        envelope, table=route_table(), dispatch=dispatch, guard=guard, owner=self.request.id
    )
    for outcome in outcomes:
        counters.add(outcome["outcome"])
    return outcomes
