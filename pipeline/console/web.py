"""Helpers the page handlers share: rendering, downloads, refusals and checked forms."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from pipeline.console.auth import CSRF_FIELD, Session
from pipeline.console.state import console_of


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    session: Session | None = getattr(request.state, "session", None)
    html = (
        console_of(request)
        .env.get_template(template)
        .render(
            csrf=session.csrf if session else None,
            csrf_field=CSRF_FIELD,
            signed_in=session is not None,
            path=request.url.path,
            **context,
        )
    )
    return HTMLResponse(html, status_code=status)


def remote(request: Request) -> str | None:
    return request.client.host if request.client else None


async def checked_form(request: Request) -> FormData:
    """The posted form, once its CSRF token is the session's; raises ``Refused``."""
    form = await request.form()
    session: Session = request.state.session
    given = form.get(CSRF_FIELD)
    if not isinstance(given, str) or not console_of(request).guard.csrf_ok(session, given):
        raise Refused(403, "the form's CSRF token is missing or wrong: reload the page")
    return form


def plain(form: FormData) -> dict[str, str]:
    return {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}


def bad_input(request: Request, exc: Exception) -> HTMLResponse:
    return render(request, "error.html", 400, message=str(exc))


def not_found(request: Request, message: str) -> HTMLResponse:
    return render(request, "error.html", 404, message=message)


def download(body: bytes, name: str) -> Response:
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def extension(body: bytes) -> str:
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return {b"<": "xml", b"{": "json", b"[": "json"}.get(start, "bin")
