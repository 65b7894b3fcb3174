"""What the console's pages show, each read bounded: a page of the archive, the oldest dead
letters up to the scan limit, a ping with a timeout. Blocking calls: the app runs them in a
thread."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any
from xml.dom import minidom
from xml.parsers.expat import ExpatError

import redis

from pipeline.actions.resubmit import AttemptStore
from pipeline.archive import Archive, ArchiveEntry, Filters, Page
from pipeline.attempts import AttemptLog, Sender, StepAttempts, Waiting, by_step, retry_now
from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue, NotFound
from pipeline.brokers.depths import Depths, QueueDepths
from pipeline.errors import PipelineError
from pipeline.parsing.reader import parse
from pipeline.reconcile.store import ReconcileStore
from pipeline.routing import RouteTable
from pipeline.settings import Settings

PAGE_SIZE = 50
# Dead-letter groups, timelines and reconcile passes shown at most.
MAX_ROWS = 200
RECENT = timedelta(hours=1)
# Jobs followed from one through its resubmissions (CICB_RETRY_MAX_ATTEMPTS is 2 by default).
MAX_RESUBMISSIONS = 20

Resend = Callable[[DeadLetter], None]


def pretty_body(body: bytes) -> tuple[str, str]:
    """The body's format (``json``, ``xml`` or ``text``) and its text, indented when it is
    well-formed JSON or XML (XML with a DTD is shown as it is, never expanded)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        return "text", body.decode("utf-8", "replace")
    start = text.lstrip()[:1]
    if start in ("{", "["):
        try:
            return "json", json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            return "text", text
    if start == "<" and "<!DOCTYPE" not in text.upper() and "<!ENTITY" not in text.upper():
        try:
            pretty = minidom.parseString(body).toprettyxml(indent="  ")
        except (ExpatError, ValueError):
            return "text", text
        lines = [line for line in pretty.splitlines() if line.strip()]
        if not text.lstrip().startswith("<?xml"):
            lines = lines[1:]  # the declaration minidom adds
        return "xml", "\n".join(lines)
    return "text", text


def duration(seconds: float) -> str:
    """``42 s``, ``15 min``, ``3 h 5 min``, ``12 d``: how late, at a glance."""
    whole = round(abs(seconds))
    sign = "-" if seconds < 0 and whole else ""
    if whole < 120:
        shown = f"{whole} s"
    elif whole < 2 * 3600:
        shown = f"{whole // 60} min"
    elif whole < 2 * 86400:
        shown = f"{whole // 3600} h {whole % 3600 // 60} min"
    else:
        shown = f"{whole // 86400} d"
    return sign + shown


def event_ids(event: dict[str, Any]) -> set[str]:
    return {i for i in (event.get("job_id"), event.get("run_id")) if i}


def _names(letter: DeadLetter, ids: set[str]) -> bool:
    """Whether a step's dead letter holds an event with one of ``ids``."""
    return (
        bool(letter.args)
        and isinstance(letter.args[0], dict)
        and bool(event_ids(letter.args[0]) & ids)
    )


@dataclass(frozen=True, slots=True)
class Group:
    task: str
    error: str
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class Step:
    task: str
    # "dead-lettered", "not run" (a step before it was dead-lettered), or what its records
    # say (pipeline.runs.TaskRuns.states): "done", "running", "in flight", "lost" (being
    # published again), "not started".
    outcome: str
    letter: DeadLetter | None = None
    # Its runs, newest first (None: none kept), and when its retry is due if it waits.
    attempts: StepAttempts | None = None
    waiting_until: str | None = None


@dataclass(frozen=True, slots=True)
class TimelineItem:
    entry: ArchiveEntry
    event: dict[str, Any]
    late_s: float | None


@dataclass
class Overview:
    depths: Depths | None = None
    depths_error: str | None = None
    oldest_ingest_age_s: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    outcomes_complete: bool = True
    workers: list[str] | None = None
    workers_error: str | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    archived: int | None = None
    # Steps waiting for their retry (None: unknown, no Redis).
    waiting_retries: int | None = None
    redis_error: str | None = None


