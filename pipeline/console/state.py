"""What every console handler shares: settings, queries, templates and the guard."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
import redis
from celery import Celery
from starlette.requests import Request

from pipeline.actions.resubmit import AttemptStore
from pipeline.archive import Archive
from pipeline.attempts import AttemptLog, Sender
from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.depths import QueueDepths
from pipeline.brokers.kind import kind_of
from pipeline.brokers.queues import connection, dead_letter_queue, transport_options
from pipeline.console.auth import Guard
from pipeline.console.queries import Queries, Resend
from pipeline.reconcile.store import ReconcileStore
from pipeline.routing import table_for
from pipeline.runs import TaskRuns
from pipeline.settings import Settings

HERE = Path(__file__).parent
# Workers answer a ping within this, or are not shown as online.
PING_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Console:
    """The state ``create_app`` builds once and keeps on ``app.state.console``."""

    guard: Guard
    queries: Queries
    env: jinja2.Environment
    css: bytes
    flower_url: str
    form_bytes: int
    redact: Callable[[str], str]


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def workers_online_of(settings: Settings) -> Callable[[], list[str]]:
    """The names of the workers that answer a ping within ``PING_TIMEOUT_S``."""
    app = Celery("cicb-console", broker=settings.broker_url, set_as_current=False)
    app.conf.broker_transport_options = transport_options(settings)

    def online() -> list[str]:
        replies = app.control.inspect(timeout=PING_TIMEOUT_S).ping() or {}
        return list(replies)

    return online


def queries_of(settings: Settings, workers_online: Callable[[], list[str]] | None) -> Queries:
    kind = kind_of(settings)
    client = kind.state_client(timeout_s=10)

    def resend() -> tuple[Resend, Callable[[], None]]:
        publisher = kind.publisher(settings)

        def send(letter: DeadLetter) -> None:
            publisher.send(
                letter.task,
                letter.args,
                letter.kwargs,
                queue_name=letter.queue,
                chain=letter.chain,
                headers=letter.headers,
            )

        return send, publisher.close

    def sender() -> tuple[Sender, Callable[[], None]]:
        publisher = kind.publisher(settings)
        return publisher, publisher.close

    return Queries(
        settings,
        archive=Archive.configured(client, settings),
        dead_letters=DeadLetterQueue(
            lambda: connection(settings), dead=dead_letter_queue(settings)
        ),
        depths=QueueDepths(settings, kind),
        table=table_for(settings),
        reconcile=(
            ReconcileStore(client, retention_s=settings.dedup_ttl_s) if client is not None else None
        ),
        attempts=AttemptStore(client) if client is not None else None,
        workers_online=workers_online or workers_online_of(settings),
        resend=resend,
        step_states=step_states_of(settings, client),
        attempt_log=(
            AttemptLog(
                client,
                retention_s=settings.archive_retention_s,
                max_jobs=settings.archive_max_entries,
            )
            if client is not None
            else None
        ),
        sender=sender,
    )


def step_states_of(
    settings: Settings, client: redis.Redis | None
) -> Callable[[list[str]], dict[str, str]]:
    """What the steps of a route are now, from their records (nothing without Redis)."""
    if client is None:
        return lambda ids: {}
    runs = TaskRuns(client, ttl_s=settings.dedup_ttl_s, max_deliveries=settings.max_deliveries)
    inflight = kind_of(settings).inflight(client)

    def read(ids: list[str]) -> dict[str, str]:
        try:
            return runs.states(ids, inflight) if ids else {}
        except redis.RedisError:
            return {}

    return read
