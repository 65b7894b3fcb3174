"""Reconcile's targets found in ``CICB_CI_BUCKETS``: every queue of the kinds CI's job list
covers (media, picture, AI), with the Tags it can learn for each (its kind's own, and the
node types of the workflows that run on it), and every workflow.

Found at most once every ``DEFAULT_REFRESH_S`` and kept in Redis (``ReconcileStore``), so
the workers and the CLI share one look at CI. When CI cannot be asked (refused keys, CI
unavailable), the last targets found are used, however old, and the failure logged: the
configured and learned targets are reconciled either way.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Final

from pipeline import logs
from pipeline.actions.cos import CiRefused, CiUnavailable
from pipeline.ci.queues import KIND_BY_NAME, CiQueues
from pipeline.errors import ConfigError
from pipeline.reconcile.plan import (
    QueueTarget,
    Target,
    WorkflowTarget,
    target_from_json,
    target_to_json,
)
from pipeline.reconcile.store import ReconcileStore
from pipeline.settings import Settings

DEFAULT_REFRESH_S: Final = 3600

log = logs.get_logger("cicb.reconcile")


def discovered(
    settings: Settings,
    store: ReconcileStore,
    *,
    now: datetime,
    ci: Callable[[], CiQueues] | None = None,
    refresh_s: float = DEFAULT_REFRESH_S,
) -> list[Target]:
    """The targets of ``CICB_CI_BUCKETS``, from Redis if found within ``refresh_s``, else
    from CI (``ci`` makes the client; by default from the settings)."""
    if not settings.bucket_regions:
        return []
    kept = store.discovered()
    if kept is not None and now.timestamp() - kept[0] < refresh_s:
        return [target_from_json(t) for t in kept[1]]
    try:
        targets = _ask(settings, (ci or (lambda: CiQueues.from_settings(settings)))())
    except (CiRefused, CiUnavailable, ConfigError) as exc:
        log.warning("reconcile.buckets_not_listed", error=str(exc), kept=kept is not None)
        return [] if kept is None else [target_from_json(t) for t in kept[1]]
    store.keep_discovered([target_to_json(t) for t in targets], at_s=now.timestamp())
    log.info("reconcile.buckets_listed", targets=[t.name for t in targets])
    return targets


def _ask(settings: Settings, ci: CiQueues) -> list[Target]:
    targets: list[Target] = []
    for bucket, region in settings.bucket_regions:
        workflows = list(ci.workflows(bucket, region))
        tags_of: dict[str, set[str]] = {}
        for workflow in workflows:
            if workflow.workflow_queue:
                tags_of.setdefault(workflow.workflow_queue, set()).update(workflow.workflow_tags)
        for queue in ci.queues(bucket, region):
            kind = KIND_BY_NAME[queue.kind]
            if kind.lists_jobs:
                tags = (*kind.tags, *sorted(tags_of.get(queue.queue_id, set()) - set(kind.tags)))
                targets.append(QueueTarget(bucket, region, queue.queue_id, tags))
        targets += [WorkflowTarget(bucket, region, w.queue_id) for w in workflows]
    return targets
