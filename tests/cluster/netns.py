"""Test hosts on this machine: Linux network namespaces joined by a bridge of their own.

Each host is a namespace ``cicbt-<name>`` with one interface, ``eth0``, and an address in
``SUBNET``; the bridge that joins them lives in the namespace ``cicbt-switch``, so the
machine's own network is never touched: traffic goes between these namespaces and nowhere
else. ``Network`` removes any stale ``cicbt-*`` namespace when it starts, and everything it
made (namespaces, with their interfaces and iptables rules, the processes it started in
them, ``/etc/netns`` files) when it stops.

Faults: ``cut`` drops everything in and out of a host (iptables in its namespace) until
``heal``; ``move_address`` moves an address from one host to another, as a managed service
moves its fixed endpoint on failover; ``Process.kill`` is a SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "cicbt-"
SWITCH = PREFIX + "switch"
BRIDGE = "br0"
SUBNET = "10.231.0"  # a private /24, inside the namespaces only
NETNS_ETC = Path("/etc/netns")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def in_ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *args], check=check, capture_output=True, text=True
    )


def available() -> str | None:
    """Why the cluster tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: iproute2, iptables)"
    return None


def remove_stale() -> None:
    """Remove every ``cicbt-*`` namespace (and what runs in it) an earlier run left."""
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
            _kill_all(name)
            ip("netns", "delete", name, check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)


def _kill_all(ns: str) -> None:
    pids = ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Process:
    """A process running on a test host, its output in ``log``."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def kill(self) -> None:
        """SIGKILL: the machine under it dies."""
        self.stop(signal.SIGKILL)


@dataclass
class Host:
    name: str
    ns: str
    address: str
    processes: list[Process] = field(default_factory=list)

    def run(self, args: Sequence[str], *, env: dict[str, str], log: Path) -> Process:
        """Start ``args`` on this host, in a session of its own."""
        with log.open("ab") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = Process(name=f"{self.name}:{Path(args[0]).name}", popen=popen, log=log)
        self.processes.append(process)
        return process

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return in_ns(self.ns, *args, check=check)


class Network:
    """The switch and the hosts of one test run."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self._cut: set[str] = set()

    def start(self) -> None:
        remove_stale()
        ip("netns", "add", SWITCH)
        ip("-n", SWITCH, "link", "add", BRIDGE, "type", "bridge")
        ip("-n", SWITCH, "link", "set", BRIDGE, "up")
        ip("-n", SWITCH, "link", "set", "lo", "up")

    def add(self, name: str, number: int) -> Host:
        """A host ``name`` at ``SUBNET.number``."""
        ns = PREFIX + name
        address = f"{SUBNET}.{number}"
        ip("netns", "add", ns)
        port = f"vs-{name}"[:15]
        ip("-n", SWITCH, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", SWITCH, "link", "set", port, "master", BRIDGE)
        ip("-n", SWITCH, "link", "set", port, "up")
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        host = Host(name=name, ns=ns, address=address)
        self.hosts[name] = host
        return host

    def names(self, names: dict[str, str]) -> None:
        """Give every host the same ``/etc/hosts`` (name -> address), as its own."""
        lines = "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in names.items())
        for host in self.hosts.values():
            folder = NETNS_ETC / host.ns
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "hosts").write_text(lines)

    def cut(self, name: str) -> None:
        """Drop every packet in and out of host ``name``."""
        host = self.hosts[name]
        host.exec("iptables", "-I", "INPUT", "!", "-i", "lo", "-j", "DROP")
        host.exec("iptables", "-I", "OUTPUT", "!", "-o", "lo", "-j", "DROP")
        self._cut.add(name)

    def heal(self, name: str) -> None:
        host = self.hosts[name]
        host.exec("iptables", "-F", "INPUT")
        host.exec("iptables", "-F", "OUTPUT")
        self._cut.discard(name)

    def move_address(self, address: str, source: str, target: str) -> None:
        """Move ``address`` (an extra one, /32 on eth0) from host ``source`` to ``target``;
        every host forgets where it was (the gratuitous ARP a managed service sends)."""
        self.hosts[source].exec("ip", "addr", "del", f"{address}/24", "dev", "eth0", check=False)
        self.hosts[target].exec("ip", "addr", "add", f"{address}/24", "dev", "eth0")
        for host in self.hosts.values():
            host.exec("ip", "neigh", "flush", "all", check=False)

    def add_address(self, address: str, name: str) -> None:
        self.hosts[name].exec("ip", "addr", "add", f"{address}/24", "dev", "eth0")

    def stop(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                with suppress(ProcessLookupError):
                    process.stop(signal.SIGKILL, timeout_s=5)
        remove_stale()
        self.hosts.clear()


@contextmanager
def network() -> Iterator[Network]:
    """A ``Network`` for the block, removed afterwards whatever happens."""
    net = Network()
    try:
        net.start()
        yield net
    finally:
        net.stop()


def wait_for_port(host: Host, port: int, *, timeout_s: float = 60) -> None:
    """Wait until something listens on ``host``'s ``port`` (seen from inside the host)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listening = host.exec("ss", "-ltnH", f"sport = :{port}", check=False).stdout
        if listening.strip():
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {host.name}:{port} after {timeout_s}s")
