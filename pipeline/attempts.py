"""Attempts: what each run of a route's step did, kept beside the archive.

Every run of a step (a task whose argument is an event) leaves one record: the task, its
route and step, the attempt number, the worker, when it started and ended, its outcome
(``done``, ``retried`` with the wait, ``dead_lettered``, ``skipped`` as a duplicate), the
error's class and reason, and what the action says of itself (``detail``: for ``notify``,
each target tried with the status code or network error, the time it took and the first
KiB of its answer, secrets redacted).

The records of one job (or workflow run) are a Redis list, ``cicb:step-attempts:<job id>``,
newest first, in the Redis of the workers' shared state. A record is written by a script
queued on the pipeline that writes the step's completion record (``TaskRuns.finish``) or
its retry's (``TaskRuns.retried``, ``release``): no round trip of its own. The same script
trims like the archive: each list expires ``CICB_ARCHIVE_RETENTION_S`` after its last
record, and at most ``CICB_ARCHIVE_MAX_ENTRIES`` jobs are kept (the oldest go first).

A step waiting for its retry is also in ``cicb:step-attempts-waiting`` (its task id -> the
retry's message) until its next run records anything: the console counts them, and
``retry_now`` publishes that message at once (the copy waiting for its countdown then finds
the step done and does nothing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import redis

from pipeline.errors import PermanentError
from pipeline.routing import RouteTable
from pipeline.scripts import queue_script

PREFIX = "cicb:step-attempts:"
INDEX_KEY = "cicb:step-attempts-index"
WAITING_KEY = "cicb:step-attempts-waiting"
# Records kept per job: a job's routes are a few steps, each retried a few times.
MAX_PER_JOB = 200
# What is kept of a target's answer.
ANSWER_BYTES = 1024

DONE, RETRIED, DEAD_LETTERED, SKIPPED = "done", "retried", "dead_lettered", "skipped"

# KEYS: the job's list, the index, the waiting hash. ARGV: record, task id, now (ms),
# retention (s), jobs kept, records kept per job, the retry's message ('' : none waits).
_RECORD = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[6]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - 1000 * tonumber(ARGV[4]))
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  for _, key in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
    redis.call('DEL', key)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
if ARGV[7] == '' then
  redis.call('HDEL', KEYS[3], ARGV[2])
else
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[7])
end
return 1
"""


class NotWaiting(PermanentError):
    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        super().__init__(f"no step with task id {task_id!r} is waiting for its retry")


def job_of(args: Iterable[Any]) -> str | None:
    """The job (or run) id of a task's arguments when the first is an event, else None."""
    first = next(iter(args), None)
    if not isinstance(first, dict):
        return None
    ident = first.get("job_id") or first.get("run_id")
    return ident if isinstance(ident, str) and ident else None


def redacted_answer(text: str, redact: Callable[[str], str]) -> str:
    """The first ``ANSWER_BYTES`` of an answer's text, secrets replaced."""
    cut = text.encode("utf-8", "replace")[:ANSWER_BYTES].decode("utf-8", "ignore")
    return redact(cut)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One run of one step. ``step_id`` is the step's task id as its route named it (a
    replayed dead letter runs under a new task id and keeps it); ``step`` its place in the
    chain. Times are ISO 8601; ``wait_s`` and ``due_at`` only for ``retried``."""

    task: str
    task_id: str
    step_id: str
    job_id: str
    route: str
    step: int | None
    attempt: int
    worker: str
    started_at: str
    ended_at: str
    outcome: str
    seconds: float
    error: str | None = None
    reason: str | None = None
    wait_s: float | None = None
    due_at: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attempt:
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A step waiting for its retry, and the message that runs it (its task id)."""

    task_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    retries: int
    headers: dict[str, Any]
    chain: list[dict[str, Any]] | None
    due_at: str

    @classmethod
    def from_json(cls, task_id: str, data: dict[str, Any]) -> Waiting:
        return cls(task_id=task_id, **data)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["task_id"]
        return data


@dataclass(frozen=True, slots=True)
class StepAttempts:
    """The attempts of one step (newest first), as ``cicb attempts`` and the console show."""

    step_id: str
    task: str
    route: str
    step: int | None
    attempts: list[Attempt]

    @property
    def state(self) -> str:
        """The newest attempt's outcome: what became of the step so far."""
        return self.attempts[0].outcome

    def to_json(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "task": self.task,
            "route": self.route,
            "step": self.step,
            "state": self.state,
            "attempts": [a.to_json() for a in self.attempts],
        }


