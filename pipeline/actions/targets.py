"""Notification targets: a plain webhook or a chat robot, chosen by the URL's scheme prefix.

``https://...`` gets the event as JSON signed the Standard Webhooks way; ``wecom+https://``,
``dingtalk+https://``, ``feishu+https://`` (or ``lark+https://``) and ``slack+https://``
get a short message in that service's own format. A DingTalk or Feishu signing secret goes
in the URL's ``secret`` query parameter, which cicb takes out before sending.

Target URLs carry secrets (robot keys, tokens), so a target is logged and dead-lettered only
by ``describe()``: its host and a short id derived from the whole URL.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from pipeline.actions.signing import dingtalk_sign, feishu_sign, standard_webhook_headers
from pipeline.errors import ConfigError, DeliveryError, DeliveryRejected
from pipeline.parsing.events import Event, JobEvent, ModerationEvent, WorkflowEvent

WEBHOOK = "webhook"
CHAT_KINDS = ("wecom", "dingtalk", "feishu", "lark", "slack")

# Statuses worth sending again: the target is busy or broken for now, not refusing.
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

# Chat services answer 200 with an error code in the body; these codes mean "too fast".
RATE_LIMIT_CODES = {"wecom": {45009}, "dingtalk": {130101}, "feishu": {11232}, "lark": {11232}}

MAX_LISTED_OUTPUTS = 10
# A part of a target's path or query this long is taken for a token.
MIN_SECRET_CHARS = 8


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    url: str = field(repr=False)
    secret: str | None = field(default=None, repr=False)
    id: str = ""

    @classmethod
    def parse(cls, configured: str) -> Target:
        """Read one entry of ``CICB_NOTIFY_URLS``; ``ConfigError`` if it is not a URL."""
        kind, plus, rest = configured.partition("+")
        if not plus:
            kind, rest = WEBHOOK, configured
        elif kind not in CHAT_KINDS:
            raise ConfigError(f"unknown notify target kind {kind!r}; use one of {CHAT_KINDS}")
        parts = urlsplit(rest)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"a notify target must be an http(s) URL, not {parts.scheme!r}")
        query = parse_qsl(parts.query, keep_blank_values=True)
        secret = next((v for k, v in query if k == "secret"), None)
        kept = urlencode([(k, v) for k, v in query if k != "secret"])
        digest = hashlib.sha256(configured.encode()).hexdigest()[:12]
        return cls(kind, urlunsplit(parts._replace(query=kept)), secret, digest)

    def describe(self) -> str:
        """Safe to log: kind, host and id, never the path or query that hold secrets."""
        return f"{self.kind}:{urlsplit(self.url).hostname}#{self.id}"

    def secrets(self) -> tuple[str, ...]:
        """What of this target a text must not show, longest first: its URL, its query and
        each value in it (robot keys, access tokens), the token-like parts of its path
        (``MIN_SECRET_CHARS`` or longer) and its signing secret."""
        parts = urlsplit(self.url)
        found = [self.url, parts.query, self.secret or ""]
        found += [v for _, v in parse_qsl(parts.query) if len(v) >= MIN_SECRET_CHARS]
        found += [p for p in parts.path.split("/") if len(p) >= MIN_SECRET_CHARS]
        return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def _summary(event: Event) -> tuple[str, list[str]]:
    """A title and lines saying job (or run), tag, state, outputs and, for failures, CI's
    code and message (jobs and moderation have them)."""
    ident = event.run_id if isinstance(event, WorkflowEvent) else event.job_id
    title = f"CI {event.tag or event.event} {event.state}: {ident}"
    lines = [f"event: {event.event}", f"state: {event.state}"]
    if event.state == "Failed" and isinstance(event, JobEvent | ModerationEvent):
        lines.append(f"code: {event.code}")
        lines.append(f"message: {event.message}")
    outputs = [o.key for o in event.outputs] if isinstance(event, JobEvent) else []
    for key in outputs[:MAX_LISTED_OUTPUTS]:
        lines.append(f"output: {key}")
    if len(outputs) > MAX_LISTED_OUTPUTS:
        lines.append(f"... and {len(outputs) - MAX_LISTED_OUTPUTS} more outputs")
    return title, lines


def build_request(
    target: Target, event: Event, *, webhook_key: bytes | None, now_s: float
) -> tuple[str, dict[str, str], bytes]:
    """URL, headers and body of the POST that notifies ``target`` of ``event``.

    A webhook gets ``event.to_dict()`` as JSON (what ``cicb parse`` prints), with
    ``event.dedup_key`` as its ``webhook-id``.
    """
    url = target.url
    headers = {"Content-Type": "application/json"}
    if target.kind == WEBHOOK:
        body = json.dumps(event.to_dict(), ensure_ascii=False).encode()
        # The same id on every retry lets the receiver drop a second delivery.
        headers |= standard_webhook_headers(
            webhook_key, msg_id=event.dedup_key, timestamp_s=int(now_s), body=body
        )
        return url, headers, body
    title, lines = _summary(event)
    payload: dict[str, Any]
    if target.kind == "wecom":
        content = f"**{title}**\n" + "\n".join(f"> {line}" for line in lines)
        payload = {"msgtype": "markdown", "markdown": {"content": content}}
    elif target.kind == "dingtalk":
        text = f"#### {title}\n" + "\n".join(f"- {line}" for line in lines)
        payload = {"msgtype": "markdown", "markdown": {"title": title, "text": text}}
        if target.secret:
            stamp_ms = int(now_s * 1000)
            sign = dingtalk_sign(target.secret, stamp_ms)
            sep = "&" if urlsplit(url).query else "?"
            url = f"{url}{sep}{urlencode({'timestamp': stamp_ms, 'sign': sign})}"
    elif target.kind in ("feishu", "lark"):
        payload = {"msg_type": "text", "content": {"text": "\n".join([title, *lines])}}
        if target.secret:
            payload |= {
                "timestamp": str(int(now_s)),
                "sign": feishu_sign(target.secret, int(now_s)),
            }
    else:  # slack
        payload = {"text": f"*{title}*\n" + "\n".join(lines)}
    return url, headers, json.dumps(payload, ensure_ascii=False).encode()


def retry_after_s(response: httpx.Response) -> float | None:
    """Seconds the target asked us to wait (``Retry-After`` in seconds or as a date)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def check_response(target: Target, response: httpx.Response) -> None:
    """Raise ``DeliveryError`` (worth retrying) or ``DeliveryRejected`` unless it worked."""
    where = target.describe()
    if response.status_code in RETRYABLE_STATUSES:
        raise DeliveryError(
            where, f"HTTP {response.status_code}", retry_after_s=retry_after_s(response)
        )
    if not response.is_success:
        raise DeliveryRejected(where, response.status_code, response.text[:1000])
    if target.kind in RATE_LIMIT_CODES:
        code = _chat_error_code(response)
        if code in RATE_LIMIT_CODES[target.kind]:
            raise DeliveryError(where, f"rate limited (code {code})")
        if code:
            raise DeliveryRejected(where, response.status_code, response.text[:1000])


def _chat_error_code(response: httpx.Response) -> int:
    """WeCom and DingTalk say ``errcode``, Feishu ``code`` (or ``StatusCode``); 0 is success."""
    try:
        data = response.json()
    except ValueError:
        return 0
    if not isinstance(data, dict):
        return 0
    for name in ("errcode", "code", "StatusCode"):
        if isinstance(data.get(name), int):
            return int(data[name])
    return 0
