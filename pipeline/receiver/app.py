"""The receiver: a thin ASGI app that takes callbacks and puts them on the broker.

It checks the source address (``CICB_ALLOWED_CIDRS``), the token, the size and the time the
body takes to arrive, wraps the raw body in an envelope, publishes it on
``ingest``, and answers 200 only once the broker has it. It parses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime

import anyio.to_thread
from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline import logs
from pipeline.brokers.depths import QueueDepths
from pipeline.brokers.envelope import Envelope
from pipeline.brokers.kind import kind_of
from pipeline.brokers.publishing import Enqueuer
from pipeline.errors import BrokerUnavailable, ConfigError
from pipeline.logguard import LogThrottle, ThrottleFilter, secret_redactor
from pipeline.metrics import ReceiverMetrics, served_registry
from pipeline.receiver.access import AddressFilter, TokenCheck, client_address
from pipeline.settings import Settings, get_settings

TOKEN_HEADER = "X-Callback-Token"
REQUEST_ID_HEADER = "X-Request-Id"

log = logs.get_logger("cicb.receiver")


class _QueueCollector(Collector):
    """What waits on the broker, read at each scrape (``pipeline.brokers.depths``)."""

    def __init__(self, depths: QueueDepths) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        try:
            depths = self._depths.read()
        except BrokerUnavailable as exc:
            log.warning("metrics.queues_unread", error=str(exc))
            return
        messages = GaugeMetricFamily(
            "cicb_queue_messages", "Messages waiting on each queue.", labels=["queue"]
        )
        for queue, count in depths.messages.items():
            messages.add_metric([queue], count)
        yield messages
        age_s = depths.oldest_ingest_age_s(datetime.now(UTC))
        if age_s is not None:
            yield GaugeMetricFamily(
                "cicb_ingest_oldest_age_seconds",
                "How long the oldest callback waiting on ingest has waited (0: none waits).",
                value=age_s,
            )
        if depths.in_flight is not None:
            yield GaugeMetricFamily(
                "cicb_inflight_messages",
                "Task messages published and not finished: waiting, held by a worker, running.",
                value=depths.in_flight,
            )
        if depths.lost is not None:
            yield GaugeMetricFamily(
                "cicb_inflight_lost_messages",
                "Task messages on no queue and held by no live worker: being published again.",
                value=depths.lost,
            )


class BodyTooLarge(Exception):
    pass


# A request id the client gives is kept only if it is short and plain (it is logged).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


async def _read_body(request: Request, limit_bytes: int) -> bytes:
    """Read at most ``limit_bytes``, counting what arrives, not what Content-Length says."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(
    http_status: int, request_id: str, fields: dict[str, str], *, close: bool = False
) -> JSONResponse:
    headers = {REQUEST_ID_HEADER: request_id}
    if close:
        # The body may be unread (refused before reading) or half read (too slow, too big):
        # drop the connection rather than read the rest of it.
        headers["Connection"] = "close"
    return JSONResponse(
        {"request_id": request_id, **fields}, status_code=http_status, headers=headers
    )


def _request_id(request: Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


# uvicorn logs one warning per malformed request; anyone can send those at will.
_UVICORN_INVALID_REQUEST = "Invalid HTTP request received."


def _throttle_uvicorn_warnings() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ThrottleFilter) for f in logger.filters):
        logger.addFilter(ThrottleFilter(_UVICORN_INVALID_REQUEST))


