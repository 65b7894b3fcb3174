"""Every task message on a Redis broker, kept until its task finishes, and brought back within
seconds when the message is lost.

kombu's Redis transport takes a message off its list (BRPOP) before it records it as
unacknowledged, and a worker that loses its broker connection forgets what it had taken;
its visibility timeout (two hours by default) is the only way back. So cicb keeps its own
record of each task message, written **in the same script as the message itself**
(``PUBLISH``: the record, then the LPUSH; a record that cannot be written stops the script
before the message goes out, and the publish raises). The record holds the message's exact
bytes, the list it went to and its delivery tag. It is removed when the task finishes
(succeeds, or fails for good and is dead-lettered).

The sweep (``Inflight.sweep``, run by one worker at a time about every second) looks at each
record when it is due and sorts it:

- **held**: a live worker says it holds it (prefetched, waiting for its countdown, running):
  each worker writes what it holds every second (``heartbeat``), and is live while it does;
- **waiting**: not taken by any worker (kombu records what a worker takes in ``unacked``) and
  still on its list (checked with ``LPOS`` only when a worker's connection broke or a worker
  died since the message was published: the only ways a taken message is lost unrecorded);
- **lost**: none of these, twice, ``confirm_s`` apart (a worker that took it a moment ago says
  so at its next heartbeat). A lost message is pushed again, at the front of its queue, with
  a new delivery tag and the same task id, and kombu's own record of the old delivery is
  dropped, so it does not come back a second time two hours later.

The running step's lease (``pipeline.guard``) and its completion record make a copy that was
not needed harmless: it waits for the lease, then finds the step done.

Only on a Redis broker: RabbitMQ keeps a message until it is acked and gives back the unacked
messages of a connection that died.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from pipeline import logs
from pipeline.brokers.messages import body_of
from pipeline.scripts import queue_script

DUE_KEY = "cicb:inflight"  # task id -> when the sweep looks at its record next
MESSAGES_KEY = "cicb:inflight:messages"  # task id -> the message, byte for byte
META_KEY = "cicb:inflight:meta"  # task id -> {"q": list, "tag": delivery tag, "at": published}
SUSPECTS_KEY = "cicb:inflight:lost"  # task id -> when it was first found lost
DISTURBED_KEY = "cicb:inflight:disturbed"  # the last time a worker's connection broke
SWEEP_LOCK_KEY = "cicb:inflight:sweeping"
WORKERS_KEY = "cicb:workers"  # worker name -> its last heartbeat
HELD_PREFIX = "cicb:held:"  # + worker name: the task ids it holds
# kombu's Redis transport keeps what workers took, by delivery tag, here (its defaults).
UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
KEYS = (DUE_KEY, MESSAGES_KEY, META_KEY, SUSPECTS_KEY)
# PUBLISH's keys after the list's.
PUBLISH_KEYS = (MESSAGES_KEY, META_KEY, DUE_KEY, SUSPECTS_KEY)

# A record is first looked at this long after its publication, then every RECHECK_S.
FIRST_CHECK_S = 2.0
RECHECK_S = 2.0
# A worker that wrote no heartbeat for this long is gone; what it held is lost.
WORKER_ALIVE_S = 10.0
# Found lost twice this far apart: published again.
CONFIRM_S = 2.0
HEARTBEAT_S = 1.0
# A message waiting longer than this is looked for on its list even with no disturbance.
LONG_WAIT_S = 300.0
SWEEP_BATCH = 500

log = logs.get_logger("cicb.inflight")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# KEYS: the list, messages, meta, due, suspects. ARGV: first check after (s), then for each
# message its task id, bytes and delivery tag. Records first: if one cannot be written, the
# script stops before the message is pushed.
PUBLISH = (
    _NOW
    + """
