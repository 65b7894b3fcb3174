"""The in-process worker tier: cicb's real Celery app, run by a worker thread
(``celery.contrib.testing.worker.start_worker``, a pool of two threads) on a Valkey server of
its own, with real HTTP notify targets. Faster than the subprocess stacks, and it runs the
same code: the task base, the guard, leases, the in-flight records, dead letters.

``workers`` reads its settings when imported, so the environment is set first, once for the
session; each test starts from empty cicb keys and queues.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.exceptions import OperationalError

from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.envelope import Envelope
from pipeline.brokers.kind import kind_of
from pipeline.brokers.publishing import Publisher
from pipeline.settings import get_settings
from tests.peers import CiServer, serve_ci
from tests.support import Broker, wait_until

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "tts_success.xml"
SAMPLE_JOB_ID = b"j707f4864f86811ecb90d0b03267ce0e5"

# Short enough for a test to see retries; the visibility timeout stays above the cap.
TIER_SETTINGS = {
    "CICB_RETRY_BACKOFF_S": "1",
    "CICB_RETRY_BACKOFF_MAX_S": "2",
    "CICB_MAX_RETRIES": "2",
    "CICB_MAX_DELIVERIES": "3",
    "CICB_VISIBILITY_TIMEOUT_S": "30",
    # A lease a test can see expire (the reliability tier runs the default, 30 s).
    "CICB_STEP_LEASE_S": "3",
    "CICB_STEP_LEASE_RENEW_S": "1",
    "CICB_ROUTES": "tests.workers.steps",
    "CICB_LOG_FORMAT": "json",
    # The tier runs in the test process: its metrics stay in it (read with Tier.count).
    "CICB_WORKER_METRICS_PORT": "0",
    # Every notification is signed: a worker that stopped signing fails the tier.
    "CICB_NOTIFY_SECRET": "whsec_dGllci13ZWJob29rLXNlY3JldC0wMTIzNDU2Nzg5",
    # A target that stalls is seen to time out within a test.
    "CICB_NOTIFY_TIMEOUT_S": "2",
}
QUEUES = ("ingest", "actions", "dead_letter")


@dataclass
class Targets:
    """Two notify targets (``/a`` and ``/b``) on one HTTP server, answering what they are
    told, path by path (a status, headers and a body, after a stall), and recording every
    request with its headers and arrival time."""

    base_url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[str, list[tuple[int, dict[str, str], bytes, float]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def urls(self) -> tuple[str, str]:
        return f"{self.base_url}/a", f"{self.base_url}/b"

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.replies.clear()

    def reply(self, path: str, *answers: tuple[int, dict[str, str]]) -> None:
        """Answer the next requests to ``path`` with these (status, headers); 200 after."""
        for status, headers in answers:
            self.reply_with(path, status, headers=headers)

    def reply_with(
        self,
        path: str,
        status: int,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        stall_s: float = 0.0,
    ) -> None:
        """Answer the next request to ``path`` (after those queued) with this, ``stall_s``
        late."""
        with self.lock:
            self.replies.setdefault(path, []).append((status, headers or {}, body, stall_s))

    def answer(self, path: str) -> tuple[int, dict[str, str], bytes, float]:
        with self.lock:
            queued = self.replies.get(path)
            return queued.pop(0) if queued else (200, {}, b"", 0.0)

    def requests(self, path: str) -> list[dict[str, Any]]:
        """Every request to ``path``: its headers, body and arrival time."""
        with self.lock:
            return [dict(r) for r in self.received if r["path"] == path]

    def paths(self, job_id: str | None = None) -> list[str]:
        """The path of every request, in arrival order (for one job's events if given)."""
        with self.lock:
            return [
                r["path"] for r in self.received if job_id is None or job_id in r["body"].decode()
            ]

    def arrivals(self, path: str) -> list[float]:
        with self.lock:
            return [r["at"] for r in self.received if r["path"] == path]


def _serve(targets: Targets, server: ThreadingHTTPServer) -> None:
    import time

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, headers, reply, stall_s = targets.answer(self.path)
            with targets.lock:
                targets.received.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "status": status,
                        "at": time.time(),
                    }
                )
            time.sleep(stall_s)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
            except OSError:
                pass  # the worker gave up waiting

        def log_message(self, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    server.serve_forever(0.05)


@dataclass
class Tier:
    """What a worker-tier test works with."""

    redis: redis.Redis
    targets: Targets
    app: Any
    publisher: Publisher
    ci: CiServer
    # The worker's metric samples when the test started (they add up over the session).
    baseline: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    @staticmethod
    def callback(job_id: str, *, tag: str = "Tts", state: str = "Success") -> bytes:
        """A TTS callback from the project's sample, as job ``job_id`` with ``tag``, ``state``."""
        body = SAMPLE.read_bytes().replace(SAMPLE_JOB_ID, job_id.encode())
        body = body.replace(b"<Tag>Tts</Tag>", f"<Tag>{tag}</Tag>".encode())
        return body.replace(b"<State>Success</State>", f"<State>{state}</State>".encode())

    def ingest(self, body: bytes, *, task_id: str | None = None) -> str:
        """Put ``body`` on ``ingest`` as the receiver does; return the task id."""
        envelope = Envelope.received_now(
            body, content_type="application/xml", remote_addr="127.0.0.1", request_id="req-1"
        ).to_json()
        if task_id is None:
            return self.publisher.ingest(envelope)
        self.app.send_task("cicb.ingest", args=[envelope], queue="ingest", task_id=task_id)
        return task_id

    def dead_letters(self) -> list[DeadLetter]:
        return DeadLetterQueue(self.app.connection_for_write).entries()

    def wait_for_dead_letters(self, count: int, timeout_s: float = 20) -> list[DeadLetter]:
        return list(
            wait_until(
                lambda: (d := self.dead_letters()) and len(d) >= count and d,
                timeout_s=timeout_s,
                what=f"{count} dead letter(s)",
            )
        )

    @staticmethod
    def samples() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        from workers.metrics import worker_metrics

        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in worker_metrics().registry.collect()
            for sample in family.samples
            if not sample.name.endswith("_created")
        }

    def count(self, name: str, **labels: str) -> float:
        """How much the worker's metric sample ``name`` with ``labels`` grew in this test
        (summed over the labels not given)."""
        wanted = set(labels.items())
        grown = self._grown()
        return sum(v for (n, have), v in grown.items() if n == name and wanted <= have)

    def counts(self, name: str, label: str) -> dict[str, float]:
        """What grew in this test of ``name``, by the value of ``label`` (none left at 0)."""
        by_value: dict[str, float] = {}
        for (sample, labels), grew in self._grown().items():
            if sample == name:
                value = dict(labels)[label]
                by_value[value] = by_value.get(value, 0.0) + grew
        return {k: v for k, v in by_value.items() if v}

    def _grown(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return {k: v - self.baseline.get(k, 0.0) for k, v in self.samples().items()}

    def runs(self) -> list[str]:
        from tests.workers.steps import RUNS_KEY

        return [r.decode() for r in self.redis.lrange(RUNS_KEY, 0, -1)]

    def inflight(self) -> int:
        return int(self.redis.zcard("cicb:inflight"))

    def idle(self, timeout_s: float = 20) -> None:
        """Wait until every message published so far has finished: none kept in flight, and
        no task still running (a copy that found its step done forgets its record before it
        returns and is counted)."""
        from celery.worker import state

        wait_until(
            lambda: self.inflight() == 0 and not state.active_requests,
            timeout_s=timeout_s,
            what="nothing in flight or running",
        )


def refuse(monkeypatch: pytest.MonkeyPatch, task: Any, *, times: int = 1) -> list[int]:
    """Make the broker refuse ``task``'s next ``times`` publishes as kombu does once its own
    retries are used up (the broker's endpoint moved); return the refusals left (empty once
    they all were)."""
    real, refusals = task.apply_async, [1] * times

    def refused(*args: object, **kwargs: object) -> object:
        if refusals:
            refusals.pop()
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return real(*args, **kwargs)

    monkeypatch.setattr(task, "apply_async", refused)
    return refusals


@pytest.fixture(scope="session")
def tier_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    from celery.contrib.testing.worker import start_worker

    # workers read their settings when imported: imported before this, they would hold
    # another environment's.
    assert "workers.app" not in sys.modules, "workers.app was imported before the worker tier"
    broker = Broker(tmp_path_factory.mktemp("tier-valkey"), persistent=False)
    broker.start()
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    targets = Targets(base_url=f"http://127.0.0.1:{server.server_address[1]}")
    threading.Thread(target=_serve, args=(targets, server), daemon=True).start()
    saved = {k: v for k, v in os.environ.items() if k.startswith("CICB_")}
    for name in saved:
        del os.environ[name]
    resources = contextlib.ExitStack()
    ci = resources.enter_context(serve_ci())
    os.environ.update(
        TIER_SETTINGS,
        CICB_BROKER_URL=broker.url,
        CICB_NOTIFY_URLS=",".join(targets.urls),
        # retry_job resubmits to the tier's CI stand-in.
        CICB_COS_SECRET_ID="AKIDtier0123456789",
        CICB_COS_SECRET_KEY="tier-secret-key-0123456789",
        CICB_CI_ENDPOINT=f"http://{ci.endpoint}",
    )
    get_settings.cache_clear()
    app = importlib.import_module("workers.app").app
    importlib.import_module("workers.tasks")
    importlib.import_module("workers.actions")
    importlib.import_module("tests.workers.steps")
    client = redis.Redis.from_url(broker.url)
    publisher = kind_of(get_settings()).publisher(get_settings())
    try:
        with start_worker(
            app,
            # Two threads: two copies of one message can run at the same moment.
            pool="threads",
            concurrency=2,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
        ):
            yield Tier(redis=client, targets=targets, app=app, publisher=publisher, ci=ci)
    finally:
        resources.close()
        publisher.close()
        client.close()
        server.shutdown()
        server.server_close()
        broker.stop()
        for name in [k for k in os.environ if k.startswith("CICB_")]:
            del os.environ[name]
        os.environ.update(saved)
        get_settings.cache_clear()


@pytest.fixture
def tier(tier_session: Tier) -> Iterator[Tier]:
    """The session's tier, with the previous test's work finished and its traces gone."""
    tier_session.idle()
    for pattern in ("cicb:*",):
        keys = list(tier_session.redis.scan_iter(pattern))
        if keys:
            tier_session.redis.delete(*keys)
    tier_session.redis.delete(*QUEUES)
    tier_session.targets.reset()
    tier_session.ci.requests.clear()
    tier_session.ci.jobs.clear()
    tier_session.ci.answers.clear()
    tier_session.ci.creates_jobs, tier_session.ci.hangups = True, 0
    tier_session.baseline = tier_session.samples()
    yield tier_session
