"""The worker's metrics: what its processes count, and the ``/metrics`` each host serves.

A worker runs a pool of processes (prefork), and a deployment runs workers on several hosts.
Each worker's main process serves ``/metrics`` on ``CICB_WORKER_METRICS_HOST:PORT``, the sum
of what its pool processes counted (prometheus_client's multiprocess mode, set up before the
pool starts), and Prometheus adds the hosts up. Counts start at zero when a worker starts,
as Prometheus expects of a counter.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from celery import bootsteps
from celery.worker.request import Request
from prometheus_client import start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline import logs
from pipeline.metrics import MultiprocessDir, WorkerMetrics, served_registry, use_multiprocess
from pipeline.settings import get_settings
from workers.resources import resources

log = logs.get_logger("cicb.metrics")


@functools.cache
def worker_metrics() -> WorkerMetrics:
    """This process's metrics, made on first use (after the worker set up multiprocess mode)."""
    return WorkerMetrics(target_kinds={t.kind for t in resources().notify_targets})


class _Scheduled(Collector):
    """Tasks this worker holds until their countdown or ETA: retries waiting out their
    backoff, delayed resubmissions (what ``celery inspect scheduled`` lists)."""

    def __init__(self, worker: Any) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        consumer = getattr(self._worker, "consumer", None)
        timer = getattr(consumer, "timer", None)
        if timer is None:
            return
        waiting = 0
        for entry in list(timer.schedule.queue):
            args: tuple[Any, ...] = getattr(entry.entry, "args", None) or ()
            waiting += bool(args) and isinstance(args[0], Request)
        yield GaugeMetricFamily(
            "cicb_tasks_scheduled",
            "Tasks this worker holds until their countdown: retries waiting out their backoff.",
            value=waiting,
        )


class _Archived(Collector):
    """Bodies in the archive, read at each scrape (one XLEN)."""

    def collect(self) -> Iterator[Metric]:
        archive = resources().archive
        if archive is None:
            return
        try:
            count = archive.count()
        except Exception as exc:  # Redis away: the other metrics still matter
            log.warning("metrics.archive_unread", error=str(exc))
            return
        yield GaugeMetricFamily("cicb_archive_entries", "Bodies kept in the archive.", value=count)


class MetricsEndpoint(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker step: multiprocess mode as the worker is set up (before its pool forks), and
    ``/metrics`` served by its main process while it runs."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = get_settings()
        self.address = (settings.worker_metrics_host, settings.worker_metrics_port)
        self.folder: MultiprocessDir | None = use_multiprocess() if self.address[1] else None
        self.server: WSGIServer | None = None

    def start(self, worker: Any) -> None:
        if self.folder is None:
            return
        registry = served_registry(worker_metrics().registry, [_Scheduled(worker), _Archived()])
        host, port = self.address
        try:
            self.server, _ = start_http_server(port, host, registry=registry)
        except OSError as exc:
            # Another worker on this host has the port: this one works on, unscraped.
            log.error("metrics.not_served", host=host, port=port, error=str(exc))
            return
        log.info("metrics.served", url=f"http://{host}:{port}/metrics")

    def stop(self, worker: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        if self.folder is not None:
            self.folder.remove()
            self.folder = None

    shutdown = stop
