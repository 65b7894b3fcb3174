"""One reconcile pass over a target: list it, find the lost jobs, send them to ``ingest``.

A listed job (or workflow run) is **lost** when it is in a final state (Success, Failed,
Cancel), ended before the grace, and no callback holds its deduplication key (claimed or
done) and no pass sent it. It is sent as an envelope of ``source="reconcile"`` whose body is
CI's answer for that one job (``{"JobsDetail": [job]}``; a run with its nodes:
``{"WorkflowExecution": run}``), so it takes a callback's path. A job still running, or
ended within the grace, holds its stream's checkpoint back, by at most
``DEFAULT_MAX_PENDING_S``, so a later pass sees it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeAlias

from pipeline import logs
from pipeline.brokers.envelope import Envelope
from pipeline.errors import ParseError, TransientError
from pipeline.parsing.events import Event, JobEvent, WorkflowEvent
from pipeline.parsing.reader import events_of
from pipeline.reconcile.ci import FINAL_STATES, PAGE_SIZE, CiJobs, CiRefused
from pipeline.reconcile.plan import QueueTarget, Target, Window, WorkflowTarget, window
from pipeline.reconcile.store import Lock, ReconcileStore

DEFAULT_MAX_PENDING_S: Final = 24 * 3600
# Jobs read per queue and Tag in one pass; the next pass goes on from the last one read.
DEFAULT_MAX_JOBS: Final = 10_000
SOURCE: Final = "reconcile"

log = logs.get_logger("cicb.reconcile")

# What a list gives: jobs and workflow runs.
Listed: TypeAlias = JobEvent | WorkflowEvent

# Puts one envelope (``Envelope.to_json()``) on ``ingest``; raises TransientError.
Publish = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Found:
    """A finished job (or workflow run) whose callback never came."""

    event: Event
    target: str
    late_s: float | None  # now minus its end time
    sent: bool

    def to_json(self) -> dict[str, Any]:
        e = self.event
        ident = {"run_id": e.run_id} if isinstance(e, WorkflowEvent) else {"job_id": e.job_id}
        queue = e.queue_id if isinstance(e, JobEvent) else None
        workflow = e.workflow_id if isinstance(e, WorkflowEvent) else None
        return {
            "event": e.event,
            **ident,
            "tag": e.tag,
            "state": e.state,
            "queue": queue,
            **({"workflow_id": workflow} if workflow else {}),
            "target": self.target,
            "ended_at": _iso(_ended_at(e)),
            "late_s": None if self.late_s is None else round(self.late_s),
            "sent": self.sent,
        }


@dataclass
class Report:
    """What one pass did on one target."""

    target: str
    listed: int = 0
    pending: int = 0
    found: list[Found] = field(default_factory=list)
    busy: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "listed": self.listed,
            "pending": self.pending,
            "found": [f.to_json() for f in self.found],
            "busy": self.busy,
            "error": self.error,
        }

    def summary(self) -> dict[str, Any]:
        """The counts alone, for a log line."""
        return {**self.to_json(), "found": len(self.found)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Reconciler:
    """One pass's settings and the parts it works with.

    ``since``/``until`` replace the checkpoints' window (``window``); with ``until`` the
    checkpoints are left as they are. ``dry_run`` sends nothing, moves no checkpoint, takes
    no lock and counts no error: it says what a pass would send.
    """

    ci: CiJobs
    store: ReconcileStore
    publish: Publish | None
    now: datetime
    grace_s: float
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False
    max_jobs: int = DEFAULT_MAX_JOBS
    max_pending_s: float = DEFAULT_MAX_PENDING_S

    def reconcile(self, target: Target) -> Report:
        """List ``target``'s finished jobs and send the lost ones; raises TransientError."""
        report = Report(target.name)
        logs.bind(reconcile_target=target.name)
        if self.dry_run:
            self._run(target, report, None)
            return report
        with self.store.lock(target.name) as lock:
            if lock is None:
                report.busy = True
                log.info("reconcile.busy", reason="another pass is listing this target")
                return report
            self._run(target, report, lock)
        self.store.record_pass(target.name, report.summary(), at=self.now)
        return report

    def reconcile_all(self, targets: Iterable[Target]) -> list[Report]:
        """One pass over ``targets`` in this process (``cicb reconcile``): a target that
        fails for now is reported with its error, and the others are still listed."""
        reports = []
        for target in targets:
            try:
                reports.append(self.reconcile(target))
            except TransientError as exc:
                log.error("reconcile.failed", target=target.name, error=str(exc))
                reports.append(Report(target.name, error=str(exc)))
        return reports

    def _run(self, target: Target, report: Report, lock: Lock | None) -> None:
        try:
            if isinstance(target, QueueTarget):
                for tag in target.tags:
                    _Stream(self, target, report, lock, tag=tag).run()
            else:
                _Stream(self, target, report, lock).run()
        except CiRefused as exc:
            report.error = str(exc)
            if not self.dry_run:
                self.store.count_error(target.name)
            log.error(
                "reconcile.refused",
                status=exc.status,
                code=exc.code,
                message=exc.message[:300],
                hint="check CICB_COS_SECRET_ID/KEY and the queue, bucket and region",
            )


