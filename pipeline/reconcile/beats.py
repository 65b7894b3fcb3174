"""The beats sending reconcile passes, each heard from by its heartbeat.

Celery beat keeps nothing in Redis of its own, so a beat whose schedule holds the reconcile
pass (``workers.beat.Scheduler``) writes its id and the time into one sorted set every
``HEARTBEAT_S``, and takes itself out when it stops. ``cicb doctor`` counts the beats heard
from within ``STALE_S``: there should be exactly one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

import redis

BEATS_KEY: Final = "cicb:beats"
HEARTBEAT_S: Final = 10.0
"""How often a beat says it is alive."""
STALE_S: Final = 3 * HEARTBEAT_S
"""A beat not heard from for this long (three heartbeats missed) is taken as gone."""
FORGET_S: Final = 24 * 3600
"""Beats gone longer than this leave the set."""


@dataclass(frozen=True, slots=True)
class Beat:
    beat_id: str
    last_heard_s: float
    """Seconds since the epoch."""


class Beats:
    """The heartbeats of the beats, in the state's Redis. ``clock``: seconds since the epoch."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key: str = BEATS_KEY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self.key = key
        self._clock = clock

    def heard(self, beat_id: str) -> None:
        """``beat_id`` is alive now (and beats gone a day are forgotten)."""
        now = self._clock()
        pipe = self._redis.pipeline()
        pipe.zadd(self.key, {beat_id: now})
        pipe.zremrangebyscore(self.key, "-inf", now - FORGET_S)
        pipe.execute()

    def gone(self, beat_id: str) -> None:
        """``beat_id`` stopped."""
        self._redis.zrem(self.key, beat_id)

    def alive(self, *, within_s: float = STALE_S) -> list[Beat]:
        """The beats heard from within ``within_s``, the most recent first."""
        return [b for b in self.known() if b.last_heard_s >= self._clock() - within_s]

    def known(self) -> list[Beat]:
        """Every beat heard from in the last day, the most recent first."""
        found = cast(
            list[tuple[bytes, float]], self._redis.zrevrange(self.key, 0, -1, withscores=True)
        )
        return [Beat(member.decode(), float(score)) for member, score in found]
