"""Tasks that wait for a countdown on RabbitMQ's quorum queues: kept in Redis until they are
due, then published.

Celery's way on quorum queues is RabbitMQ's native delayed delivery: the message waits in a
chain of quorum queues with a TTL, and RabbitMQ dead-letters it onward (at least once) until
it reaches its queue. When a RabbitMQ node dies, a delay queue it led can stop moving its
expired messages on (its dead-letter worker does not come back with the new leader: RabbitMQ
issue 16652): cicb's cluster scenario lost a quarter of the resubmissions scheduled 1 s
ahead after the node leading ``ingest`` (and the delay queues) was SIGKILLed. So a cicb task
(``PipelineTask``) given a countdown on quorum queues is written here instead, in cicb's
Redis (beside the leases and completion records, replicated as ``CICB_MIN_REPLICAS`` says),
and each worker's keeper thread publishes what is due, on whichever node is up.

A due entry is claimed (its time pushed ``CLAIM_S`` ahead) before it is published and
removed after: a worker that dies in between leaves it to be published again, and the
task's lease and completion record make that copy run nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from kombu.utils.json import dumps, loads

from pipeline.endpoints import Replicas
from pipeline.scripts import queue_script

DUE_KEY = "cicb:countdowns"  # task id -> when it is due (Redis time, s)
TASKS_KEY = "cicb:countdowns:tasks"  # task id -> the task, its arguments and options
# A claimed entry not removed this long after (its publisher died) is due again.
CLAIM_S = 30.0
BATCH = 200

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: due, tasks. ARGV: delay (s), task id, the task.
_SCHEDULE = (
    _NOW
    + """
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
return 1
"""
)

# KEYS: due, tasks. ARGV: batch, claim (s). The due entries, each claimed for ``claim`` s:
# {id, task, id, task, ...}.
_CLAIM = (
    _NOW
    + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local found = {}
for _, id in ipairs(ids) do
  local task = redis.call('HGET', KEYS[2], id)
  if task then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    found[#found + 1] = id
    found[#found + 1] = task
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return found
"""
)


@dataclass(frozen=True, slots=True)
class Due:
    """A task whose countdown is over: its name, arguments and Celery's options."""

    task_id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: dict[str, Any]


class Countdowns:
    def __init__(self, client: redis.Redis, *, replicas: Replicas | None = None) -> None:
        self.client = client
        self._replicas = replicas or Replicas()
        self._schedule = client.register_script(_SCHEDULE)
        self._claim = client.register_script(_CLAIM)

    def schedule(
        self,
        delay_s: float,
        task_id: str,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        options: dict[str, Any],
    ) -> None:
        """Keep the task until ``delay_s`` from now (Redis's clock); with
        ``CICB_MIN_REPLICAS``, on that many replicas when this returns. Raises
        ``redis.RedisError``, ``NotReplicated``."""
        task = dumps({"name": name, "args": args, "kwargs": kwargs, "options": options})
        pipe = self.client.pipeline(transaction=False)
        queue_script(pipe, self._schedule, [DUE_KEY, TASKS_KEY], [delay_s, task_id, task])
        self._replicas.wait(pipe)
        self._replicas.check(pipe.execute())

    def publish_due(self, publish: Callable[[Due], None]) -> int:
        """Claim what is due and ``publish`` each, removing it once published; return how
        many were. An entry whose ``publish`` raised stays, to be tried again once its
        claim runs out. Raises ``redis.RedisError``."""
        found = self._claim(keys=[DUE_KEY, TASKS_KEY], args=[BATCH, CLAIM_S])
        published = []
        try:
            for raw_id, raw_task in zip(found[::2], found[1::2], strict=True):
                task_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                task = loads(raw_task)
                publish(Due(task_id, task["name"], task["args"], task["kwargs"], task["options"]))
                published.append(task_id)
        finally:
            if published:
                pipe = self.client.pipeline(transaction=False)
                pipe.zrem(DUE_KEY, *published)
                pipe.hdel(TASKS_KEY, *published)
                pipe.execute()
        return len(published)
