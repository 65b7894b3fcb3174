"""Sign-in, sign-out, and the two public answers: the stylesheet and ``/healthz``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.console.auth import COOKIE, SESSION_TTL_S, log
from pipeline.console.state import console_of
from pipeline.console.web import checked_form, remote, render


async def signin_page(request: Request) -> Response:
    if request.state.session is not None:
        return RedirectResponse("/", status_code=303)
    return render(request, "signin.html", error=None)


async def signin(request: Request) -> Response:
    guard = console_of(request).guard
    form = await request.form()
    given = form.get("token")
    if not isinstance(given, str) or not guard.token_ok(given):
        guard.refused(401, "wrong token", remote=remote(request), path="/signin")
        return render(request, "signin.html", 401, error="Wrong token.")
    log.info("console.signed_in", remote_addr=remote(request))
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        COOKIE,
        guard.new_cookie(),
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def signout(request: Request) -> Response:
    await checked_form(request)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


async def stylesheet(request: Request) -> Response:
    return Response(console_of(request).css, media_type="text/css")


async def healthz(request: Request) -> Response:
    return Response("ok", media_type="text/plain")
