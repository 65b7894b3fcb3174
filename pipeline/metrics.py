"""cicb's Prometheus metrics, and how a service of several processes serves one sum.

The receiver serves its counts and what waits on the broker on its ``/metrics``; each worker
host serves its workers' counts on ``CICB_WORKER_METRICS_HOST:CICB_WORKER_METRICS_PORT``.
Both run as several processes (uvicorn's ``--workers``, Celery's prefork pool), so both use
prometheus_client's multiprocess mode: each process writes its values to files in one
folder, and the process that serves ``/metrics`` adds them up at each scrape. Metrics are
made after ``use_multiprocess`` (they take the value class in force when made).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds. A task: milliseconds to a large copy. A callback, end to end: a chain's steps,
# their retries (backoff up to CICB_RETRY_BACKOFF_MAX_S) and a backlog. CI's delay: seconds
# when all is well, hours when its own retries kept failing.
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
DELAY_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


def multiprocess_dir() -> Path | None:
    found = os.environ.get(MULTIPROC_DIR_ENV)
    return Path(found) if found else None


@dataclass(frozen=True, slots=True)
class MultiprocessDir:
    path: Path
    # Made for this service (a temporary folder), so removed when it stops.
    owned: bool

    def remove(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def use_multiprocess() -> MultiprocessDir:
    """Have every metric made from now on, in this process and in those it forks or starts,
    write to one folder: ``PROMETHEUS_MULTIPROC_DIR`` if set, else a new temporary one. The
    folder is emptied first: counts start at zero with the service."""
    given = multiprocess_dir()
    path = given or Path(tempfile.mkdtemp(prefix="cicb-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    return MultiprocessDir(path, owned=given is None)


def served_registry(own: CollectorRegistry, live: Iterable[Collector] = ()) -> CollectorRegistry:
    """What ``/metrics`` shows: the sum of every process's files in multiprocess mode (else
    this process's ``own`` metrics), and the ``live`` collectors, read at each scrape."""
    registry = own
    if multiprocess_dir() is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    for collector in live:
        registry.register(collector)
    return registry


class ReceiverMetrics:
    """What each receiver process counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.responses = Counter(
            "cicb_receiver_responses",
            "Callback requests by HTTP status.",
            ["status"],
            registry=self.registry,
        )
        self.enqueue_seconds = Histogram(
            "cicb_receiver_enqueue_seconds",
            "Time to put one callback on the broker.",
            registry=self.registry,
        )


class WorkerMetrics:
    """What each worker process counts: tasks, callbacks and what the actions did.

    The series whose labels are known in advance start at 0, so a rate or an alert sees them
    before the first event (Prometheus's advice): the notify results of ``target_kinds``
    (the configured targets'), the copy, resubmission and reconcile results, and the
    callbacks that take no route.
    """

    def __init__(self, target_kinds: Iterable[str] = ()) -> None:
        self.registry = r = CollectorRegistry()
        self.tasks = Counter(
            "cicb_tasks",
            "Task runs by task, route and outcome (done, retried, dead_lettered, skipped, "
            "deferred: a copy of a running task, sent back to wait), with the error's class.",
            ["task", "route", "outcome", "error"],
            registry=r,
        )
        self.task_seconds = Histogram(
            "cicb_task_duration_seconds",
            "How long one run of a task took.",
            ["task"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.callbacks = Counter(
            "cicb_callbacks",
            "Events ingested, by route and outcome (dispatched, reconciled, unrouted, "
            "duplicate, dead_lettered).",
            ["route", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "cicb_callback_latency_seconds",
            "From the receiver's received time to the end of the route's last step.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_delay = Histogram(
            "cicb_delivery_delay_seconds",
            "How late CI delivered a callback: from the job's EndTime to its receipt, by Tag.",
            ["tag"],
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.notifications = Counter(
            "cicb_notifications",
            "Notifications by target kind and result (delivered, failed, refused).",
            ["kind", "result"],
            registry=r,
        )
        self.notification_seconds = Histogram(
            "cicb_notification_seconds",
            "How long a notify target took to answer (or to fail), by target kind.",
            ["kind"],
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.notification_status = Counter(
            "cicb_notification_status",
            "Notify targets' answers by target kind and code: the HTTP status, or timeout "
            "or network when there was none.",
            ["kind", "code"],
            registry=r,
        )
        self.copied_objects = Counter(
            "cicb_copied_objects",
            "Outputs copied, or found already copied (skipped).",
            ["result"],
            registry=r,
        )
        self.copied_bytes = Counter("cicb_copied_bytes", "Bytes of the outputs copied.", registry=r)
        self.resubmissions = Counter(
            "cicb_resubmissions",
            "Failed jobs resubmitted, or given up on.",
            ["result"],
            registry=r,
        )
        self.reconciled = Counter(
            "cicb_reconciled_callbacks",
            "Callbacks CI never delivered, recovered by the reconciler, by kind (job, workflow).",
            ["kind"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "cicb_reconcile_errors", "Reconcile listings CI refused.", registry=r
        )
        for kind in target_kinds:
            for result in ("delivered", "failed", "refused"):
                self.notifications.labels(kind, result)
        for outcome in ("unrouted", "dead_lettered"):
            self.callbacks.labels("", outcome)
        for result in ("copied", "skipped"):
            self.copied_objects.labels(result)
        for result in ("resubmitted", "gave_up"):
            self.resubmissions.labels(result)
        for kind in ("job", "workflow"):
            self.reconciled.labels(kind)
