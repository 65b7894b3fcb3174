"""What the ``cicb.ingest`` task does with one envelope: parse, deduplicate, route, dispatch."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

from pipeline import logs
from pipeline.brokers.envelope import Envelope
from pipeline.guard import Guard
from pipeline.parsing.events import Event
from pipeline.parsing.reader import parse
from pipeline.routing import Route, RouteTable

UNROUTED = "unrouted"
DISPATCHED = "dispatched"
DUPLICATE = "duplicate"
# A job the reconciler found finished without its callback, routed now.
RECONCILED = "reconciled"

log = logs.get_logger("cicb.ingest")

# Starts a route's chain for an event; the key lets it name the chain's tasks after it.
Dispatch = Callable[[Route, dict[str, Any], str], None]


def ingest(
    envelope: Envelope,
    *,
    table: RouteTable,
    dispatch: Dispatch,
    guard: Guard | None = None,
    owner: str = "",
    claimed: Mapping[str, bool] | None = None,
    seen: Callable[[Event], None] | None = None,
    confirm: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Parse the envelope's body and start each event's route; return one outcome per event.

    With a ``guard``, an event whose deduplication key is already taken is skipped as a
    duplicate, and ``owner`` (the task id) holds the key while its route starts; once it
    has, ``confirm`` keeps the key (``guard.confirm`` unless given: the worker writes it
    with the route's first step, as its task ends). ``claimed``: the answers of claims
    ``owner`` already made (the worker makes them with its task's lease), taken as they are
    and, on a failure, left to their maker to give back. ``seen`` is called with every
    event the body holds, duplicates included. Raises ``ParseError`` for a body that is not
    a callback, and whatever ``dispatch`` raises (``TransientError`` when the broker fails).
    """
    answered = claimed or {}
    logs.bind(request_id=envelope.request_id)
    outcomes = []
    held: list[str] = []  # the keys claimed here, given back here on a failure

    def taken(guard: Guard, key: str) -> bool:
        if key in answered:
            return answered[key]
        if guard.claim(key, owner=owner):
            held.append(key)
            return True
        return False

    try:
        for event in events_of_envelope(envelope):
            if seen is not None:
                seen(event)
            data = event.to_dict()
            logs.bind_event(data)
            route = table.resolve(event)
            key = event.dedup_key
            if guard is not None and not taken(guard, key):
                outcome = DUPLICATE
            else:
                if route is not None:
                    dispatch(route, data, key)
                if guard is not None:
                    (confirm or guard.confirm)(key)
                if route is None:
                    outcome = UNROUTED
                else:
                    outcome = RECONCILED if event.source == "reconcile" else DISPATCHED
            result = outcome_of(event, route, outcome)
            log.info(
                "callback",
                dedup_key=key,
                route=result["route"],
                outcome=outcome,
                source=event.source,
            )
            outcomes.append(result)
    except BaseException:
        # Every key this delivery still holds is given back, not only the failing event's:
        # with a deferred ``confirm`` none of the body's routes has started yet. A key
        # already confirmed is no longer held, and stays.
        if guard is not None:
            for key in held:
                guard.release(key, owner=owner)
        raise
    return outcomes


@functools.lru_cache(maxsize=1)
def events_of_envelope(envelope: Envelope) -> tuple[Event, ...]:
    """The events of the envelope's body, marked with its source (and a forced replay's
    scope). Raises ``ParseError``. The last envelope's are kept: the worker reads a
    body's keys to claim them before its ingest task runs, and the run reads it again."""
    events = parse(envelope.body, content_type=envelope.content_type)
    if envelope.source == "callback" and not envelope.scope:
        return tuple(events)
    # Reconciled or replayed: its events say so, and a forced replay's get a scope.
    return tuple(
        dataclasses.replace(e, source=envelope.source, scope=envelope.scope) for e in events
    )


def outcome_of(event: Event, route: Route | None, outcome: str) -> dict[str, Any]:
    """What became of one event, as ingest returns it and the archive keeps it."""
    return {
        "event": event.event,
        "job_id": event.job_id,
        "run_id": getattr(event, "run_id", None),
        "tag": event.tag,
        "state": event.state or None,
        "source": event.source,
        "route": route.name if route else None,
        "outcome": outcome,
        # The deduplication key: the route's steps are named after it (Route.step_ids).
        "key": event.dedup_key,
    }
