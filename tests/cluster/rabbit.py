"""A three-node RabbitMQ cluster on test hosts (``tests.cluster.netns``): Debian's
``rabbitmq-server``, one node per host (``rabbit@rabbit1``...), each with its own epmd, one
shared Erlang cookie, the hosts' names in their ``/etc/hosts``, joined into a cluster by the
test (``rabbitmqctl join_cluster``) before cicb declares its quorum queues on it."""

from __future__ import annotations

import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.netns import Host, Process, wait_for_port
from tests.rabbitmq import EPMD, RABBITMQ_SERVER
from tests.support import require, wait_until

AMQP_PORT = 5672
COOKIE = "CICBTESTCLUSTERCOOKIE"
RABBITMQCTL = str(Path(RABBITMQ_SERVER).parent / "rabbitmqctl") if RABBITMQ_SERVER else ""
QUEUES_TOOL = str(Path(RABBITMQ_SERVER).parent / "rabbitmq-queues") if RABBITMQ_SERVER else ""


@dataclass
class RabbitNode:
    host: Host
    home: Path
    server: Process | None = None
    epmd: Process | None = None

    @property
    def node(self) -> str:
        return f"rabbit@{self.host.name}"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host.address}:{AMQP_PORT}//"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),  # its Erlang cookie
            "LANG": "C.UTF-8",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "0.0.0.0",
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
        }

    def prepare(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(COOKIE)
        cookie.chmod(0o400)
        (self.home / "rabbitmq.conf").write_text(
            "disk_free_limit.absolute = 10MB\n"
            # guest may log in from the other hosts (only from loopback by default).
            "loopback_users = none\n"
            # A node cut off from the other two stops serving rather than diverge.
            "cluster_partition_handling = pause_minority\n"
        )
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq-env.conf").write_text("")

    def start(self) -> None:
        assert RABBITMQ_SERVER is not None and EPMD is not None
        if self.epmd is None or not self.epmd.alive():
            self.epmd = self.host.run([EPMD], env=self.env(), log=self.home / "epmd.log")
        self.server = self.host.run([RABBITMQ_SERVER], env=self.env(), log=self.home / "server.log")
        wait_for_port(self.host, AMQP_PORT, timeout_s=120)

    def ctl(self, *args: str, tool: str = RABBITMQCTL) -> str:
        done = self.host.exec("env", *_env_args(self.env()), tool, "-n", self.node, *args)
        return done.stdout

    def stop(self) -> None:
        """Stop the node cleanly (SIGTERM), keeping its data: a rolling restart's half."""
        if self.server is not None:
            self.server.stop(signal.SIGTERM, timeout_s=90)

    def kill(self) -> None:
        if self.server is not None:
            self.server.kill()


def _env_args(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


@dataclass
class RabbitCluster:
    nodes: list[RabbitNode] = field(default_factory=list)

    @classmethod
    def start(cls, hosts: list[Host], tmp: Path) -> RabbitCluster:
        require(
            RABBITMQ_SERVER is not None and EPMD is not None,
            "rabbitmq-server (and Erlang's epmd) not installed: apt-get install rabbitmq-server",
        )
        cluster = cls([RabbitNode(host, tmp / host.name) for host in hosts])
        for node in cluster.nodes:
            shutil.rmtree(node.home, ignore_errors=True)
            node.prepare()
        for node in cluster.nodes:
            node.start()
        first = cluster.nodes[0]
        for node in cluster.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", first.node)
            node.ctl("start_app")
        wait_until(
            lambda: all(n.node in first.ctl("cluster_status") for n in cluster.nodes),
            timeout_s=60,
            what="the three nodes clustered",
        )
        return cluster

    @property
    def url(self) -> str:
        """kombu's failover form: every node's address."""
        return ";".join(node.url for node in self.nodes)

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.node == name)

    def live(self) -> RabbitNode:
        return next(n for n in self.nodes if n.server is not None and n.server.alive())

    def unfinished(self) -> int:
        """Messages on ``ingest`` and ``actions``, ready or delivered and not acked."""
        table = self.live().ctl("list_queues", "name", "messages", "--no-table-headers", "-q")
        counts = dict(line.split() for line in table.splitlines() if len(line.split()) == 2)
        return sum(int(counts.get(name, 0)) for name in ("ingest", "actions"))

    def leader(self, queue: str) -> RabbitNode:
        """The node that leads a quorum queue now."""
        for node in self.nodes:
            if node.server is None or not node.server.alive():
                continue
            table = node.ctl("list_queues", "name", "leader", "--no-table-headers", "-q")
            for line in table.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0] == queue:
                    return self.node(parts[1])
        raise AssertionError(f"no node leads {queue}")
