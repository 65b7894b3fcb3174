"""The route module the worker tier runs with (``CICB_ROUTES=tests.workers.steps``), written
as a user writes one: everything from ``pipeline``.

Callbacks tagged ``Steps`` run a two-step chain whose steps record each run in Redis, so a
test can count how many times each step ran; ``Failing`` runs a step that always fails for
now, to use up its retries (``FailFirst``: before a second step); ``Broken`` names a task
no worker has; ``Blocking`` runs a step that waits until the test releases it
(``release``).
"""

from __future__ import annotations

from typing import Any

import redis

from pipeline import Route, TransientError, task
from pipeline.settings import get_settings

RUNS_KEY = "cicb:test:runs"
RELEASE_KEY = "cicb:test:release"

routes = [
    Route("steps", ["tests.first", "tests.second"], tag="Steps"),
    Route("failing", ["tests.failing"], tag="Failing"),
    Route("broken", ["tests.nobody"], tag="Broken"),
    Route("fail-first", ["tests.failing", "tests.second"], tag="FailFirst"),
    Route("blocking", ["tests.blocking"], tag="Blocking"),
]


def _record(step: str, event: dict[str, Any]) -> None:
    client = redis.Redis.from_url(get_settings().broker_url)
    client.rpush(RUNS_KEY, f"{step}:{event['job_id']}")
    client.close()


@task(name="tests.first")
def first(event: dict[str, Any]) -> None:
    _record("first", event)


@task(name="tests.second")
def second(event: dict[str, Any]) -> None:
    _record("second", event)


@task(name="tests.failing")
def failing(event: dict[str, Any]) -> None:
    _record("failing", event)
    raise TransientError("the peer is away")


@task(name="tests.blocking")
def blocking(event: dict[str, Any]) -> None:
    """Runs until the test pushes to ``RELEASE_KEY`` (at most 30 s)."""
    _record("blocking", event)
    client = redis.Redis.from_url(get_settings().broker_url)
    client.blpop([RELEASE_KEY], timeout=30)
    client.close()
