"""The Celery app: ``celery -A workers.app worker``, ``... beat`` and ``... flower``.

Workers consume ``ingest`` and ``actions``. ``dead_letter`` is declared where dead
letters are written and consumed by nobody: ``cicb dlq`` reads it.

Importing this module builds nothing and connects nowhere: the configuration is read from
the settings when Celery first needs it, and the worker's resources are built as it starts
(``workers.resources``).
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, bootsteps
from celery.signals import setup_logging, worker_process_init
from celery.worker.consumer import Consumer as CeleryConsumer

from pipeline import logs
from pipeline.brokers.kind import kind_of
from pipeline.brokers.queues import ACTIONS_QUEUE, INGEST_QUEUE, INGEST_TASK
from pipeline.errors import ConfigError
from pipeline.settings import Settings, get_settings
from workers.metrics import MetricsEndpoint
from workers.resources import resources
from workers.sweeper import Sweeper, forget_finished

# Exit status of a worker stopped by a bad setting (sysexits' EX_CONFIG).
EX_CONFIG = 78
# Sent by Celery beat; workers.reconcile runs it.
RECONCILE_TASK = "cicb.reconcile"
# A worker that lost its broker tries again at least this often (Celery's waits grow to 30 s).
RECONNECT_MAX_S = 1.0

T = TypeVar("T")


def stop_on_bad_settings(build: Callable[[], T]) -> T:
    """``build()``, or stop the process with one line naming the bad setting."""
    try:
        return build()
    except ConfigError as exc:
        # Logging may not be configured yet: say it plainly, once.
        print(f"cicb: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from exc


def configuration() -> dict[str, Any]:
    """Celery's settings, from cicb's (read when Celery first needs them)."""
    settings = stop_on_bad_settings(get_settings)
    return {
        "include": [
            "workers.tasks",
            "workers.actions",
            "workers.reconcile",
            *settings.routes_modules,
        ],
        # On Redis, cicb's transport: each task message goes out with its in-flight record.
        **kind_of(settings).celery_options(settings),
        "broker_connection_retry_on_startup": True,
        # Keep reconnecting for as long as the broker is away.
        "broker_connection_max_retries": None,
        "task_default_queue": ACTIONS_QUEUE,
        "task_routes": {INGEST_TASK: {"queue": INGEST_QUEUE}},
        "task_serializer": "json",
        "accept_content": ["json"],
        # Nothing reads task results: Flower gets states from events, dead letters hold
        # failures.
        "task_ignore_result": True,
        # Ack after the task ran, and give a task back when its worker dies under it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Callbacks are short tasks: fetch several at a time.
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        "worker_concurrency": settings.worker_processes,
        # Flower follows each task from its receipt; a task-sent event would cost one more
        # broker write per step, for what the queue lengths already show.
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "worker_consumer": "workers.app:Consumer",
        "timezone": "UTC",
        "beat_schedule": beat_schedule(settings),
        # The schedule is that one entry, rebuilt as beat starts: no schedule file to keep;
        # cicb's scheduler adds the heartbeat `cicb doctor` counts beats by.
        "beat_scheduler": "workers.beat:Scheduler",
    }


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """What Celery beat sends: ``cicb.reconcile`` every ``CICB_RECONCILE_INTERVAL_S`` (0, or
    no CI keys: nothing). A tick no worker took within one interval expires; the next does
    its work."""
    interval_s = float(settings.reconcile_interval_s)
    if not (interval_s and settings.cos_configured):
        return {}
    return {
        RECONCILE_TASK: {
            "task": RECONCILE_TASK,
            "schedule": interval_s,
            "options": {"queue": ACTIONS_QUEUE, "expires": interval_s},
        }
    }


class Start(bootsteps.Step):  # type: ignore[misc]
    """As the worker starts: build its resources, so a bad setting stops it with one line;
    on a Redis broker, forget the messages of tasks that are no ``PipelineTask`` when they
    end (a ``PipelineTask`` forgets its own)."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        res = stop_on_bad_settings(resources)
        if res.inflight is not None:
            forget_finished(res.inflight)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, trying a lost broker again every ``RECONNECT_MAX_S`` at most, so
    what a worker held runs again seconds after the broker is back, not half a minute."""

    def ensure_connected(self, conn: Any) -> Any:
        conn.ensure_connection = functools.partial(
            conn.ensure_connection,
            interval_start=0.5,
            interval_step=0.5,
            interval_max=RECONNECT_MAX_S,
        )
        return super().ensure_connected(conn)


app = Celery("cicb")
app.add_defaults(configuration)
app.steps["worker"].add(Start)
# Multiprocess metrics before the pool forks, and each host's /metrics.
app.steps["worker"].add(MetricsEndpoint)
# Heartbeats, leases renewed, and what the Redis transport lost published again.
app.steps["consumer"].add(Sweeper)


@worker_process_init.connect
def _leave_stopping_to_the_main_process(**_: Any) -> None:
    # honcho, docker-compose and systemd's default KillMode send SIGTERM to every process of
    # the worker; a pool process that died of it would cut its task short. Celery already
    # has them ignore SIGINT: the main process's warm shutdown lets their tasks finish.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    logs.configure(get_settings())
