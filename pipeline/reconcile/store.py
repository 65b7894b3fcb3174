"""What the reconciler keeps in Redis: the targets it learned, its checkpoints, its locks,
the jobs it already sent, its error counts.

- ``cicb:reconcile:targets`` (sorted set, scored by when it was last seen): the
  ``queue|BUCKET|REGION|QUEUE_ID|TAG`` and ``workflow|BUCKET|REGION|WORKFLOW_ID`` named by
  callbacks, forgotten after the retention (``CICB_DEDUP_TTL_S``). A worker writes one at
  most every ``LEARN_REFRESH_S``, so learning costs a callback nothing most of the time.
- ``cicb:reconcile:checkpoints`` (hash): per stream (a queue and Tag, or a workflow), the
  creation time up to which CI's list was read, as epoch seconds.
- ``cicb:reconcile:lock:<target>``: held by the one pass listing that queue or workflow.
- ``cicb:reconcile:sent:<dedup key>``: a job the reconciler already put on ``ingest``, kept
  for the retention, so a job is sent once even while its message waits in the queue.
- ``cicb:reconcile:errors`` (hash): refused passes, by target and in ``total``.
- ``cicb:reconcile:passes`` (hash): per target, what its last pass did and when (JSON), for
  the console's overview.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final, cast

import redis

from pipeline import logs
from pipeline.errors import TransientError
from pipeline.guard import PREFIX
from pipeline.parsing.events import Event, JobEvent, WorkflowEvent

TARGETS_KEY: Final = PREFIX + "reconcile:targets"
CHECKPOINTS_KEY: Final = PREFIX + "reconcile:checkpoints"
ERRORS_KEY: Final = PREFIX + "reconcile:errors"
PASSES_KEY: Final = PREFIX + "reconcile:passes"
DISCOVERED_KEY: Final = PREFIX + "reconcile:discovered"
LOCK_PREFIX: Final = PREFIX + "reconcile:lock:"
SENT_PREFIX: Final = PREFIX + "reconcile:sent:"
DEDUP_PREFIX: Final = PREFIX + "dedup:"

LEARN_REFRESH_S: Final = 60.0
# A pass refreshes its lock as it goes; one that died leaves it for this long.
DEFAULT_LOCK_TTL_S: Final = 900
# Targets read per pass, the most recently seen first: callbacks cannot make a pass endless.
MAX_LEARNED_TARGETS: Final = 1000

# Delete a key only if it still holds the value given (a lock that is still ours).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end
return 0
"""

log = logs.get_logger("cicb.reconcile")


class ReconcileStoreUnavailable(TransientError):
    """Redis did not answer; the pass is retried, never run without its state."""


def learned_members(event: Event) -> list[str]:
    """The targets a callback names: its job's queue and Tag, its workflow."""
    if not isinstance(event, JobEvent | WorkflowEvent) or event.input is None:
        return []
    bucket, region = event.input.bucket, event.input.region
    if not (bucket and region):
        return []
    found: list[tuple[str, ...]] = []
    if isinstance(event, JobEvent):
        if event.queue_id and event.tag:
            found.append(("queue", bucket, region, event.queue_id, event.tag))
        if event.workflow and event.workflow.workflow_id:
            found.append(("workflow", bucket, region, event.workflow.workflow_id))
    elif event.workflow_id:
        found.append(("workflow", bucket, region, event.workflow_id))
    # A "|" or a space inside a name would make another target of it: such names are not CI's.
    return ["|".join(parts) for parts in found if all(_plain(p) for p in parts)]


def _plain(part: str) -> bool:
    return bool(part) and "|" not in part and not any(c.isspace() for c in part)


class Lock:
    """One pass's hold on a target; ``refresh`` as it goes, released when it ends."""

    def __init__(self, store: ReconcileStore, name: str, token: str) -> None:
        self._store, self.name, self._token = store, name, token

    def refresh(self) -> None:
        self._store.refresh(self.name, self._token)