def by_step(attempts: Iterable[Attempt]) -> list[StepAttempts]:
    """Attempts (newest first) grouped by step, in the order each step first ran."""
    groups: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        groups.setdefault(attempt.step_id, []).append(attempt)
    steps = [
        StepAttempts(sid, found[0].task, found[0].route, found[0].step, found)
        for sid, found in groups.items()
    ]
    return sorted(steps, key=lambda s: (s.attempts[-1].started_at, s.step or 0))


class AttemptLog:
    """Write (``record_in``, on the caller's pipeline) and read attempts."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        retention_s: int,
        max_jobs: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self.retention_s = retention_s
        self.max_jobs = max_jobs
        self._clock = clock
        self._record = client.register_script(_RECORD)

    @property
    def enabled(self) -> bool:
        return self.retention_s > 0 and self.max_jobs > 0

    def record_in(self, pipe: Any, attempt: Attempt, waiting: Waiting | None = None) -> None:
        """Queue ``attempt`` (and, for a retry, the message its step waits for) on ``pipe``,
        a pipeline of this Redis that its caller executes; nothing when the log is off."""
        if not self.enabled:
            return
        queue_script(
            pipe,
            self._record,
            [PREFIX + attempt.job_id, INDEX_KEY, WAITING_KEY],
            [
                json.dumps(attempt.to_json(), ensure_ascii=False),
                attempt.task_id,
                int(self._clock() * 1000),
                self.retention_s,
                self.max_jobs,
                MAX_PER_JOB,
                json.dumps(waiting.to_json(), ensure_ascii=False) if waiting else "",
            ],
        )

    def of_job(self, job_id: str) -> list[Attempt]:
        """Every attempt kept for ``job_id``'s steps, newest first. Raises
        ``redis.RedisError``."""
        return self.of_jobs([job_id])[job_id]

    def of_jobs(self, job_ids: Iterable[str]) -> dict[str, list[Attempt]]:
        """``of_job`` for several jobs, in one round trip."""
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.lrange(PREFIX + job_id, 0, -1)
        found: dict[str, list[Attempt]] = {}
        for job_id, raw in zip(ids, pipe.execute(), strict=True):
            attempts = []
            for item in raw:
                try:
                    attempts.append(Attempt.from_json(json.loads(item)))
                except (TypeError, ValueError):
                    continue
            found[job_id] = attempts
        return found

    def waiting(self) -> list[Waiting]:
        """The steps waiting for their retry, soonest due first."""
        raw = self._redis.hgetall(WAITING_KEY)
        found = []
        for task_id, data in raw.items():
            try:
                name = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
                found.append(Waiting.from_json(name, json.loads(data)))
            except (TypeError, ValueError):
                continue
        return sorted(found, key=lambda w: w.due_at)

    def waiting_count(self) -> int:
        return int(self._redis.hlen(WAITING_KEY))

    def waiting_task(self, task_id: str) -> Waiting:
        """The message of a step waiting for its retry; raises ``NotWaiting``."""
        raw = self._redis.hget(WAITING_KEY, task_id)
        if raw is None:
            raise NotWaiting(task_id)
        return Waiting.from_json(task_id, json.loads(raw))


def now_iso(moment_s: float) -> str:
    return datetime.fromtimestamp(moment_s, UTC).isoformat()


class Sender(Protocol):
    def send(
        self,
        task: str,
        args: list[Any] | tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
        *,
        queue_name: str,
        chain: list[dict[str, Any]] | None = None,
        headers: dict[str, Any] | None = None,
        task_id: str | None = None,
        retries: int = 0,
    ) -> str: ...


def retry_now(log: AttemptLog, task_id: str, publisher: Sender) -> Waiting:
    """Send the message of the step waiting for its retry (task id ``task_id``) now: the
    same task id, arguments, attempt number, headers and chain. Its copy waiting for the
    countdown finds it done, later, and does nothing. Raises ``NotWaiting``,
    ``BrokerUnavailable``."""
    waiting = log.waiting_task(task_id)
    publisher.send(
        waiting.task,
        waiting.args,
        waiting.kwargs,
        queue_name=waiting.queue,
        chain=waiting.chain,
        headers=waiting.headers,
        task_id=waiting.task_id,
        retries=waiting.retries,
    )
    return waiting


def route_steps(events: Iterable[dict[str, Any]], table: RouteTable) -> dict[str, str]:
    """The step ids of the routes the events of one archived callback started (each event
    as the archive keeps it: ``route``, ``outcome``, ``key``), to their job or run id."""
    routes = {r.name: r for r in table.routes}
    found: dict[str, str] = {}
    for event in events:
        route = routes.get(event.get("route") or "")
        job_id = event.get("job_id") or event.get("run_id")
        if route is None or not event.get("key") or not job_id:
            continue
        for step_id in route.step_ids(event["key"]):
            found[step_id] = job_id
    return found
