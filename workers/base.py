"""``PipelineTask``: the one retry and dead-letter policy every cicb task shares.

The exception decides. A ``TransientError`` is retried after ``backoff_s`` (exponential,
full jitter, capped), waiting at least the ``retry_after_s`` it carries, with the keyword
arguments its ``replay_kwargs`` name (the notify targets still pending); once
``CICB_MAX_RETRIES`` retries are used up it is dead-lettered like anything else, with the
task's arguments, the error and the attempt count. A user's task gets the same policy from
``pipeline.task`` (or ``@app.task(base=PipelineTask)``).

Each run holds its task's lease (``pipeline.runs``): a message whose task already finished
(or whose attempt a retry superseded) does nothing; a copy of a message whose task is
running elsewhere goes back to wait and looks again later; one delivered more than
``CICB_MAX_DELIVERIES`` times is dead-lettered. A task that finished records it with its
lease's release; its message is then no longer kept in flight (``pipeline.brokers.inflight``),
once the next step of its chain is out. A task can claim deduplication keys with its lease
(``claims``, ingest's: one round trip for both); a run that does not finish gives them back
with the lease's release.

Each run is counted (``cicb_tasks_total``: done, retried, skipped, deferred, dead_lettered)
and timed.
A step of a route carries the route's name, when its callback was received, its place in
the chain and whether it is the route's last step in its message headers (``ROUTE_HEADER``
...; a dead letter keeps them for its replay); the last step's end is the callback's
end-to-end latency. Each run of a step leaves an attempt record (``workers.attempts``),
written with its completion record, its retry's or its lease's release.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import redis
from celery import Task
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.time import get_exponential_backoff_interval
from kombu.exceptions import OperationalError
from kombu.utils.uuid import uuid

from pipeline import logs
from pipeline.attempts import DEAD_LETTERED, DONE, RETRIED, SKIPPED
from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.queues import dead_letter_queue
from pipeline.endpoints import NotReplicated
from pipeline.errors import BrokerUnavailable, PermanentError, TransientError
from pipeline.settings import Settings
from workers import attempts
from workers.attempts import (
    LAST_STEP_HEADER,
    RECEIVED_AT_HEADER,
    ROUTE_HEADER,
    headers_of,
    queue_of,
)
from workers.metrics import worker_metrics
from workers.resources import resources

log = logs.get_logger("cicb.task")


# The running task's: ``writes`` it leaves for its last round trip (``end_with``),
# ``claimed``, its claims' answers (``claims``), and ``finished``, its request once its step is
# known done (Celery's ``on_failure`` then sees its own empty one).
_running = threading.local()

# What a task keeps of Celery's options while its countdown runs: not the countdown, and
# not the exchange and routing key of the message it came in (it is routed again by name).
NOT_KEPT = frozenset({"countdown", "eta", "exchange", "routing_key", "redelivered"})


def _delay_s(options: dict[str, Any]) -> float:
    """The countdown ``options`` ask for, in seconds (0: none)."""
    if options.get("countdown"):
        return float(options["countdown"])
    eta = options.get("eta")
    if eta is None:
        return 0.0
    when = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when - datetime.now(UTC)).total_seconds()


class RedeliveryLimit(PermanentError):
    """A message was delivered again and again without finishing: it kills its worker."""

    def __init__(self, deliveries: int, limit: int) -> None:
        self.deliveries = deliveries
        super().__init__(
            f"delivered {deliveries} times without finishing (its worker died each time); "
            f"CICB_MAX_DELIVERIES is {limit}"
        )


@contextmanager
def publishing(what: str) -> Iterator[None]:
    """A task publishes another inside: a broker that cannot take it (kombu's own retries
    used up, a failover under way) is ``BrokerUnavailable``, "``what``: why", retried like
    any passing failure, not dead-lettered."""
    try:
        yield
    except (OperationalError, redis.RedisError, OSError) as exc:
        raise BrokerUnavailable(f"{what}: {exc}") from exc


def backoff_s(retries: int, settings: Settings, *, at_least_s: float | None = None) -> float:
    """The wait before retry number ``retries + 1``: exponential from
    ``CICB_RETRY_BACKOFF_S`` with full jitter, at least ``at_least_s`` (a peer's
    Retry-After), and never over ``CICB_RETRY_BACKOFF_MAX_S``."""
    wait_s: float = get_exponential_backoff_interval(
        factor=settings.retry_backoff_s,
        retries=retries,
        maximum=settings.retry_backoff_max_s,
        full_jitter=True,
    )
    if at_least_s is not None:
        wait_s = max(wait_s, at_least_s)
    return min(wait_s, settings.retry_backoff_max_s)


class PipelineTask(Task):  # type: ignore[misc]
    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        """Celery's, except on RabbitMQ's quorum queues, where a countdown (a retry, a
        deferral, a scheduled resubmission) waits in cicb's Redis until it is due
        (``pipeline.brokers.countdowns``), then is published by a worker's keeper. If Redis
        cannot take it, it waits on RabbitMQ, Celery's way."""
        delay_s = _delay_s(options)
        countdowns = resources().countdowns if delay_s > 0 else None
        if countdowns is not None:
            task_id = task_id or uuid()
            kept = {k: v for k, v in options.items() if k not in NOT_KEPT}
            kept.update(link=link, link_error=link_error, shadow=shadow)
            try:
                countdowns.schedule(
                    delay_s, task_id, self.name, list(args or ()), dict(kwargs or {}), kept
                )
                return self.AsyncResult(task_id)
            except (redis.RedisError, NotReplicated) as exc:
                log.warning("countdown.not_kept", task_id=task_id, error=str(exc))
        return super().apply_async(
            args, kwargs, task_id, producer, link, link_error, shadow, **options
        )

    def end_with(self, write: Callable[[Any], None]) -> None:
        """Have ``write`` queue its commands on the pipeline that records this run finished
        (``TaskRuns.finish``): they are made in that round trip, ahead of the record, and
        only if the run finishes (a retry or a failure drops them)."""
        _running.writes.append(write)

    def claims(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Sequence[str]:
        """The deduplication keys (``pipeline.guard``) this run claims with its lease, in
        the same round trip, so its work knows before it starts whether it has them
        (``claimed``); a run that does not finish gives them back. None but ingest's."""
        return ()

    @property
    def claimed(self) -> Mapping[str, bool]:
        """The answer to each of this run's ``claims``: True, it has the key."""
        return _running.claimed  # type: ignore[no-any-return]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _running.writes = []
        _running.claimed = {}
        _running.finished = None
        attempts.begin()
        logs.clear()
        logs.bind(task=self.name, task_id=self.request.id, attempt=self.request.retries + 1)
        started = time.perf_counter()
        try:
            outcome, result = self._guarded(args, kwargs)
        except Retry as retry:
            self._count("retried", type(retry.exc).__name__ if retry.exc else "")
            raise
        finally:
            worker_metrics().task_seconds.labels(self.name).observe(time.perf_counter() - started)
        self._count(outcome)
        if outcome == "done" and self.request.get(LAST_STEP_HEADER):
            self._observe_latency()
        return result

    def _guarded(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
        """Run the task under its lease unless it must not run now: ("done", "skipped" or
        "deferred", result)."""
        task_id = self.request.id
        res = resources()
        if res.runs is None or task_id is None:  # no Redis, or called directly
            result = self._run(args, kwargs)
            writes = [*_running.writes, *self._attempt(DONE)]
            if res.client is not None and writes:
                pipe = res.client.pipeline(transaction=False)
                for write in writes:
                    write(pipe)
                pipe.execute()
            return "done", result
        owner = res.owner()
        keys = self.claims(args, kwargs) if res.guard is not None else ()
        claims = res.guard.claims(keys, owner=task_id) if res.guard and keys else None
        try:
            start = res.runs.start(task_id, self.request.retries, owner, claims=claims)
        except TransientError as exc:
            self.retry_later(exc)
        _running.claimed = start.claimed
        if start.state == "done":
            # Its worker died after the work and before the ack, or a copy ran it: the chain
            # goes on (its next step may not be out), the step is not done twice.
            log.warning("task.already_completed")
            self._record_now(SKIPPED)
            if not self._continues():
                res.forget(task_id)
            _running.finished = self.request
            return "skipped", None
        if start.state == "superseded":
            # A retry of this task is on its way with its own arguments: this older copy
            # neither runs nor starts the rest of the chain.
            log.warning("task.superseded")
            self._count("skipped")
            raise Ignore()
        if start.state == "leased":
            self._wait_for_lease(start.wait_s)
        try:
            if start.deliveries > res.runs.max_deliveries:
                raise RedeliveryLimit(start.deliveries, res.runs.max_deliveries)
            result = self._run(args, kwargs)
        except Retry as retry:
            wait_s = float(retry.when) if isinstance(retry.when, int | float) else None
            record = self._attempt(RETRIED, retry.exc, wait_s=wait_s)
            res.retried(task_id, self.request.retries, owner, before=[*record, *self._give_back()])
            raise
        except (Ignore, Reject):
            res.released(task_id, owner, before=self._give_back())
            raise
        except BaseException as exc:
            # Failed (dead-lettered next), or its retry could not be sent (Celery rejects
            # the message; its in-flight record brings it back): the lease is free, and the
            # keys it claimed, for a later delivery or the dead letter's replay.
            ending = [*self._attempt(DEAD_LETTERED, exc), *self._give_back()]
            res.released(task_id, owner, before=ending)
            raise
        writes = [*_running.writes, *self._attempt(DONE)]
        res.finished(task_id, owner, forget=not self._continues(), before=writes)
        _running.finished = self.request
        return "done", result

    def _give_back(self) -> list[Callable[[Any], None]]:
        """The release of each key this run claimed, for its last round trip."""
        guard, task_id = resources().guard, self.request.id
        if guard is None:
            return []
        return [
            functools.partial(guard.release_in, key=key, owner=task_id)
            for key, taken in self.claimed.items()
            if taken
        ]

    def _attempt(
        self, outcome: str, exc: BaseException | None = None, *, wait_s: float | None = None
    ) -> list[Callable[[Any], None]]:
        """The write of this run's attempt record, for its last round trip."""
        res = resources()
        return attempts.write_of(
            res.attempts, self, outcome, worker=res.worker, exc=exc, wait_s=wait_s
        )

    def _record_now(self, outcome: str) -> None:
        """Record an attempt that has no round trip of its own to go with (a duplicate)."""
        res = resources()
        writes = self._attempt(outcome)
        if res.client is None or not writes:
            return
        try:
            pipe = res.client.pipeline(transaction=False)
            for write in writes:
                write(pipe)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("attempt.not_recorded", error=str(exc))

    def _wait_for_lease(self, wait_s: float) -> NoReturn:
        """Another copy of this message is running: send this one back to look again once
        the lease would expire (it is renewed while its holder lives), then drop it."""
        # Whole seconds, at least one: what Celery's native delayed delivery (quorum queues)
        # can route.
        countdown = math.ceil(max(wait_s, 1.0)) + random.randint(0, 1)
        try:
            self.signature_from_request(countdown=countdown).apply_async()
        except Exception as exc:
            # Dropped, not dead-lettered: if the holder dies too, its own message comes back
            # (the in-flight sweep on Redis, RabbitMQ's redelivery of what it never acked).
            log.warning("task.deferral_not_sent", error=repr(exc))
        else:
            log.info("task.deferred", wait_s=round(countdown, 2))
        self._count("deferred")
        raise Ignore()

    def _continues(self) -> bool:
        """Whether a step of a chain follows this task (Celery sends it once this returns)."""
        return bool(self.request.chain or self.request.callbacks)

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        # The chain's next step is out now: this message need no longer be kept.
        if self._continues():
            resources().forget(task_id)

    def _count(self, outcome: str, error: str = "") -> None:
        route = self.request.get(ROUTE_HEADER) or ""
        worker_metrics().tasks.labels(self.name, route, outcome, error).inc()

    def _observe_latency(self) -> None:
        try:
            received_at = datetime.fromisoformat(self.request.get(RECEIVED_AT_HEADER))
        except (TypeError, ValueError):
            return
        latency_s = (datetime.now(UTC) - received_at).total_seconds()
        worker_metrics().latency.labels(self.request.get(ROUTE_HEADER) or "").observe(latency_s)

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except TransientError as exc:
            self.retry_later(exc)

    def retry_later(self, exc: TransientError) -> NoReturn:
        """Retry after the shared backoff, with what the error says a retry must carry;
        re-raise ``exc`` (to be dead-lettered) when the retries are used up."""
        settings = resources().settings
        kwargs = {**(self.request.kwargs or {}), **exc.replay_kwargs}
        attempts.retrying_with(kwargs)
        raise self.retry(
            exc=exc,
            countdown=backoff_s(self.request.retries, settings, at_least_s=exc.retry_after_s),
            max_retries=settings.max_retries,
            kwargs=kwargs,
        )

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        finished = getattr(_running, "finished", None)
        if finished is not None and finished.id == task_id:
            self._send_again(finished, exc)
            return
        letter = DeadLetter(
            task=self.name,
            queue=queue_of(self, self.request),
            args=list(args),
            kwargs={**kwargs, **getattr(exc, "replay_kwargs", {})},
            error=type(exc).__name__,
            reason=str(exc),
            attempts=self.request.retries + 1,
            task_id=task_id,
            chain=self.request.chain or None,
            headers=headers_of(self.request) or None,
        )
        if (envelope := letter.envelope()) is not None:
            letter = dataclasses.replace(letter, received_at=envelope.received_at.isoformat())
        dead = dead_letter_queue(resources().settings)
        DeadLetterQueue(self.app.connection_for_write, dead=dead).put(letter)
        resources().forget(task_id)  # kept by the dead letter now
        self._count("dead_lettered", letter.error)
        log.error(
            "dead_lettered",
            dead_letter_id=letter.id,
            error=letter.error,
            reason=letter.reason,
            attempts=letter.attempts,
        )

    def _send_again(self, finished: Any, exc: BaseException) -> None:
        """The run is recorded done, and Celery could not send what follows it in its chain
        (the broker went away as the task ended; it calls this an error outside the body,
        and acks the message). Not a failure of the step, so not dead-lettered: its message
        is sent again (the request's options and headers, as Celery's retry sends it), whose
        delivery finds the step done and sends the rest. If the broker cannot take that
        either, the message's in-flight record brings it back (on Redis: a worker's broken
        connection is a disturbance, so the sweep looks for it)."""
        log.warning("task.chain_not_sent", error=repr(exc))
        try:
            with publishing("the step, sent again for its chain"):
                self.signature_from_request(finished).apply_async()
        except BrokerUnavailable as error:
            log.error("task.chain_not_sent_again", error=str(error))
