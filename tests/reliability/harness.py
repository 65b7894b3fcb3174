"""What the reliability scenarios share: a broker they can stop, load, and counting."""

from __future__ import annotations

import collections
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

from tests.support import SHARED_SAMPLES, TOKEN, Target, run_cli

TEMPLATE = (SHARED_SAMPLES / "tts_api.xml").read_bytes()
SAMPLE_JOB_ID = b"j707f4864f86811ecb90d0b03267ce0e5"


def callback(n: int, state: str = "Success") -> bytes:
    """A distinct TTS callback: job ``jrel<n>`` in ``state``."""
    body = TEMPLATE.replace(SAMPLE_JOB_ID, f"jrel{n:08d}".encode())
    return body.replace(b"<State>Success</State>", f"<State>{state}</State>".encode())


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
