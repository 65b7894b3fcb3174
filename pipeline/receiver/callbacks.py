"""``POST /callbacks``: the receiver's hot path, a plain ASGI callable.

Every callback passes here, so it works on the ASGI scope and messages as uvicorn gives them
(no request object, no router, no middleware) and answers with bytes built once where it
can. In order: the source address (``CICB_ALLOWED_CIDRS``), the token, the size and the time
the body takes to arrive; then the raw body, in an envelope, onto ``ingest``, and 200 only
once the broker has it. It parses nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from pipeline import logs
from pipeline.brokers.envelope import Envelope
from pipeline.brokers.publishing import Enqueuer
from pipeline.errors import BrokerUnavailable
from pipeline.logguard import LogThrottle
from pipeline.metrics import ReceiverMetrics
from pipeline.receiver.access import AddressFilter, TokenCheck, client_address
from pipeline.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TOKEN_HEADER = "X-Callback-Token"
REQUEST_ID_HEADER = "X-Request-Id"

# A request id the client gives is kept only if it is short and plain (it is logged).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TOKEN = TOKEN_HEADER.lower().encode()
_GIVEN_ID = REQUEST_ID_HEADER.lower().encode()
_ID_HEADER = REQUEST_ID_HEADER.encode()
_JSON = (b"content-type", b"application/json")
_CLOSE = (b"connection", b"close")

log = logs.get_logger("cicb.receiver")


class _TooLarge(Exception):
    pass


class _Gone(Exception):
    """The client went away before its body arrived."""


class CallbackEndpoint:
    """The ASGI app of ``POST /callbacks``.

    ``redact`` takes secrets out of a broker error before it is logged.
    """

    def __init__(
        self,
        settings: Settings,
        enqueuer: Enqueuer,
        metrics: ReceiverMetrics,
        redact: Callable[[str], str],
    ) -> None:
        self._enqueuer = enqueuer
        self._token_ok = TokenCheck(settings.accepted_tokens())
        self._sources = AddressFilter(settings.allowed_cidrs)
        self._proxy_header = settings.proxy_header
        self._proxy_name = (settings.proxy_header or "").lower().encode()
        self._limit = settings.max_body_bytes
        self._body_timeout_s = settings.body_timeout_s
        self._refusals = LogThrottle()
        self._redact = redact
        self._enqueue_seconds = metrics.enqueue_seconds
        self._responses = metrics.responses
        # Each status's counter, looked up once.
        self._counted: dict[int, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = content_length = content_type = given_id = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            # The first of a repeated header counts, as everywhere else.
            if name == _TOKEN:
                token = token if token is not None else value
            elif name == b"content-length":
                content_length = content_length if content_length is not None else value
            elif name == b"content-type":
                content_type = content_type if content_type is not None else value
            elif name == _GIVEN_ID:
                given_id = given_id if given_id is not None else value
            if name == self._proxy_name:
                forwarded.append(value.decode("latin-1"))
        request_id = (
            given_id.decode("latin-1")
            if given_id is not None and _REQUEST_ID.fullmatch(given_id.decode("latin-1"))
            else os.urandom(16).hex()  # as random as uuid4().hex, cheaper
        )
        client = scope.get("client")
        peer = client[0] if client else None
        remote = client_address(peer, forwarded, proxy_header=self._proxy_header)
        status, fields, close = await self._receive(
            scope, receive, token, content_length, content_type, request_id, remote
        )
        body = orjson.dumps({"request_id": request_id, **fields})
        headers = [
            _JSON,
            (b"content-length", b"%d" % len(body)),
            (_ID_HEADER, request_id.encode()),
        ]
        if close:
            # The body may be unread (refused before reading) or half read (too slow, too
            # big): drop the connection rather than read the rest of it.
            headers.append(_CLOSE)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        counter = self._counted.get(status)
        if counter is None:
            counter = self._counted[status] = self._responses.labels(str(status))
        counter.inc()

    async def _receive(
        self,
        scope: Scope,
        receive: Receive,
        token: bytes | None,
        content_length: bytes | None,
        content_type: bytes | None,
        request_id: str,
        remote: str | None,
    ) -> tuple[int, dict[str, str], bool]:
        """(status, what the answer says, whether to close the connection)."""
        if not self._sources.allows(remote):
            self._log_refusal(403, "source address not allowed", remote, request_id)
            return 403, {"error": "source address not allowed"}, True
        if not self._token_ok(_given_token(token, scope["query_string"])):
            self._log_refusal(401, "missing or wrong token", remote, request_id)
            return 401, {"error": "missing or wrong token"}, True
        declared = content_length or b""
        if declared.isdigit() and int(declared) > self._limit:
            return 413, {"error": f"body over {self._limit} bytes"}, True
        try:
            # A client sending a byte a second holds a connection, never more than the
            # limit's worth of memory, and only for body_timeout_s.
            async with asyncio.timeout(self._body_timeout_s):
                body = await self._read_body(receive)
        except _TooLarge:
            return 413, {"error": f"body over {self._limit} bytes"}, True
        except TimeoutError:
            error = f"body not received within {self._body_timeout_s:g} s"
            return 408, {"error": error}, True
        except _Gone:
            return 400, {"error": "the client went away"}, True
        if not body:
            return 400, {"error": "empty body"}, False
        # Content type and encoding are not checked here: the raw bytes go to the worker,
        # which parses them or dead-letters them with the reason.
        envelope = Envelope.received_now(
            body,
            content_type=content_type.decode("latin-1") if content_type is not None else None,
            remote_addr=remote,
            request_id=request_id,
        )
        started = time.perf_counter()
        try:
            await self._enqueuer.ingest(envelope.to_json())
        except BrokerUnavailable as exc:
            log.error("callback.not_enqueued", request_id=request_id, error=self._redact(str(exc)))
            return 503, {"error": "broker unavailable, send again"}, False
        finally:
            self._enqueue_seconds.observe(time.perf_counter() - started)
        return 200, {"status": "accepted"}, False

    async def _read_body(self, receive: Receive) -> bytes:
        """Read at most the limit, counting what arrives, not what Content-Length says."""
        message = await receive()
        if message["type"] != "http.request":
            raise _Gone
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):  # the usual case: it came in one piece
            if len(body) > self._limit:
                raise _TooLarge
            return body
        chunks = [body]
        size = len(body)
        while True:
            if size > self._limit:
                raise _TooLarge
            message = await receive()
            if message["type"] != "http.request":
                raise _Gone
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        if size > self._limit:
            raise _TooLarge
        return b"".join(chunks)

    def _log_refusal(self, status: int, reason: str, remote: str | None, request_id: str) -> None:
        # Never the token, the query string or the header: a near miss of the real token
        # is as good as the token. Throttled, so bad requests cannot flood the logs.
        admission = self._refusals.admit()
        if admission.suppressed:
            log.warning("callback.refusals_suppressed", count=admission.suppressed)
        if admission.log:
            log.warning(
                "callback.refused",
                status=status,
                reason=reason,
                remote_addr=remote,
                request_id=request_id,
            )


def _given_token(header: bytes | None, query_string: bytes) -> str:
    """The token in the header, else the last ``token`` of the query string, else ``""``."""
    if header:
        return header.decode("latin-1")
    if b"token" not in query_string:
        return ""
    found = ""
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "token":
            found = value
    return found
