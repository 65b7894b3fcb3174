"""Outcome counters shared by every worker, kept in Redis, shown by the receiver's /metrics.

Workers run in many processes on many machines, so their counts live in one Redis hash
(``CICB_REDIS_URL``, by default the broker when it is Redis) rather than in each process.
"""

from __future__ import annotations

from typing import cast

import redis

from pipeline import logs

COUNTERS_KEY = "cicb:counters"

log = logs.get_logger("cicb.counters")


class Counters:
    """Cumulative counts by outcome (``dispatched``, ``unrouted``, ``dead_lettered``)."""

    def __init__(self, client: redis.Redis | None) -> None:
        self._client = client

    @classmethod
    def from_url(cls, url: str | None) -> Counters:
        return cls(redis.Redis.from_url(url, socket_timeout=2) if url else None)

    @property
    def enabled(self) -> bool:
        return self._client is not None

    def add(self, outcome: str, amount: int = 1) -> None:
        """Count ``outcome``; a count lost to a Redis failure is logged, never raised."""
        if self._client is None:
            return
        try:
            self._client.hincrby(COUNTERS_KEY, outcome, amount)
        except redis.RedisError as exc:
            log.warning("counter.lost", outcome=outcome, error=str(exc))

    def read(self) -> dict[str, int]:
        if self._client is None:
            return {}
        raw = cast(dict[bytes, bytes], self._client.hgetall(COUNTERS_KEY))
        return {k.decode(): int(v) for k, v in raw.items()}
