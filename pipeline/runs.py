"""One run at a time of each task message, and none after it finished: leases, completion
records and delivery counts in Redis.

- **A lease.** Before a message's task runs, it takes ``cicb:lease:<task id>`` (``SET NX``
  with an expiry of ``lease_s``). The worker's main process renews the leases of the tasks
  it runs (``renew``), so a lease outlives the run only when its holder died or lost Redis:
  it then expires, at most ``lease_s`` later, and the next copy runs. A copy that finds the
  lease held does not run: it waits (``Start.wait_s``) and looks again. The script that
  takes the lease also makes the claims its task asks for (``cicb.ingest``'s deduplication
  keys, ``pipeline.guard``), and only for a run that will run.
- **A completion record.** A task that finished records ``cicb:done:<task id>`` with the
  lease's release, in one script; a copy delivered later does nothing. A task that schedules
  a retry marks the attempts up to its own as superseded (``cicb:retried:<task id>``), so
  an older copy of it (one waiting for the lease) does not run with the older arguments.
- **A bound on deliveries.** Each run of a message is counted per attempt; past
  ``max_deliveries`` (it killed its worker each time) it is dead-lettered instead.

The trade-off of ``lease_s``: a worker killed in the middle of a step delays that step's
next run by at most one lease; a worker cut off from Redis for longer than a lease, while
its step keeps running, lets a second copy start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis

from pipeline.brokers.inflight import DUE_KEY, SUSPECTS_KEY, Inflight
from pipeline.brokers.inflight import KEYS as INFLIGHT_KEYS
from pipeline.endpoints import Replicas
from pipeline.errors import TransientError
from pipeline.guard import Claims
from pipeline.scripts import queue_script

PREFIX = "cicb:"
DEFAULT_LEASE_S = 30.0
DEFAULT_LEASE_RENEW_S = 5.0

# KEYS: done, retried, lease, deliveries, then the deduplication keys to claim. ARGV:
# attempt, owner, lease (ms), ttl (s), most deliveries, claim, claim's ttl (s). The claims
# are made only by a run that will run (as ``Guard.claim``: taken, or this owner's already);
# one answer each, 1 or 0, after the run's three.
_START = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'done', 0, 0} end
local retried = redis.call('GET', KEYS[2])
if retried and tonumber(ARGV[1]) <= tonumber(retried) then return {'superseded', 0, 0} end
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then
  return {'leased', 0, redis.call('PTTL', KEYS[3])}
end
local n = redis.call('INCR', KEYS[4])
redis.call('EXPIRE', KEYS[4], ARGV[4])
local answers = {'run', n, 0}
if n <= tonumber(ARGV[5]) then
  for i = 5, #KEYS do
    local taken = redis.call('SET', KEYS[i], ARGV[6], 'NX', 'EX', ARGV[7])
    if not taken then taken = redis.call('GET', KEYS[i]) == ARGV[6] end
    answers[i - 1] = taken and 1 or 0
  end
end
return answers
"""

# KEYS: done, lease, then (optional) the in-flight record's keys. ARGV: owner, ttl (s),
# task id.
_FINISH = """
redis.call('SET', KEYS[1], 1, 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
if #KEYS > 2 then
  redis.call('ZREM', KEYS[3], ARGV[3])
  for i = 4, #KEYS do redis.call('HDEL', KEYS[i], ARGV[3]) end
end
return 1
"""

# KEYS: retried, lease. ARGV: attempt, owner, ttl (s).
_RETRIED = """
local before = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > before then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3]) end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS: lease. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: leases. ARGV: lease (ms), then each lease's owner. Only a lease its owner holds is
# renewed: a task that has not taken its lease yet must find it free.
_RENEW = """
local kept = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
    kept = kept + 1
  end