local messages = {}
for i = 2, #ARGV, 3 do
  local id = ARGV[i]
  redis.call('HSET', KEYS[2], id, ARGV[i + 1])
  redis.call('HSET', KEYS[3], id, cjson.encode({q = KEYS[1], tag = ARGV[i + 2], at = now}))
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[1]), id)
  redis.call('HDEL', KEYS[5], id)
  messages[#messages + 1] = ARGV[i + 1]
end
return redis.call('LPUSH', KEYS[1], unpack(messages))
"""
)

# KEYS: due, messages, meta, suspects. ARGV: task ids.
FORGET = """
for _, id in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
end
return #ARGV
"""

# KEYS: workers, the worker's held set, disturbed. ARGV: name, alive (s), whether its
# connection broke since its last heartbeat (0/1), then the task ids it holds.
HEARTBEAT = (
    _NOW
    + """
redis.call('DEL', KEYS[2])
if #ARGV > 3 then redis.call('SADD', KEYS[2], unpack(ARGV, 4)) end
redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[2]) * 3))
redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[3] == '1' then redis.call('SET', KEYS[3], now) end
return 1
"""
)

# KEYS: workers, the worker's held set, disturbed. ARGV: name.
GONE = (
    _NOW
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], now)
return 1
"""
)

# KEYS: due, workers, disturbed. ARGV: batch, alive (s). Workers silent for longer than
# ``alive`` are dropped (what they took may be lost unrecorded: a disturbance). Returns the
# ids whose records are due.
DUE = (
    _NOW
    + """
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
for _, name in ipairs(gone) do
  redis.call('ZREM', KEYS[2], name)
  redis.call('DEL', 'cicb:held:' .. name)
  redis.call('SET', KEYS[3], now)
end
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
"""
)

# KEYS: due, messages, meta, suspects, workers, unacked, disturbed. ARGV: alive (s),
# confirm (s), recheck (s), long wait (s), then task ids (not running, not done). Returns,
# for each id, its state and delivery tag: {id, state, tag, ...}.
CLASSIFY = (
    _NOW
    + """
local alive = redis.call('ZRANGEBYSCORE', KEYS[5], now - tonumber(ARGV[1]), '+inf')
local disturbed = tonumber(redis.call('GET', KEYS[7]) or '0')
local confirm, recheck, long = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local meta = redis.call('HGET', KEYS[3], id)
  local state, tag = 'gone', ''
  if meta then
    local m = cjson.decode(meta)
    tag = m.tag
    state = 'lost'
    for _, name in ipairs(alive) do
      if redis.call('SISMEMBER', 'cicb:held:' .. name, id) == 1 then state = 'held' break end
    end
    if state == 'lost' and redis.call('HEXISTS', KEYS[6], m.tag) == 0 then
      -- Taken by no worker: on its list, unless a connection broke since it was published
      -- (or it has waited long: a message no worker wants is no longer kept unchecked).
      local unchecked = m.at > disturbed and now - m.at < long
      if unchecked or redis.call('LPOS', m.q, redis.call('HGET', KEYS[2], id), 'RANK', -1) then
        state = 'waiting'
      end
    end
    if state == 'lost' then
      local since = redis.call('HGET', KEYS[4], id)
      if not since then
        redis.call('HSET', KEYS[4], id, now)
        redis.call('ZADD', KEYS[1], now + confirm, id)
        state = 'suspect'
      elseif now - tonumber(since) < confirm then
        redis.call('ZADD', KEYS[1], tonumber(since) + confirm, id)
        state = 'suspect'
      end
    else
      redis.call('HDEL', KEYS[4], id)
      redis.call('ZADD', KEYS[1], now + recheck, id)
    end
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[4], id)
  end
  out[#out + 1] = id
  out[#out + 1] = state
  out[#out + 1] = tag
end
return out
"""
)

# KEYS: due, messages, meta, suspects, unacked, unacked index. ARGV: recheck (s), then for
# each lost message: task id, the delivery tag it was lost with, new bytes, new tag.
# A record that changed since it was found lost (its task published again) is left alone.
REPUBLISH = (
    _NOW
    + """
local done = 0
for i = 2, #ARGV, 4 do
  local id, old = ARGV[i], ARGV[i + 1]
  local meta = redis.call('HGET', KEYS[3], id)
  if meta then
    local m = cjson.decode(meta)
    if m.tag == old then
      redis.call('HDEL', KEYS[5], old)
      redis.call('ZREM', KEYS[6], old)
      redis.call('HSET', KEYS[2], id, ARGV[i + 2])
      m.tag = ARGV[i + 3]
      redis.call('HSET', KEYS[3], id, cjson.encode(m))
      redis.call('HDEL', KEYS[4], id)
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), id)
      -- At the front of its queue: it was taken before everything waiting there.
      redis.call('RPUSH', m.q, ARGV[i + 2])
      done = done + 1
    end
  end
end
return done
"""
)


