"""What may reach the logs: secrets replaced by ``***``, and lines a stranger can cause at
will (refused requests, garbage connections) throttled. Shared by the receiver and the
console."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pipeline.settings import Settings

# At most this many refusal lines per window; the rest are counted, then summarized.
DEFAULT_REFUSAL_LOG_BURST = 10
DEFAULT_REFUSAL_LOG_WINDOW_S = 60.0


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """Every secret value in ``settings``: the fields kept out of its repr, the accepted
    tokens, and the passwords in the broker and Redis URLs."""
    found = [*settings.accepted_tokens(), *settings.secrets()]
    for url in (settings.broker_url, settings.redis_url):
        password = urlsplit(url).password if url else None
        if password:
            found.append(password)
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def secret_redactor(settings: Settings) -> Callable[[str], str]:
    """A function that replaces every secret of ``settings`` in a text by ``***``: for
    error messages from libraries that may quote a URL or a header."""
    secrets = secrets_of(settings)

    def redact(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return text

    return redact


@dataclass(frozen=True, slots=True)
class Admission:
    """What to log for one refusal: the line itself or not, and first (when ``suppressed``
    is not 0) one summary line saying how many were left out in the window before."""

    log: bool
    suppressed: int


class LogThrottle:
    """At most ``burst`` lines per window of ``window_s`` seconds, then silence.

    A window opens at the first event after the previous one closed. Events past the
    ``burst`` in a window are counted, not logged; the first event of the next window
    carries that count, for one summary line. So a flood of bad requests yields at most
    ``burst + 1`` lines a window however fast it comes (the metrics still count every
    request). Thread-safe; ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        *,
        burst: int = DEFAULT_REFUSAL_LOG_BURST,
        window_s: float = DEFAULT_REFUSAL_LOG_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or window_s <= 0:
            raise ValueError("LogThrottle needs burst >= 1 and window_s > 0")
        self._burst = burst
        self._window_s = window_s
        self._clock = clock
        self._window_start: float | None = None
        self._logged = 0
        self._suppressed = 0
        self._lock = threading.Lock()

    def admit(self) -> Admission:
        with self._lock:
            now = self._clock()
            carried = 0
            if self._window_start is None or now - self._window_start >= self._window_s:
                carried, self._suppressed = self._suppressed, 0
                self._window_start, self._logged = now, 0
            if self._logged >= self._burst:
                self._suppressed += 1
                return Admission(log=False, suppressed=0)
            self._logged += 1
            return Admission(log=True, suppressed=carried)


class ThrottleFilter(logging.Filter):
    """A logging filter that passes the records starting with ``prefix`` through a
    ``LogThrottle`` (others pass untouched): for lines a stranger can cause at will, such
    as uvicorn's "Invalid HTTP request received." for each garbage connection."""

    def __init__(self, prefix: str, throttle: LogThrottle | None = None) -> None:
        super().__init__()
        self._prefix = prefix
        self._throttle = throttle or LogThrottle()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self._prefix):
            return True
        admission = self._throttle.admit()
        if admission.log and admission.suppressed:
            record.msg = f"{record.msg} ({admission.suppressed} more suppressed before this)"
        return admission.log
