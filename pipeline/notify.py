"""The ``notify`` action: POST the normalized event as JSON to each target URL."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from pipeline.errors import (
    DeliveryError,
    DeliveryRejected,
    PermanentError,
    PipelineError,
    TransientError,
)

# Statuses worth sending again: the target is busy or broken for now, not refusing.
RETRYABLE_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))

USER_AGENT = "cicb-notify"


class _Undelivered(PipelineError):
    """Some targets were not notified; ``pending`` are the URLs a retry or replay sends to.

    ``replay_kwargs`` is what a dead letter of the notify task keeps, so a replay only
    notifies the targets that did not get the event.
    """

    def __init__(self, pending: list[str], causes: Sequence[PipelineError]) -> None:
        self.pending = pending
        self.causes = list(causes)
        super().__init__(f"{len(pending)} target(s) not notified; first: {causes[0]}")

    @property
    def replay_kwargs(self) -> dict[str, Any]:
        return {"pending": self.pending}


class TargetsPending(_Undelivered, TransientError):
    """Every target that failed did so for now: retry them."""


class TargetsRejected(_Undelivered, PermanentError):
    """A target refused the event: dead-letter the ones not notified."""


def deliver(client: httpx.Client, url: str, event: Mapping[str, Any]) -> None:
    """POST ``event`` to ``url``. Raises ``DeliveryError`` (retry) or ``DeliveryRejected``."""
    try:
        response = client.post(
            url,
            content=json.dumps(event, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
    except httpx.TimeoutException as exc:
        raise DeliveryError(url, f"timed out: {exc!r}") from exc
    except httpx.TransportError as exc:
        raise DeliveryError(url, f"connection failed: {exc!r}") from exc
    if response.is_success:
        return
    if response.status_code in RETRYABLE_STATUSES:
        raise DeliveryError(url, f"HTTP {response.status_code}")
    raise DeliveryRejected(url, response.status_code, response.text[:1000])


def notify(client: httpx.Client, urls: Sequence[str], event: Mapping[str, Any]) -> None:
    """Deliver to every URL, trying them all before raising.

    Raises ``TargetsRejected`` if any target refused the event, else ``TargetsPending``
    if any failed for now; either names the URLs that were not notified.
    """
    retryable: list[DeliveryError] = []
    rejected: list[DeliveryRejected] = []
    for url in urls:
        try:
            deliver(client, url, event)
        except DeliveryError as exc:
            retryable.append(exc)
        except DeliveryRejected as exc:
            rejected.append(exc)
    pending = [e.url for e in rejected] + [e.url for e in retryable]
    if rejected:
        raise TargetsRejected(pending, [*rejected, *retryable])
    if retryable:
        raise TargetsPending(pending, retryable)
