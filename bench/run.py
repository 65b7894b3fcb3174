"""``make bench``: cicb's receiver and workers beside their ceilings and a common peer.

Everything runs here, on loopback, in one go, and prints one table. The machine is shared
and noisy: each figure is the median of ``BENCH_RUNS`` runs, and the ratios measured side by
side are the figures that count. Nothing here is a test; nothing asserts a time.

1. Receiver: wrk (50 connections) posting tests/samples/tts_success.xml to cicb's
   receiver, to the same server doing no work (ceiling), and to Flask under gunicorn calling
   ``ingest.delay`` (peer); and cicb answering only once a replica has each callback
   (``CICB_MIN_REPLICAS=1``, a second Valkey replicating the broker). Every accepted
   callback is then counted on the broker, and each run says what a waiting callback costs
   the broker's memory, how often the broker forked to rewrite its append-only file, and
   for how long its last fork stopped it.
2. End to end: callbacks/s through ingest and a one-step no-op route, beside Celery's own
   no-op task rate with the same broker and worker settings, run by run.
3. Round trips: the worker's to Redis per callback and per Celery no-op task, counted by a
   proxy between the worker and Valkey (``bench.roundtrips``).
4. Memory: receiver and worker resident memory after 10,000 and 100,000 callbacks.
5. RabbitMQ: end to end on one RabbitMQ node, classic queues beside quorum queues
   (``CICB_QUEUE_TYPE``), the state in the bench's Valkey.

Then each target of the performance issue beside the figure measured for it: PASS, or the
gap. ``python -m bench.run receiver e2e`` runs the parts named.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil
import redis

from bench.roundtrips import RoundTripProxy
from pipeline.processes import WORKER_COMMAND, embedded_broker_command
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
# A TaskFinish callback: bench/post.lua gives each copy a new JobId, so none is a duplicate.
SAMPLE = ROOT / "tests" / "samples" / "tts_success.xml"
BIN = Path(sys.executable).parent
TOKEN = "bench-token-0123456789"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
CONNECTIONS = 50
E2E_CALLBACKS = int(os.environ.get("BENCH_E2E_CALLBACKS", "4000"))
MEMORY_AT = (10_000, int(os.environ.get("BENCH_MEMORY_CALLBACKS", "100000")))
ROUND_TRIP_CALLBACKS = 1000
# The broker's latency monitor notes each command that takes this long or longer (ms).
SLOW_COMMAND_MS = 2


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {check}")


@contextmanager
def process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    """Resident memory of a process and all its children, in MB."""
    parent = psutil.Process(proc.pid)
    procs = [parent, *parent.children(recursive=True)]
    total: int = sum(p.memory_info().rss for p in procs if p.is_running())
    return total / 1e6


def cpu_s(proc: subprocess.Popen[bytes]) -> float:
    """CPU time (user and system) used so far by a process and its live children, in s."""
    parent = psutil.Process(proc.pid)
    total = 0.0
    for p in [parent, *parent.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def wrk_env() -> dict[str, str]:
    """What bench/post.lua reads: the body, the token, and a prefix for this run's job ids."""
    run_id = f"{time.time_ns() % 10**12:012d}"
    return {**os.environ, "BENCH_BODY": str(SAMPLE), "BENCH_TOKEN": TOKEN, "BENCH_RUN_ID": run_id}


def wrk(url: str, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(ROOT / "bench" / "post.lua"),
            url,
        ],
        env=wrk_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency_ms(pct: str) -> float:
        value, unit = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50": latency_ms("50"),
        "p99": latency_ms("99"),
        "total": total,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": 1 if errors else 0,
    }


def post_until(url: str, count: int, connections: int = CONNECTIONS) -> None:
    """Post callbacks with wrk until the receiver has accepted ``count`` of them."""
    load = subprocess.Popen(
        ["wrk", "-t1", f"-c{connections}", "-d3600s", "-s", str(ROOT / "bench" / "post.lua"), url],
        env=wrk_env(),
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: accepted(url) >= count, 3600)
    finally:
        load.send_signal(signal.SIGINT)  # wrk stops on SIGINT
        try:
            load.wait(10)
        except subprocess.TimeoutExpired:
            load.kill()
            load.wait()


def post_one(url: str) -> None:
    body = SAMPLE.read_bytes().replace(b"j707f4864f86811ecb90d0b03267ce0e5", b"jwarmup")
    httpx.post(url, content=body, headers={"X-Callback-Token": TOKEN}).raise_for_status()