class ReconcileStore:
    """The reconciler's state in one Redis (``CICB_REDIS_URL``, else a Redis broker)."""

    def __init__(
        self, client: redis.Redis, *, retention_s: int, lock_ttl_s: int = DEFAULT_LOCK_TTL_S
    ) -> None:
        self._redis = client
        self.retention_s = retention_s
        self._lock_ttl_s = lock_ttl_s
        self._release = client.register_script(_RELEASE)
        self._refresh = client.register_script(_REFRESH)
        self._written: dict[str, float] = {}  # member -> when this process last wrote it

    # -- learning targets from callbacks ------------------------------------------------

    def learn(self, event: Event, *, now_s: float | None = None) -> None:
        """Remember the targets ``event`` names. Never raises: a callback is not failed for
        what it teaches the reconciler (a target not written now is written next time)."""
        now_s = time.time() if now_s is None else now_s
        due = [
            m
            for m in learned_members(event)
            if now_s - self._written.get(m, float("-inf")) >= LEARN_REFRESH_S
        ]
        if not due:
            return
        try:
            self._redis.zadd(TARGETS_KEY, dict.fromkeys(due, now_s))
        except redis.RedisError as exc:
            log.warning("reconcile.target_not_learned", targets=due, error=str(exc))
            return
        self._written.update(dict.fromkeys(due, now_s))

    def learned(self, *, now_s: float) -> list[tuple[str, ...]]:
        """The targets seen within the retention, most recent first; older ones are dropped."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zremrangebyscore(TARGETS_KEY, "-inf", now_s - self.retention_s)
            pipe.zrevrange(TARGETS_KEY, 0, MAX_LEARNED_TARGETS - 1)
            _, members = pipe.execute()
        except redis.RedisError as exc:
            raise ReconcileStoreUnavailable(f"cannot read the learned targets: {exc}") from exc
        found = [tuple(m.decode().split("|")) for m in cast(list[bytes], members)]
        # Only well-formed members: one written by hand may not be.
        return [p for p in found if len(p) == {"queue": 5, "workflow": 4}.get(p[0])]

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoint(self, stream: str) -> datetime | None:
        try:
            raw = cast(bytes | None, self._redis.hget(CHECKPOINTS_KEY, stream))
        except redis.RedisError as exc:
            raise ReconcileStoreUnavailable(f"cannot read the checkpoint: {exc}") from exc
        return None if raw is None else datetime.fromtimestamp(float(raw), UTC)

    def set_checkpoint(self, stream: str, when: datetime) -> None:
        try:
            self._redis.hset(CHECKPOINTS_KEY, stream, str(when.timestamp()))
        except redis.RedisError as exc:
            raise ReconcileStoreUnavailable(f"cannot write the checkpoint: {exc}") from exc

    # -- locks ----------------------------------------------------------------------------

    @contextmanager
    def lock(self, name: str) -> Iterator[Lock | None]:
        """Hold ``name`` for one pass; yields None when another pass holds it."""
        token = secrets.token_hex(8)
        try:
            taken = self._redis.set(LOCK_PREFIX + name, token, nx=True, ex=self._lock_ttl_s)
        except redis.RedisError as exc:
            raise ReconcileStoreUnavailable(f"cannot take the lock of {name}: {exc}") from exc
        if not taken:
            yield None
            return
        try:
            yield Lock(self, name, token)
        finally:
            try:
                self._release(keys=[LOCK_PREFIX + name], args=[token])
            except redis.RedisError as exc:  # it expires by itself
                log.warning("reconcile.lock_not_released", target=name, error=str(exc))

    def refresh(self, name: str, token: str) -> None:
        try:
            self._refresh(keys=[LOCK_PREFIX + name], args=[token, self._lock_ttl_s])
        except redis.RedisError as exc:
            raise ReconcileStoreUnavailable(f"cannot refresh the lock of {name}: {exc}") from exc

    # -- what was already handled ---------------------------------------------------------

    def unhandled(self, keys: Sequence[str]) -> set[str]:
        """The deduplication keys that no callback holds (claimed or done) and that no pass
        has sent: the jobs whose callback is lost."""
        if not keys:
            return set()
        names = [DEDUP_PREFIX + k for k in keys] + [SENT_PREFIX + k for k in keys]
        try:
            values = cast(list[bytes | None], self._redis.mget(names))
        except redis.RedisError as exc:
            raise ReconcileStoreUnavailable(f"cannot read deduplication keys: {exc}") from exc
        held, sent = values[: len(keys)], values[len(keys) :]
        return {k for k, h, s in zip(keys, held, sent, strict=True) if h is None and s is None}

    def mark_sent(self, key: str) -> bool:
        """Record that the job with ``key`` is being sent; False if a pass already did."""
        try:
            return bool(self._redis.set(SENT_PREFIX + key, 1, nx=True, ex=self.retention_s))
        except redis.RedisError as exc:
            raise ReconcileStoreUnavailable(f"cannot mark {key} as sent: {exc}") from exc

    def unmark_sent(self, key: str) -> None:
        """The send failed: a later pass may send it."""
        try:
            self._redis.delete(SENT_PREFIX + key)
        except redis.RedisError as exc:  # then it is not sent again within the retention
            log.warning("reconcile.sent_mark_kept", dedup_key=key, error=str(exc))

    # -- errors -----------------------------------------------------------------------------

    def count_error(self, target: str) -> None:
        """Count a pass CI refused; a count lost to Redis is logged, never raised."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hincrby(ERRORS_KEY, target, 1)
            pipe.hincrby(ERRORS_KEY, "total", 1)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("reconcile.error_not_counted", target=target, error=str(exc))

    def errors(self) -> dict[str, int]:
        raw = cast(dict[bytes, bytes], self._redis.hgetall(ERRORS_KEY))
        return {k.decode(): int(v) for k, v in raw.items()}

    # -- targets found in CICB_CI_BUCKETS -------------------------------------------------

    def keep_discovered(self, targets: list[dict[str, Any]], *, at_s: float) -> None:
        """Keep the targets a look at CI's queues found (``discovery``), for every process."""
        self._redis.set(DISCOVERED_KEY, json.dumps({"at": at_s, "targets": targets}))

    def discovered(self) -> tuple[float, list[dict[str, Any]]] | None:
        """When the targets were last found, and the targets; None if never."""
        raw = cast(bytes | None, self._redis.get(DISCOVERED_KEY))
        if raw is None:
            return None
        data = json.loads(raw)
        return float(data["at"]), list(data["targets"])

    # -- last passes --------------------------------------------------------------------------

    def record_pass(self, target: str, summary: dict[str, Any], *, at: datetime) -> None:
        """Keep what the last pass on ``target`` did; lost to Redis, it is logged."""
        record = {**summary, "at": at.isoformat()}
        try:
            self._redis.hset(PASSES_KEY, target, json.dumps(record))
        except redis.RedisError as exc:
            log.warning("reconcile.pass_not_recorded", target=target, error=str(exc))

    def last_passes(self, limit: int) -> list[dict[str, Any]]:
        """The last pass of each target, the most recent first, at most ``limit``."""
        found: list[dict[str, Any]] = []
        for _, raw in self._redis.hscan_iter(PASSES_KEY, count=limit):
            found.append(json.loads(raw))
            if len(found) >= limit:
                break
        return sorted(found, key=lambda p: str(p.get("at")), reverse=True)