class _Stream:
    """One queue and Tag (or one workflow) in one pass."""

    def __init__(
        self, rec: Reconciler, target: Target, report: Report, lock: Lock | None, *, tag: str = ""
    ) -> None:
        self.rec, self.target, self.report, self.lock, self.tag = rec, target, report, lock, tag
        if isinstance(target, QueueTarget):
            self.name = f"queue|{target.name.replace(':', '|')}|{tag}"
        else:
            self.name = f"workflow|{target.bucket}|{target.region}|{target.workflow_id}"
        self.pending_from: datetime | None = None
        self.sent_keys: set[str] = set()

    def run(self) -> None:
        rec = self.rec
        checkpoint = rec.store.checkpoint(self.name)
        span = window(
            checkpoint=checkpoint,
            now=rec.now,
            grace_s=rec.grace_s,
            retention_s=rec.store.retention_s,
            since=rec.since,
            until=rec.until,
        )
        if span.empty:
            return
        end = span.end
        batch: list[tuple[Listed, dict[str, Any]]] = []
        count = 0
        for count, (event, node) in enumerate(self._listed(span), start=1):
            self.report.listed += 1
            if self._finished(event):
                batch.append((event, node))
            if len(batch) >= PAGE_SIZE:
                self._send(batch)
                batch = []
            if count >= rec.max_jobs and event.created_at is not None:
                end = min(end, event.created_at)  # the next pass goes on from here
                log.warning("reconcile.truncated", stream=self.name, jobs=count)
                break
        self._send(batch)
        if self.pending_from is not None:
            end = max(min(end, self.pending_from), end - timedelta(seconds=rec.max_pending_s))
        if not rec.dry_run and rec.until is None:
            rec.store.set_checkpoint(self.name, end)
        log.info(
            "reconcile.listed",
            stream=self.name,
            start=_iso(span.start),
            end=_iso(span.end),
            checkpoint=_iso(end),
            listed=count,
        )

    def _listed(self, span: Window) -> Iterable[tuple[Listed, dict[str, Any]]]:
        t = self.target
        if isinstance(t, QueueTarget):
            nodes = self.rec.ci.jobs(
                bucket=t.bucket,
                region=t.region,
                queue_id=t.queue_id,
                tag=self.tag,
                start=span.start,
                end=span.end,
            )
            key = "JobsDetail"
        else:
            nodes = self.rec.ci.runs(
                bucket=t.bucket,
                region=t.region,
                workflow_id=t.workflow_id,
                start=span.start,
                end=span.end,
            )
            key = "WorkflowExecutionList"
        for node in nodes:
            event = _read({key: [node]}, JobEvent if key == "JobsDetail" else WorkflowEvent)
            if event is not None:
                yield event, node

    def _finished(self, event: Listed) -> bool:
        """Final and ended before the grace; otherwise it holds the checkpoint back."""
        ended = _ended_at(event)
        limit = self.rec.now - timedelta(seconds=self.rec.grace_s)
        if event.state in FINAL_STATES and (ended is None or ended <= limit):
            return True
        self.report.pending += 1
        created = event.created_at
        if created is not None and (self.pending_from is None or created < self.pending_from):
            self.pending_from = created
        return False

    def _send(self, batch: list[tuple[Listed, dict[str, Any]]]) -> None:
        if not batch:
            return
        if self.lock is not None:
            self.lock.refresh()
        lost = self.rec.store.unhandled([e.dedup_key for e, _ in batch])
        for event, node in batch:
            key = event.dedup_key
            if key not in lost or key in self.sent_keys:
                continue
            self.sent_keys.add(key)
            body: dict[str, Any] = {"JobsDetail": [node]}
            if isinstance(event, WorkflowEvent):
                detailed = self._run_detail(event)
                if detailed is None:
                    continue
                event, body = detailed
            self._found(event, body)

    def _run_detail(self, run: WorkflowEvent) -> tuple[Listed, dict[str, Any]] | None:
        """A run with its nodes, which the list leaves out; None if it ended within the
        grace (it holds the checkpoint back then) or CI's answer cannot be read."""
        assert isinstance(self.target, WorkflowTarget)
        t = self.target
        node = self.rec.ci.run(bucket=t.bucket, region=t.region, run_id=run.run_id)
        body = {"WorkflowExecution": node or {}}
        event = _read(body, WorkflowEvent) if node else None
        if event is None or not self._finished(event):
            return None
        return event, body

    def _found(self, event: Listed, body: dict[str, Any]) -> None:
        rec = self.rec
        ended = _ended_at(event)
        late_s = None if ended is None else (rec.now - ended).total_seconds()
        ident = event.run_id if isinstance(event, WorkflowEvent) else event.job_id
        sent = False
        if not rec.dry_run:
            if not rec.store.mark_sent(event.dedup_key):
                return  # another pass sent it just now
            try:
                assert rec.publish is not None
                rec.publish(_envelope(body, request_id=f"{SOURCE}-{ident}", now=rec.now))
            except BaseException:
                rec.store.unmark_sent(event.dedup_key)
                raise
            sent = True
        self.report.found.append(Found(event, self.target.name, late_s, sent))
        log.info(
            "reconcile.found",
            job_id=event.job_id,
            run_id=event.run_id if isinstance(event, WorkflowEvent) else None,
            tag=event.tag,
            state=event.state,
            queue=event.queue_id if isinstance(event, JobEvent) else None,
            late_s=None if late_s is None else round(late_s),
            sent=sent,
        )


def _read(document: dict[str, Any], kind: type[Listed]) -> Listed | None:
    """The one event of a listed node; None (logged) for a node cicb cannot read."""
    try:
        events = events_of(document, source=SOURCE)
    except ParseError as exc:
        log.warning("reconcile.unreadable", error=str(exc), node=json.dumps(document)[:300])
        return None
    event = events[0] if len(events) == 1 else None
    return event if isinstance(event, kind) else None


def _envelope(body: dict[str, Any], *, request_id: str, now: datetime) -> dict[str, Any]:
    return Envelope(
        body=json.dumps(body, ensure_ascii=False).encode(),
        content_type="application/json",
        received_at=now,
        remote_addr=None,
        request_id=request_id,
        source=SOURCE,
    ).to_json()


def _ended_at(event: Event) -> datetime | None:
    if isinstance(event, JobEvent):
        return event.ended_at
    if isinstance(event, WorkflowEvent):
        ends = [t.ended_at for t in event.tasks if t.ended_at is not None]
        return max(ends) if ends else None
    return None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()