def task_message_id(message: dict[str, Any]) -> str | None:
    """The task id of a kombu message dict if it is a Celery task message (protocol 2);
    None for anything else (dead letters, remote-control replies)."""
    headers = message.get("headers") or {}
    task_id = headers.get("id")
    return str(task_id) if task_id and headers.get("task") else None


def with_new_tag(raw: bytes) -> tuple[bytes, str]:
    """The message ``raw`` as a new delivery: a new delivery tag, flagged redelivered."""
    message = json.loads(raw)
    tag = str(uuid.uuid4())
    properties = message.setdefault("properties", {})
    properties["delivery_tag"] = tag
    properties.setdefault("delivery_info", {})["redelivered"] = True
    return json.dumps(message).encode(), tag


def _goes_on(raw: bytes) -> bool:
    """Whether a task message (kombu's envelope, protocol 2) has a chain or callbacks after
    its task; not for what cannot be read."""
    try:
        embed = body_of(raw)[2]
        return bool(embed.get("chain") or embed.get("callbacks"))
    except (ValueError, LookupError, TypeError, AttributeError):
        return False


@dataclass
class SweepResult:
    """What one sweep found, by state, and which task ids it published again."""

    states: dict[str, int] = field(default_factory=dict)
    republished: list[str] = field(default_factory=list)