class Bench:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker_port = free_port()
        self.broker_url = f"redis://127.0.0.1:{self.broker_port}/0"
        self.redis = redis.Redis(port=self.broker_port)
        # The broker as the worker sees it when its round trips are counted.
        self.counted_url = self.broker_url
        # Each target of the performance issue, with the figure measured for it.
        self.targets: list[Target] = []
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("CICB_")},
            "CICB_BROKER_URL": self.broker_url,
            "CICB_RECEIVER_TOKEN": TOKEN,
            "CICB_LOG_FORMAT": "json",
            "CICB_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            "BENCH_COUNTER_URL": self.broker_url,
        }

    @contextmanager
    def broker(self) -> Iterator[None]:
        settings = Settings(data_dir=self.tmp, embedded_broker_port=self.broker_port)
        args = shlex.split(embedded_broker_command(settings))  # as `cicb up` runs it
        with process(args, self.env, self.tmp / "broker.log"):
            wait_for(self.redis.ping)
            yield

    @contextmanager
    def replica(self) -> Iterator[None]:
        """A replica of the broker (a second Valkey, in sync before this yields), for
        ``CICB_MIN_REPLICAS``."""
        folder = self.tmp / "replica"
        folder.mkdir(exist_ok=True)
        port = free_port()
        settings = Settings(data_dir=folder, embedded_broker_port=port)
        args = [
            *shlex.split(embedded_broker_command(settings)),
            "--replicaof",
            "127.0.0.1",
            str(self.broker_port),
        ]
        with process(args, self.env, folder / "replica.log"):
            wait_for(lambda: self.redis.info("replication").get("connected_slaves") == 1)
            wait_for(lambda: self.redis.wait(1, 1000) == 1)
            yield

    @contextmanager
    def server(
        self, kind: str, workers: int = 1, extra: Mapping[str, str] | None = None
    ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
        port = free_port()
        env = {**self.env, "CICB_RECEIVER_PORT": str(port), **(extra or {})}
        if kind == "cicb":
            args = [str(BIN / "cicb"), "receiver", "--workers", str(workers)]
        elif kind == "ceiling":
            args = [
                str(BIN / "uvicorn"),
                "bench.ceiling:app",
                "--port",
                str(port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ]
        else:
            args = [
                str(BIN / "gunicorn"),
                "-w",
                str(workers),
                "-b",
                f"127.0.0.1:{port}",
                "--log-level",
                "warning",
                "bench.flask_peer:app",
            ]
        url = f"http://127.0.0.1:{port}/callbacks"
        with process(args, env, self.tmp / f"{kind}.log") as proc:
            wait_for(lambda: httpx.post(url, content=b"", timeout=2).status_code < 500)
            yield url, proc

    def fresh_broker(self, *, aof_rewrite: bool = True) -> None:
        """An empty broker whose append-only file starts small, so every run starts alike."""

        def rewrite_done() -> bool:
            info = self.redis.info("persistence")
            return not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])

        wait_for(rewrite_done)  # one the last run started
        self.redis.flushall()
        self.redis.bgrewriteaof()
        wait_for(rewrite_done)
        self.redis.config_set("auto-aof-rewrite-percentage", 100 if aof_rewrite else 0)
        self.redis.config_set("latency-monitor-threshold", SLOW_COMMAND_MS)
        self.redis.latency_reset()

    def receiver_rows(self) -> list[list[str]]:
        rows = []
        # (label, server, processes); the last shows what the broker's append-only file
        # rewrites (forked while the backlog grows) cost the receiver.
        configs = [
            ("cicb", "cicb", 1),
            ("cicb", "cicb", 2),
            ("ceiling", "ceiling", 1),
            ("ceiling", "ceiling", 2),
            ("peer", "peer", 2),
            ("cicb, broker not rewriting its AOF", "cicb", 1),
            (REPLICATED, "cicb", 1),
        ]
        results: dict[tuple[str, str, int], list[dict[str, float]]] = {c: [] for c in configs}
        queued_ok = True
        for _ in range(RUNS):
            for config in configs:  # interleaved, so noise hits all alike
                label, kind, workers = config
                self.fresh_broker(aof_rewrite="not rewriting" not in label)
                empty = self.broker_bytes()
                replicated = label == REPLICATED
                with (
                    self.replica() if replicated else contextlib.nullcontext(),
                    self.server(kind, workers, MIN_REPLICAS if replicated else None) as (
                        url,
                        server,
                    ),
                ):
                    cpu_before, forks_before = cpu_s(server), self.forks()
                    result = wrk(url, SECONDS)
                    result["cpu_us"] = (cpu_s(server) - cpu_before) / result["total"] * 1e6
                    result["forks"], result["fork_ms"] = self.forks_since(forks_before)
                    result["slow_ms"], result["slow_count"] = self.slow_commands()
                accepted = result["total"] - result["non2xx"]
                if kind != "ceiling":
                    queued = self.redis.llen("ingest") + self.redis.llen("celery")
                    queued_ok &= queued >= accepted
                    result["kb_each"] = (self.broker_bytes() - empty) / max(queued, 1) / 1e3
                results[config].append(result)
        self.fresh_broker()

        def median(config: tuple[str, str, int], key: str) -> float:
            return statistics.median(r[key] for r in results[config])

        peer = median(configs[4], "rps")
        cicb, ceiling_1 = median(configs[0], "rps"), median(configs[2], "rps")
        self.targets += [
            Target("receiver vs the Flask peer", cicb / peer, at_least=5.0, unit="x"),
            Target("receiver vs the no-work ceiling", cicb / ceiling_1, at_least=0.5, unit="%"),
            Target(
                "receiver p99 at 50 connections",
                median(configs[0], "p99"),
                at_most=15.0,
                unit=" ms",
            ),
            Target(
                "every accepted callback on the broker", float(queued_ok), at_least=1.0, unit="yes"
            ),
        ]
        for config in configs:
            label, kind, workers = config
            rps = median(config, "rps")
            ceiling = median(("ceiling", "ceiling", workers), "rps")
            rows.append(
                [
                    f"{label} ({workers} process{'es' if workers > 1 else ''})",
                    f"{rps:,.0f}",
                    f"{median(config, 'p50'):.2f}",
                    f"{median(config, 'p99'):.2f}",
                    f"{rps / peer:.1f}x",
                    f"{rps / ceiling:.0%}",
                    f"{median(config, 'cpu_us'):.0f}",
                    "" if kind == "ceiling" else f"{median(config, 'kb_each'):.1f}",
                    "" if kind == "ceiling" else forks_shown(results[config]),
                    "" if kind == "ceiling" else slow_shown(results[config]),
                ]
            )
        rows.append(
            [
                "every accepted callback on the broker",
                "yes" if queued_ok else "NO",
                *[""] * 8,
            ]
        )
        return rows

    def broker_bytes(self) -> int:
        """The broker's memory for its data (``used_memory``): a callback waiting on it is
        kept there, and written as much to its append-only file. Read once the last run's
        data, flushed in the background, is freed."""
        wait_for(lambda: self.redis.info("memory")["lazyfree_pending_objects"] == 0)
        return int(self.redis.info("memory")["used_memory"])

    def forks(self) -> tuple[int, int]:
        """The broker's AOF rewrites so far, and how long (µs) its main thread stopped for
        the last one's fork (it answers nothing meanwhile)."""
        stats = self.redis.info("persistence") | self.redis.info("stats")
        return int(stats["aof_rewrites"]), int(stats["latest_fork_usec"])

    def slow_commands(self) -> tuple[float, int]:
        """The longest the broker took over one command (a script is one) since the run
        began, in ms, and how many took ``SLOW_COMMAND_MS`` or more, by its latency
        monitor; every request waiting on the broker waits as long."""
        for event in self.redis.latency_latest():
            if event[0] == b"command":
                return float(event[3]), int(event[5])  # name, when, latest, max, sum, count
        return 0.0, 0

    def forks_since(self, before: tuple[int, int]) -> tuple[int, float]:
        """The rewrites since ``before`` and the last one's fork in ms (0 without one);
        waits for a rewrite under way to be counted."""
        wait_for(lambda: not self.redis.info("persistence")["aof_rewrite_in_progress"])
        count, fork_us = self.forks()
        rewrites = count - before[0]
        return rewrites, fork_us / 1000 if rewrites else 0.0

    def worker(self, log: Path, **extra: str) -> Any:
        """A worker as cicb runs it, with the no-op routes of bench/noop_routes.py."""
        args = [sys.executable, "-m", *WORKER_COMMAND.split()]
        return process(args, {**self.env, "CICB_ROUTES": "bench.noop_routes", **extra}, log)

    def done(self) -> int:
        """What the no-op routes and tasks have counted (bench/noop_routes.py)."""
        return int(self.redis.get("bench:done") or 0)

    def wait_done(self, count: int, timeout_s: float) -> None:
        """Wait until the no-op routes and tasks have counted ``count``."""
        wait_for(lambda: self.done() >= count, timeout_s)

    def cicb_run(
        self,
        count: int = E2E_CALLBACKS,
        *,
        round_trips: Callable[[], int] | None = None,
        **extra: str,
    ) -> Timed:
        """Callbacks from the first POST to the end of the last one's route (``extra``:
        settings beside the bench's, another broker say); with ``round_trips`` (the
        worker's, counted by a proxy), its round trips per callback too."""
        self.fresh_broker()
        worker_extra = {**extra}
        if round_trips is not None:
            worker_extra["CICB_BROKER_URL"] = self.counted_url
        with (
            self.server("cicb", extra=extra) as (url, _),
            self.worker(self.tmp / "worker.log", **worker_extra) as worker,
        ):
            post_one(url)  # the worker is up and warm once this one is routed
            self.wait_done(1, 120)
            trips = round_trips() if round_trips else 0
            start, cpu = time.monotonic(), cpu_s(worker)
            post_until(url, count + 1)
            total = accepted(url)
            self.wait_done(total, 900)
            return Timed.of(
                total - 1,
                time.monotonic() - start,
                cpu_s(worker) - cpu,
                round_trips() - trips if round_trips else 0,
            )

    def celery_run(self, *, round_trips: Callable[[], int] | None = None) -> Timed:
        """Celery no-op tasks from the first sent to the last finished; with
        ``round_trips``, the worker's round trips per task too."""
        from celery import Celery

        self.fresh_broker()
        app = Celery("bench", broker=self.broker_url, set_as_current=False)
        extra = {"CICB_BROKER_URL": self.counted_url} if round_trips else {}
        with (
            self.worker(self.tmp / "worker.log", **extra) as worker,
            app.producer_or_acquire() as producer,
        ):
            app.send_task("bench.plain_noop", queue="actions", producer=producer)
            self.wait_done(1, 120)
            trips = round_trips() if round_trips else 0
            start, cpu = time.monotonic(), cpu_s(worker)
            for _ in range(E2E_CALLBACKS):
                app.send_task("bench.plain_noop", queue="actions", producer=producer)
            self.wait_done(E2E_CALLBACKS + 1, 900)
            return Timed.of(
                E2E_CALLBACKS,
                time.monotonic() - start,
                cpu_s(worker) - cpu,
                round_trips() - trips if round_trips else 0,
            )

    def round_trip_rows(self) -> list[list[str]]:
        """The worker's Redis round trips, counted by a proxy between it and Valkey."""
        with RoundTripProxy(self.broker_port) as proxy:
            self.counted_url = f"redis://127.0.0.1:{proxy.port}/0"
            cicb = self.cicb_run(ROUND_TRIP_CALLBACKS, round_trips=lambda: proxy.round_trips)
            celery = self.celery_run(round_trips=lambda: proxy.round_trips)
        own = cicb.trips - 2 * celery.trips
        self.targets.append(Target("worker round trips per callback, cicb's own", own, at_most=4))
        return [
            ["cicb: worker round trips per callback", f"{cicb.trips:.1f}"],
            ["Celery: worker round trips per no-op task", f"{celery.trips:.1f}"],
            ["cicb's own per callback (beyond two Celery tasks')", f"{own:.1f}"],
        ]

    def end_to_end_rows(self) -> list[list[str]]:
        """cicb and Celery's no-op ceiling, one after the other in each run, so noise hits
        both alike; each ratio is the median of each run's."""
        tasks_per_callback = 2  # cicb.ingest, then the route's one step
        cicb_runs, celery_runs = [], []
        for _ in range(RUNS):
            cicb_runs.append(self.cicb_run())
            celery_runs.append(self.celery_run())
        pairs = list(zip(cicb_runs, celery_runs, strict=True))
        ratio = statistics.median(a.rate * tasks_per_callback / b.rate for a, b in pairs)
        cpu_ratio = statistics.median(tasks_per_callback * b.cpu_ms / a.cpu_ms for a, b in pairs)
        self.targets.append(Target("end to end, per Celery task's ceiling", ratio, at_least=0.9))
        return [
            [
                "cicb: callbacks/s, POST to the end of a 1-step no-op route",
                f"{statistics.median(r.rate for r in cicb_runs):,.0f}",
            ],
            [
                "Celery: no-op tasks/s, same broker and worker settings",
                f"{statistics.median(r.rate for r in celery_runs):,.0f}",
            ],
            ["ratio to the ceiling per Celery task (median of each run's)", f"{ratio:.2f}"],
            [
                "worker CPU ms per callback (main process and pool)",
                f"{statistics.median(r.cpu_ms for r in cicb_runs):.2f}",
            ],
            [
                "worker CPU ms per Celery no-op task",
                f"{statistics.median(r.cpu_ms for r in celery_runs):.2f}",
            ],
            ["the same ratio in CPU: two no-op tasks' over a callback's", f"{cpu_ratio:.2f}"],
        ]

    def rabbitmq_rows(self) -> list[list[str]]:
        """End to end on one RabbitMQ node: classic queues beside quorum queues, interleaved,
        the state in the bench's Valkey."""
        from kombu import Connection

        from tests.rabbitmq import RABBITMQ_SERVER, RabbitMQ

        if RABBITMQ_SERVER is None:
            return [["rabbitmq-server not installed: skipped", "", ""]]
        server = RabbitMQ(self.tmp / "rabbitmq")
        server.start()
        rates: dict[str, list[float]] = {"classic": [], "quorum": []}
        try:
            for _ in range(RUNS):
                for queue_type in rates:
                    # A queue's type is fixed when it is declared: start from none.
                    with Connection(server.url) as conn:
                        channel = conn.default_channel
                        for name in ("ingest", "actions", "dead_letter"):
                            channel.queue_delete(name)
                            channel.exchange_delete(name)
                    run = self.cicb_run(
                        CICB_BROKER_URL=server.url,
                        CICB_REDIS_URL=self.broker_url,
                        CICB_QUEUE_TYPE=queue_type,
                    )
                    rates[queue_type].append(run.rate)
        finally:
            server.close()
        classic, quorum = (statistics.median(rates[t]) for t in ("classic", "quorum"))
        return [
            ["classic queues", f"{classic:,.0f}", "1.00"],
            ["quorum queues", f"{quorum:,.0f}", f"{quorum / classic:.2f}"],
        ]

    def memory_rows(self) -> list[list[str]]:
        self.fresh_broker()
        rows, sizes = [], []
        with (
            self.server("cicb") as (url, receiver),
            self.worker(self.tmp / "worker-mem.log") as worker,
        ):
            for target in MEMORY_AT:
                post_until(url, target, connections=8)
                total = accepted(url)
                self.wait_done(total, 3600)
                sizes.append((rss_mb(receiver), rss_mb(worker)))
                rows.append([f"after {total:,} callbacks", *(f"{mb:.0f}" for mb in sizes[-1])])
        (receiver_first, worker_first), (receiver_last, worker_last) = sizes[0], sizes[-1]
        self.targets += [
            Target(
                "receiver memory growth, 10k to 100k",
                receiver_last / receiver_first - 1,
                at_most=0.1,
                unit="%",
            ),
            Target(
                "worker memory growth, 10k to 100k",
                worker_last / worker_first - 1,
                at_most=0.1,
                unit="%",
            ),
        ]
        return rows


