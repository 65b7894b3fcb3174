"""The checks that call CI's API: the keys, the clock, the queues.

- The keys: one read call (``GET /queue`` of the first bucket of ``CICB_CI_BUCKETS``). A
  401 or 403 fails; another refusal warns (the keys were read, the bucket may have no CI).
- The clock: the ``Date`` of that answer against this machine's time. Job times, the
  reconcile grace and CI's signatures all depend on it: more than ``CLOCK_MAX_OFFSET_S``
  (60 s) either way fails.
- The queues: every queue of ``CICB_CI_BUCKETS`` and every workflow there with its own
  callback (``pipeline.ci.queues``) must be connected to this receiver, with an accepted
  token and every event its kind sends.

Without the COS keys or ``CICB_CI_BUCKETS`` each of them warns, saying what to set. Each
call to CI gives up after ``CI_TIMEOUT_S`` (10 s), with no retry.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import requests
from qcloud_cos import CosS3Client

from pipeline.actions.cos import CiRefused, CiUnavailable, ci_call, cos_client
from pipeline.ci.queues import CONNECTED, CiQueues, queue_reports
from pipeline.doctor.checks import Check, failing, passed, warned
from pipeline.settings import Settings

CI_TIMEOUT_S: Final = 10.0
CLOCK_MAX_OFFSET_S: Final = 60.0
REFUSED_KEYS: Final = frozenset({401, 403})
SHOWN_QUEUES: Final = 5  # the queues named on the line; cicb ci queues lists them all
CONNECT_FIX: Final = "cicb ci queues shows each; cicb ci connect points them at the receiver"


@dataclass
class _Dates:
    """The ``Date`` of each answer, with this machine's time (``clock``) when it came."""

    clock: Callable[[], float]
    seen: list[tuple[str | None, float]] = field(default_factory=list)

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.seen.append((response.headers.get("Date"), self.clock()))


def ci_checks(settings: Settings, *, clock: Callable[[], float] = time.time) -> list[Check]:
    """The keys, the clock and the queues, in that order. ``clock``: this machine's time,
    in seconds since the epoch."""
    missing = _missing(settings)
    if missing is not None:
        found, fix = missing
        return [warned(name, found, fix) for name in ("ci-keys", "clock", "queues")]
    dates = _Dates(clock)
    keys = _keys(settings, dates)
    return [keys, _clock(dates), _queues(settings)]


def _missing(settings: Settings) -> tuple[str, str] | None:
    if not settings.cos_configured:
        return "no COS keys: CI is not called", "set CICB_COS_SECRET_ID and CICB_COS_SECRET_KEY"
    if not settings.bucket_regions:
        return "no bucket to check", "set CICB_CI_BUCKETS (BUCKET-APPID:REGION, comma-separated)"
    return None


def _client(
    settings: Settings, region: str, session: requests.Session | None = None
) -> CosS3Client:
    """An SDK client that gives up on an answer after ``CI_TIMEOUT_S``."""
    netloc, scheme = settings.ci_endpoint_parts or (None, "https")
    return cos_client(
        secret_id=settings.cos_secret_id or "",
        secret_key=settings.cos_secret_key or "",
        region=region,
        endpoint=netloc,
        scheme=scheme,
        timeout_s=CI_TIMEOUT_S,
        session=session,
    )


def _keys(settings: Settings, dates: _Dates) -> Check:
    bucket, region = settings.bucket_regions[0]
    session = requests.Session()
    session.hooks["response"].append(dates.hook)
    client = _client(settings, region, session)
    try:
        ci_call(lambda: client.ci_get_media_queue(Bucket=bucket, PageSize="1"))
    except CiRefused as exc:
        if exc.status in REFUSED_KEYS:
            return failing(
                "ci-keys",
                f"CI refused the keys on {bucket}: {exc}",
                "check CICB_COS_SECRET_ID/_KEY, and that they may use CI on the bucket",
            )
        return warned(
            "ci-keys",
            f"keys not confirmed on {bucket}: {exc}",
            "check the bucket in CICB_CI_BUCKETS, and that media processing is on for it",
        )
    except CiUnavailable as exc:
        return failing("ci-keys", str(exc), "check the network to CI (or CICB_CI_ENDPOINT)")
    finally:
        session.close()
    return passed("ci-keys", f"CI accepted the keys (read the queues of {bucket})")


def _clock(dates: _Dates) -> Check:
    date, local_s = next(((d, t) for d, t in dates.seen if d), (None, 0.0))
    if date is None:
        found = "CI's answer had no Date" if dates.seen else "no answer from CI to compare with"
        return warned("clock", found, "check this machine's clock is synchronized (NTP)")
    try:
        ci_s = parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return warned("clock", f"CI's Date {date!r} is unreadable", "check NTP by hand")
    offset_s = local_s - ci_s
    # CI's Date is whole seconds, cut down: this machine reads up to 1 s ahead.
    shown = f"{abs(offset_s):.0f} s {'ahead of' if offset_s > 0 else 'behind'} CI's"
    if abs(offset_s) > CLOCK_MAX_OFFSET_S:
        return failing(
            "clock",
            f"this machine's clock is {shown} (here {datetime.fromtimestamp(local_s, UTC):%X} UTC)",
            "synchronize it (NTP: timedatectl set-ntp true, or chrony): job times and the "
            "reconcile grace depend on it",
        )
    return passed("clock", f"within {CLOCK_MAX_OFFSET_S:g} s of CI's ({shown})")


def _queues(settings: Settings) -> Check:
    try:
        reports = queue_reports(
            settings, CiQueues(functools.cache(functools.partial(_client, settings)))
        )
    except (CiRefused, CiUnavailable) as exc:
        return failing("queues", f"CI's queues not read: {exc}", "see the ci-keys check")
    if not reports:
        return warned(
            "queues",
            f"no CI queue in {len(settings.bucket_regions)} bucket(s)",
            "turn media processing on for the buckets of CICB_CI_BUCKETS",
        )
    wrong = [r for r in reports if r.verdict != CONNECTED]
    if wrong:
        shown = "; ".join(
            f"{r.queue.kind} {r.queue.queue_id} of {r.queue.bucket}: {r.verdict}"
            for r in wrong[:SHOWN_QUEUES]
        )
        more = f" (and {len(wrong) - SHOWN_QUEUES} more)" if len(wrong) > SHOWN_QUEUES else ""
        return failing(
            "queues", f"{len(wrong)} of {len(reports)} not connected: {shown}{more}", CONNECT_FIX
        )
    buckets = len({r.queue.bucket for r in reports})
    return passed("queues", f"{len(reports)} queue(s) in {buckets} bucket(s) connected")
