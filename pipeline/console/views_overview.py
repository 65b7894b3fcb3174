"""The overview page and the search box that sends a query to the page that answers it."""

from __future__ import annotations

import re
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.archive import NotArchived
from pipeline.brokers.deadletters import NotFound
from pipeline.console.queries import utcnow
from pipeline.console.state import console_of
from pipeline.console.web import render

STREAM_ID = re.compile(r"\d+-\d+")
DEAD_LETTER_ID = re.compile(r"[0-9a-f]{32}")


def overview(request: Request) -> Response:
    console = console_of(request)
    now = utcnow()
    return render(
        request,
        "overview.html",
        view=console.queries.overview(now),
        flower_url=console.flower_url,
        recent_hours=1,
    )


def search(request: Request) -> Response:
    queries = console_of(request).queries
    q = request.query_params.get("q", "").strip()
    if not q:
        return RedirectResponse("/callbacks", status_code=303)
    if STREAM_ID.fullmatch(q):
        try:
            queries.callback(q)
            return RedirectResponse(f"/callbacks/{q}", status_code=303)
        except (NotArchived, LookupError):
            pass
    if DEAD_LETTER_ID.fullmatch(q):
        try:
            queries.dead_letter(q)
            return RedirectResponse(f"/dead-letters/{q}", status_code=303)
        except NotFound:
            pass
    return RedirectResponse("/callbacks?" + urlencode({"q": q}), status_code=303)