class Timed(NamedTuple):
    """A timed run: per second, and the worker's CPU (main process and pool) and Redis
    round trips (0: not counted) per callback or task."""

    rate: float
    cpu_ms: float
    trips: float

    @classmethod
    def of(cls, count: int, seconds: float, cpu_s: float, trips: int) -> Timed:
        return cls(count / seconds, cpu_s / count * 1000, trips / count)


@dataclass(frozen=True)
class Target:
    """A figure and the bound it must meet."""

    name: str
    measured: float
    at_least: float | None = None
    at_most: float | None = None
    unit: str = ""

    def shown(self, value: float) -> str:
        if self.unit == "%":
            return f"{value:.0%}"
        if self.unit == "yes":
            return "yes" if value >= 1 else "no"
        return f"{value:.2f}{self.unit}" if self.unit != "x" else f"{value:.1f}x"

    def row(self) -> list[str]:
        if self.at_least is not None:
            bound, met = f">= {self.shown(self.at_least)}", self.measured >= self.at_least
            gap = self.at_least - self.measured
        else:
            assert self.at_most is not None
            bound, met = f"<= {self.shown(self.at_most)}", self.measured <= self.at_most
            gap = self.measured - self.at_most
        verdict = "PASS" if met else f"gap {self.shown(gap)}"
        if self.unit == "yes":
            verdict = "PASS" if met else "FAIL"
        return [self.name, self.shown(self.measured), bound, verdict]


