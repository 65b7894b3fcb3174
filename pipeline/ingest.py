"""What the ``cicb.ingest`` task does with one envelope: parse, route, dispatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline import logs
from pipeline.envelope import Envelope
from pipeline.parsing import parse
from pipeline.routing import Route, RouteTable

UNROUTED = "unrouted"
DISPATCHED = "dispatched"

log = logs.get_logger("cicb.ingest")

Dispatch = Callable[[Route, dict[str, Any]], None]


def ingest(envelope_data: Any, *, table: RouteTable, dispatch: Dispatch) -> list[dict[str, Any]]:
    """Parse the envelope's body and start each event's route; return one outcome per event.

    Raises ``ParseError`` (or another ``PermanentError``) for a body that is not a
    callback, and whatever ``dispatch`` raises (``TransientError`` when the broker fails).
    """
    envelope = Envelope.from_json(envelope_data)
    logs.bind(request_id=envelope.request_id)
    outcomes = []
    for event in parse(envelope.body, content_type=envelope.content_type):
        data = event.to_dict()
        logs.bind_event(data)
        route = table.resolve(event)
        if route is not None:
            dispatch(route, data)
        outcome = {
            "route": route.name if route else None,
            "outcome": DISPATCHED if route else UNROUTED,
        }
        log.info("callback", **outcome)
        outcomes.append(
            {
                "event": data["event"],
                "job_id": data.get("job_id"),
                "run_id": data.get("run_id"),
                **outcome,
            }
        )
    return outcomes