class Queries:
    """The console's reads and its actions on dead letters."""

    def __init__(
        self,
        settings: Settings,
        *,
        archive: Archive | None,
        dead_letters: DeadLetterQueue,
        depths: QueueDepths,
        table: RouteTable,
        reconcile: ReconcileStore | None,
        attempts: AttemptStore | None,
        workers_online: Callable[[], list[str]],
        resend: Callable[[], tuple[Resend, Callable[[], None]]],
        step_states: Callable[[list[str]], dict[str, str]] = lambda ids: {},
        attempt_log: AttemptLog | None = None,
        sender: Callable[[], tuple[Sender, Callable[[], None]]] | None = None,
    ) -> None:
        self.settings = settings
        self.archive = archive
        self.dead_letters = dead_letters
        self.depths = depths
        self.table = table
        self.reconcile = reconcile
        self.attempts = attempts
        self._workers_online = workers_online
        self._resend = resend
        self._step_states = step_states
        self.attempt_log = attempt_log
        self._sender = sender
        self.scan_limit = settings.console_scan_limit

    # -- overview ---------------------------------------------------------------------------

    def overview(self, now: datetime) -> Overview:
        view = Overview()
        try:
            view.depths = self.depths.read()
            view.oldest_ingest_age_s = view.depths.oldest_ingest_age_s(now)
        except PipelineError as exc:
            view.depths_error = str(exc)
        try:
            if self.archive is not None:
                since = now - RECENT
                recent = islice(self.archive.entries(Filters(since=since)), self.scan_limit + 1)
                outcomes = Counter(e.outcome for e in recent)
                view.outcomes_complete = outcomes.total() <= self.scan_limit
                view.outcomes = dict(outcomes.most_common())
                view.archived = self.archive.count()
            if self.attempt_log is not None:
                view.waiting_retries = self.attempt_log.waiting_count()
            if self.reconcile is not None:
                view.passes = self.reconcile.last_passes(MAX_ROWS)
        except redis.RedisError as exc:
            view.redis_error = str(exc)
        if view.depths is None:
            view.workers_error = "the broker did not answer"
            return view
        try:
            view.workers = sorted(self._workers_online())
        except Exception as exc:  # whatever the broker's control channel raises
            view.workers_error = str(exc)
        return view

    # -- callbacks --------------------------------------------------------------------------

    def callbacks(self, filters: Filters, *, before: str | None) -> Page:
        if self.archive is None:
            return Page([], None, 0)
        return self.archive.page(
            filters, limit=PAGE_SIZE, before=before, max_scanned=self.scan_limit
        )

    def callback(self, entry_id: str) -> ArchiveEntry:
        if self.archive is None:
            raise LookupError("the archive is off")
        return self.archive.get(entry_id)

    def normalized(self, entry: ArchiveEntry) -> tuple[list[dict[str, Any]], str | None]:
        """The body's events as ``cicb parse`` prints them, or the reason it is unreadable."""
        try:
            return [e.to_dict() for e in parse(entry.body, content_type=entry.content_type)], None
        except PipelineError as exc:
            return [], str(exc)

    def steps(self, events: tuple[dict[str, Any], ...]) -> list[list[Step]]:
        """For each event, each step of its route's chain with the dead letter it left among
        the oldest ``scan_limit`` (read once): the steps after a dead-lettered one did not
        run; the others are as their records say (done, running, in flight...). None for an
        event whose route did not start."""
        routes = {r.name: r for r in self.table.routes}
        started = [
            routes.get(e.get("route") or "") if e.get("outcome") == "dispatched" else None
            for e in events
        ]
        letters = self.dead_letters.peek(self.scan_limit)[0] if any(started) else []
        found: list[list[Step]] = []
        step_ids = [
            route.step_ids(event["key"]) if route and event.get("key") else []
            for event, route in zip(events, started, strict=True)
        ]
        states = self._step_states([i for ids in step_ids for i in ids])
        runs, waiting = self._attempts(events, [i for ids in step_ids for i in ids])
        for event, route, task_ids in zip(events, started, step_ids, strict=True):
            steps: list[Step] = []
            ids, stopped = event_ids(event), False
            for n, task in enumerate(route.chain if route else ()):
                letter = next((d for d in letters if d.task == task and _names(d, ids)), None)
                if stopped:
                    steps.append(Step(task, "not run"))
                elif letter is not None:
                    steps.append(Step(task, "dead-lettered", letter))
                    stopped = True
                else:
                    state = states.get(task_ids[n]) if task_ids else None
                    steps.append(Step(task, state or "no dead letter"))
                if task_ids and (kept := runs.get(task_ids[n])) is not None:
                    due = waiting.get(kept.attempts[0].task_id)
                    steps[-1] = dataclasses.replace(steps[-1], attempts=kept, waiting_until=due)
            found.append(steps)
        return found

    def _attempts(
        self, events: tuple[dict[str, Any], ...], step_ids: list[str]
    ) -> tuple[dict[str, StepAttempts], dict[str, str]]:
        """The attempts of these steps (by step id), and when the retries of those waiting
        are due (by task id)."""
        if self.attempt_log is None or not step_ids:
            return {}, {}
        jobs = [i for e in events for i in sorted(event_ids(e))]
        wanted = set(step_ids)
        kept = [a for found in self.attempt_log.of_jobs(jobs).values() for a in found]
        runs = {s.step_id: s for s in by_step(a for a in kept if a.step_id in wanted)}
        waiting = {w.task_id: w.due_at for w in self.attempt_log.waiting()}
        return runs, waiting

    def waiting(self, task_id: str) -> Waiting:
        """The step waiting for its retry with task id ``task_id``; raises ``NotWaiting``,
        ``LookupError`` without Redis."""
        if self.attempt_log is None:
            raise LookupError("attempts live in Redis: set CICB_REDIS_URL")
        return self.attempt_log.waiting_task(task_id)

    def retry_now(self, task_id: str) -> Waiting:
        """Send the step waiting for its retry now, as ``cicb attempts retry-now``."""
        if self.attempt_log is None or self._sender is None:
            raise LookupError("attempts live in Redis: set CICB_REDIS_URL")
        sender, close = self._sender()
        try:
            return retry_now(self.attempt_log, task_id, sender)
        finally:
            close()

    # -- a job's timeline ---------------------------------------------------------------------

    def timeline(self, job_id: str) -> tuple[list[TimelineItem], bool]:
        """Every archived event of ``job_id``, oldest first, with how late CI delivered it;
        and whether the scan stopped at the limit before the oldest entry."""
        if self.archive is None:
            return [], False
        page = self.archive.page(
            Filters(job_id=job_id), limit=MAX_ROWS, max_scanned=self.scan_limit
        )
        items: list[TimelineItem] = []
        for entry in reversed(page.entries):
            ended = self._ended_at(entry, job_id)
            for event in entry.events:
                if job_id in event_ids(event):
                    late = (entry.received_at - ended).total_seconds() if ended else None
                    items.append(TimelineItem(entry, event, late))
        return items, page.next_before is not None

    @staticmethod
    def _ended_at(entry: ArchiveEntry, job_id: str) -> datetime | None:
        try:
            events = parse(entry.body, content_type=entry.content_type)
        except PipelineError:
            return None
        for event in events:
            if job_id in (event.job_id, getattr(event, "run_id", None)):
                ended: datetime | None = getattr(event, "ended_at", None)
                return ended
        return None

    def resubmissions(self, job_id: str) -> tuple[int | None, list[str]]:
        """The run number of ``job_id`` and the jobs resubmission created from it, each from
        the one before (at most ``MAX_RESUBMISSIONS``)."""
        if self.attempts is None:
            return None, []
        created: list[str] = []
        current: str | None = job_id
        while len(created) < MAX_RESUBMISSIONS and current is not None:
            current = self.attempts.resubmitted_as(current)
            if current is not None and current not in created and current != job_id:
                created.append(current)
            else:
                break
        return self.attempts.attempt_of(job_id), created

    # -- dead letters -------------------------------------------------------------------------

    def dead_letter_view(
        self, selected: Callable[[DeadLetter], bool]
    ) -> tuple[list[Group], list[DeadLetter], int, int]:
        """The groups (task, error, reason) among the oldest ``scan_limit`` dead letters,
        the letters ``selected`` picks (the newest ``PAGE_SIZE``), how many were read and
        how many there are."""
        letters, total = self.dead_letters.peek(self.scan_limit)
        counts = Counter((d.task, d.error, d.reason) for d in letters)
        groups = [Group(t, e, r, n) for (t, e, r), n in counts.most_common(MAX_ROWS)]
        shown = sorted((d for d in letters if selected(d)), key=lambda d: d.failed_at)
        return groups, shown[-PAGE_SIZE:][::-1], len(letters), total

    def dead_letter(self, dead_letter_id: str) -> DeadLetter:
        letters, _ = self.dead_letters.peek(self.scan_limit)
        for letter in letters:
            if letter.id == dead_letter_id:
                return letter
        raise NotFound(dead_letter_id)

    def count_dead_letters(self, selected: Callable[[DeadLetter], bool]) -> int:
        letters, _ = self.dead_letters.peek(self.scan_limit)
        return sum(1 for d in letters if selected(d))

    def replay(self, selected: Callable[[DeadLetter], bool]) -> int:
        """Send the selected dead letters back to their queues, as ``cicb dlq replay``."""
        resend, close = self._resend()
        try:
            return self.dead_letters.replay_some(resend, selected, self.scan_limit)
        finally:
            close()

    def purge(self) -> int:
        return self.dead_letters.purge()

    # -- routes -------------------------------------------------------------------------------

    def explain(self, body: bytes) -> list[dict[str, Any]]:
        """Which route and chain each event of ``body`` takes, as ``cicb routes explain``;
        raises ``PipelineError`` (``ParseError``) for a body that is not a callback."""
        return [self.table.explain(event) for event in parse(body)]


def utcnow() -> datetime:
    return datetime.now(UTC)
