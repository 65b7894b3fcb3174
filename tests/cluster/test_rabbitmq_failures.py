"""Lose a RabbitMQ node, or its network, or restart it, and keep every callback: cicb on a
three-node RabbitMQ cluster with quorum queues (``CICB_QUEUE_TYPE=quorum``), given every
node's address (kombu's failover form), its state in a Valkey beside it. The same load and
assertions as the Redis scenarios (``tests.cluster.scenario``)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.cluster.rabbit import RabbitCluster
from tests.cluster.scenario import run
from tests.cluster.stack import REDIS_PORT, Cluster, settle

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]


@pytest.fixture
def rabbits(cluster: Cluster) -> Iterator[RabbitCluster]:
    cluster.start_valkeys(sentinels=False)
    cluster.rabbit = RabbitCluster.start(cluster.rabbit_hosts, cluster.tmp)
    yield cluster.rabbit


def quorum(cluster: Cluster) -> dict[str, str]:
    return {
        "CICB_QUEUE_TYPE": "quorum",
        "CICB_REDIS_URL": f"redis://{cluster.valkeys[0].address}:{REDIS_PORT}/0",
    }


def test_the_node_leading_ingest_is_killed(cluster: Cluster, rabbits: RabbitCluster) -> None:
    def kill_leader() -> None:
        leader = rabbits.leader("ingest")
        leader.kill()
        settle(lambda: rabbits.leader("ingest") is not leader, timeout_s=60)

    run(cluster, "RabbitMQ: ingest's leader SIGKILLed", rabbits.url, kill_leader, **quorum(cluster))
    # The queues' depths, read from whichever node still answers.
    for receiver in cluster.receivers:
        assert 'cicb_queue_messages{queue="ingest"} 0.0' in cluster.receiver_metrics(receiver)


def test_one_node_is_cut_off_for_30_s(cluster: Cluster, rabbits: RabbitCluster) -> None:
    def cut() -> None:
        name = rabbits.nodes[1].host.name
        cluster.net.cut(name)
        time.sleep(30)
        cluster.net.heal(name)

    run(cluster, "RabbitMQ: one node cut off 30 s", rabbits.url, cut, **quorum(cluster))


def test_a_rolling_restart_refuses_no_callback(cluster: Cluster, rabbits: RabbitCluster) -> None:
    def restart() -> None:
        node = rabbits.nodes[2]
        node.stop()
        node.start()
        settle(lambda: node.node in rabbits.nodes[0].ctl("cluster_status"), timeout_s=60)

    figures = run(
        cluster,
        "RabbitMQ: a node stopped and started (rolling restart)",
        rabbits.url,
        restart,
        **quorum(cluster),
    )
    assert figures["answered_503"] == 0
