"""The archive: every callback body workers ingested, for ``cicb archive`` and ``cicb replay``.

CI cannot send a callback again, so cicb keeps what reached it. Each envelope is written
once, when ``cicb.ingest`` is done with it: routed, skipped as a duplicate, unrouted, or
dead-lettered (garbage too). An entry holds the envelope (raw body bytes, content type,
received time, request id, remote address, source and scope), the ingest task's id and the
outcome: the overall one and, for each event the body held, its route and outcome; a
dead-lettered entry also names the error and its reason.

The store is one Redis stream (``cicb:archive``) in the Redis that holds the workers' shared
state (``CICB_REDIS_URL``, else a Redis broker). The stream id is the time the entry was
written (Redis's clock), so the stream is ordered by it. Each write trims the stream, in the
same round trip, to ``CICB_ARCHIVE_RETENTION_S`` by age and ``CICB_ARCHIVE_MAX_ENTRIES`` by
count; both trims are Redis's approximate ones (whole stream nodes), so the stream may hold a
few more entries than the count for a while, and reads never show an entry older than the
retention. Either setting at 0 turns the archive off. The bodies live in Redis's memory:
size it for them.

Reads go through the stream a page at a time (``XREVRANGE``/``XRANGE`` with ``COUNT``),
never all at once, and filter each entry in Python (``Filters``).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import redis

from pipeline import logs
from pipeline.brokers.envelope import Envelope
from pipeline.errors import PermanentError
from pipeline.ingest import events_of_envelope, outcome_of
from pipeline.routing import RouteTable
from pipeline.settings import Settings

ARCHIVE_KEY = "cicb:archive"
# Entries read per round trip. Bodies are a few kB; the receiver admits up to 5 MiB each.
DEFAULT_PAGE_SIZE = 100
# Entries are ordered by when a worker wrote them, filtered by when the receiver got them: a
# ``since`` bound reaches this much further back, in case the two clocks disagree.
CLOCK_SKEW_S = 300
DEAD_LETTERED = "dead_lettered"
# The overall outcome of a body whose events did not all end the same way.
MIXED = "mixed"

log = logs.get_logger("cicb.archive")


class NotArchived(PermanentError):
    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        super().__init__(f"no archived callback with id {entry_id!r}")


def overall_outcome(outcomes: list[dict[str, Any]]) -> str:
    """One word for what became of a body: its events' common outcome, else ``mixed``."""
    found = {str(o.get("outcome")) for o in outcomes}
    return found.pop() if len(found) == 1 else MIXED


