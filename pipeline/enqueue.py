"""How the receiver puts a callback on ``ingest``: the fast Redis path, or Celery's own.

Both produce the same ordinary Celery task message (protocol 2, JSON), which
``celery worker`` consumes and Flower shows. On Redis, ``RedisEnqueuer`` builds it from a
prepared template and writes it with one asynchronous, pipelined transaction (the message,
and its ``pipeline.inflight`` record), without a thread hop or Celery's per-message work.
Any other broker (RabbitMQ) goes through ``CeleryEnqueuer``, Celery's ``send_task`` in a
thread.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from typing import Any, Protocol

import anyio.to_thread
import redis
import redis.asyncio

from pipeline.broker import DEFAULT_CONNECT_TIMEOUT_S, INGEST_QUEUE, INGEST_TASK, Publisher
from pipeline.errors import BrokerUnavailable
from pipeline.inflight import MESSAGES_KEY, SCORES_KEY
from pipeline.settings import Settings

# Celery keeps at most this much of the arguments' repr in the headers, for Flower.
ARGSREPR_MAX_CHARS = 1024
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class Enqueuer(Protocol):
    async def ingest(self, envelope: dict[str, Any]) -> str:
        """Put the envelope on ``ingest``; return the task id. Raises BrokerUnavailable."""
        ...

    async def ping(self) -> None:
        """Raise BrokerUnavailable unless the broker answers."""
        ...

    async def aclose(self) -> None: ...


class CeleryEnqueuer:
    """Through Celery's ``send_task``: any broker kombu supports."""

    def __init__(self, settings: Settings) -> None:
        self._publisher = Publisher(settings)

    async def ingest(self, envelope: dict[str, Any]) -> str:
        return await anyio.to_thread.run_sync(self._publisher.ingest, envelope)

    async def ping(self) -> None:
        await anyio.to_thread.run_sync(self._publisher.ping)

    async def aclose(self) -> None:
        self._publisher.close()


class RedisEnqueuer:
    """Straight to the Redis list kombu's transport reads, as Celery would write it."""

    def __init__(self, settings: Settings) -> None:
        self._redis = redis.asyncio.Redis.from_url(
            settings.broker_url,
            socket_connect_timeout=DEFAULT_CONNECT_TIMEOUT_S,
            socket_timeout=DEFAULT_CONNECT_TIMEOUT_S * 2,
        )
        # The inflight record lives in CICB_REDIS_URL; on the fast path that is the broker.
        self._track = settings.redis_url == settings.broker_url
        self._origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self._reply_to = str(uuid.uuid4())

    def message(self, envelope: dict[str, Any], task_id: str) -> tuple[bytes, dict[str, Any]]:
        """The kombu envelope of the task message, and its headers."""
        args = [envelope]
        headers: dict[str, Any] = {
            "lang": "py",
            "task": INGEST_TASK,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args)[:ARGSREPR_MAX_CHARS],
            "kwargsrepr": "{}",
            "origin": self._origin,
            "ignore_result": False,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        body = json.dumps([args, {}, EMBED]).encode()
        message = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": self._reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": INGEST_QUEUE},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(message).encode(), headers

    async def ingest(self, envelope: dict[str, Any]) -> str:
        task_id = str(uuid.uuid4())
        raw, headers = self.message(envelope, task_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(INGEST_QUEUE, raw)
                if self._track:
                    record = {
                        "body": [[envelope], {}, EMBED],
                        "exchange": "",
                        "routing_key": INGEST_QUEUE,
                        "headers": headers,
                        "properties": {"correlation_id": task_id},
                    }
                    pipe.hset(MESSAGES_KEY, task_id, json.dumps(record))
                    pipe.zadd(SCORES_KEY, {task_id: time.time()})
                await pipe.execute()
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"broker did not take the message: {exc}") from exc
        return task_id

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"broker unreachable: {exc}") from exc

    async def aclose(self) -> None:
        await self._redis.aclose()


def enqueuer_for(settings: Settings) -> Enqueuer:
    """The fast path on Redis, Celery's own elsewhere."""
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return RedisEnqueuer(settings)
    return CeleryEnqueuer(settings)
