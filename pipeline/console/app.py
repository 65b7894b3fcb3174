"""The console's web app: routes, sign-in and the pages (``cicb console`` runs it).

Every page but the sign-in page needs a session; every form that posts carries the
session's CSRF token. Pages are rendered on the server (Jinja2, escaping everything) and
work without JavaScript. Reads and actions block, so they run in Starlette's threads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
import redis
from celery import Celery
from kombu.exceptions import KombuError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline import logs
from pipeline.actions.resubmit import AttemptStore
from pipeline.archive import Archive, NotArchived
from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue, NotFound
from pipeline.brokers.depths import QueueDepths
from pipeline.brokers.kind import kind_of
from pipeline.brokers.queues import connection, transport_options
from pipeline.console.auth import COOKIE, CSRF_FIELD, SESSION_TTL_S, Guard, Session, log
from pipeline.console.forms import BadInput, Selection, filters_of
from pipeline.console.queries import Queries, Resend, duration, pretty_body, utcnow
from pipeline.errors import BrokerUnavailable, ConfigError, PipelineError
from pipeline.receiver.access import secret_redactor
from pipeline.reconcile.store import ReconcileStore
from pipeline.routing import table_for
from pipeline.settings import Settings, get_settings

HERE = Path(__file__).parent
PUBLIC = ("/signin", "/console.css", "/healthz")
# Workers answer a ping within this, or are not shown as online.
PING_TIMEOUT_S = 1.0
# The sign-in form holds a token; the route preview's form a callback body, percent-encoded.
SIGNIN_FORM_BYTES = 64 * 1024
STREAM_ID = re.compile(r"\d+-\d+")
DEAD_LETTER_ID = re.compile(r"[0-9a-f]{32}")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


def workers_online_of(settings: Settings) -> Callable[[], list[str]]:
    """The names of the workers that answer a ping within ``PING_TIMEOUT_S``."""
    app = Celery("cicb-console", broker=settings.broker_url, set_as_current=False)
    app.conf.broker_transport_options = transport_options(settings)

    def online() -> list[str]:
        replies = app.control.inspect(timeout=PING_TIMEOUT_S).ping() or {}
        return list(replies)

    return online


def queries_of(settings: Settings, workers_online: Callable[[], list[str]] | None) -> Queries:
    kind = kind_of(settings)
    client = (
        redis.Redis.from_url(kind.state_url, socket_timeout=10)
        if kind.state_url is not None
        else None
    )

    def resend() -> tuple[Resend, Callable[[], None]]:
        publisher = kind.publisher(settings)

        def send(letter: DeadLetter) -> None:
            publisher.send(
                letter.task, letter.args, letter.kwargs, queue_name=letter.queue, chain=letter.chain
            )

        return send, publisher.close

    return Queries(
        settings,
        archive=Archive.configured(client, settings),
        dead_letters=DeadLetterQueue(lambda: connection(settings)),
        depths=QueueDepths(settings, kind),
        table=table_for(settings),
        reconcile=(
            ReconcileStore(client, retention_s=settings.dedup_ttl_s) if client is not None else None
        ),
        attempts=AttemptStore(client) if client is not None else None,
        workers_online=workers_online or workers_online_of(settings),
        resend=resend,
    )


def _download(body: bytes, name: str) -> Response:
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _extension(body: bytes) -> str:
    start = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    return {b"<": "xml", b"{": "json", b"[": "json"}.get(start, "bin")


def create_app(
    settings: Settings | None = None,
    *,
    workers_online: Callable[[], list[str]] | None = None,
) -> Starlette:
    """Build the console; raises ``ConfigError`` without a token."""
    settings = settings or get_settings()
    logs.configure(settings)
    token = settings.effective_console_token()
    if not token:
        raise ConfigError("the console needs a token: set CICB_CONSOLE_TOKEN (cicb up makes one)")
    guard = Guard(token)
    queries = queries_of(settings, workers_online)
    flower_url = f"http://{settings.flower_host}:{settings.flower_port}/"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["qs"] = lambda fields: urlencode(fields)
    env.filters["duration"] = duration
    css = (HERE / "static" / "console.css").read_bytes()

    def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = getattr(request.state, "session", None)
        html = env.get_template(template).render(
            csrf=session.csrf if session else None,
            csrf_field=CSRF_FIELD,
            signed_in=session is not None,
            path=request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    def remote(request: Request) -> str | None:
        return request.client.host if request.client else None

    form_bytes = 3 * settings.max_body_bytes + SIGNIN_FORM_BYTES

    def oversized(request: Request) -> int | None:
        """411 or 413 for a post whose form is not bounded by its Content-Length."""
        if request.method != "POST":
            return None
        declared = request.headers.get("content-length", "")
        if not declared.isdigit():
            return 411
        limit = SIGNIN_FORM_BYTES if request.url.path == "/signin" else form_bytes
        return 413 if int(declared) > limit else None

    class SignedIn(BaseHTTPMiddleware):
        async def dispatch(
            self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
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
        guard.refused(exc.status, exc.reason, remote=remote(request), path=request.url.path)
        return render(request, "error.html", exc.status, message=exc.reason)

    redact = secret_redactor(settings)

    async def unreachable(request: Request, exc: Exception) -> Response:
        log.error("console.unreachable", path=request.url.path, error=redact(str(exc)))
        return render(
            request,
            "error.html",
            503,
            message=f"Redis or the broker did not answer: {redact(str(exc))}",
        )

    async def checked_form(request: Request) -> FormData:
        """The posted form, once its CSRF token is the session's; raises ``Refused``."""
        form = await request.form()
        session: Session = request.state.session
        given = form.get(CSRF_FIELD)
        if not isinstance(given, str) or not guard.csrf_ok(session, given):
            raise Refused(403, "the form's CSRF token is missing or wrong: reload the page")
        return form

    def plain(form: FormData) -> dict[str, str]:
        return {k: v for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}

    def bad_input(request: Request, exc: Exception) -> HTMLResponse:
        return render(request, "error.html", 400, message=str(exc))

    def not_found(request: Request, message: str) -> HTMLResponse:
        return render(request, "error.html", 404, message=message)

    # -- sign-in ------------------------------------------------------------------------------

    async def signin_page(request: Request) -> Response:
        if request.state.session is not None:
            return RedirectResponse("/", status_code=303)
        return render(request, "signin.html", error=None)

    async def signin(request: Request) -> Response:
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
        return Response(css, media_type="text/css")

    async def healthz(request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    # -- pages --------------------------------------------------------------------------------

    def overview(request: Request) -> Response:
        now = utcnow()
        return render(
            request,
            "overview.html",
            view=queries.overview(now),
            flower_url=flower_url,
            recent_hours=1,
        )

    def search(request: Request) -> Response:
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

    def callbacks(request: Request) -> Response:
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
            entry = queries.callback(entry_id)
        except (NotArchived, LookupError) as exc:
            return not_found(request, str(exc))
        return _download(entry.body, f"callback-{entry.id}.{_extension(entry.body)}")

    def timeline(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        items, partial = queries.timeline(job_id)
        attempt, resubmissions = queries.resubmissions(job_id)
        return render(
            request,
            "timeline.html",
            job_id=job_id,
            items=items,
            partial=partial,
            attempt=attempt,
            resubmissions=resubmissions,
            scan_limit=queries.scan_limit,
        )

    def dead_letters(request: Request) -> Response:
        params = dict(request.query_params)
        try:
            selection = Selection.of(params)
        except BadInput:
            selection = Selection(everything=True)
        groups, shown, read, total = queries.dead_letter_view(selection)
        return render(
            request,
            "dead_letters.html",
            groups=groups,
            letters=shown,
            read=read,
            total=total,
            selection=selection,
            filtered=not selection.everything,
            replayed=params.get("replayed"),
            purged=params.get("purged"),
        )

    def dead_letter(request: Request) -> Response:
        letter_id = request.path_params["letter_id"]
        try:
            letter = queries.dead_letter(letter_id)
        except NotFound as exc:
            return not_found(request, str(exc))
        envelope = letter.envelope()
        body = pretty_body(envelope.body) if envelope else None
        return render(request, "dead_letter.html", letter=letter, envelope=envelope, body=body)

    def dead_letter_body(request: Request) -> Response:
        letter_id = request.path_params["letter_id"]
        try:
            letter = queries.dead_letter(letter_id)
        except NotFound as exc:
            return not_found(request, str(exc))
        envelope = letter.envelope()
        if envelope is None:
            return not_found(request, f"dead letter {letter_id} holds no callback body")
        return _download(envelope.body, f"dead-letter-{letter.id}.{_extension(envelope.body)}")

    def confirm_replay(request: Request) -> Response:
        try:
            selection = Selection.of(dict(request.query_params))
        except BadInput as exc:
            return bad_input(request, exc)
        count = queries.count_dead_letters(selection)
        return render(
            request,
            "confirm.html",
            action="replay",
            what=selection.describe(),
            count=count,
            fields=selection.fields(),
        )

    async def replay(request: Request) -> Response:
        form = plain(await checked_form(request))
        try:
            selection = Selection.of(form)
        except BadInput as exc:
            return bad_input(request, exc)
        count = await run_in_threadpool(queries.replay, selection)
        if selection.id is not None and not count:
            return not_found(request, str(NotFound(selection.id)))
        log.info("console.dead_letters_replayed", count=count, selection=selection.fields())
        return RedirectResponse(f"/dead-letters?replayed={count}", status_code=303)

    def confirm_purge(request: Request) -> Response:
        _, total = queries.dead_letters.peek(0)
        return render(
            request,
            "confirm.html",
            action="purge",
            what="every dead letter",
            count=total,
            fields={},
        )

    async def purge(request: Request) -> Response:
        await checked_form(request)
        count = await run_in_threadpool(queries.purge)
        log.info("console.dead_letters_purged", count=count)
        return RedirectResponse(f"/dead-letters?purged={count}", status_code=303)

    def routes_page(request: Request) -> Response:
        return render(
            request, "routes.html", table=queries.table, answers=None, body="", error=None
        )

    async def explain(request: Request) -> Response:
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

    routes = [
        Route("/signin", signin_page, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/console.css", stylesheet, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/", overview, methods=["GET"]),
        Route("/search", search, methods=["GET"]),
        Route("/callbacks", callbacks, methods=["GET"]),
        Route("/callbacks/{entry_id}", callback, methods=["GET"]),
        Route("/callbacks/{entry_id}/body", callback_body, methods=["GET"]),
        Route("/jobs/{job_id}", timeline, methods=["GET"]),
        Route("/dead-letters", dead_letters, methods=["GET"]),
        Route("/dead-letters/replay", confirm_replay, methods=["GET"]),
        Route("/dead-letters/replay", replay, methods=["POST"]),
        Route("/dead-letters/purge", confirm_purge, methods=["GET"]),
        Route("/dead-letters/purge", purge, methods=["POST"]),
        Route("/dead-letters/{letter_id}", dead_letter, methods=["GET"]),
        Route("/dead-letters/{letter_id}/body", dead_letter_body, methods=["GET"]),
        Route("/routes", routes_page, methods=["GET"]),
        Route("/routes", explain, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(SignedIn)],
        exception_handlers={
            Refused: refused,
            redis.RedisError: unreachable,
            OSError: unreachable,
            KombuError: unreachable,
            BrokerUnavailable: unreachable,
        },
    )
