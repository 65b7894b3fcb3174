"""The receiver's fast path on a Redis broker: ``RedisEnqueuer``.

It writes the same ordinary Celery task message (protocol 2, JSON) that ``send_task`` would,
which ``celery worker`` consumes and Flower shows, but builds it from a prepared template and
writes it asynchronously, batched with the callbacks arriving at the same time (the messages,
and their ``pipeline.brokers.inflight`` records, in the one script that writes both), without a
thread hop or Celery's per-message work. Other brokers go through ``publishing.CeleryEnqueuer``.

One difference: kombu's Redis transport writes a message's body in base64; this one writes it
as JSON text (``body_encoding`` ``utf-8``, which the transport reads as it is). The body is
JSON already, and a fifth smaller so: each callback waiting on the broker is kept twice (the
message and its in-flight copy) and written to the broker's append-only file.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from pipeline.brokers.envelope import shown
from pipeline.brokers.inflight import (
    DUE_KEY,
    FIRST_CHECK_S,
    MESSAGES_KEY,
    META_KEY,
    PUBLISH,
    SUSPECTS_KEY,
)
from pipeline.brokers.queues import DEFAULT_CONNECT_TIMEOUT_S, INGEST_QUEUE, INGEST_TASK
from pipeline.endpoints import NotReplicated, RedisEndpoint, Replicas
from pipeline.errors import BrokerUnavailable
from pipeline.scripts import queue_script

EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class RedisEnqueuer:
    """Straight to the Redis list kombu's transport reads, as Celery would write it.

    Writes are batched: each callback waits while the batch before it is written, then goes
    with every callback that arrived meanwhile in one script (their in-flight records, then
    one LPUSH for the lot: a record that cannot be written stops it before any message is
    pushed). One callback alone is written at once; a burst costs one round trip per batch
    instead of one per callback. A callback is answered only once its batch is on the
    broker, and every callback of a batch that fails gets the error.

    With ``replicas`` (``CICB_MIN_REPLICAS``), the batch is answered only once ``WAIT``
    says that many replicas have it (in the same round trip): a failover then cannot lose a
    callback answered 200. Fewer is ``BrokerUnavailable`` (503): CI sends it again, or
    reconcile finds it, and the copy the primary kept is a duplicate, skipped.
    """

    def __init__(self, broker: RedisEndpoint, *, replicas: Replicas | None = None) -> None:
        self._redis = broker.async_client(timeout_s=DEFAULT_CONNECT_TIMEOUT_S * 2)
        self._replicas = replicas or Replicas()
        self._publish = self._redis.register_script(PUBLISH)
        # The message as Celery writes it, cut where each callback's own values go.
        origin = f"gen{os.getpid()}@{socket.gethostname()}"
        self._format, self._slots = _template(origin=origin, reply_to=str(uuid.uuid4()))
        self._waiting: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None

    def message(self, envelope: dict[str, Any], task_id: str, tag: str) -> bytes:
        """The kombu envelope of the task message, with delivery tag ``tag``."""
        body = orjson.dumps([[envelope], {}, EMBED]).decode()
        values = {
            "body": orjson.dumps(body),
            "task_id": b'"%s"' % task_id.encode(),
            "argsrepr": orjson.dumps(shown(envelope)),
            "tag": b'"%s"' % tag.encode(),
        }
        return self._format % tuple(values[slot] for slot in self._slots)

    async def ingest(self, envelope: dict[str, Any]) -> str:
        task_id, tag = random_uuid(), random_uuid()
        message = self.message(envelope, task_id, tag)
        write = _Write(task_id, message, tag, asyncio.get_running_loop().create_future())
        self._waiting.append(write)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_batches())
        await write.done
        return write.task_id

    async def _write_batches(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[:MAX_BATCH]
                del self._waiting[:MAX_BATCH]
                try:
                    await self._write(batch)
                except (redis.RedisError, OSError) as exc:
                    _settle(batch, BrokerUnavailable(f"broker did not take the message: {exc}"))
                except Exception as exc:
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
        finally:
            self._writer = None

    async def _write(self, batch: list[_Write]) -> None:
        args: list[Any] = [FIRST_CHECK_S]
        for w in batch:
            args += [w.task_id, w.message, w.tag]
        keys = [INGEST_QUEUE, MESSAGES_KEY, META_KEY, DUE_KEY, SUSPECTS_KEY]
        if not self._replicas.wanted:
            await self._publish(keys=keys, args=args)
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            queue_script(pipe, self._publish, keys, args)
            self._replicas.wait(pipe)
            answers = await pipe.execute()
        try:
            self._replicas.check(answers)
        except NotReplicated as exc:
            raise BrokerUnavailable(f"the callback may not outlive a failover: {exc}") from exc

    async def ping(self) -> None:
        """Raise ``BrokerUnavailable`` unless the broker takes a write now (a replica that a
        moved endpoint points at answers PING, and refuses writes)."""
        try:
            await self._redis.set(READY_KEY, 1, px=READY_TTL_MS)
        except (redis.RedisError, OSError) as exc:
            raise BrokerUnavailable(f"broker cannot take a write: {exc}") from exc

    async def aclose(self) -> None:
        if self._writer is not None:
            await self._writer
        await self._redis.aclose()


def random_uuid() -> str:
    """A random (version 4) UUID as Celery writes task ids and kombu delivery tags:
    ``str(uuid.uuid4())``, at a third of its cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _template(*, origin: str, reply_to: str) -> tuple[bytes, tuple[str, ...]]:
    """The task message Celery writes for ``cicb.ingest`` (protocol 2, JSON, the body as text),
    as a bytes format with a ``%s`` where each message's own values go, and the names of
    those values in order."""

    def slot(name: str) -> str:
        return f"\x00{name}\x00"

    headers: dict[str, Any] = {
        "lang": "py",
        "task": INGEST_TASK,
        "id": slot("task_id"),
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": slot("task_id"),
        "parent_id": None,
        "argsrepr": slot("argsrepr"),
        "kwargsrepr": "{}",
        "origin": origin,
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    message = {
        "body": slot("body"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": slot("task_id"),
            "reply_to": reply_to,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": INGEST_QUEUE},
            "priority": 0,
            "body_encoding": "utf-8",
            "delivery_tag": slot("tag"),
        },
    }
    parts = re.split(rb'"\\u0000(\w+)\\u0000"', orjson.dumps(message))
    literals = (part.replace(b"%", b"%%") for part in parts[0::2])
    return b"%s".join(literals), tuple(slot.decode() for slot in parts[1::2])


# What /readyz writes to know the broker takes writes.
READY_KEY = "cicb:ready"
READY_TTL_MS = 10_000
# At most this many callbacks go in one transaction: about 1.5 MB of typical callbacks.
MAX_BATCH = 256


@dataclass(slots=True)
class _Write:
    """One callback's task message, waiting for its batch."""

    task_id: str
    message: bytes
    tag: str
    done: asyncio.Future[None]


def _settle(batch: list[_Write], error: Exception | None) -> None:
    for write in batch:
        if write.done.done():  # its request was cancelled (the client went away)
            continue
        if error is None:
            write.done.set_result(None)
        else:
            write.done.set_exception(error)
