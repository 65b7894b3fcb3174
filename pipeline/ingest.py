"""What the ``cicb.ingest`` task does with one envelope: parse, deduplicate, route, dispatch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
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
    envelope_data: Any,
    *,
    table: RouteTable,
    dispatch: Dispatch,
    guard: Guard | None = None,
    owner: str = "",
    seen: Callable[[Event], None] | None = None,
) -> list[dict[str, Any]]:
    """Parse the envelope's body and start each event's route; return one outcome per event.

    With a ``guard``, an event whose deduplication key is already taken is skipped as a
    duplicate, and ``owner`` (the task id) holds the key while its route starts. ``seen`` is
    called with every event the body holds, duplicates included. Raises
    ``ParseError`` (or another ``PermanentError``) for a body that is not a callback, and
    whatever ``dispatch`` raises (``TransientError`` when the broker fails).
    """
    envelope = Envelope.from_json(envelope_data)
    logs.bind(request_id=envelope.request_id)
    outcomes = []
    for parsed in parse(envelope.body, content_type=envelope.content_type):
        event = parsed
        if envelope.source != "callback" or envelope.scope:
            # Reconciled or replayed: its events say so, and a forced replay's get a scope.
            event = dataclasses.replace(parsed, source=envelope.source, scope=envelope.scope)
        if seen is not None:
            seen(event)
        data = event.to_dict()
        logs.bind_event(data)
        route = table.resolve(event)
        key = event.dedup_key
        if guard is not None and not guard.claim(key, owner=owner):
            outcome = DUPLICATE
        else:
            try:
                if route is not None:
                    dispatch(route, data, key)
            except BaseException:
                if guard is not None:
                    guard.release(key, owner=owner)
                raise
            if guard is not None:
                guard.confirm(key)
            if route is None:
                outcome = UNROUTED
            else:
                outcome = RECONCILED if event.source == "reconcile" else DISPATCHED
        result = {"route": route.name if route else None, "outcome": outcome}
        log.info("callback", dedup_key=key, source=event.source, **result)
        outcomes.append(
            {
                "event": data["event"],
                "job_id": data.get("job_id"),
                "run_id": data.get("run_id"),
                "tag": data.get("tag"),
                "state": data.get("state"),
                "source": event.source,
                **result,
            }
        )
    return outcomes
