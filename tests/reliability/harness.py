"""What the reliability scenarios share: a broker they can stop, load, and counting."""

from __future__ import annotations

import collections
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from pipeline.brokers.inflight import DUE_KEY as INFLIGHT_KEY
from tests.support import ROOT, TOKEN, Target, run_cli, wait_until

# The project's own sample, so the scenarios run on a clone without ../shared.
TEMPLATE = (ROOT / "tests" / "samples" / "tts_success.xml").read_bytes()
SAMPLE_JOB_ID = b"j707f4864f86811ecb90d0b03267ce0e5"
SAMPLE_STATE = b"<State>Success</State>"
# Without both, every callback would be the same one and deduplicated away.
assert TEMPLATE.count(SAMPLE_JOB_ID) == 1 and TEMPLATE.count(SAMPLE_STATE) == 1


FAILED_TEMPLATE = (ROOT / "tests" / "samples" / "transcode_failed.xml").read_bytes()
FAILED_JOB_ID = b"j7d0eafdaf86c11ecbdf419856486c0ab"
FAILED_INPUT = b"<Object>input/demo.mp4</Object>"
assert FAILED_TEMPLATE.count(FAILED_JOB_ID) == 1 and FAILED_TEMPLATE.count(FAILED_INPUT) == 1
# What cicb_env shortens for speed, and scenarios whose outcome the defaults decide leave out.
SHORTENED = ("CICB_RETRY_BACKOFF_S", "CICB_RETRY_BACKOFF_MAX_S")


def callback(n: int, state: str = "Success") -> bytes:
    """A distinct TTS callback: job ``jrel<n>`` in ``state``."""
    body = TEMPLATE.replace(SAMPLE_JOB_ID, f"jrel{n:08d}".encode())
    return body.replace(SAMPLE_STATE, f"<State>{state}</State>".encode())


def failed_callback(n: int) -> bytes:
    """A Failed transcode of job ``jrel<n>``, of input ``input/jrel<n>.mp4``: resubmitted
    by the default route when the COS keys are set."""
    body = FAILED_TEMPLATE.replace(FAILED_JOB_ID, f"jrel{n:08d}".encode())
    return body.replace(FAILED_INPUT, f"<Object>input/jrel{n:08d}.mp4</Object>".encode())


def at_defaults(env: dict[str, str]) -> dict[str, str]:
    """``env`` without the settings ``cicb_env`` shortens: what ``cicb up`` runs with."""
    return {k: v for k, v in env.items() if k not in SHORTENED}


@dataclass
class Counts:
    sent: int = 0
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)

    @property
    def accepted(self) -> int:
        return self.statuses[200]


def send_all(url: str, bodies: list[bytes], *, workers: int = 16) -> Counts:
    """POST every body (in parallel), counting the answers."""
    counts = Counts()

    def post(body: bytes) -> int:
        try:
            return httpx.post(
                f"{url}/callbacks", content=body, headers={"X-Callback-Token": TOKEN}, timeout=30
            ).status_code
        except httpx.HTTPError:
            return 0  # no answer: the sender would try again, as Tencent might not

    with ThreadPoolExecutor(workers) as pool:
        for status in pool.map(post, bodies):
            counts.sent += 1
            counts.statuses[status] += 1
    return counts


def notified_jobs(target: Target) -> collections.Counter[str]:
    """How many times each job was notified (a webhook-id seen twice is a repeat)."""
    return collections.Counter(
        r["headers"].get("webhook-id", "") for r in list(target.received) if r["status"] < 300
    )


def dead_letter_count(env: dict[str, str]) -> int:
    return int(json.loads(run_cli("dlq", "list", "--json", env=env).stdout)["count"])


def report(name: str, **counts: object) -> None:
    print(f"\n[{name}] " + " ".join(f"{k}={v}" for k, v in counts.items()))


def first_arrivals(target: Target) -> dict[str, float]:
    """When each webhook-id first reached the target (``time.time()``)."""
    first: dict[str, float] = {}
    for r in sorted(list(target.received), key=lambda r: r["at"]):
        if r["status"] < 300:
            first.setdefault(r["headers"].get("webhook-id", ""), r["at"])
    return first


def log_lines(*texts: str) -> list[dict[str, Any]]:
    """The JSON lines of processes' logs (Celery's own banner lines are not JSON)."""
    lines = []
    for text in texts:
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(line))
    return lines


def wait_inflight_empty(broker_url: str, *, timeout_s: float) -> None:
    """Wait until every task message has finished: none left in ``cicb:inflight``.

    A message comes back (visibility timeout, or republished by the sweep) for as long as
    it is kept there, so only then can no repeat still be on its way.
    """
    client = redis.Redis.from_url(broker_url)
    try:
        wait_until(
            lambda: client.zcard(INFLIGHT_KEY) == 0,
            timeout_s=timeout_s,
            what="every task finished (cicb:inflight empty)",
        )
    finally:
        client.close()
