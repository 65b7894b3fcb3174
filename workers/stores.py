"""What workers keep in Redis (``CICB_REDIS_URL``), on one connection pool per process.

``guard`` (deduplication, completion records, delivery counts), ``inflight`` (every task
message until its task finishes; on a Redis broker only) and ``counters`` (outcomes for
``/metrics``). All are ``None``, or count nothing, when there is no Redis to keep them in.
"""

from __future__ import annotations

import redis

from pipeline import logs
from pipeline.counters import Counters
from pipeline.guard import Guard
from pipeline.inflight import Inflight
from pipeline.settings import get_settings

# Kept messages are published again this long after kombu's own restore (every 10 s) has
# had its chance.
SWEEP_GRACE_S = 20.0

log = logs.get_logger("cicb.stores")
settings = get_settings()
client = redis.Redis.from_url(settings.redis_url, socket_timeout=5) if settings.redis_url else None
counters = Counters(client)
guard = (
    Guard(client, dedup_ttl_s=settings.dedup_ttl_s, max_deliveries=settings.max_deliveries)
    if client
    else None
)
inflight = (
    Inflight(client, lost_after_s=settings.visibility_timeout_s + SWEEP_GRACE_S)
    if client and settings.broker_is_redis
    else None
)


def finished(task_id: str) -> None:
    """A task finished: its completion record, and its message no longer kept
    (``pipeline.inflight``), written in one round trip."""
    if client is None or guard is None:
        return
    pipe = client.pipeline(transaction=False)
    guard.complete(task_id, pipe)
    if inflight is not None:
        inflight.forget(task_id, pipe)
    try:
        pipe.execute()
    except redis.RedisError as exc:
        # At worst a redelivery of this message, or the sweep's copy of it, runs it again.
        log.warning("task.finish_not_recorded", task_id=task_id, error=str(exc))
