"""cicb's tasks: thin wrappers that call into ``pipeline`` and leave the rest to the policy."""

from __future__ import annotations

import functools
from typing import Any

import httpx
from celery import chain

from pipeline import logs
from pipeline.broker import INGEST_TASK
from pipeline.errors import ConfigError
from pipeline.ingest import ingest as ingest_envelope
from pipeline.notify import TargetsPending
from pipeline.notify import notify as notify_targets
from pipeline.routing import Route, RouteTable, table_for
from pipeline.signing import webhook_secret_bytes
from pipeline.targets import Target
from workers.app import app, settings
from workers.base import PipelineTask, counters

log = logs.get_logger("cicb.tasks")

# Read and checked when the worker starts: a bad target or secret stops it with the reason.
NOTIFY_TARGETS = tuple(Target.parse(url) for url in settings.notify_urls)
WEBHOOK_KEY = webhook_secret_bytes(settings.notify_secret) if settings.notify_secret else None


@functools.cache
def route_table() -> RouteTable:
    return table_for(settings)


@functools.cache
def http_client() -> httpx.Client:
    return httpx.Client(timeout=settings.notify_timeout_s, follow_redirects=False)


def dispatch(route: Route, event: dict[str, Any]) -> None:
    """Start the route's chain on ``actions``; every task gets the event, not the last result."""
    unknown = [name for name in route.chain if name not in app.tasks]
    if unknown:
        # A message for a task no worker knows is discarded by Celery: refuse to send it.
        raise ConfigError(f"route {route.name!r} names unregistered task(s): {unknown}")
    steps = [app.signature(name, args=(event,), immutable=True) for name in route.chain]
    chain(*steps).apply_async()


@app.task(base=PipelineTask, name=INGEST_TASK)
def ingest(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    """Parse one callback and start its route. The envelope is ``pipeline.envelope``'s JSON."""
    outcomes = ingest_envelope(envelope, table=route_table(), dispatch=dispatch)
    for outcome in outcomes:
        counters.add(outcome["outcome"])
    return outcomes


@app.task(base=PipelineTask, bind=True, name="cicb.notify")
def notify(self: PipelineTask, event: dict[str, Any], pending: list[str] | None = None) -> int:
    """Notify ``CICB_NOTIFY_URLS`` of the event (on a retry or replay, the targets pending)."""
    logs.bind_event(event)
    targets = NOTIFY_TARGETS
    if pending is not None:
        targets = tuple(t for t in NOTIFY_TARGETS if t.id in pending)
        if gone := set(pending) - {t.id for t in targets}:
            log.warning("notify.targets_gone", target_ids=sorted(gone))
    if not targets:
        log.warning("notify.no_targets")
        return 0
    try:
        notify_targets(http_client(), targets, event, webhook_key=WEBHOOK_KEY)
    except TargetsPending as exc:
        self.retry_later(exc, at_least_s=exc.retry_after_s, pending=exc.pending)
    log.info("notified", targets=[t.describe() for t in targets])
    return len(targets)
