"""What a worker process works with, built when the process starts, never at import.

``resources()`` builds them on first use and keeps them for the process: the settings, the
Redis that holds what workers share (``CICB_REDIS_URL``, else a Redis broker), and in it the
guard (deduplication, completion records, delivery counts), the in-flight records (on a
Redis broker only) and the archive; and the notify targets, the
webhook secret and the copy destination, parsed and checked. The worker builds them as it
starts (``workers.app``), so a bad setting stops it with one line instead of dead-lettering
every task that needs it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import redis

from pipeline import logs
from pipeline.actions.copying import CopyTarget
from pipeline.actions.resubmit import DEFAULT_NEVER_RETRY_CODES
from pipeline.actions.signing import webhook_secret_bytes
from pipeline.actions.targets import Target
from pipeline.archive import Archive
from pipeline.brokers.inflight import Inflight
from pipeline.brokers.kind import BrokerKind, kind_of
from pipeline.guard import Guard
from pipeline.settings import Settings, get_settings

# Kept messages are published again this long after kombu's own restore (every 10 s) has
# had its chance.
SWEEP_GRACE_S = 20.0

log = logs.get_logger("cicb.resources")


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    kind: BrokerKind
    client: redis.Redis | None
    guard: Guard | None
    inflight: Inflight | None
    notify_targets: tuple[Target, ...]
    webhook_key: bytes | None
    copy_target: CopyTarget | None
    never_retry_codes: frozenset[str]
    # Where cicb.ingest keeps each body it handled (None: off, or no Redis).
    archive: Archive | None = None

    @classmethod
    def build(cls, settings: Settings) -> Resources:
        """Raises ``ConfigError`` naming the first bad setting."""
        kind = kind_of(settings)
        client = redis.Redis.from_url(kind.state_url, socket_timeout=5) if kind.state_url else None
        return cls(
            settings=settings,
            kind=kind,
            client=client,
            guard=(
                Guard(
                    client,
                    dedup_ttl_s=settings.dedup_ttl_s,
                    max_deliveries=settings.max_deliveries,
                )
                if client
                else None
            ),
            inflight=(
                kind.inflight(client, lost_after_s=settings.visibility_timeout_s + SWEEP_GRACE_S)
                if client
                else None
            ),
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
        )

    def finished(self, task_id: str) -> None:
        """A task finished: its completion record, and its message no longer kept
        (``pipeline.brokers.inflight``), written in one round trip."""
        if self.client is None or self.guard is None:
            return
        pipe = self.client.pipeline(transaction=False)
        self.guard.complete(task_id, pipe)
        if self.inflight is not None:
            self.inflight.forget(task_id, pipe)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # At worst a redelivery of this message, or the sweep's copy of it, runs it again.
            log.warning("task.finish_not_recorded", task_id=task_id, error=str(exc))


@functools.cache
def resources() -> Resources:
    """This process's resources, built on first use (no connection is opened until used)."""
    return Resources.build(get_settings())
