"""Lose the Redis machine, or a worker's network, or pay for a slow link, and keep every
callback: one scenario per fault, on test hosts (``tests.cluster``), each under the same
load (2,000 callbacks at 40 a second over two receivers, half of them Failed jobs that the
default route notifies and resubmits through CI's API stand-in).

Each scenario asserts and reports what ``tests.cluster.scenario.run`` says.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.cluster.netns import wait_for_port
from tests.cluster.scenario import COUNT, run
from tests.cluster.stack import FLOATING, PROXY_PORT, PYTHON, REDIS_PORT, Cluster, settle

# Each scenario: about 20 s to start, 50 s of load, then however long it takes to settle.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


def test_the_primary_is_killed_and_sentinel_fails_over(cluster: Cluster) -> None:
    cluster.start_valkeys(sentinels=True)
    old = cluster.primary()

    def kill_primary() -> None:
        cluster.servers["valkey1"].kill()
        settle(lambda: cluster.primary() != old, timeout_s=60)

    figures = run(
        cluster,
        "Sentinel failover (primary SIGKILLed, CICB_MIN_REPLICAS=1)",
        cluster.sentinel_url,
        kill_primary,
        CICB_MIN_REPLICAS="1",
    )
    assert cluster.primary() != old
    assert figures["answered_200"] > COUNT / 2


def test_the_fixed_endpoint_moves_to_a_replica(cluster: Cluster) -> None:
    cluster.start_valkeys(sentinels=False)
    cluster.net.add_address(FLOATING, "valkey1")

    def fail_over() -> None:
        # What a managed service does: the primary's machine is gone; the most up-to-date
        # replica is promoted, the other follows it, and the endpoint moves to it.
        cluster.servers["valkey1"].kill()
        time.sleep(2)  # the service noticing
        replicas = cluster.valkeys[1:]
        new, other = sorted(replicas, key=lambda h: cluster.offset(h.address), reverse=True)
        cluster.redis(new.address, "REPLICAOF", "NO", "ONE")
        cluster.redis(other.address, "REPLICAOF", new.address, str(REDIS_PORT))
        cluster.net.move_address(FLOATING, "valkey1", new.name)

    figures = run(
        cluster,
        "managed endpoint moved to a replica (CICB_MIN_REPLICAS=1)",
        f"redis://{FLOATING}:{REDIS_PORT}/0",
        fail_over,
        CICB_MIN_REPLICAS="1",
    )
    assert figures["answered_200"] > COUNT / 2


def test_a_worker_host_is_cut_off_for_30_s(cluster: Cluster) -> None:
    cluster.start_valkeys(sentinels=True)

    def cut() -> None:
        cluster.net.cut("work1")
        time.sleep(30)
        cluster.net.heal("work1")

    figures = run(cluster, "worker host cut off 30 s", cluster.sentinel_url, cut)
    assert figures["answered_503"] == 0  # the receivers never lost Redis


def test_every_redis_link_slows_to_200_ms_for_30_s(cluster: Cluster) -> None:
    # Every process reaches Redis through a proxy on the proxy host, which delays each
    # chunk 200 ms +- 50 ms each way while the fault lasts. Not the whole load: kombu's Redis
    # transport takes one message per BRPOP, a round trip each, so a worker host on a
    # 200 ms link takes a few messages a second however many processes it runs (the
    # scenario reports the rate), far from 40 callbacks a second.
    cluster.start_valkeys(sentinels=False)
    assert cluster.proxy is not None
    to = f"{cluster.valkeys[0].address}:{REDIS_PORT}"
    proxy = cluster.proxy.run(
        [
            PYTHON,
            "-m",
            "tests.cluster.delay_proxy",
            "--listen",
            f"0.0.0.0:{PROXY_PORT}",
            "--to",
            to,
            "--delay-ms",
            "200",
            "--jitter-ms",
            "50",
            "--off",
        ],
        env=cluster.env(""),
        log=cluster.tmp / "proxy.log",
    )
    wait_for_port(cluster.proxy, PROXY_PORT)

    def slow_down() -> None:
        proxy.popen.send_signal(signal.SIGUSR1)
        time.sleep(30)
        proxy.popen.send_signal(signal.SIGUSR1)

    figures = run(
        cluster,
        "200 ms +- 50 ms on every Redis link for 30 s",
        f"redis://{cluster.proxy.address}:{PROXY_PORT}/0",
        slow_down,
    )
    assert figures["answered_503"] == 0
