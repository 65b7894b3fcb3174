"""The receiver: a thin ASGI app that takes callbacks and puts them on the broker.

It checks the token and the size, wraps the raw body in an envelope, publishes it on
``ingest``, and answers 200 only once the broker has it. It parses nothing.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import anyio.to_thread
import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pipeline import logs
from pipeline.broker import Publisher
from pipeline.counters import Counters
from pipeline.envelope import Envelope
from pipeline.errors import BrokerUnavailable, ConfigError
from pipeline.settings import Settings, get_settings

TOKEN_HEADER = "X-Callback-Token"
REQUEST_ID_HEADER = "X-Request-Id"

log = logs.get_logger("cicb.receiver")


class Enqueuer(Protocol):
    """What the receiver needs of the broker (``pipeline.broker.Publisher``)."""

    def ingest(self, envelope: dict[str, Any]) -> str: ...
    def ping(self) -> None: ...


class _OutcomeCollector(Collector):
    """The workers' outcome counts, read from Redis at each scrape."""

    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "cicb_callbacks", "Callbacks by what the workers did with them.", labels=["outcome"]
        )
        try:
            counts = self._counters.read()
        except redis.RedisError:
            counts = {}
        for outcome, count in sorted(counts.items()):
            family.add_metric([outcome], count)
        yield family


class BodyTooLarge(Exception):
    pass


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


def _answer(http_status: int, request_id: str, fields: dict[str, str]) -> JSONResponse:
    return JSONResponse(
        {"request_id": request_id, **fields},
        status_code=http_status,
        headers={REQUEST_ID_HEADER: request_id},
    )


def create_app(
    settings: Settings | None = None, enqueuer_factory: Callable[[Settings], Enqueuer] = Publisher
) -> Starlette:
    """Build the receiver. Raises ``ConfigError`` when no token is configured."""
    settings = settings or get_settings()
    logs.configure(settings)
    token = settings.effective_token()
    if not token:
        raise ConfigError(
            "the receiver needs a token: set CICB_RECEIVER_TOKEN (cicb up makes one for you)"
        )
    expected = token.encode()
    enqueuer = enqueuer_factory(settings)

    registry = CollectorRegistry()
    responses = Counter(
        "cicb_receiver_responses",
        "Callback requests by HTTP status.",
        ["status"],
        registry=registry,
    )
    enqueue_seconds = Histogram(
        "cicb_receiver_enqueue_seconds",
        "Time to put one callback on the broker.",
        registry=registry,
    )

    def authorized(request: Request) -> bool:
        given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
        return hmac.compare_digest(given.encode(), expected)

    async def callbacks(request: Request) -> Response:
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        remote = request.client.host if request.client else None
        status, fields = 200, {"status": "accepted"}
        if not authorized(request):
            # The token given is never logged: it may be a near miss of the real one.
            log.warning("callback.unauthorized", remote_addr=remote, request_id=request_id)
            status, fields = 401, {"error": "missing or wrong token"}
        else:
            try:
                body = await _read_body(request, settings.max_body_bytes)
            except BodyTooLarge:
                body, status = b"", 413
                fields = {"error": f"body over {settings.max_body_bytes} bytes"}
            if status == 200 and not body:
                status, fields = 400, {"error": "empty body"}
            if status == 200:
                envelope = Envelope.received_now(
                    body,
                    content_type=request.headers.get("content-type"),
                    remote_addr=remote,
                    request_id=request_id,
                )
                try:
                    with enqueue_seconds.time():
                        await anyio.to_thread.run_sync(enqueuer.ingest, envelope.to_json())
                except BrokerUnavailable as exc:
                    log.error("callback.not_enqueued", request_id=request_id, error=str(exc))
                    status, fields = 503, {"error": "broker unavailable, send again"}
        responses.labels(str(status)).inc()
        return _answer(status, request_id, fields)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(enqueuer.ping)
        except BrokerUnavailable as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    registry.register(_OutcomeCollector(Counters(settings.redis_url)))

    async def metrics(request: Request) -> Response:
        text = await anyio.to_thread.run_sync(generate_latest, registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/callbacks", callbacks, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )
