"""What a reconcile pass lists: its targets, and each stream's window of creation times.

A target is a CI queue with the Tags to list on it (``QueueTarget``; CI's list API needs a
Tag) or a workflow (``WorkflowTarget``). ``plan`` makes them from ``CICB_RECONCILE_QUEUES``
and ``CICB_RECONCILE_TAGS``, from what ``discovery`` found in ``CICB_CI_BUCKETS``, and from
what callbacks named within the retention (learned in ``store``). A stream is one queue and
Tag, or one workflow: each has its own checkpoint and ``window``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pipeline import logs
from pipeline.errors import PermanentError
from pipeline.reconcile.store import ReconcileStore
from pipeline.settings import Settings

DEFAULT_OVERLAP_S: Final = 300
DEFAULT_FIRST_LOOKBACK_S: Final = 3600

log = logs.get_logger("cicb.reconcile")


@dataclass(frozen=True, slots=True)
class QueueTarget:
    """A CI queue and the Tags to list on it."""

    bucket: str
    region: str
    queue_id: str
    tags: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.bucket}:{self.region}:{self.queue_id}"


@dataclass(frozen=True, slots=True)
class WorkflowTarget:
    """A CI workflow whose runs to list."""

    bucket: str
    region: str
    workflow_id: str

    @property
    def name(self) -> str:
        return f"{self.bucket}:{self.region}:workflow:{self.workflow_id}"


Target = QueueTarget | WorkflowTarget


def target_to_json(target: Target) -> dict[str, Any]:
    if isinstance(target, QueueTarget):
        return {
            "bucket": target.bucket,
            "region": target.region,
            "queue_id": target.queue_id,
            "tags": list(target.tags),
        }
    return {"bucket": target.bucket, "region": target.region, "workflow_id": target.workflow_id}


def target_from_json(data: Any) -> Target:
    """Rebuild a target; raise ``PermanentError`` if ``data`` is not one."""
    try:
        if "queue_id" in data:
            tags = tuple(str(t) for t in data["tags"])
            return QueueTarget(
                str(data["bucket"]), str(data["region"]), str(data["queue_id"]), tags
            )
        return WorkflowTarget(str(data["bucket"]), str(data["region"]), str(data["workflow_id"]))
    except (KeyError, TypeError) as exc:
        raise PermanentError(f"not a reconcile target: {data!r:.200}") from exc


def plan(
    settings: Settings,
    store: ReconcileStore,
    *,
    now: datetime,
    discovered: Iterable[Target] = (),
) -> list[Target]:
    """The targets of a pass: the configured queues, those found in ``CICB_CI_BUCKETS``
    (``discovered``) and what callbacks named, each queue with the configured Tags, those
    found for it and its own. A queue with no Tag at all is skipped, logged."""
    tags_of: dict[tuple[str, str, str], list[str]] = {}
    for queue in settings.reconcile_queues:
        bucket, region, queue_id = queue.split(":")
        tags_of.setdefault((bucket, region, queue_id), [])
    workflows: dict[tuple[str, str, str], None] = {}
    for found in discovered:
        if isinstance(found, QueueTarget):
            tags_of.setdefault((found.bucket, found.region, found.queue_id), []).extend(found.tags)
        else:
            workflows[(found.bucket, found.region, found.workflow_id)] = None
    for kind, bucket, region, ident, *rest in store.learned(now_s=now.timestamp()):
        if kind == "queue":
            tags_of.setdefault((bucket, region, ident), []).extend(rest)
        else:
            workflows[(bucket, region, ident)] = None
    targets: list[Target] = []
    for (bucket, region, queue_id), learned in tags_of.items():
        tags = tuple(dict.fromkeys([*settings.reconcile_tags, *sorted(set(learned))]))
        if not tags:
            log.warning(
                "reconcile.no_tags",
                target=f"{bucket}:{region}:{queue_id}",
                hint="CI lists jobs by Tag: set CICB_RECONCILE_TAGS",
            )
            continue
        targets.append(QueueTarget(bucket, region, queue_id, tags))
    targets += [WorkflowTarget(*key) for key in workflows]
    return targets


@dataclass(frozen=True, slots=True)
class Window:
    """Creation times to list, from ``start`` to ``end``; empty when ``start >= end``."""

    start: datetime
    end: datetime

    @property
    def empty(self) -> bool:
        return self.start >= self.end


def window(
    *,
    checkpoint: datetime | None,
    now: datetime,
    grace_s: float,
    retention_s: float,
    since: datetime | None = None,
    until: datetime | None = None,
    overlap_s: float = DEFAULT_OVERLAP_S,
    first_lookback_s: float = DEFAULT_FIRST_LOOKBACK_S,
) -> Window:
    """The window of one queue and Tag: from ``since``, else the checkpoint minus the
    overlap, else ``first_lookback_s`` before its end; to ``now - grace_s``, or ``until`` if
    earlier. Never starts before ``now - retention_s``."""
    end = now - timedelta(seconds=grace_s)
    if until is not None:
        end = min(end, until)
    if since is not None:
        start = since
    elif checkpoint is not None:
        start = checkpoint - timedelta(seconds=overlap_s)
    else:
        start = end - timedelta(seconds=first_lookback_s)
    return Window(max(start, now - timedelta(seconds=retention_s)), end)
