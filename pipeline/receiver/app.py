"""The receiver: a thin ASGI app that takes callbacks and puts them on the broker.

``POST /callbacks`` is ``pipeline.receiver.callbacks``; this module builds the app around it:
health, readiness, the metrics, and what the process does as it starts and stops.
"""

from __future__ import annotations

import contextlib
import gc
import logging
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
from pipeline.brokers.kind import kind_of
from pipeline.brokers.publishing import Enqueuer
from pipeline.errors import BrokerUnavailable, ConfigError
from pipeline.logguard import ThrottleFilter, secret_redactor
from pipeline.metrics import ReceiverMetrics, served_registry
from pipeline.receiver.callbacks import CallbackEndpoint, Receive, Scope, Send
from pipeline.settings import Settings, get_settings

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
) -> ReceiverApp:
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
    _throttle_uvicorn_warnings()
    redact = secret_redactor(settings)
    enqueuer = (enqueuer_factory or kind.enqueuer)(settings)

    metrics = ReceiverMetrics()
    depths = QueueDepths(settings, kind)
    registry = served_registry(metrics.registry, [_QueueCollector(depths)])
    callbacks = CallbackEndpoint(settings, enqueuer, metrics, redact)

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

    rest = Starlette(
        routes=[
            # Reached only by what the front below does not take (a GET gets its 405).
            Route("/callbacks", callbacks, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", scrape, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    return ReceiverApp(callbacks, rest)


class ReceiverApp:
    """``POST /callbacks`` straight to its endpoint; the rest (health, metrics, the
    lifespan, 404 and 405) through Starlette."""

    def __init__(self, callbacks: CallbackEndpoint, rest: Starlette) -> None:
        self._callbacks = callbacks
        self._rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/callbacks" and scope["method"] == "POST":
            await self._callbacks(scope, receive, send)
        else:
            await self._rest(scope, receive, send)
