"""One route run per callback: deduplication claims in Redis.

Before a callback's route starts, its deduplication key (``TaskFinish:<JobId>:<State>``,
``WorkflowFinish:<RunId>:<State>``) is claimed with an atomic ``SET NX``; a second delivery
finds it and is skipped. The claim lasts ``DEFAULT_CLAIM_TTL_S`` while the route is being
started and ``CICB_DEDUP_TTL_S`` once it has; a failure releases it, so a callback whose
processing failed never blocks a later delivery of it. (Each task message's own run, lease
and completion are ``pipeline.runs``'; the worker's ``cicb.ingest`` makes its claims in the
script that takes its lease, ``Claims``, and gives them back with its lease's release.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis

from pipeline.endpoints import Replicas
from pipeline.errors import TransientError
from pipeline.scripts import queue_script

DEFAULT_CLAIM_TTL_S = 600
PREFIX = "cicb:"
CLAIMED, DONE = "claimed:", "done"

# Release a claim only if this task still holds it.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class GuardUnavailable(TransientError):
    """Redis did not answer; the task is retried, never run unguarded."""


@dataclass(frozen=True, slots=True)
class Claims:
    """Claims of ``keys`` for one owner, for a script to make as ``Guard.claim`` does
    (``names``: their Redis keys; ``value``: the owner's claim; ``ttl_s``: its life)."""

    keys: tuple[str, ...]
    names: tuple[str, ...]
    value: str
    ttl_s: int


def _name(key: str) -> str:
    return PREFIX + "dedup:" + key


class Guard:
    """Deduplication claims in one Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        dedup_ttl_s: int,
        claim_ttl_s: int = DEFAULT_CLAIM_TTL_S,
        replicas: Replicas | None = None,
    ) -> None:
        self._redis = client
        self._replicas = replicas or Replicas()
        self._dedup_ttl_s = dedup_ttl_s
        self._claim_ttl_s = claim_ttl_s
        self._release = client.register_script(_RELEASE)

    def claim(self, key: str, *, owner: str) -> bool:
        """Take the callback ``key`` for ``owner`` (a task id); False if it is taken or done.

        The owner's own earlier claim (its message delivered again) counts as taken by it.
        """
        value = CLAIMED + owner
        name = _name(key)
        try:
            if self._redis.set(name, value, nx=True, ex=self._claim_ttl_s):
                return True
            return cast(bytes | None, self._redis.get(name)) == value.encode()
        except redis.RedisError as exc:
            raise GuardUnavailable(f"cannot claim {key}: {exc}") from exc

    def claims(self, keys: Sequence[str], *, owner: str) -> Claims:
        """``claim``'s of each of ``keys``, for another script to make in its round trip
        (``TaskRuns.start``); ``release_in`` gives them back."""
        return Claims(tuple(keys), tuple(map(_name, keys)), CLAIMED + owner, self._claim_ttl_s)

    def confirm(self, key: str) -> None:
        """The callback's route has started: keep the key for the retention window (with
        ``CICB_MIN_REPLICAS``, on that many replicas too, and the route's first step with
        it, so a failover does not forget that the route ran). Raises ``GuardUnavailable``
        or ``NotReplicated`` (retried: the next delivery finds the key and skips)."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            self.confirm_in(pipe, key)
            self._replicas.wait(pipe)
            answers = pipe.execute()
        except redis.RedisError as exc:
            raise GuardUnavailable(f"cannot confirm {key}: {exc}") from exc
        self._replicas.check(answers)

    def confirm_in(self, pipe: Any, key: str) -> None:
        """``confirm``, queued on ``pipe`` (a pipeline of this Redis), which its caller
        executes (and makes wait for the replicas)."""
        pipe.set(_name(key), DONE, ex=self._dedup_ttl_s)

    def release(self, key: str, *, owner: str) -> None:
        """Give the claim back after a failure, so a later delivery can run the route."""
        # If Redis is away, the claim expires by itself after DEFAULT_CLAIM_TTL_S.
        with contextlib.suppress(redis.RedisError):
            self._release(keys=[_name(key)], args=[CLAIMED + owner])

    def release_in(self, pipe: Any, key: str, *, owner: str) -> None:
        """``release``, queued on ``pipe`` (a pipeline of this Redis) by its caller's last
        round trip."""
        queue_script(pipe, self._release, [_name(key)], [CLAIMED + owner])
