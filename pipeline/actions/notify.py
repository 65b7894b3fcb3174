"""The ``notify`` action: tell every target about an event, each in its own format.

Targets that fail for now are retried; only they are sent to again, so a retry or a replay
never notifies a target twice for one attempt that reached it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from pipeline.actions.targets import Target, build_request, check_response
from pipeline.errors import (
    DeliveryError,
    DeliveryRejected,
    PermanentError,
    PipelineError,
    TransientError,
)
from pipeline.parsing.events import Event

USER_AGENT = "cicb-notify"

# What became of one target: told, to be tried again, or refused for good.
DELIVERED, FAILED, REFUSED = "delivered", "failed", "refused"
# What is kept of a target's answer for the attempt record (before redaction).
ANSWER_CHARS = 1024
# Failures that can come after the request went out: the target may have taken the event
# and its answer been lost (a timeout, a connection cut). Trying again may repeat it, with
# the same ``webhook-id``, so a target that deduplicates on it applies it once.
AFTER_SENDING = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One try of one target: what became of it, the status code the target answered (None:
    no answer, ``error`` says why, and ``may_have_arrived`` whether the request may have
    reached the target all the same), how long it took and the start of its answer."""

    target: Target
    result: str
    status: int | None
    error: str | None
    seconds: float
    answer: str
    may_have_arrived: bool = False


class _Undelivered(PipelineError):
    """Some targets were not notified; ``pending`` are their ids, for a retry or replay.

    ``replay_kwargs`` is what a retry, or a dead letter of the notify task, keeps, so only
    the targets that did not get the event are tried again. Ids, not URLs: URLs hold
    secrets. ``retry_after_s`` is the longest wait a target asked for.
    """

    retry_after_s: float | None

    def __init__(self, pending: list[str], causes: Sequence[PipelineError]) -> None:
        self.pending = pending
        self.causes = list(causes)
        waits = [c.retry_after_s for c in self.causes if isinstance(c, DeliveryError)]
        self.retry_after_s = max((w for w in waits if w is not None), default=None)
        super().__init__(f"{len(pending)} target(s) not notified; first: {causes[0]}")

    @property
    def replay_kwargs(self) -> dict[str, Any]:
        return {"pending": self.pending}


class TargetsPending(_Undelivered, TransientError):
    """Every target that failed did so for now: retry them."""


class TargetsRejected(_Undelivered, PermanentError):
    """A target refused the event: dead-letter the ones not notified."""


def post(
    client: httpx.Client,
    target: Target,
    event: Event,
    *,
    webhook_key: bytes | None = None,
) -> httpx.Response:
    """POST ``event`` to ``target``; its answer, whatever it says. Raises ``DeliveryError``
    when there is none (timeout, connection), saying whether the request may have arrived."""
    url, headers, body = build_request(target, event, webhook_key=webhook_key, now_s=time.time())
    try:
        return client.post(url, content=body, headers={**headers, "User-Agent": USER_AGENT})
    except httpx.TransportError as exc:
        # The exception's text can hold the URL, and so a secret: keep only its type.
        what = "timed out" if isinstance(exc, httpx.TimeoutException) else "connection failed"
        raise DeliveryError(
            target.describe(),
            f"{what} ({type(exc).__name__})",
            may_have_arrived=isinstance(exc, AFTER_SENDING),
        ) from exc


def notify(
    client: httpx.Client,
    targets: Sequence[Target],
    event: Event,
    *,
    webhook_key: bytes | None = None,
    on_result: Callable[[Delivery], None] | None = None,
) -> None:
    """Deliver to every target, trying them all before raising; ``on_result`` hears what
    became of each (``Delivery``: ``DELIVERED``, ``FAILED`` or ``REFUSED``, with the answer).

    Raises ``TargetsRejected`` if any target refused the event, else ``TargetsPending``
    if any failed for now; either names the ids of the targets that were not notified.
    """
    retryable: list[tuple[Target, DeliveryError]] = []
    rejected: list[tuple[Target, DeliveryRejected]] = []
    for target in targets:
        started = time.perf_counter()
        response: httpx.Response | None = None
        result, error, may_have_arrived = DELIVERED, None, False
        try:
            response = post(client, target, event, webhook_key=webhook_key)
            check_response(target, response)
        except DeliveryError as exc:
            retryable.append((target, exc))
            result, error = FAILED, (exc.reason if response is None else None)
            may_have_arrived = exc.may_have_arrived
        except DeliveryRejected as exc:
            rejected.append((target, exc))
            result = REFUSED
        if on_result is not None:
            on_result(
                Delivery(
                    target=target,
                    result=result,
                    status=response.status_code if response is not None else None,
                    error=error,
                    seconds=time.perf_counter() - started,
                    answer=response.text[:ANSWER_CHARS] if response is not None else "",
                    may_have_arrived=may_have_arrived,
                )
            )
    pending = [t.id for t, _ in rejected] + [t.id for t, _ in retryable]
    if rejected:
        raise TargetsRejected(pending, [e for _, e in rejected] + [e for _, e in retryable])
    if retryable:
        raise TargetsPending(pending, [e for _, e in retryable])
