"""The reconcile tasks: ``cicb.reconcile``, which Celery beat sends every
``CICB_RECONCILE_INTERVAL_S``, fans out one ``cicb.reconcile_queue`` per queue or workflow
(``pipeline.reconcile``), so each has its own retries and one failing does not stop the
others. ``learn`` is the ingest task's ``seen`` hook: the targets callbacks name.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from pipeline import logs
from pipeline.brokers.publishing import Publisher
from pipeline.errors import ConfigError
from pipeline.parsing.events import Event
from pipeline.reconcile import (
    CiJobs,
    Reconciler,
    ReconcileStore,
    discovered,
    plan,
    target_from_json,
    target_to_json,
)
from workers.app import app
from workers.base import PipelineTask, publishing
from workers.metrics import worker_metrics
from workers.resources import resources

log = logs.get_logger("cicb.reconcile")


@functools.cache
def store() -> ReconcileStore | None:
    """The reconciler's state, in the Redis workers share (None without one), through the
    process's one pool."""
    res = resources()
    if res.client is None:
        return None
    return ReconcileStore(res.client, retention_s=res.settings.dedup_ttl_s)


def learn(event: Event) -> None:
    """Remember the queue, Tag and workflow a callback names (never raises)."""
    found = store()
    if found is not None:
        found.learn(event)


@functools.cache
def ci_jobs() -> CiJobs:
    return CiJobs.from_settings(resources().settings)


@functools.cache
def publisher() -> Publisher:
    res = resources()
    return res.kind.publisher(res.settings)


def _store() -> ReconcileStore:
    found = store()
    if found is None:
        raise ConfigError("reconcile keeps its checkpoints in Redis: set CICB_REDIS_URL")
    return found


@app.task(base=PipelineTask, name="cicb.reconcile")
def reconcile() -> list[str]:
    """Send one ``cicb.reconcile_queue`` per target; return the targets' names."""
    settings = resources().settings
    if not settings.cos_configured:
        log.warning("reconcile.not_configured", hint="set CICB_COS_SECRET_ID/SECRET_KEY")
        return []
    now = datetime.now(UTC)
    found = discovered(settings, _store(), now=now)
    targets = plan(settings, _store(), now=now, discovered=found)
    # A broker that cannot take them: the pass is retried (a queue sent twice is listed
    # once at a time, under its lock, and routes a job once).
    with publishing("reconcile pass not sent"):
        for target in targets:
            reconcile_queue.apply_async((target_to_json(target),))
    log.info("reconcile.planned", targets=[t.name for t in targets])
    return [t.name for t in targets]


@app.task(base=PipelineTask, name="cicb.reconcile_queue")
def reconcile_queue(target: dict[str, Any]) -> dict[str, Any]:
    """One pass over one queue (its Tags) or workflow; CI's refusal is logged and counted,
    a passing failure retried with the usual backoff."""
    settings = resources().settings
    reconciler = Reconciler(
        ci=ci_jobs(),
        store=_store(),
        publish=publisher().ingest,
        now=datetime.now(UTC),
        grace_s=settings.reconcile_grace_s,
    )
    report = reconciler.reconcile(target_from_json(target))
    metrics = worker_metrics()
    for found in report.found:
        if found.sent:
            metrics.reconciled.labels(found.event.kind).inc()
    if report.error is not None:
        metrics.reconcile_errors.inc()
    return report.summary()
