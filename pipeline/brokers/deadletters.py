"""The dead-letter queue: work that cannot succeed, kept whole until someone acts on it.

A dead letter is a JSON message on the broker queue ``dead_letter`` that no worker
consumes. It names the task that failed, the queue it came from and its arguments (for a
callback, the envelope with the raw body), the error, the attempt count and the times, so
``replay`` can put the work back exactly where it came from.

The Redis transport has no dead-letter exchange, so this is built on plain kombu
messages and works the same on RabbitMQ.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from kombu import Connection, Message, Producer, Queue

from pipeline.brokers.envelope import Envelope
from pipeline.brokers.messages import body_of
from pipeline.brokers.queues import DEAD_LETTER_QUEUE, queue
from pipeline.errors import PermanentError


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    task: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    error: str
    reason: str
    attempts: int
    task_id: str | None = None
    # The steps of its chain that had not run yet (Celery's request.chain), replayed with it.
    chain: list[dict[str, Any]] | None = None
    received_at: str | None = None
    # The step's message headers (its route, received time, place in the chain), sent again
    # with its replay so it counts under its route.
    headers: dict[str, Any] | None = None
    failed_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeadLetter:
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def envelope(self) -> Envelope | None:
        """The callback this dead letter holds, if it holds one."""
        if len(self.args) == 1 and isinstance(self.args[0], dict) and "body" in self.args[0]:
            try:
                return Envelope.from_json(self.args[0])
            except PermanentError:
                return None
        return None

    def summary(self) -> dict[str, Any]:
        envelope = self.envelope()
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "error": self.error,
            "reason": self.reason,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
            "request_id": envelope.request_id if envelope else None,
        }


def _from_redis(raw: bytes) -> DeadLetter:
    """A dead letter as kombu's Redis transport keeps it in the queue's list."""
    return DeadLetter.from_json(body_of(raw))


class NotFound(PermanentError):
    def __init__(self, dead_letter_id: str) -> None:
        self.dead_letter_id = dead_letter_id
        super().__init__(f"no dead letter with id {dead_letter_id!r}")


class DeadLetterQueue:
    """Put, list, replay and purge dead letters on the broker.

    Reading takes every message without acknowledging it and gives back those it leaves,
    so a reader that dies returns them to the broker (connection close, or the
    visibility timeout on Redis) instead of losing them.
    """

    def __init__(self, connect: Callable[[], Connection], *, dead: Queue | None = None) -> None:
        """``dead``: the queue as the broker declares it (``queues.dead_letter_queue``)."""
        self._connect = connect
        self._dead = dead if dead is not None else queue(DEAD_LETTER_QUEUE)

    def put(self, letter: DeadLetter) -> None:
        with self._connect() as conn:
            dead = self._dead
            producer = Producer(conn.default_channel)
            conn.ensure(producer, producer.publish, max_retries=5)(
                letter.to_json(),
                exchange=dead.exchange,
                routing_key=dead.routing_key,
                declare=[dead],
                serializer="json",
                delivery_mode="persistent",
                message_id=letter.id,
            )

    @contextmanager
    def _held(self, limit: int | None = None) -> Iterator[list[tuple[DeadLetter, Message]]]:
        """Every dead letter (at most ``limit``), delivered and not acknowledged: those left
        unacknowledged go back to the queue at the end."""
        with self._connect() as conn:
            bound = self._dead(conn.default_channel)
            bound.declare()
            held: list[tuple[DeadLetter, Message]] = []
            try:
                while (limit is None or len(held) < limit) and (
                    message := bound.get(no_ack=False)
                ) is not None:
                    held.append((DeadLetter.from_json(message.decode()), message))
                yield held
            finally:
                for _, message in held:
                    if not message.acknowledged:
                        message.requeue()

    def peek(self, limit: int) -> tuple[list[DeadLetter], int]:
        """The oldest ``limit`` dead letters and how many there are in all, leaving the
        queue as it was. On Redis the list is read in place; other brokers deliver the first
        ``limit`` and take them back."""
        with self._connect() as conn:
            channel = conn.default_channel
            bound = self._dead(channel)
            total = int(bound.queue_declare().message_count)
            if conn.transport.driver_type == "redis":
                # kombu pushes on the left and pops on the right: the oldest is at the right.
                raw = channel.client.lrange(DEAD_LETTER_QUEUE, -limit, -1) if limit > 0 else []
                return [_from_redis(m) for m in reversed(raw)], total
        with self._held(limit) as held:
            return [letter for letter, _ in held], total

    def replay_some(
        self, resend: Callable[[DeadLetter], None], select: Callable[[DeadLetter], bool], limit: int
    ) -> int:
        """Send back the dead letters ``select`` picks among the oldest ``limit``; return how
        many. Each leaves the queue only once ``resend`` has returned for it, and the others
        keep their place."""
        replayed = 0
        with self._connect() as conn:
            channel = conn.default_channel
            if conn.transport.driver_type == "redis":
                self._dead(channel).declare()
                raw = channel.client.lrange(DEAD_LETTER_QUEUE, -limit, -1) if limit > 0 else []
                for message in reversed(raw):
                    letter = _from_redis(message)
                    if select(letter):
                        resend(letter)
                        # From the right, where the oldest are: the one just read.
                        replayed += int(channel.client.lrem(DEAD_LETTER_QUEUE, -1, message) > 0)
                return replayed
        with self._held(limit) as held:
            for letter, message in held:
                if select(letter):
                    resend(letter)
                    message.ack()
                    replayed += 1
        return replayed

    def entries(self) -> list[DeadLetter]:
        with self._held() as held:
            return [letter for letter, _ in held]

    def get(self, dead_letter_id: str) -> DeadLetter:
        with self._held() as held:
            for letter, _ in held:
                if letter.id == dead_letter_id:
                    return letter
        raise NotFound(dead_letter_id)

    def replay(self, resend: Callable[[DeadLetter], None], dead_letter_id: str | None) -> int:
        """Send dead letters back where they came from (all when no id); return how many.

        Each leaves the queue only once ``resend`` has returned for it.
        """
        replayed = 0
        with self._held() as held:
            for letter, message in held:
                if dead_letter_id is None or letter.id == dead_letter_id:
                    resend(letter)
                    message.ack()
                    replayed += 1
        if dead_letter_id is not None and not replayed:
            raise NotFound(dead_letter_id)
        return replayed

    def purge(self) -> int:
        with self._connect() as conn:
            bound = self._dead(conn.default_channel)
            bound.declare()
            return int(bound.purge() or 0)