def dead_lettered_outcomes(envelope: Envelope, table: RouteTable | None) -> list[dict[str, Any]]:
    """The events of a body whose ingest failed for good, as far as the body can be read:
    each with the route it takes and outcome ``dead_lettered``; none when it is unreadable.

    They make a dead-lettered callback findable by event, tag, state and job id.
    """
    try:
        events = events_of_envelope(envelope)
    except Exception:  # garbage, or whatever made it fail: it has no events to show
        return []
    return [
        outcome_of(e, table.resolve(e) if table is not None else None, DEAD_LETTERED)
        for e in events
    ]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(fields: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return value.decode("utf-8", "replace") if value is not None else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveEntry:
    """One archived callback. ``id`` is its stream id (``<ms>-<seq>``, the time it was written)."""

    id: str
    request_id: str
    received_at: datetime
    remote_addr: str | None
    content_type: str | None
    source: str
    scope: str | None
    body: bytes
    task_id: str | None
    outcome: str
    events: tuple[dict[str, Any], ...]
    error: str | None = None
    reason: str | None = None

    @property
    def archived_at(self) -> datetime:
        return datetime.fromtimestamp(int(self.id.split("-")[0]) / 1000, UTC)

    @classmethod
    def from_stream(cls, entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> ArchiveEntry:
        """Read one stream entry; raise ``PermanentError`` if it is not an archive entry."""
        try:
            return cls(
                id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                request_id=fields[b"request_id"].decode(),
                received_at=_aware(datetime.fromisoformat(fields[b"received_at"].decode())),
                remote_addr=_text(fields, b"remote_addr"),
                content_type=_text(fields, b"content_type"),
                source=_text(fields, b"source") or "callback",
                scope=_text(fields, b"scope"),
                body=fields[b"body"],
                task_id=_text(fields, b"task_id"),
                outcome=fields[b"outcome"].decode(),
                events=tuple(json.loads(fields.get(b"events", b"[]"))),
                error=_text(fields, b"error"),
                reason=_text(fields, b"reason"),
            )
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise PermanentError(f"archive entry {entry_id!r} is not readable: {exc!r}") from exc

    def summary(self) -> dict[str, Any]:
        """Everything but the body, as JSON: what ``cicb archive list --json`` prints."""
        return {
            "id": self.id,
            "archived_at": self.archived_at.isoformat(),
            "received_at": self.received_at.isoformat(),
            "request_id": self.request_id,
            "remote_addr": self.remote_addr,
            "content_type": self.content_type,
            "source": self.source,
            "scope": self.scope,
            "task_id": self.task_id,
            "outcome": self.outcome,
            "error": self.error,
            "reason": self.reason,
            "events": list(self.events),
            "body_bytes": len(self.body),
        }

    def to_json(self, *, text_body: bool = False) -> dict[str, Any]:
        """The summary with the body: base64, or with ``text_body`` as text when it is UTF-8
        (``body_encoding`` says which)."""
        if text_body:
            try:
                return {**self.summary(), "body": self.body.decode(), "body_encoding": "utf-8"}
            except UnicodeDecodeError:
                pass
        encoded = base64.b64encode(self.body).decode("ascii")
        return {**self.summary(), "body": encoded, "body_encoding": "base64"}

    def replay_envelope(self, *, scope: str | None, now: datetime | None = None) -> Envelope:
        """The envelope ``cicb replay`` sends: this body and request id, received now, with
        source ``replay`` and the replay's deduplication ``scope`` (``--force``)."""
        return Envelope(
            body=self.body,
            content_type=self.content_type,
            received_at=now or datetime.now(UTC),
            remote_addr=self.remote_addr,
            request_id=self.request_id,
            source="replay",
            scope=scope,
        )


def _folded(value: object) -> str:
    return str(value).casefold()


@dataclass(frozen=True, slots=True, kw_only=True)
class Filters:
    """What to select, every given filter at once. ``since``/``until`` bound the received
    time; ``event``, ``tag``, ``state`` and ``job_id`` (a job or run id) must hold together
    for one event of the body; ``outcome`` matches the overall outcome or any event's.
    Names compare without case; ids exactly."""

    since: datetime | None = None
    until: datetime | None = None
    event: str | None = None
    tag: str | None = None
    state: str | None = None
    job_id: str | None = None
    outcome: str | None = None
    # The console's search box: a job or run id of one of the body's events, or its request id.
    any_id: str | None = None
    # Where the body came from: callback, reconcile or replay.
    source: str | None = None

    def any(self) -> bool:
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    def to_json(self) -> dict[str, str]:
        """The filters that are set, for logs and ``--json``."""
        shown = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                shown[f.name] = value.isoformat() if isinstance(value, datetime) else str(value)
        return shown

    def _event_matches(self, event: Mapping[str, Any]) -> bool:
        for name in ("event", "tag", "state"):
            wanted = getattr(self, name)
            if wanted is not None and _folded(event.get(name)) != _folded(wanted):
                return False
        return self.job_id is None or self.job_id in (event.get("job_id"), event.get("run_id"))

    def matches(self, entry: ArchiveEntry) -> bool:
        if self.since is not None and entry.received_at < self.since:
            return False
        if self.until is not None and entry.received_at > self.until:
            return False
        if self.source is not None and _folded(entry.source) != _folded(self.source):
            return False
        if self.any_id is not None and entry.request_id != self.any_id:
            ids = {i for e in entry.events for i in (e.get("job_id"), e.get("run_id"))}
            if self.any_id not in ids:
                return False
        if self.outcome is not None:
            wanted = _folded(self.outcome)
            outcomes = [entry.outcome, *(e.get("outcome") for e in entry.events)]
            if not any(_folded(o) == wanted for o in outcomes):
                return False
        per_event = (self.event, self.tag, self.state, self.job_id)
        if all(v is None for v in per_event):
            return True
        return any(self._event_matches(e) for e in entry.events)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of matches, newest first. ``next_before`` continues the search past what
    was read (None: nothing older is left); ``scanned`` says how many entries were read."""

    entries: list[ArchiveEntry]
    next_before: str | None
    scanned: int


def _stream_id(text: str) -> str:
    """``text`` if it is a stream id (``<ms>-<seq>``); raises ``ValueError``."""
    ms, sep, seq = text.partition("-")
    if not (sep and ms.isdigit() and seq.isdigit()):
        raise ValueError(f"not an archive id: {text!r}")
    return text


class Archive:
    """The archive stream: ``record`` (workers), ``entries``/``list``/``get`` (the CLI).

    ``clock`` (seconds since the epoch) decides what is too old to keep or show.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        retention_s: int,
        max_entries: int,
        key: str = ARCHIVE_KEY,
        page_size: int = DEFAULT_PAGE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self.retention_s = retention_s
        self.max_entries = max_entries
        self.key = key
        self._page_size = page_size
        self._clock = clock

    @classmethod
    def configured(cls, client: redis.Redis | None, settings: Settings) -> Archive | None:
        """The archive a worker writes to, or None when it is off or there is no Redis."""
        if client is None or not settings.archive_retention_s or not settings.archive_max_entries:
            return None
        return cls(
            client,
            retention_s=settings.archive_retention_s,
            max_entries=settings.archive_max_entries,
        )

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0 and self.max_entries > 0

    def record(
        self,
        envelope: Envelope,
        *,
        task_id: str | None,
        outcomes: list[dict[str, Any]],
        outcome: str | None = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> str | None:
        """Archive ``envelope`` with what became of it, and trim the stream, in one round
        trip. ``outcome`` defaults to ``overall_outcome(outcomes)``.

        Returns the entry's id, or None when the archive is off or Redis failed: a lost
        entry is logged, never raised, since the callback itself was handled.
        """
        if not self.enabled:
            return None
        pipe = self._redis.pipeline(transaction=False)
        self.record_in(
            pipe,
            envelope,
            task_id=task_id,
            outcomes=outcomes,
            outcome=outcome,
            error=error,
            reason=reason,
        )
        try:
            entry_id = pipe.execute()[0]
        except redis.RedisError as exc:
            log.warning("archive.not_written", request_id=envelope.request_id, error=str(exc))
            return None
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def record_in(
        self,
        pipe: Any,
        envelope: Envelope,
        *,
        task_id: str | None,
        outcomes: list[dict[str, Any]],
        outcome: str | None = None,
        error: str | None = None,
        reason: str | None = None,
    ) -> None:
        """``record``, queued on ``pipe`` (a pipeline of this Redis), which its caller
        executes; nothing when the archive is off."""
        if not self.enabled:
            return
        fields: dict[str, bytes | str] = {
            "request_id": envelope.request_id,
            "received_at": envelope.received_at.isoformat(),
            "source": envelope.source,
            "body": envelope.body,
            "outcome": outcome or overall_outcome(outcomes),
            "events": json.dumps(outcomes, ensure_ascii=False),
        }
        optional = {
            "remote_addr": envelope.remote_addr,
            "content_type": envelope.content_type,
            "scope": envelope.scope,
            "task_id": task_id,
            "error": error,
            "reason": reason,
        }
        fields.update({k: v for k, v in optional.items() if v is not None})
        oldest_ms = int((self._clock() - self.retention_s) * 1000)
        pipe.xadd(self.key, fields, maxlen=self.max_entries, approximate=True)
        pipe.xtrim(self.key, minid=f"{max(oldest_ms, 0)}-0", approximate=True)

    def _floor_ms(self, since: datetime | None) -> int:
        """The oldest stream id worth reading: the retention's, or ``since``'s if later."""
        floor = 0
        if self.retention_s > 0:
            floor = int((self._clock() - self.retention_s) * 1000)
        if since is not None:
            floor = max(floor, int((since.timestamp() - CLOCK_SKEW_S) * 1000))
        return max(floor, 0)

    def _visible(self, entry_id: str) -> bool:
        if self.retention_s <= 0:
            return True
        return int(entry_id.split("-")[0]) >= (self._clock() - self.retention_s) * 1000

    def _pages(self, floor_ms: int, *, newest_first: bool) -> Iterator[ArchiveEntry]:
        low, high = f"{floor_ms}-0", "+"
        while True:
            if newest_first:
                found = self._redis.xrevrange(self.key, high, low, count=self._page_size)
            else:
                found = self._redis.xrange(self.key, low, high, count=self._page_size)
            page = cast(list[tuple[bytes, dict[bytes, bytes]]], found)
            for entry_id, fields in page:
                try:
                    yield ArchiveEntry.from_stream(entry_id, fields)
                except PermanentError as exc:
                    log.warning("archive.unreadable_entry", error=str(exc))
            if len(page) < self._page_size:
                return
            last = page[-1][0].decode()
            if newest_first:
                high = f"({last}"
            else:
                low = f"({last}"

    def entries(
        self, filters: Filters | None = None, *, newest_first: bool = True
    ) -> Iterator[ArchiveEntry]:
        """Every entry matching ``filters``, a page at a time; newest first, or oldest
        first (what ``export`` and ``replay`` use). Raises ``redis.RedisError``."""
        filters = filters or Filters()
        for entry in self._pages(self._floor_ms(filters.since), newest_first=newest_first):
            if self._visible(entry.id) and filters.matches(entry):
                yield entry

    def list(self, filters: Filters | None = None, *, limit: int) -> list[ArchiveEntry]:
        """The newest ``limit`` entries matching ``filters``, newest first."""
        found: list[ArchiveEntry] = []
        if limit <= 0:
            return found
        for entry in self.entries(filters):
            found.append(entry)
            if len(found) >= limit:
                break
        return found

    def page(
        self,
        filters: Filters | None = None,
        *,
        limit: int,
        before: str | None = None,
        max_scanned: int,
    ) -> Page:
        """Up to ``limit`` entries matching ``filters``, newest first, older than the entry
        id ``before``; reading at most ``max_scanned`` entries, so a search that matches
        little stops early with ``next_before`` to go on from. Raises ``ValueError`` for a
        ``before`` that is not a stream id, ``redis.RedisError``."""
        filters = filters or Filters()
        high = "+" if before is None else f"({_stream_id(before)}"
        low = f"{self._floor_ms(filters.since)}-0"
        found: list[ArchiveEntry] = []
        scanned, last = 0, None
        while scanned < max_scanned:
            count = min(self._page_size, max_scanned - scanned)
            raw = self._redis.xrevrange(self.key, high, low, count=count)
            batch = cast(list[tuple[bytes, dict[bytes, bytes]]], raw)
            for entry_id, fields in batch:
                scanned += 1
                last = entry_id.decode()
                try:
                    entry = ArchiveEntry.from_stream(entry_id, fields)
                except PermanentError as exc:
                    log.warning("archive.unreadable_entry", error=str(exc))
                    continue
                if self._visible(entry.id) and filters.matches(entry):
                    found.append(entry)
                    if len(found) >= limit:
                        return Page(found, last, scanned)
            if len(batch) < count:
                return Page(found, None, scanned)
            high = f"({last}"
        return Page(found, last, scanned)

    def get(self, entry_id: str) -> ArchiveEntry:
        """One entry by id; raises ``NotArchived`` (also for an id that is not one)."""
        try:
            found = self._redis.xrange(self.key, entry_id, entry_id, count=1)
        except redis.ResponseError as exc:  # not a stream id
            raise NotArchived(entry_id) from exc
        page = cast(list[tuple[bytes, dict[bytes, bytes]]], found)
        if not page or not self._visible(page[0][0].decode()):
            raise NotArchived(entry_id)
        return ArchiveEntry.from_stream(*page[0])

    def count(self) -> int:
        """Entries in the stream, trimmed or not yet (the approximate trims leave a few)."""
        return int(self._redis.xlen(self.key))
