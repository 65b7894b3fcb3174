"""cicb's library: everything between the raw callback body and the Celery tasks.

What a user needs to write routes and tasks is importable from here::

    from pipeline import JobEvent, Route, TransientError, route, task

The stages live in subpackages (``parsing``, ``receiver``, ``brokers``, ``actions``); see
the README's Architecture section.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError, ParseError, PermanentError, PipelineError, TransientError
from pipeline.parsing.decoding import event_from_dict
from pipeline.parsing.events import Event, GenericEvent, JobEvent, ModerationEvent, WorkflowEvent
from pipeline.routing import Route, route


def task(*args: Any, **options: Any) -> Any:
    """``@task`` or ``@task(name=..., ...)``: a Celery task on cicb's app, under cicb's retry
    and dead-letter policy (``workers.base.PipelineTask``). Options are Celery's."""
    from workers.app import app
    from workers.base import PipelineTask

    return app.task(*args, base=PipelineTask, **options)


__all__ = [  # noqa: RUF022 (grouped by what a user writes, as dramatiq does)
    # Routes and tasks
    "Route",
    "route",
    "task",
    # Errors: the exception decides what happens to the work
    "ConfigError",
    "ParseError",
    "PermanentError",
    "PipelineError",
    "TransientError",
    # Events, as routes match them and tasks receive them (``event_from_dict``)
    "Event",
    "GenericEvent",
    "JobEvent",
    "ModerationEvent",
    "WorkflowEvent",
    "event_from_dict",
]
