"""``kind_of``: the one place that tells a Redis broker from RabbitMQ."""

from __future__ import annotations

from pipeline.brokers.kind import kind_of
from pipeline.settings import Settings


def test_a_redis_broker_keeps_messages_in_flight_and_holds_the_state() -> None:
    for url in ("redis://127.0.0.1:6390/0", "rediss://h:6380/0"):
        kind = kind_of(Settings.from_env({"CICB_BROKER_URL": url}))
        assert kind.is_redis and kind.keeps_inflight
        assert kind.state_url == url


def test_the_default_broker_is_the_embedded_redis() -> None:
    kind = kind_of(Settings.from_env({}))
    assert kind.is_redis and kind.state_url == "redis://127.0.0.1:6390/0"


def test_rabbitmq_keeps_nothing_in_flight_and_needs_a_redis_for_the_state() -> None:
    rabbit = {"CICB_BROKER_URL": "amqp://guest:guest@h:5672//"}
    kind = kind_of(Settings.from_env(rabbit))
    assert not kind.is_redis and not kind.keeps_inflight
    assert kind.state_url is None
    with_redis = kind_of(Settings.from_env({**rabbit, "CICB_REDIS_URL": "redis://r:6379/1"}))
    assert with_redis.state_url == "redis://r:6379/1"
    assert not with_redis.keeps_inflight


def test_a_separate_redis_holds_the_state_of_a_redis_broker() -> None:
    kind = kind_of(
        Settings.from_env(
            {"CICB_BROKER_URL": "redis://b:6379/0", "CICB_REDIS_URL": "redis://s:6379/0"}
        )
    )
    assert kind.state_url == "redis://s:6379/0" and kind.keeps_inflight
