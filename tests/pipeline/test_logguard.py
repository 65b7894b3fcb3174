"""What may reach the logs: the throttle on lines strangers cause, and secrets redacted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.logguard import (
    Admission,
    LogThrottle,
    ThrottleFilter,
    secret_redactor,
    secrets_of,
)
from pipeline.settings import Settings

# -- the log throttle -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_logs_a_burst_then_counts_then_summarizes() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=3, window_s=60, clock=clock)
    first = [throttle.admit() for _ in range(3)]
    assert first == [Admission(log=True, suppressed=0)] * 3
    flood = [throttle.admit() for _ in range(1000)]
    assert all(not a.log for a in flood)

    clock.now += 59.9
    assert throttle.admit() == Admission(log=False, suppressed=0)
    clock.now += 0.1
    # The next window: the first line comes with the count of what was left out.
    assert throttle.admit() == Admission(log=True, suppressed=1001)
    assert throttle.admit() == Admission(log=True, suppressed=0)


def test_the_throttle_bounds_lines_per_window_whatever_the_rate() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=10, window_s=60, clock=clock)
    lines_per_window: dict[int, int] = {}
    for i in range(60_000):  # 100 refusals a second for 10 minutes
        clock.now = 1000.0 + i / 100
        admission = throttle.admit()
        lines = int(admission.log) + int(admission.suppressed > 0)
        window = int((clock.now - 1000.0) // 60)
        lines_per_window[window] = lines_per_window.get(window, 0) + lines
    assert max(lines_per_window.values()) <= 11
    assert sum(lines_per_window.values()) <= 10 * 11


def test_a_quiet_source_is_always_logged() -> None:
    clock = Clock()
    throttle = LogThrottle(burst=2, window_s=10, clock=clock)
    for _ in range(20):
        assert throttle.admit() == Admission(log=True, suppressed=0)
        clock.now += 6


def test_the_throttle_wants_sane_limits() -> None:
    with pytest.raises(ValueError):
        LogThrottle(burst=0)
    with pytest.raises(ValueError):
        LogThrottle(window_s=0)


# -- secrets --------------------------------------------------------------------------------


def test_every_secret_is_found_and_redacted(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        receiver_token="tok-primary",
        receiver_tokens=("tok-next",),
        broker_url="redis://:broker-pass@127.0.0.1:6379/0",
        redis_url="redis://user:redis-pass@127.0.0.1:6379/1",
        notify_secret="whsec_abc",
        cos_secret_id="AKIDxyz",
        cos_secret_key="cos-key",
    )
    assert set(secrets_of(settings)) == {
        "tok-primary",
        "tok-next",
        "broker-pass",
        "redis-pass",
        "whsec_abc",
        "AKIDxyz",
        "cos-key",
    }
    redact = secret_redactor(settings)
    text = "Error connecting to redis://:broker-pass@127.0.0.1 with tok-primary and cos-key"
    assert redact(text) == "Error connecting to redis://:***@127.0.0.1 with *** and ***"


def test_the_token_cicb_up_kept_is_a_secret(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("kept-token\n")
    assert secrets_of(Settings(data_dir=tmp_path)) == ("kept-token",)


def test_the_throttle_filter_passes_other_lines_and_throttles_its_own() -> None:
    clock = Clock()
    throttled = ThrottleFilter("Invalid HTTP", LogThrottle(burst=2, window_s=60, clock=clock))

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, "", 0, msg, None, None)

    garbage = [record("Invalid HTTP request received.") for _ in range(5)]
    assert [throttled.filter(r) for r in garbage] == [True, True, False, False, False]
    assert all(throttled.filter(record("Started server process")) for _ in range(5))
    clock.now += 60
    later = record("Invalid HTTP request received.")
    assert throttled.filter(later)
    assert later.getMessage() == "Invalid HTTP request received. (3 more suppressed before this)"
