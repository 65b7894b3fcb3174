"""The console's web app: the shared state, the routes and their guard (``cicb console``).

Every page but the sign-in page needs a session; every form that posts carries the
session's CSRF token. Pages are rendered on the server (Jinja2, escaping everything) and
work without JavaScript. Reads and actions block, so they run in Starlette's threads.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlencode

import jinja2
import redis
from kombu.exceptions import KombuError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from pipeline import logs
from pipeline.console import (
    views_attempts,
    views_callbacks,
    views_dead_letters,
    views_overview,
    views_routes,
    views_signin,
)
from pipeline.console.auth import Guard
from pipeline.console.gate import SIGNIN_FORM_BYTES, SignedIn, refused, unreachable
from pipeline.console.queries import duration
from pipeline.console.state import HERE, Console, queries_of
from pipeline.console.web import Refused
from pipeline.errors import BrokerUnavailable, ConfigError
from pipeline.logguard import secret_redactor
from pipeline.settings import Settings, get_settings


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
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["qs"] = lambda fields: urlencode(fields)
    env.filters["duration"] = duration
    console = Console(
        guard=Guard(token),
        queries=queries_of(settings, workers_online),
        env=env,
        css=(HERE / "static" / "console.css").read_bytes(),
        flower_url=f"http://{settings.flower_host}:{settings.flower_port}/",
        form_bytes=3 * settings.max_body_bytes + SIGNIN_FORM_BYTES,
        redact=secret_redactor(settings),
    )
    routes = [
        Route("/signin", views_signin.signin_page, methods=["GET"]),
        Route("/signin", views_signin.signin, methods=["POST"]),
        Route("/signout", views_signin.signout, methods=["POST"]),
        Route("/console.css", views_signin.stylesheet, methods=["GET"]),
        Route("/healthz", views_signin.healthz, methods=["GET"]),
        Route("/", views_overview.overview, methods=["GET"]),
        Route("/search", views_overview.search, methods=["GET"]),
        Route("/callbacks", views_callbacks.callbacks, methods=["GET"]),
        Route("/callbacks/{entry_id}", views_callbacks.callback, methods=["GET"]),
        Route("/callbacks/{entry_id}/body", views_callbacks.callback_body, methods=["GET"]),
        Route("/jobs/{job_id}", views_callbacks.timeline, methods=["GET"]),
        Route("/steps/{task_id}/retry-now", views_attempts.confirm_retry_now, methods=["GET"]),
        Route("/steps/{task_id}/retry-now", views_attempts.retry_now, methods=["POST"]),
        Route("/dead-letters", views_dead_letters.dead_letters, methods=["GET"]),
        Route("/dead-letters/replay", views_dead_letters.confirm_replay, methods=["GET"]),
        Route("/dead-letters/replay", views_dead_letters.replay, methods=["POST"]),
        Route("/dead-letters/purge", views_dead_letters.confirm_purge, methods=["GET"]),
        Route("/dead-letters/purge", views_dead_letters.purge, methods=["POST"]),
        Route("/dead-letters/{letter_id}", views_dead_letters.dead_letter, methods=["GET"]),
        Route(
            "/dead-letters/{letter_id}/body", views_dead_letters.dead_letter_body, methods=["GET"]
        ),
        Route("/routes", views_routes.routes_page, methods=["GET"]),
        Route("/routes", views_routes.explain, methods=["POST"]),
    ]
    app = Starlette(
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
    app.state.console = console
    return app