def median_run(runs: list[dict[str, float]], key: str) -> dict[str, float]:
    """The run whose ``key`` is the median's, so the figures shown beside it are its own."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def forks_shown(runs: list[dict[str, float]]) -> str:
    """The broker's AOF rewrites in a run and the last one's fork (the median run's)."""
    run = median_run(runs, "forks")
    return f"{run['forks']:.0f} ({run['fork_ms']:.1f} ms)" if run["forks"] else "0"


def slow_shown(runs: list[dict[str, float]]) -> str:
    """The broker's slowest command in a run, and how many were slow (the median run's)."""
    run = median_run(runs, "slow_ms")
    return f"{run['slow_count']:.0f} ({run['slow_ms']:.0f} ms)" if run["slow_count"] else "0"


def accepted(url: str) -> int:
    """Callbacks the receiver has answered 200, from its /metrics."""
    text = httpx.get(url.replace("/callbacks", "/metrics")).text
    found = re.search(r'cicb_receiver_responses_total\{status="200"\} ([\d.e+]+)', text)
    return int(float(found.group(1))) if found else 0


def table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    return "\n".join(
        [f"\n{title}", line(header), line(["-" * w for w in widths]), *map(line, rows)]
    )


PARTS = ("receiver", "e2e", "trips", "memory", "rabbitmq")
# The receiver answering 200 only once a replica has the callback (WAIT).
REPLICATED = "cicb, CICB_MIN_REPLICAS=1 (a replica)"
MIN_REPLICAS = {"CICB_MIN_REPLICAS": "1"}


def main() -> None:
    parts = sys.argv[1:] or PARTS
    if unknown := set(parts) - set(PARTS):
        sys.exit(f"unknown part {sorted(unknown)}; choose from {', '.join(PARTS)}")
    with tempfile.TemporaryDirectory(prefix="cicb-bench-") as tmp:
        bench = Bench(Path(tmp))
        with bench.broker():
            print(
                f"median of {RUNS} runs; wrk -c{CONNECTIONS} for {SECONDS}s; "
                f"{os.cpu_count()} cores",
                flush=True,
            )
            if "receiver" in parts:
                print(
                    table(
                        "Receiver (POST tests/samples/tts_success.xml)",
                        [
                            "server",
                            "req/s",
                            "p50 ms",
                            "p99 ms",
                            "vs peer",
                            "vs ceiling",
                            "CPU µs/req",
                            "broker KB a waiting callback",
                            "broker AOF rewrites (last fork)",
                            f"broker commands of {SLOW_COMMAND_MS} ms or more (slowest)",
                        ],
                        bench.receiver_rows(),
                    ),
                    flush=True,
                )
            if "e2e" in parts:
                print(
                    table(
                        f"End to end ({E2E_CALLBACKS:,} callbacks; archive, deduplication "
                        "and in-flight records on, as cicb up runs them)",
                        ["", "rate"],
                        bench.end_to_end_rows(),
                    ),
                    flush=True,
                )

            if "trips" in parts:
                print(
                    table(
                        f"Worker round trips to Redis ({ROUND_TRIP_CALLBACKS:,} callbacks, "
                        f"{E2E_CALLBACKS:,} Celery tasks)",
                        ["", "per"],
                        bench.round_trip_rows(),
                    ),
                    flush=True,
                )
            if "rabbitmq" in parts:
                print(
                    table(
                        f"End to end on RabbitMQ, one node ({E2E_CALLBACKS:,} callbacks)",
                        ["queues", "callbacks/s", "vs classic"],
                        bench.rabbitmq_rows(),
                    ),
                    flush=True,
                )
            if "memory" in parts:
                print(
                    table(
                        "Memory (resident, MB; receiver 1 process, worker with its pool)",
                        ["", "receiver", "worker"],
                        bench.memory_rows(),
                    ),
                    flush=True,
                )
            if bench.targets:
                print(
                    table(
                        "Targets",
                        ["figure", "measured", "target", ""],
                        [t.row() for t in bench.targets],
                    ),
                    flush=True,
                )


if __name__ == "__main__":
    main()
