"""The receiver's fast path writes the message Celery itself would write."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import redis

from pipeline.brokers.envelope import shown
from pipeline.brokers.fastpath import RedisEnqueuer, random_uuid
from pipeline.brokers.kind import kind_of
from pipeline.brokers.messages import body_of
from pipeline.brokers.publishing import CeleryEnqueuer
from pipeline.endpoints import RedisEndpoint
from pipeline.errors import BrokerUnavailable
from pipeline.settings import Settings
from tests.support import free_port

ENVELOPE = {
    "body": "<Response>回调</Response>",
    "body_encoding": "utf-8",
    "content_type": "application/xml",
    "received_at": "2026-11-28T00:00:00+00:00",
    "remote_addr": "127.0.0.1",
    "request_id": "r1",
}
VARYING_HEADERS = {"id", "root_id", "origin"}
VARYING_PROPERTIES = {"correlation_id", "reply_to", "delivery_tag", "body_encoding"}


def written(client: redis.Redis) -> dict[str, Any]:
    raw = client.rpop("ingest")
    message = json.loads(raw)  # type: ignore[arg-type]
    message["body"] = body_of(raw)  # type: ignore[arg-type]
    for name in VARYING_HEADERS:
        message["headers"].pop(name)
    for name in VARYING_PROPERTIES:
        message["properties"].pop(name)
    return message


def test_the_fast_path_writes_what_celery_writes(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    settings = Settings(broker_url=broker_url, redis_url=broker_url)
    kind_of(settings).publisher(settings).ingest(ENVELOPE)
    by_celery = written(client)
    assert by_celery["headers"]["argsrepr"] == shown(ENVELOPE)  # what Flower shows
    # Celery also copies each option it is given into the message's properties, where
    # nothing reads it (an AMQP broker drops what is not an AMQP property).
    assert by_celery["properties"].pop("argsrepr") == shown(ENVELOPE)

    async def enqueue() -> str:
        enqueuer = RedisEnqueuer(RedisEndpoint.parse(settings.broker_url))
        try:
            return await enqueuer.ingest(ENVELOPE)
        finally:
            await enqueuer.aclose()

    task_id = asyncio.run(enqueue())
    assert written(client) == by_celery
    # ...and keeps it, byte for byte, until its task finishes.
    raw = client.hget("cicb:inflight:messages", task_id)
    kept = json.loads(raw)  # type: ignore[arg-type]
    assert kept["headers"]["id"] == task_id
    assert body_of(raw)[0] == [ENVELOPE]  # type: ignore[arg-type]
    # Its body is JSON text, where kombu writes base64: a fifth smaller.
    assert kept["properties"]["body_encoding"] == "utf-8"
    assert json.loads(kept["body"])[0] == [ENVELOPE]
    meta = json.loads(client.hget("cicb:inflight:meta", task_id))  # type: ignore[arg-type]
    assert meta["q"] == "ingest" and meta["tag"] == kept["properties"]["delivery_tag"]
    assert client.zscore("cicb:inflight", task_id) is not None
    # Its ids are random UUIDs written as Celery and kombu write theirs.
    for value in (task_id, kept["properties"]["delivery_tag"]):
        assert_uuid4(value)
    assert kept["properties"]["correlation_id"] == kept["headers"]["root_id"] == task_id


def assert_uuid4(value: str) -> None:
    parsed = uuid.UUID(value)
    assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, value)


def test_random_uuids_are_version_4_and_differ() -> None:
    made = [random_uuid() for _ in range(10_000)]
    for value in made:
        assert_uuid4(value)
    assert len(set(made)) == len(made)


def test_redis_brokers_take_the_fast_path_and_others_celery() -> None:
    redis_broker = Settings(broker_url="redis://127.0.0.1:1/0")
    assert isinstance(kind_of(redis_broker).enqueuer(redis_broker), RedisEnqueuer)
    amqp = Settings(broker_url="amqp://guest:guest@127.0.0.1:1//")
    assert isinstance(kind_of(amqp).enqueuer(amqp), CeleryEnqueuer)


def test_callbacks_arriving_together_are_written_together_and_in_order(broker_url: str) -> None:
    client = redis.Redis.from_url(broker_url)
    client.delete("ingest")
    client.config_resetstat()
    settings = Settings(broker_url=broker_url, redis_url=broker_url)
    count = 300  # more than one batch holds

    async def burst() -> list[str]:
        enqueuer = RedisEnqueuer(RedisEndpoint.parse(settings.broker_url))
        try:
            envelopes = [{**ENVELOPE, "request_id": str(n)} for n in range(count)]
            return await asyncio.gather(*(enqueuer.ingest(e) for e in envelopes))
        finally:
            await enqueuer.aclose()

    task_ids = asyncio.run(burst())
    # A worker takes them in the order they arrived, each kept until its task finishes.
    taken = [written(client)["body"][0][0]["request_id"] for _ in range(count)]
    assert taken == [str(n) for n in range(count)]
    assert client.llen("ingest") == 0
    assert all(client.zscore("cicb:inflight", t) is not None for t in task_ids)
    # ...in a handful of writes, not one per callback.
    pushes = client.info("commandstats")["cmdstat_lpush"]["calls"]
    assert 2 <= pushes <= 10


def test_every_callback_waiting_on_a_failed_write_is_told_so() -> None:
    settings = Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0")

    async def burst() -> list[object]:
        enqueuer = RedisEnqueuer(RedisEndpoint.parse(settings.broker_url))
        try:
            calls = (enqueuer.ingest(ENVELOPE) for _ in range(20))
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await enqueuer.aclose()

    results = asyncio.run(burst())
    assert all(isinstance(r, BrokerUnavailable) for r in results)
