"""Every task message until its task finishes: so a message the Redis transport drops is
published again.

kombu's Redis transport takes a message off its list (BRPOP) before it records it as
unacknowledged; a worker killed between the two loses it, and the visibility timeout cannot
bring back what was never recorded. So cicb keeps its own record: each task message is
written to ``cicb:inflight`` as it is published, and removed when its task succeeds or
fails for good (a dead letter is not lost). A message still there after ``lost_after_s`` is
published again, with the same task id: if its task did finish, the completion record makes
the copy a no-op (``pipeline.guard``).

Only on a Redis broker: RabbitMQ keeps a message until it is acked and gives back the
unacked messages of a connection that died, and a message merely waiting in its queue
must not be published twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from pipeline import logs

MESSAGES_KEY = "cicb:inflight:messages"
SCORES_KEY = "cicb:inflight"
SWEEP_LOCK_KEY = "cicb:inflight:sweeping"
SWEEP_BATCH = 200

log = logs.get_logger("cicb.inflight")

# Publishes one recorded message again: (body, exchange, routing_key, headers, properties).
Republish = Callable[[Any, str, str, dict[str, Any], dict[str, Any]], None]


class Inflight:
    def __init__(self, client: redis.Redis, *, lost_after_s: float) -> None:
        self._redis = client
        self.lost_after_s = lost_after_s

    @classmethod
    def from_url(cls, url: str, *, lost_after_s: float) -> Inflight:
        return cls(redis.Redis.from_url(url, socket_timeout=5), lost_after_s=lost_after_s)

    def record(
        self,
        *,
        body: Any,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
        properties: dict[str, Any],
    ) -> None:
        """Keep a task message about to be published (Celery's ``before_task_publish``)."""
        task_id = str(headers["id"])
        message = {
            "body": body,
            "exchange": exchange,
            "routing_key": routing_key,
            "headers": headers,
            "properties": {
                k: properties[k]
                for k in ("correlation_id", "priority")
                if properties.get(k) is not None
            },
        }
        pipe = self._redis.pipeline()
        pipe.hset(MESSAGES_KEY, task_id, json.dumps(message))
        pipe.zadd(SCORES_KEY, {task_id: time.time()})
        pipe.execute()

    def forget(self, task_id: str, pipe: redis.client.Pipeline | None = None) -> None:
        """The task finished (succeeded, or failed for good and was dead-lettered).

        With ``pipe``, the removal is queued there, for its caller to send.
        """
        own = pipe is None
        pipe = self._redis.pipeline() if pipe is None else pipe
        pipe.zrem(SCORES_KEY, task_id)
        pipe.hdel(MESSAGES_KEY, task_id)
        if own:
            pipe.execute()

    def count(self) -> int:
        return int(self._redis.zcard(SCORES_KEY))

    def sweep(self, republish: Republish, *, now: float | None = None) -> int:
        """Publish again the messages kept longer than ``lost_after_s``; return how many.

        One worker sweeps at a time (a short Redis lock); each message swept waits another
        ``lost_after_s`` before it can be swept again.
        """
        now = time.time() if now is None else now
        if not self._redis.set(SWEEP_LOCK_KEY, "1", nx=True, ex=60):
            return 0
        try:
            stale = cast(
                list[bytes],
                self._redis.zrangebyscore(
                    SCORES_KEY, 0, now - self.lost_after_s, start=0, num=SWEEP_BATCH
                ),
            )
            for raw_id in stale:
                task_id = raw_id.decode()
                raw = cast(bytes | None, self._redis.hget(MESSAGES_KEY, task_id))
                if raw is None:
                    self._redis.zrem(SCORES_KEY, task_id)
                    continue
                message = json.loads(raw)
                republish(
                    message["body"],
                    message["exchange"],
                    message["routing_key"],
                    message["headers"],
                    message["properties"],
                )
                self._redis.zadd(SCORES_KEY, {task_id: now})
                log.warning(
                    "message.republished", task_id=task_id, task=message["headers"].get("task")
                )
            return len(stale)
        finally:
            self._redis.delete(SWEEP_LOCK_KEY)


def track_publishes(inflight: Inflight) -> None:
    """Record every task message this process publishes (receiver, workers, CLI replay)."""
    from celery.signals import before_task_publish

    from pipeline.errors import BrokerUnavailable

    def record(
        body: Any = None,
        exchange: str = "",
        routing_key: str = "",
        headers: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
        **_: Any,
    ) -> None:
        try:
            inflight.record(
                body=body,
                exchange=exchange or "",
                routing_key=routing_key or "",
                headers=headers or {},
                properties=properties or {},
            )
        except redis.RedisError as exc:
            # Without the record a lost message could not come back: do not publish it.
            raise BrokerUnavailable(f"cannot record the message in Redis: {exc}") from exc

    # Once per process, however many publishers it makes.
    before_task_publish.connect(record, weak=False, dispatch_uid="cicb.inflight")
