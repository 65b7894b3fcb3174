"""The session check, form size bounds, security headers and the error handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.console.auth import COOKIE, log
from pipeline.console.state import console_of
from pipeline.console.web import Refused, remote, render

PUBLIC = ("/signin", "/console.css", "/healthz")
# The sign-in form holds a token; the route preview's form a callback body, percent-encoded.
SIGNIN_FORM_BYTES = 64 * 1024
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def oversized(request: Request) -> int | None:
    """411 or 413 for a post whose form is not bounded by its Content-Length."""
    if request.method != "POST":
        return None
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        return 411
    limit = SIGNIN_FORM_BYTES if request.url.path == "/signin" else console_of(request).form_bytes
    return 413 if int(declared) > limit else None


class SignedIn(BaseHTTPMiddleware):
    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        guard = console_of(request).guard
        session = guard.session(request.cookies.get(COOKIE))
        request.state.session = session
        if (status := oversized(request)) is not None:
            reason = "no Content-Length" if status == 411 else "form too large"
            guard.refused(status, reason, remote=remote(request), path=request.url.path)
            response: Response = render(request, "error.html", status, message=reason)
        elif session is None and request.url.path not in PUBLIC:
            guard.refused(401, "no session", remote=remote(request), path=request.url.path)
            if request.method == "GET":
                response = RedirectResponse("/signin", status_code=303)
            else:
                response = render(request, "error.html", 401, message="Sign in first.")
        else:
            response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response


async def refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    console_of(request).guard.refused(
        exc.status, exc.reason, remote=remote(request), path=request.url.path
    )
    return render(request, "error.html", exc.status, message=exc.reason)


async def unreachable(request: Request, exc: Exception) -> Response:
    redact = console_of(request).redact
    log.error("console.unreachable", path=request.url.path, error=redact(str(exc)))
    return render(
        request,
        "error.html",
        503,
        message=f"Redis or the broker did not answer: {redact(str(exc))}",
    )
