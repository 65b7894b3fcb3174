"""The envelope: a raw callback body and what the receiver knew about it.

It crosses the broker as plain JSON (the one argument of the ``cicb.ingest`` task). A UTF-8
body travels as text so it reads in Flower; anything else travels as base64, so the body a
worker sees, and a dead letter keeps, is byte for byte what Tencent sent.

``source`` says how the body came: ``callback`` (the receiver), ``reconcile`` (a job CI
listed as finished whose callback never came) or ``replay`` (``cicb replay``); its events
carry it. ``scope`` (``cicb replay --force``) gives them a new deduplication scope. Both are
left out of the JSON when they have their defaults, so a callback's message stays as small.
``shown`` is what Flower shows of it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import PermanentError

# How much of a callback's body Flower shows in the ``cicb.ingest`` task's arguments.
SHOWN_BODY_CHARS = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    body: bytes
    content_type: str | None
    received_at: datetime
    remote_addr: str | None
    request_id: str
    source: str = "callback"
    scope: str | None = None

    @classmethod
    def received_now(
        cls, body: bytes, *, content_type: str | None, remote_addr: str | None, request_id: str
    ) -> Envelope:
        return cls(
            body=body,
            content_type=content_type,
            received_at=datetime.now(UTC),
            remote_addr=remote_addr,
            request_id=request_id,
        )

    def to_json(self) -> dict[str, Any]:
        try:
            body, encoding = self.body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(self.body).decode("ascii"), "base64"
        return {
            "body": body,
            "body_encoding": encoding,
            "content_type": self.content_type,
            "received_at": self.received_at.isoformat(),
            "remote_addr": self.remote_addr,
            "request_id": self.request_id,
            **({"source": self.source} if self.source != "callback" else {}),
            **({"scope": self.scope} if self.scope else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> Envelope:
        """Rebuild an envelope; raise ``PermanentError`` if ``data`` is not one."""
        try:
            encoding = data["body_encoding"]
            if encoding == "utf-8":
                body = data["body"].encode("utf-8")
            elif encoding == "base64":
                body = base64.b64decode(data["body"], validate=True)
            else:
                raise PermanentError(f"unknown body_encoding {encoding!r}")
            return cls(
                body=body,
                content_type=data.get("content_type"),
                received_at=datetime.fromisoformat(data["received_at"]),
                remote_addr=data.get("remote_addr"),
                request_id=str(data["request_id"]),
                source=str(data.get("source") or "callback"),
                scope=str(data["scope"]) if data.get("scope") else None,
            )
        except (KeyError, TypeError, AttributeError, ValueError, binascii.Error) as exc:
            raise PermanentError(f"not a cicb envelope: {exc!r}") from exc


def shown(data: dict[str, Any]) -> str:
    """The ``argsrepr`` of a ``cicb.ingest`` task message: what Flower shows of its argument,
    the envelope ``data`` with its body cut to its first ``SHOWN_BODY_CHARS`` characters.

    Celery's own would be the repr of the whole argument cut at 1,024 characters, all of them
    body: this one shows every field the receiver wrote, and keeps each message waiting on
    the broker (and its in-flight copy) most of a kilobyte smaller.
    """
    body = data["body"]
    if len(body) > SHOWN_BODY_CHARS:
        body = body[:SHOWN_BODY_CHARS] + "..."
    return repr([{**data, "body": body}])
