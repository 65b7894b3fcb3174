"""``cicb ci connect``: the change that points CI's queues at this receiver, and making it.

``plan`` decides per queue (``Change.action``): ``set`` (off, wrong token, missing events,
another format, or ``replace`` on a queue that points elsewhere), ``unchanged`` (already
connected as asked), or ``kept`` (points elsewhere, left alone without ``replace``).
The new ``NotifyConfig``: ``State`` On, ``Type`` Url, the URL with the receiver's token,
``Event`` every event the kind sends (TaskFinish, and WorkflowFinish where it has it), and
``ResultFormat`` XML or JSON. Queue name and state are kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipeline.ci.queues import CONNECTED, ELSEWHERE, CiQueues, QueueReport, redact_token
from pipeline.errors import ConfigError

SET: Final = "set"
UNCHANGED: Final = "unchanged"
KEPT: Final = "kept"
FORMATS: Final = ("XML", "JSON")


@dataclass(frozen=True, slots=True)
class Change:
    """What ``connect`` does to one queue."""

    report: QueueReport
    action: str
    notify: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.report.to_json(),
            "action": self.action,
            "new_url": redact_token(self.notify["Url"]),
            "new_events": self.notify["Event"],
            "new_format": self.notify["ResultFormat"],
        }


def callback_url(url: str, token: str) -> str:
    """``url`` with ``token=<token>`` as its token (one it had is replaced)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"the callback URL must be http(s)://host/path: {url!r}")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "token"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("token", token)])))


def plan(
    reports: Iterable[QueueReport],
    *,
    url: str,
    result_format: str | None = None,
    buckets: tuple[str, ...] = (),
    queue_ids: tuple[str, ...] = (),
    replace: bool = False,
) -> list[Change]:
    """The change per chosen queue (all, or those of ``buckets`` and ``queue_ids``); ``url``
    carries the token already (``callback_url``). ``result_format`` None keeps each queue's
    (XML when it has none). Raises ``ConfigError`` for a queue id no bucket has."""
    chosen = [
        r
        for r in reports
        if (not buckets or r.queue.bucket in buckets)
        and (not queue_ids or r.queue.queue_id in queue_ids)
    ]
    if missing := set(queue_ids) - {r.queue.queue_id for r in chosen}:
        raise ConfigError(
            f"no such queue or workflow in CICB_CI_BUCKETS: {', '.join(sorted(missing))}"
        )
    changes = []
    for report in chosen:
        queue = report.queue
        fmt = (result_format or queue.notify.result_format or "XML").upper()
        if fmt not in FORMATS:
            raise ConfigError(f"the callback format is XML or JSON, not {fmt!r}")
        notify = {
            "State": "On",
            "Type": "Url",
            "Url": url,
            "Event": ",".join(queue.events),
            "ResultFormat": fmt,
        }
        current = queue.notify
        if report.verdict == ELSEWHERE and not replace:
            action = KEPT
        elif (
            report.verdict == CONNECTED
            and current.url == url
            and (current.result_format or "XML").upper() == fmt
        ):
            action = UNCHANGED
        else:
            action = SET
        changes.append(Change(report, action, notify))
    return changes


def apply(ci: CiQueues, changes: Iterable[Change]) -> list[Change]:
    """Make each ``set`` change, in order; the ones made. Raises CiRefused, CiUnavailable
    at the first that fails (those before it are made)."""
    made = []
    for change in changes:
        if change.action == SET:
            ci.update(change.report.queue, change.notify)
            made.append(change)
    return made
