"""The checks of cicb's processes: the receiver, the workers, the beat.

- The receiver answers ``GET /readyz`` (its broker reachable) at ``CICB_RECEIVER_URL`` (or
  the local one), and takes doctor's token: a ``POST /callbacks`` with the token and no
  body is answered ``400 empty body`` once the token is accepted (``401`` when not), and
  nothing is enqueued.
- At least one worker answers Celery's ping within ``WORKER_TIMEOUT_S``, and the workers
  that answer consume ``ingest`` and ``actions`` between them.
- Exactly one beat sends reconcile passes (``pipeline.reconcile.beats``): none fails (lost
  callbacks are never found), two or more warn (each pass over a queue holds its lock, so
  the others only cost CI calls).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urljoin

import httpx

from pipeline.brokers.kind import BrokerKind
from pipeline.brokers.queues import ACTIONS_QUEUE, INGEST_QUEUE
from pipeline.doctor.checks import Check, failing, passed, warned
from pipeline.doctor.stores import REDIS_TIMEOUT_S
from pipeline.reconcile.beats import STALE_S, Beats
from pipeline.settings import Settings

RECEIVER_TIMEOUT_S: Final = 5.0
WORKER_TIMEOUT_S: Final = 2.0
TOKEN_HEADER: Final = "X-Callback-Token"

Inspector = Callable[[float], dict[str, list[str]]]
"""Given a timeout in seconds: each worker that answered, with the queues it consumes."""


def celery_inspector(app: Any) -> Inspector:
    """An ``Inspector`` through a Celery app's remote control (ping, then active_queues)."""

    def inspect(timeout_s: float) -> dict[str, list[str]]:
        control = app.control.inspect(timeout=timeout_s)
        answered = control.ping() or {}
        if not answered:
            return {}
        queues = control.active_queues() or {}
        return {name: [q["name"] for q in queues.get(name) or []] for name in answered}

    return inspect


def receiver(settings: Settings) -> Check:
    url = settings.callback_url
    ready = urljoin(url, "readyz")
    try:
        answer = httpx.get(ready, timeout=RECEIVER_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return failing(
            "receiver",
            f"{ready} not reached: {exc}",
            "start it (cicb receiver, or cicb up), or set CICB_RECEIVER_URL to where it is",
        )
    if answer.status_code != 200:
        return failing(
            "receiver",
            f"{ready} answered {answer.status_code}: {answer.text[:200]}",
            "the receiver cannot reach its broker: see the broker check",
        )
    token = settings.effective_token()
    if token is None:
        return warned(
            "receiver",
            f"{ready} ready; the token was not tried: doctor has none",
            "set CICB_RECEIVER_TOKEN (or run doctor where cicb up keeps .cicb/token)",
        )
    tried = httpx.post(url, content=b"", headers={TOKEN_HEADER: token}, timeout=RECEIVER_TIMEOUT_S)
    if tried.status_code == 401:
        return failing(
            "receiver",
            f"{url} refuses doctor's token (401)",
            "give the receiver and doctor the same CICB_RECEIVER_TOKEN (or add it to "
            "CICB_RECEIVER_TOKENS)",
        )
    if tried.status_code == 403:
        return warned(
            "receiver",
            f"{ready} ready; the token was not tried: this address is not allowed (403)",
            "run doctor from a network in CICB_ALLOWED_CIDRS",
        )
    if tried.status_code != 400:
        return warned(
            "receiver",
            f"{ready} ready; an empty callback was answered {tried.status_code}, not 400",
            "is CICB_RECEIVER_URL cicb's receiver?",
        )
    return passed("receiver", f"{ready} ready, token accepted")


def workers(inspect: Inspector) -> Check:
    answered = inspect(WORKER_TIMEOUT_S)
    if not answered:
        return failing(
            "workers",
            f"no worker answered within {WORKER_TIMEOUT_S:g} s",
            "start one: cicb worker (cicb up runs one), on the same CICB_BROKER_URL",
        )
    consumed = {q for queues in answered.values() for q in queues}
    missing = [q for q in (INGEST_QUEUE, ACTIONS_QUEUE) if q not in consumed]
    names = ", ".join(sorted(answered))
    if missing:
        return failing(
            "workers",
            f"{len(answered)} online ({names}), none consumes {' or '.join(missing)}",
            f"start a worker on {INGEST_QUEUE},{ACTIONS_QUEUE}: cicb worker",
        )
    return passed("workers", f"{len(answered)} online ({names}), consuming ingest and actions")


def beat(settings: Settings, kind: BrokerKind, *, clock: Callable[[], float] = time.time) -> Check:
    if not (settings.cos_configured and settings.reconcile_interval_s):
        return warned(
            "beat",
            "reconcile passes are off: no beat needed",
            "set CICB_COS_SECRET_ID and CICB_COS_SECRET_KEY (and CICB_RECONCILE_INTERVAL_S "
            "above 0) to find the callbacks that never came",
        )
    client = kind.state_client(timeout_s=REDIS_TIMEOUT_S)
    if client is None:
        return warned("beat", "no Redis for state: beats cannot be counted", "set CICB_REDIS_URL")
    try:
        beats = Beats(client, clock=clock)
        alive, known = beats.alive(), beats.known()
    finally:
        client.close()
    now = clock()
    if not alive:
        last = (
            f" (last: {known[0].beat_id}, {now - known[0].last_heard_s:.0f} s ago)" if known else ""
        )
        return failing(
            "beat",
            f"no beat sending reconcile passes heard from in {STALE_S:g} s{last}",
            "run exactly one: cicb beat (cicb up runs one)",
        )
    names = ", ".join(b.beat_id for b in alive)
    if len(alive) > 1:
        return warned(
            "beat",
            f"{len(alive)} beats send reconcile passes ({names})",
            "stop all but one: the others only repeat each pass's CI calls",
        )
    return passed("beat", f"one beat sends reconcile passes ({names})")
