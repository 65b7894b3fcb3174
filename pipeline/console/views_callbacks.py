"""Archived callbacks: the list, one callback, its body, and a job's timeline."""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import Response

from pipeline.archive import NotArchived
from pipeline.console.forms import BadInput, filters_of
from pipeline.console.queries import pretty_body
from pipeline.console.state import console_of
from pipeline.console.web import bad_input, download, extension, not_found, render


def callbacks(request: Request) -> Response:
    queries = console_of(request).queries
    params = dict(request.query_params)
    try:
        filters = filters_of(params)
        page = queries.callbacks(filters, before=params.get("before") or None)
    except (BadInput, ValueError) as exc:
        return bad_input(request, exc)
    shown = {k: v for k, v in params.items() if k != "before" and v}
    q = params.get("q", "").strip()
    named = bool(q) and any(
        q in (e.get("job_id"), e.get("run_id")) for entry in page.entries for e in entry.events
    )
    return render(
        request,
        "callbacks.html",
        page=page,
        params=shown,
        timeline_of=q if named else None,
        archive_on=queries.archive is not None,
        scan_limit=queries.scan_limit,
    )


def callback(request: Request) -> Response:
    queries = console_of(request).queries
    entry_id = request.path_params["entry_id"]
    try:
        entry = queries.callback(entry_id)
    except (NotArchived, LookupError) as exc:
        return not_found(request, str(exc))
    fmt, text = pretty_body(entry.body)
    events, parse_error = queries.normalized(entry)
    steps = queries.steps(entry.events)
    return render(
        request,
        "callback.html",
        entry=entry,
        body_format=fmt,
        body_text=text,
        normalized=json.dumps(events, indent=2, ensure_ascii=False),
        parse_error=parse_error,
        steps=steps,
    )


def callback_body(request: Request) -> Response:
    entry_id = request.path_params["entry_id"]
    try:
        entry = console_of(request).queries.callback(entry_id)
    except (NotArchived, LookupError) as exc:
        return not_found(request, str(exc))
    return download(entry.body, f"callback-{entry.id}.{extension(entry.body)}")


def timeline(request: Request) -> Response:
    queries = console_of(request).queries
    job_id = request.path_params["job_id"]
    items, partial = queries.timeline(job_id)
    attempt, resubmissions = queries.resubmissions(job_id)
    return render(
        request,
        "timeline.html",
        job_id=job_id,
        items=items,
        steps=queries.steps(tuple(item.event for item in items)),
        sent=request.query_params.get("sent"),
        partial=partial,
        attempt=attempt,
        resubmissions=resubmissions,
        scan_limit=queries.scan_limit,
    )
