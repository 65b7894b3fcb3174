"""Times as people type them: ``90s``, ``15m``, ``1h``, ``2d`` ago, or an ISO 8601 time (the
command line's ``--since``/``--until``, the console's filters)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``2d``, ``1w`` (also ``1h30m``); raises ``ValueError``."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r} (write 90s, 15m, 1h, 2d)")
    return timedelta(seconds=sum(float(n) * DURATION_UNITS_S[u] for n, u in parts))


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """A duration ago, or an ISO 8601 time (local time when it names no offset)."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a duration nor an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.astimezone()