def _quiet_collector() -> None:
    """Keep the garbage collector's pauses out of the time to answer.

    What the process made while starting (imports, the app) lives as long as it does: frozen,
    no collection walks it again. A request leaves little cyclic garbage, so the youngest
    generation is collected less often, in larger, rarer passes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


# Allocations between collections of the youngest generation; Python's default is 700.
GC_YOUNG_THRESHOLD = 20_000


def create_app(
    settings: Settings | None = None,
    enqueuer_factory: Callable[[Settings], Enqueuer] | None = None,
) -> Starlette:
    """Build the receiver (uvicorn calls this as the process starts).

    ``enqueuer_factory`` defaults to the broker's own way onto ``ingest``. Raises
    ``ConfigError`` when no token is configured.
    """
    settings = settings or get_settings()
    kind = kind_of(settings)
    logs.configure(settings)
    tokens = settings.accepted_tokens()
    if not tokens:
        raise ConfigError(
            "the receiver needs a token: set CICB_RECEIVER_TOKEN (cicb up makes one for you)"
        )
    token_ok = TokenCheck(tokens)
    sources = AddressFilter(settings.allowed_cidrs)
    refusals = LogThrottle()
    _throttle_uvicorn_warnings()
    redact = secret_redactor(settings)
    enqueuer = (enqueuer_factory or kind.enqueuer)(settings)

    metrics = ReceiverMetrics()
    depths = QueueDepths(settings, kind)
    registry = served_registry(metrics.registry, [_QueueCollector(depths)])

    def given_token(request: Request) -> str:
        return request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""

    def log_refusal(status: int, reason: str, remote: str | None, request_id: str) -> None:
        # Never the token, the query string or the header: a near miss of the real token
        # is as good as the token. Throttled, so bad requests cannot flood the logs.
        admission = refusals.admit()
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

    async def receive(request: Request, request_id: str, remote: str | None) -> JSONResponse:
        if not sources.allows(remote):
            log_refusal(403, "source address not allowed", remote, request_id)
            return _answer(403, request_id, {"error": "source address not allowed"}, close=True)
        if not token_ok(given_token(request)):
            log_refusal(401, "missing or wrong token", remote, request_id)
            return _answer(401, request_id, {"error": "missing or wrong token"}, close=True)
        try:
            # A client sending a byte a second holds a connection, never more than the
            # limit's worth of memory, and only for body_timeout_s.
            async with asyncio.timeout(settings.body_timeout_s):
                body = await _read_body(request, settings.max_body_bytes)
        except BodyTooLarge:
            error = f"body over {settings.max_body_bytes} bytes"
            return _answer(413, request_id, {"error": error}, close=True)
        except TimeoutError:
            error = f"body not received within {settings.body_timeout_s:g} s"
            return _answer(408, request_id, {"error": error}, close=True)
        if not body:
            return _answer(400, request_id, {"error": "empty body"})
        # Content type and encoding are not checked here: the raw bytes go to the worker,
        # which parses them or dead-letters them with the reason.
        envelope = Envelope.received_now(
            body,
            content_type=request.headers.get("content-type"),
            remote_addr=remote,
            request_id=request_id,
        )
        try:
            with metrics.enqueue_seconds.time():
                await enqueuer.ingest(envelope.to_json())
        except BrokerUnavailable as exc:
            log.error("callback.not_enqueued", request_id=request_id, error=redact(str(exc)))
            return _answer(503, request_id, {"error": "broker unavailable, send again"})
        return _answer(200, request_id, {"status": "accepted"})

    async def callbacks(request: Request) -> Response:
        request_id = _request_id(request)
        peer = request.client.host if request.client else None
        header_values = (
            request.headers.getlist(settings.proxy_header) if settings.proxy_header else []
        )
        remote = client_address(peer, header_values, proxy_header=settings.proxy_header)
        response = await receive(request, request_id, remote)
        metrics.responses.labels(str(response.status_code)).inc()
        return response

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await enqueuer.ping()
        except BrokerUnavailable as exc:
            error = redact(str(exc))
            return JSONResponse({"status": "unavailable", "error": error}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def scrape(request: Request) -> Response:
        text = await anyio.to_thread.run_sync(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        _quiet_collector()
        yield
        await enqueuer.aclose()
        depths.close()

    return Starlette(
        routes=[
            Route("/callbacks", callbacks, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", scrape, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