class Inflight:
    """The records of task messages on one Redis broker (``client``)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        first_check_s: float = FIRST_CHECK_S,
        confirm_s: float = CONFIRM_S,
        recheck_s: float = RECHECK_S,
        alive_s: float = WORKER_ALIVE_S,
    ) -> None:
        self.client = client
        self.first_check_s = first_check_s
        self.confirm_s = confirm_s
        self.recheck_s = recheck_s
        self.alive_s = alive_s
        self._publish = client.register_script(PUBLISH)
        self._forget = client.register_script(FORGET)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._gone = client.register_script(GONE)
        self._due = client.register_script(DUE)
        self._classify = client.register_script(CLASSIFY)
        self._republish = client.register_script(REPUBLISH)

    def publish(
        self,
        queue_key: str,
        messages: Sequence[tuple[str, bytes | str, str]],
        *,
        client: Any = None,
    ) -> None:
        """Push ``messages`` (task id, bytes, delivery tag) onto ``queue_key`` with their
        records, in one script: all of them, or (a record not written) none. Raises
        ``redis.RedisError``."""
        self._publish(
            keys=[queue_key, *PUBLISH_KEYS], args=self._publish_args(messages), client=client
        )

    def publish_in(
        self, pipe: Any, queue_key: str, messages: Sequence[tuple[str, bytes | str, str]]
    ) -> None:
        """``publish``, queued on ``pipe`` (a pipeline of the broker), which its caller
        executes."""
        queue_script(pipe, self._publish, [queue_key, *PUBLISH_KEYS], self._publish_args(messages))

    def _publish_args(self, messages: Sequence[tuple[str, bytes | str, str]]) -> list[Any]:
        args: list[Any] = [self.first_check_s]
        for task_id, raw, tag in messages:
            args += [task_id, raw, tag]
        return args

    def record_restored(self, pipe: Any, queue_key: str, task_id: str, raw: str, tag: str) -> None:
        """kombu put a taken message back on ``queue_key`` (queued on its transaction
        ``pipe``): the record follows it, so the sweep finds it there."""
        meta = json.dumps({"q": queue_key, "tag": tag, "at": 0})
        pipe.hset(MESSAGES_KEY, task_id, raw)
        pipe.hset(META_KEY, task_id, meta)
        pipe.hdel(SUSPECTS_KEY, task_id)

    def forget(self, *task_ids: str, client: Any = None) -> None:
        """The tasks finished (succeeded, or failed for good and were dead-lettered)."""
        if task_ids:
            self._forget(keys=list(KEYS), args=list(task_ids), client=client)

    def count(self) -> int:
        return int(self.client.zcard(DUE_KEY))

    def lost_count(self) -> int:
        """Messages found lost and being published again."""
        return int(self.client.hlen(SUSPECTS_KEY))

    def heartbeat(self, worker: str, held: Iterable[str], *, disturbed: bool = False) -> None:
        """``worker`` is alive and holds the messages of ``held`` (task ids); ``disturbed``:
        its broker connection broke since the last heartbeat."""
        self._heartbeat(
            keys=[WORKERS_KEY, HELD_PREFIX + worker, DISTURBED_KEY],
            args=[worker, self.alive_s, int(disturbed), *held],
        )

    def gone(self, worker: str) -> None:
        """``worker`` stops: it holds nothing any more."""
        self._gone(keys=[WORKERS_KEY, HELD_PREFIX + worker, DISTURBED_KEY], args=[worker])

    def _chained(self, task_ids: Sequence[str]) -> list[str]:
        """Of ``task_ids``, those whose kept message has a chain or callbacks to go on."""
        if not task_ids:
            return []
        raws = cast(list[bytes | None], self.client.hmget(MESSAGES_KEY, list(task_ids)))
        return [i for i, raw in zip(task_ids, raws, strict=True) if raw and _goes_on(raw)]

    def lock(self, holder: str, ttl_s: float) -> bool:
        """Take (or keep) the sweep for ``holder`` for ``ttl_s``."""
        ttl_ms = int(ttl_s * 1000)
        if self.client.set(SWEEP_LOCK_KEY, holder, nx=True, px=ttl_ms):
            return True
        if self.client.get(SWEEP_LOCK_KEY) == holder.encode():
            return bool(self.client.pexpire(SWEEP_LOCK_KEY, ttl_ms))
        return False

    def due(self, batch: int = SWEEP_BATCH) -> list[str]:
        """The task ids whose records are due for a look (dropping silent workers)."""
        ids = self._due(keys=[DUE_KEY, WORKERS_KEY, DISTURBED_KEY], args=[batch, self.alive_s])
        return [i.decode() for i in cast(list[bytes], ids)]

    def sweep(self, settled: dict[str, str], ids: Sequence[str]) -> SweepResult:
        """Sort the records of ``ids``; forget those ``settled`` says are done, leave the
        running ones for later, and push again those lost twice ``confirm_s`` apart.

        ``settled``: the state of the tasks that need no look at the broker, from the
        guard's records (``done`` or ``running``). A done task whose message carries more
        of a chain is looked for like the others: Celery sends the chain's next step only
        once the task has returned, and a broker away then leaves it unsent; the message
        pushed again finds its task done and sends the rest.
        """
        result = SweepResult()
        finished = [i for i in ids if settled.get(i) == "done"]
        going_on = set(self._chained(finished))
        done = [i for i in finished if i not in going_on]
        running = [i for i in ids if settled.get(i) == "running"]
        others = [i for i in ids if i not in settled or i in going_on]
        if done:
            self.forget(*done)
        if running:
            now = self._time()
            self.client.zadd(DUE_KEY, {i: now + self.recheck_s for i in running}, xx=True)
        for state, found in (("done", done), ("running", running)):
            if found:
                result.states[state] = len(found)
        if not others:
            return result
        flat = self._classify(
            keys=[
                DUE_KEY,
                MESSAGES_KEY,
                META_KEY,
                SUSPECTS_KEY,
                WORKERS_KEY,
                UNACKED_KEY,
                DISTURBED_KEY,
            ],
            args=[self.alive_s, self.confirm_s, self.recheck_s, LONG_WAIT_S, *others],
        )
        lost: list[tuple[str, str]] = []
        for i in range(0, len(flat), 3):
            task_id, state, tag = (v.decode() for v in flat[i : i + 3])
            result.states[state] = result.states.get(state, 0) + 1
            if state == "lost":
                lost.append((task_id, tag))
        if lost:
            result.republished = self._push_again(lost)
        return result

    def _push_again(self, lost: list[tuple[str, str]]) -> list[str]:
        raws = cast(list[bytes | None], self.client.hmget(MESSAGES_KEY, [i for i, _ in lost]))
        args: list[Any] = [self.recheck_s]
        again = []
        for (task_id, old_tag), raw in zip(lost, raws, strict=True):
            if raw is None:
                continue
            new_raw, new_tag = with_new_tag(raw)
            args += [task_id, old_tag, new_raw, new_tag]
            again.append(task_id)
        if again:
            self._republish(
                keys=[
                    DUE_KEY,
                    MESSAGES_KEY,
                    META_KEY,
                    SUSPECTS_KEY,
                    UNACKED_KEY,
                    UNACKED_INDEX_KEY,
                ],
                args=args,
            )
            for task_id in again:
                log.warning("message.republished", task_id=task_id)
        return again

    def _time(self) -> float:
        seconds, micros = self.client.time()
        return seconds + micros / 1_000_000
