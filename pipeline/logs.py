"""Logging, configured once per process: structlog over the standard library.

JSON lines when the output is not a terminal (or ``CICB_LOG_FORMAT=json``), readable
lines on a terminal. Context bound with ``bind`` (job_id, tag, task id...) is carried on
every line of the current task or request.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog

from pipeline.settings import Settings

_configured = False


def configure(settings: Settings) -> None:
    """Send structlog and standard-library records (Celery's, uvicorn's) to stderr."""
    global _configured
    if _configured:
        return
    _configured = True
    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not sys.stderr.isatty()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def get_logger(name: str) -> Any:
    return structlog.stdlib.get_logger(name)


def bind_event(event: Mapping[str, Any]) -> None:
    """Bind what identifies a normalized event to every later line of this task."""
    bind(
        event_name=event.get("event"),
        job_id=event.get("job_id"),
        run_id=event.get("run_id"),
        tag=event.get("tag"),
        state=event.get("state"),
    )


bind = structlog.contextvars.bind_contextvars
clear = structlog.contextvars.clear_contextvars
