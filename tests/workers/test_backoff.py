"""``backoff_s``: the one wait every retry uses."""

from __future__ import annotations

import random

from pipeline.settings import Settings
from workers.base import backoff_s

SETTINGS = Settings(retry_backoff_s=2, retry_backoff_max_s=60)


def test_the_wait_grows_with_the_retries_and_never_passes_the_cap() -> None:
    random.seed(1)
    for retries in range(12):
        waits = [backoff_s(retries, SETTINGS) for _ in range(200)]
        assert all(0 <= w <= min(60, 2 * 2**retries) for w in waits)
    # Full jitter: the waits spread over the whole interval.
    late = [backoff_s(10, SETTINGS) for _ in range(200)]
    assert min(late) < 15 and max(late) > 45


def test_a_peer_asking_for_longer_gets_it_up_to_the_cap() -> None:
    assert all(backoff_s(0, SETTINGS, at_least_s=30) >= 30 for _ in range(50))
    assert all(backoff_s(0, SETTINGS, at_least_s=3600) == 60 for _ in range(50))
