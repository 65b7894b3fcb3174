"""``pipeline.endpoints``: Redis addresses as users write them (one address, or Sentinels in
kombu's form), checked at start; and writes that wait for replicas (``CICB_MIN_REPLICAS``)
against a real Valkey with no replica."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.sentinel

from pipeline.brokers.envelope import Envelope
from pipeline.brokers.fastpath import RedisEnqueuer
from pipeline.brokers.kind import kind_of
from pipeline.endpoints import NotReplicated, RedisEndpoint, Replicas
from pipeline.errors import BrokerUnavailable, ConfigError
from pipeline.guard import Guard
from pipeline.runs import TaskRuns
from pipeline.settings import Settings

SENTINELS = "sentinel://:s3cret@h1:26379;sentinel://h2;sentinel://h3:26380/2"


def test_sentinels_in_kombus_form_name_each_sentinel_the_primary_and_its_database() -> None:
    endpoint = RedisEndpoint.parse(SENTINELS, master="cicb-primary", sentinel_password="sp")
    assert endpoint.is_sentinel
    assert endpoint.sentinels == (("h1", 26379), ("h2", 26379), ("h3", 26380))
    assert (endpoint.master, endpoint.db, endpoint.password) == ("cicb-primary", 2, "s3cret")
    assert endpoint.transport_options() == {
        "master_name": "cicb-primary",
        "sentinel_kwargs": {"password": "sp"},
    }
    client = endpoint.client()
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "cicb-primary"
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cret"


def test_one_address_is_a_plain_client() -> None:
    endpoint = RedisEndpoint.parse("redis://:pw@r-1.example.com:6379/3")
    assert not endpoint.is_sentinel and endpoint.transport_options() == {}
    kwargs = endpoint.client().connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("r-1.example.com", 6379, 3)


def test_the_state_redis_must_be_a_redis() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CICB_BROKER_URL": "amqp://h//", "CICB_REDIS_URL": "http://h:1/0"})
    said = "CICB_REDIS_URL: 'http://h:1/0' is not a redis://, rediss:// or sentinel:// URL"
    assert str(caught.value) == said


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("sentinel://h1:26379;redis://h2:6379", "is not sentinel://host:port"),
        ("sentinel://:26379", "is not sentinel://host:port"),
        ("sentinel://h1:port", "h1:port"),
        ("redis://h:notaport/0", "redis://h:notaport/0"),
    ],
)
def test_a_bad_address_stops_the_process_naming_the_setting(url: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CICB_BROKER_URL": url})
    assert str(caught.value).startswith("CICB_BROKER_URL: ")
    assert said in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CICB_BROKER_URL": "amqp://h//", "CICB_REDIS_URL": url})
    assert str(caught.value).startswith("CICB_REDIS_URL: ")


def test_a_password_is_never_said_in_the_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CICB_BROKER_URL": "sentinel://:hunter2@h1:26379;redis://x"})
    assert "hunter2" not in str(caught.value)


def test_a_sentinel_broker_goes_through_cicbs_sentinel_transport() -> None:
    settings = Settings(broker_url=SENTINELS, sentinel_master="m", sentinel_password="sp")
    kind = kind_of(settings)
    assert kind.is_redis and kind.broker is not None and kind.broker.is_sentinel
    options = kind.celery_options(settings)
    assert options["broker_transport"] == "pipeline.brokers.redis_transport:SentinelTransport"
    assert options["broker_transport_options"]["master_name"] == "m"
    assert options["broker_transport_options"]["sentinel_kwargs"] == {"password": "sp"}
    assert kind.state is not None and kind.state.sentinels == kind.broker.sentinels


def test_without_a_replica_the_receiver_answers_503_not_200(broker_url: str) -> None:
    envelope = Envelope.received_now(
        b"<Response/>", content_type="application/xml", remote_addr="127.0.0.1", request_id="r"
    ).to_json()

    async def enqueue() -> None:
        enqueuer = RedisEnqueuer(
            RedisEndpoint.parse(broker_url), replicas=Replicas(wanted=1, timeout_ms=100)
        )
        try:
            await enqueuer.ingest(envelope)
        finally:
            await enqueuer.aclose()

    with pytest.raises(BrokerUnavailable, match="0 of 1 replica"):
        asyncio.run(enqueue())


def test_a_key_or_a_completion_no_replica_confirmed_is_not_taken_as_safe(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    replicas = Replicas(wanted=1, timeout_ms=50)
    guard = Guard(client, dedup_ttl_s=60, replicas=replicas)
    assert guard.claim("TaskFinish:j1:Success", owner="t1")
    with pytest.raises(NotReplicated):
        guard.confirm("TaskFinish:j1:Success")
    runs = TaskRuns(client, ttl_s=60, max_deliveries=3, replicas=replicas)
    assert runs.start("t1", 0, "w/1").state == "run"
    with pytest.raises(NotReplicated):
        runs.finish("t1", "w/1")
    # Without CICB_MIN_REPLICAS nothing waits.
    TaskRuns(client, ttl_s=60, max_deliveries=3).finish("t2", "w/1")
