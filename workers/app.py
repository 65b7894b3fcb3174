"""The Celery app: ``celery -A workers.app worker`` and ``celery -A workers.app flower``.

Workers consume ``ingest`` and ``actions``. ``dead_letter`` is declared where dead
letters are written and consumed by nobody: ``cicb dlq`` reads it.
"""

from __future__ import annotations

import signal
from typing import Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init

from pipeline import logs
from pipeline.broker import ACTIONS_QUEUE, INGEST_QUEUE, INGEST_TASK, queue, transport_options
from pipeline.inflight import track_publishes
from workers.stores import inflight, settings
from workers.sweeper import Sweeper, forget_finished

app = Celery("cicb", include=["workers.tasks", "workers.actions", *settings.routes_modules])
app.conf.update(
    broker_url=settings.broker_url,
    broker_transport_options=transport_options(settings),
    broker_connection_retry_on_startup=True,
    # Keep reconnecting for as long as the broker is away.
    broker_connection_max_retries=None,
    task_queues=[queue(INGEST_QUEUE), queue(ACTIONS_QUEUE)],
    task_default_queue=ACTIONS_QUEUE,
    task_routes={INGEST_TASK: {"queue": INGEST_QUEUE}},
    task_serializer="json",
    accept_content=["json"],
    # Nothing reads task results: Flower gets states from events, dead letters hold failures.
    task_ignore_result=True,
    # Ack after the task ran, and give a task back when its worker dies under it.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Callbacks are short tasks: fetch several at a time.
    worker_prefetch_multiplier=settings.prefetch_multiplier,
    worker_concurrency=settings.worker_concurrency,
    # Flower follows each task from its receipt; a task-sent event would cost one more
    # broker write per step, for what the queue lengths already show.
    worker_send_task_events=True,
    task_send_sent_event=False,
    worker_hijack_root_logger=False,
    timezone="UTC",
)


# Every task message is kept until its task finishes, so one lost by the Redis transport
# (taken by a worker that died before recording it) is published again.
if inflight is not None:
    track_publishes(inflight)
    forget_finished(inflight)
    app.steps["consumer"].add(Sweeper)


@worker_process_init.connect
def _leave_stopping_to_the_main_process(**_: Any) -> None:
    # honcho, docker-compose and systemd's default KillMode send SIGTERM to every process of
    # the worker; a pool process that died of it would cut its task short. Celery already
    # has them ignore SIGINT: the main process's warm shutdown lets their tasks finish.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    logs.configure(settings)