end
return kept
"""


class RunsUnavailable(TransientError):
    """Redis did not answer; the task is retried, never run unguarded."""


@dataclass(frozen=True, slots=True)
class Start:
    """What a delivered message may do: ``run`` (it holds the lease; ``deliveries`` counts
    this one), or not: its task is ``done``, this attempt was ``superseded`` by a retry, or
    another copy holds the lease (``leased``: look again in ``wait_s``). ``claimed``: the
    answer to each claim made with the lease (none when it will not run)."""

    state: Literal["run", "done", "superseded", "leased"]
    deliveries: int = 0
    wait_s: float = 0.0
    claimed: Mapping[str, bool] = field(default_factory=dict)


def lease_key(task_id: str) -> str:
    return f"{PREFIX}lease:{task_id}"


def done_key(task_id: str) -> str:
    return f"{PREFIX}done:{task_id}"


class TaskRuns:
    def __init__(
        self,
        client: redis.Redis,
        *,
        ttl_s: int,
        max_deliveries: int,
        lease_s: float = DEFAULT_LEASE_S,
        replicas: Replicas | None = None,
    ) -> None:
        self.client = client
        self._replicas = replicas or Replicas()
        self._ttl_s = ttl_s
        self.max_deliveries = max_deliveries
        self.lease_s = lease_s
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._retried = client.register_script(_RETRIED)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    def start(
        self, task_id: str, attempt: int, owner: str, *, claims: Claims | None = None
    ) -> Start:
        """A message's task (``attempt``: its retry number) is about to run for ``owner``;
        with ``claims`` (``Guard.claims``), a run that will run makes them too. One round
        trip; raises ``RunsUnavailable``."""
        keys = [
            done_key(task_id),
            f"{PREFIX}retried:{task_id}",
            lease_key(task_id),
            f"{PREFIX}deliveries:{task_id}:{attempt}",
            *(claims.names if claims else ()),
        ]
        args: list[Any] = [
            attempt,
            owner,
            int(self.lease_s * 1000),
            self._ttl_s,
            self.max_deliveries,
        ]
        if claims:
            args += [claims.value, claims.ttl_s]
        try:
            state, count, pttl_ms, *answers = self._start(keys=keys, args=args)
        except redis.RedisError as exc:
            raise RunsUnavailable(f"cannot start {task_id}: {exc}") from exc
        name = state.decode() if isinstance(state, bytes) else str(state)
        claimed = dict(zip(claims.keys, map(bool, answers), strict=False)) if claims else {}
        return Start(cast(Any, name), int(count), max(int(pttl_ms), 0) / 1000, claimed)

    def finish(
        self,
        task_id: str,
        owner: str,
        *,
        forget: Inflight | None = None,
        before: Sequence[Callable[[Any], None]] = (),
    ) -> None:
        """The task finished: record it and release the lease; with ``forget``, its message
        is no longer kept in flight (in the same script when it lives in the same Redis).
        ``before``: what else the task wrote as it ended, each queuing its commands on the
        pipeline this executes, ahead of the record. With ``CICB_MIN_REPLICAS``, all of it
        is on that many replicas when this returns. Raises ``redis.RedisError``,
        ``NotReplicated``."""
        keys = [done_key(task_id), lease_key(task_id)]
        same = forget is not None and forget.client is self.client
        if same:
            keys += list(INFLIGHT_KEYS)
        self._replicated(self._finish, keys, [owner, self._ttl_s, task_id], before=before)
        if forget is not None and not same:
            forget.forget(task_id)

    def retried(
        self,
        task_id: str,
        attempt: int,
        owner: str,
        *,
        before: Sequence[Callable[[Any], None]] = (),
    ) -> None:
        """The task scheduled its next attempt: attempts up to ``attempt`` will not run
        again, and the lease is free for the next. With ``CICB_MIN_REPLICAS``, this and the
        retry's message (published before) are on the replicas when it returns. ``before``:
        as ``finish``'s. Raises ``redis.RedisError``, ``NotReplicated``."""
        keys = [f"{PREFIX}retried:{task_id}", lease_key(task_id)]
        self._replicated(self._retried, keys, [attempt, owner, self._ttl_s], before=before)

    def release(
        self, task_id: str, owner: str, *, before: Sequence[Callable[[Any], None]] = ()
    ) -> None:
        """Give the lease back (the task failed, or its retry could not be sent); with
        ``CICB_MIN_REPLICAS``, once the replicas have what it did before. ``before``: as
        ``finish``'s. Raises ``redis.RedisError``, ``NotReplicated``."""
        self._replicated(self._release, [lease_key(task_id)], [owner], before=before)

    def _replicated(
        self,
        script: Any,
        keys: list[str],
        args: list[Any],
        *,
        before: Sequence[Callable[[Any], None]] = (),
    ) -> None:
        """Run ``before``'s writes and ``script``, then ``WAIT`` for the replicas, in one
        round trip."""
        pipe = self.client.pipeline(transaction=False)
        for write in before:
            write(pipe)
        queue_script(pipe, script, keys, args)
        self._replicas.wait(pipe)
        self._replicas.check(pipe.execute())

    def renew(self, owners: Mapping[str, str]) -> int:
        """Renew the leases of running tasks (task id -> owner) for another ``lease_s``;
        return how many are still theirs. Raises ``redis.RedisError``."""
        if not owners:
            return 0
        ids = list(owners)
        return int(
            self._renew(
                keys=[lease_key(i) for i in ids],
                args=[int(self.lease_s * 1000), *(owners[i] for i in ids)],
            )
        )

    def states(self, task_ids: Iterable[str], inflight: Inflight | None) -> dict[str, str]:
        """What each task is now, for a person: ``done``, ``running`` (its lease held),
        ``lost`` (its message on no queue and held by no live worker: being published
        again), ``in flight`` (its message waiting or held by a worker), or ``not started``
        (none of these: not yet sent, or its records expired)."""
        ids = list(task_ids)
        found = self.settled(ids)
        rest = [i for i in ids if i not in found]
        if inflight is not None and rest:
            pipe = inflight.client.pipeline(transaction=False)
            for task_id in rest:
                pipe.zscore(DUE_KEY, task_id)
                pipe.hexists(SUSPECTS_KEY, task_id)
            answers = pipe.execute()
            for i, task_id in enumerate(rest):
                if answers[2 * i + 1]:
                    found[task_id] = "lost"
                elif answers[2 * i] is not None:
                    found[task_id] = "in flight"
        return {i: found.get(i, "not started") for i in ids}

    def settled(self, task_ids: Iterable[str]) -> dict[str, str]:
        """Of ``task_ids``, those ``done`` and those ``running`` (a lease held)."""
        ids = list(task_ids)
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            pipe.exists(done_key(task_id))
            pipe.exists(lease_key(task_id))
        answers = pipe.execute()
        found = {}
        for i, task_id in enumerate(ids):
            if answers[2 * i]:
                found[task_id] = "done"
            elif answers[2 * i + 1]:
                found[task_id] = "running"
        return found
