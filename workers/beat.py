"""Celery beat's scheduler with cicb's heartbeat (``pipeline.reconcile.beats``).

Celery's own scheduler, which keeps no schedule file; while its schedule holds the
reconcile pass it tells the state's Redis it is alive every ``HEARTBEAT_S`` (waking at
least that often), so ``cicb doctor`` can count the beats sending reconcile passes. A Redis
that cannot be reached is logged and never stops the beat.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import redis
from celery import beat

from pipeline import logs
from pipeline.brokers.kind import kind_of
from pipeline.reconcile.beats import HEARTBEAT_S, Beats
from pipeline.settings import get_settings
from workers.app import RECONCILE_TASK

log = logs.get_logger("cicb.beat")


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.beat_id = f"{socket.gethostname()}:{os.getpid()}"
        self._beats: Beats | None = None
        self._next_heartbeat = 0.0
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        wait = float(super().tick(*args, **kwargs))
        if RECONCILE_TASK not in self.schedule:
            return wait
        if time.monotonic() >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = time.monotonic() + HEARTBEAT_S
        return min(wait, HEARTBEAT_S)

    def close(self) -> None:
        if self._beats is not None:
            try:
                self._beats.gone(self.beat_id)
            except redis.RedisError as exc:
                log.warning("beat.heartbeat_failed", beat=self.beat_id, error=str(exc))
        super().close()

    def _heartbeat(self) -> None:
        try:
            if self._beats is None:
                client = kind_of(get_settings()).state_client(timeout_s=2.0)
                if client is None:
                    return  # no Redis for state (RabbitMQ without CICB_REDIS_URL)
                self._beats = Beats(client)
            self._beats.heard(self.beat_id)
        except redis.RedisError as exc:
            log.warning("beat.heartbeat_failed", beat=self.beat_id, error=str(exc))
