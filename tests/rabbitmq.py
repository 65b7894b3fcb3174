"""A RabbitMQ node of a test's own: Debian's ``rabbitmq-server``, with its own epmd, on free
loopback ports, its data and logs in a temporary directory. Skipped without RabbitMQ, failed
under ``CI=true`` (``.ci/run`` installs it)."""

from __future__ import annotations

import os
import shutil
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kombu import Connection

from tests.support import Process, free_port, require, wait_until


def _rabbitmq_server() -> str | None:
    # Debian's /usr/sbin/rabbitmq-server is a wrapper that switches to the rabbitmq user (who
    # cannot write to pytest's directories); the script it wraps runs as anyone.
    debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    return str(debian) if debian.exists() else shutil.which("rabbitmq-server")


RABBITMQ_SERVER = _rabbitmq_server()
EPMD = shutil.which("epmd")


@dataclass
class RabbitMQ:
    """A rabbitmq-server that a test can stop and start again on the same ports and data.

    It has its own epmd (Erlang's node name server) on a free port, so it neither needs nor
    disturbs the machine's, and its own Erlang cookie in ``home``.
    """

    home: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"rabbit-{uuid.uuid4().hex[:12]}@localhost")
    server: Process | None = None
    epmd: Process | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),  # erl
            "HOME": str(self.home),  # where the Erlang cookie goes
            "LANG": "C.UTF-8",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            # Not /etc/rabbitmq/rabbitmq-env.conf: nothing of the machine's own setup.
            "RABBITMQ_CONF_ENV_FILE": str(self.home / "rabbitmq-env.conf"),
        }

    def start(self) -> None:
        """Start the node (and its epmd); the test skips, or fails under CI=true, when
        RabbitMQ is not installed."""
        require(
            RABBITMQ_SERVER is not None and EPMD is not None,
            "rabbitmq-server (and Erlang's epmd) not installed: "
            "apt-get install rabbitmq-server, as .ci/run does",
        )
        assert RABBITMQ_SERVER is not None and EPMD is not None
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "rabbitmq.conf").write_text(
            # Below the default 50 MB free on a crowded CI disk, RabbitMQ would block every
            # publisher without a word.
            "disk_free_limit.absolute = 10MB\n"
        )
        (self.home / "enabled_plugins").write_text("[].\n")
        (self.home / "rabbitmq-env.conf").write_text("")
        if self.epmd is None:
            self.epmd = Process(
                [EPMD, "-address", "127.0.0.1", "-port", str(self.epmd_port)],
                self.env(),
                self.home / "epmd.log",
                cwd=self.home,
            ).start()
        self.server = Process(
            [RABBITMQ_SERVER], self.env(), self.home / "server.log", cwd=self.home
        ).start()
        popen = self.server.popen
        assert popen is not None
        wait_until(
            lambda: popen.poll() is not None or self.accepts(),
            timeout_s=90,
            what=f"rabbitmq-server on port {self.port}",
        )
        assert popen.poll() is None, f"rabbitmq-server exited:\n{self.server.log()[-3000:]}"

    def accepts(self) -> bool:
        """Whether an AMQP client can log in now."""
        with Connection(self.url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
            return True

    def stop(self) -> None:
        """Stop the node (SIGTERM: RabbitMQ shuts down cleanly), keeping its data."""
        if self.server is not None:
            self.server.stop(timeout_s=60)

    def kill(self) -> None:
        """Kill the node at once (SIGKILL), as a crash would."""
        if self.server is not None:
            self.server.stop(signal.SIGKILL)

    def pause(self) -> None:
        """Freeze the node (SIGSTOP): its connections stay open and nothing answers on them,
        as when a node is cut off the network."""
        if self.server is not None and self.server.popen is not None:
            os.killpg(self.server.popen.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.server is not None and self.server.popen is not None:
            os.killpg(self.server.popen.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()
        if self.epmd is not None:
            self.epmd.stop()
