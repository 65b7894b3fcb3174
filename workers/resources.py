"""What a worker process works with, built when the process starts, never at import.

``resources()`` builds them on first use and keeps them for the process: the settings, the
Redis that holds what workers share (``CICB_REDIS_URL``, else a Redis broker), and in it the
guard (deduplication), the task runs (leases, completion records, delivery counts) and the
archive; the in-flight records (on a Redis broker, in it); and the notify targets, the
webhook secret and the copy destination, parsed and checked. The worker builds them as it
starts (``workers.app``), so a bad setting stops it with one line instead of dead-lettering
every task that needs it.
"""

from __future__ import annotations

import functools
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import logs
from pipeline.actions.copying import CopyTarget
from pipeline.actions.resubmit import DEFAULT_NEVER_RETRY_CODES
from pipeline.actions.signing import webhook_secret_bytes
from pipeline.actions.targets import Target
from pipeline.archive import Archive
from pipeline.attempts import AttemptLog
from pipeline.brokers.countdowns import Countdowns
from pipeline.brokers.inflight import Inflight
from pipeline.brokers.kind import BrokerKind, kind_of, replicas_of
from pipeline.endpoints import NotReplicated
from pipeline.guard import Guard
from pipeline.runs import TaskRuns
from pipeline.settings import Settings, get_settings

# How long a finished task keeps trying to record it while Redis is away: its lease is kept
# meanwhile, so no copy runs it again when Redis is back.
FINISH_PATIENCE_S = 300.0
FINISH_RETRY_S = 0.5

log = logs.get_logger("cicb.resources")


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    kind: BrokerKind
    client: redis.Redis | None
    guard: Guard | None
    runs: TaskRuns | None
    inflight: Inflight | None
    notify_targets: tuple[Target, ...]
    webhook_key: bytes | None
    copy_target: CopyTarget | None
    never_retry_codes: frozenset[str]
    # Where cicb.ingest keeps each body it handled (None: off, or no Redis).
    archive: Archive | None = None
    # Tasks waiting for a countdown, on RabbitMQ's quorum queues (None: elsewhere).
    countdowns: Countdowns | None = None
    # Where each run of a route's step is recorded (None: the archive is off, or no Redis).
    attempts: AttemptLog | None = None
    # This worker: its host and main process (resources are built there, before the pool
    # forks), as its heartbeats and leases name it.
    worker: str = ""

    @classmethod
    def build(cls, settings: Settings) -> Resources:
        """Raises ``ConfigError`` naming the first bad setting."""
        kind = kind_of(settings)
        client = kind.state_client()
        replicas = replicas_of(settings)
        return cls(
            settings=settings,
            kind=kind,
            client=client,
            guard=(
                Guard(client, dedup_ttl_s=settings.dedup_ttl_s, replicas=replicas)
                if client
                else None
            ),
            runs=(
                TaskRuns(
                    client,
                    ttl_s=settings.dedup_ttl_s,
                    max_deliveries=settings.max_deliveries,
                    lease_s=settings.step_lease_s,
                    replicas=replicas,
                )
                if client
                else None
            ),
            inflight=kind.inflight(client),
            notify_targets=tuple(Target.parse(url) for url in settings.notify_urls),
            webhook_key=(
                webhook_secret_bytes(settings.notify_secret) if settings.notify_secret else None
            ),
            copy_target=CopyTarget.parse(settings.copy_dest) if settings.copy_dest else None,
            never_retry_codes=(
                frozenset(settings.retry_never_codes)
                if settings.retry_never_codes is not None
                else DEFAULT_NEVER_RETRY_CODES
            ),
            archive=Archive.configured(client, settings),
            attempts=(
                AttemptLog(
                    client,
                    retention_s=settings.archive_retention_s,
                    max_jobs=settings.archive_max_entries,
                )
                if client is not None
                else None
            ),
            countdowns=(
                Countdowns(client, replicas=replicas)
                if client is not None and kind.keeps_countdowns(settings)
                else None
            ),
            worker=f"{socket.gethostname()}/{os.getpid()}",
        )

    def owner(self) -> str:
        """Who runs a task in this process, as its lease says: the worker and the process."""
        return f"{self.worker}/{os.getpid()}"

    def finished(
        self,
        task_id: str,
        owner: str,
        *,
        forget: bool,
        before: Sequence[Callable[[Any], None]] = (),
    ) -> None:
        """A task finished: its completion record and its lease released, and with
        ``forget`` its message no longer kept in flight, in one round trip when both live in
        one Redis; ``before``, what else it wrote as it ended, in the same round trip
        (``TaskRuns.finish``)."""
        if (runs := self.runs) is not None:
            inflight = self.inflight if forget else None
            self._patiently(
                "finish",
                task_id,
                lambda: runs.finish(task_id, owner, forget=inflight, before=before),
            )

    @property
    def one_redis(self) -> bool:
        """Whether the state (leases, records, archive) lives in the broker's Redis, so a
        task's last write can carry its task messages too."""
        return self.inflight is not None and self.inflight.client is self.client

    def retried(
        self,
        task_id: str,
        attempt: int,
        owner: str,
        *,
        before: Sequence[Callable[[Any], None]] = (),
    ) -> None:
        """A task scheduled its next attempt: ``attempt`` is superseded, the lease free;
        ``before`` as ``finished``'s."""
        if (runs := self.runs) is not None:
            self._patiently(
                "retry", task_id, lambda: runs.retried(task_id, attempt, owner, before=before)
            )

    def released(
        self, task_id: str, owner: str, *, before: Sequence[Callable[[Any], None]] = ()
    ) -> None:
        """A task ended without finishing (it failed, or could not schedule its retry);
        ``before`` as ``finished``'s."""
        if (runs := self.runs) is not None:
            self._patiently("release", task_id, lambda: runs.release(task_id, owner, before=before))

    def _patiently(self, end: str, task_id: str, write: Callable[[], None]) -> None:
        """Write how a task ended; while Redis is away, keep trying for up to
        ``FINISH_PATIENCE_S``. Its lease is still held meanwhile, so no copy runs the task
        again before Redis knows what this run did."""
        deadline = time.monotonic() + FINISH_PATIENCE_S
        while True:
            try:
                write()
                return
            except (redis.RedisError, NotReplicated) as exc:
                if time.monotonic() > deadline:
                    # At worst a copy of this message, once the lease expires, runs it again.
                    log.warning("task.end_not_recorded", end=end, task_id=task_id, error=str(exc))
                    return
                log.info("task.waiting_for_redis", end=end, task_id=task_id, error=str(exc))
                time.sleep(FINISH_RETRY_S)

    def forget(self, task_id: str) -> None:
        """The task's message is no longer kept in flight (kept: the sweep brings it back,
        and its completion record makes that copy a no-op)."""
        if self.inflight is None:
            return
        try:
            self.inflight.forget(task_id)
        except redis.RedisError as exc:
            log.warning("inflight.not_forgotten", task_id=task_id, error=str(exc))


@functools.cache
def resources() -> Resources:
    """This process's resources, built on first use (no connection is opened until used)."""
    return Resources.build(get_settings())
