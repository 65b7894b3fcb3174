"""The route table and its preview: which routes a pasted callback body would run."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from pipeline.console.state import console_of
from pipeline.console.web import checked_form, plain, render
from pipeline.errors import PipelineError


def routes_page(request: Request) -> Response:
    table = console_of(request).queries.table
    return render(request, "routes.html", table=table, answers=None, body="", error=None)


async def explain(request: Request) -> Response:
    queries = console_of(request).queries
    form = plain(await checked_form(request))
    body = form.get("body", "")
    try:
        answers = queries.explain(body.encode())
    except PipelineError as exc:
        return render(
            request,
            "routes.html",
            400,
            table=queries.table,
            answers=None,
            body=body,
            error=str(exc),
        )
    return render(
        request, "routes.html", table=queries.table, answers=answers, body=body, error=None
    )
