"""Turn a raw Tencent CI body (XML or JSON), a callback or a job query answer, into events.

``parse`` reads the body (``load``: format, encoding, safety bounds, normalization), then
builds one event per job (``TaskFinish``, or a bare ``JobsDetail``), one per workflow run
(``WorkflowFinish``, or a ``WorkflowExecution``), one per content-moderation callback or
answer (``Review*`` EventNames, the snake_case simple form, CI's test request), and one
``GenericEvent`` for any other EventName. Each event says where it came from (``source``:
``callback`` or ``query``, see ``queries``). Only a body that is not a callback or an
answer at all raises, and then only ``ParseError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pipeline import logs
from pipeline.errors import ParseError
from pipeline.parsing.events import TASK_FINISH, WORKFLOW_FINISH, Event, GenericEvent
from pipeline.parsing.fields import opt_str
from pipeline.parsing.jobs import job_event, jobs
from pipeline.parsing.load import (
    MAX_DEPTH,
    MAX_NODES,
    Format,
    Node,
    detect_format,
    load,
    normalize,
)
from pipeline.parsing.moderation import (
    detail,
    is_moderation_job,
    is_moderation_name,
    is_simple,
    moderation_event,
    simple,
)
from pipeline.parsing.queries import source_of
from pipeline.parsing.workflows import executions, workflow_event

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "Format",
    "detect_format",
    "events_of",
    "format_of",
    "parse",
]

FormatOption = Literal["auto", "xml", "json"]

log = logs.get_logger("cicb.parsing")


def parse(
    body: bytes,
    *,
    content_type: str | None = None,
    fmt: FormatOption = "auto",
    source: str | None = None,
) -> list[Event]:
    """Parse one callback body, or one answer of CI's job queries, into its events (one per
    job or run; one for anything else).

    With ``fmt="auto"`` the format is decided by the body itself; ``content_type`` is only
    compared with it, and a mismatch is logged (``parse_content_type_mismatch``), never
    trusted. ``fmt="xml"`` or ``"json"`` forces the format. ``source`` marks every event;
    None tells a query answer from a callback by its shape. Raises ParseError, and nothing
    else, when the body is not one cicb can read; its ``path`` names the node, its reason
    the line and column of a body that is not well-formed.
    """
    try:
        detected = detect_format(body)
        if fmt == "auto":
            claimed = format_of(content_type)
            if claimed is not None and claimed != detected:
                log.warning(
                    "parse_content_type_mismatch", content_type=content_type, detected=detected
                )
        elif fmt != detected:
            raise ParseError(f"body is {detected.upper()}, not {fmt.upper()} as required")
        return _events(load(body, detected), source)
    except ParseError:
        raise
    except Exception as exc:  # the contract: nothing but ParseError escapes
        raise ParseError(f"unreadable callback: {type(exc).__name__}: {exc}") from exc


def events_of(document: Mapping[str, Any], *, source: str | None = None) -> list[Event]:
    """The events of a document already read into a mapping (the inside of ``<Response>``,
    such as the dict cos-python-sdk-v5 returns for a job query); the same rules and the
    same ParseError as ``parse``."""
    try:
        root = normalize(dict(document))
        if not isinstance(root, dict):
            raise ParseError("document is empty")
        return _events(root, source)
    except ParseError:
        raise
    except Exception as exc:
        raise ParseError(f"unreadable document: {type(exc).__name__}: {exc}") from exc


def format_of(content_type: str | None) -> Format | None:
    """The format a Content-Type claims (``application/xml``, ``text/json``...), or None."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media.endswith(("/xml", "+xml")):
        return "xml"
    if media.endswith(("/json", "+json")):
        return "json"
    return None


def _events(root: Node, source: str | None) -> list[Event]:
    src = source or source_of(root)
    name = opt_str(root, "EventName", "")
    if name is None:
        return _unnamed(root, src)
    if name == TASK_FINISH:
        found = jobs(root)
        if not found:
            raise ParseError("missing", path="JobsDetail")
        return [job_event(job, path, source=src) for job, path in found]
    if name == WORKFLOW_FINISH:
        runs = executions(root)
        if not runs:
            raise ParseError("missing", path="WorkflowExecution")
        return [workflow_event(run, path, source=src) for run, path in runs]
    if is_moderation_name(name):
        return [detail(name, job, path, root, source=src) for job, path in jobs(root)] or [
            detail(name, {}, "JobsDetail", root, source=src)
        ]
    return [_generic(name, root, src)]


def _unnamed(root: Node, source: str) -> list[Event]:
    """A body without EventName: moderation's simple form or test request, an old job
    callback, or a query answer (jobs, moderation jobs, workflow runs)."""
    if is_simple(root):
        return [simple(root, source=source)]
    found, runs = jobs(root), executions(root)
    if not found and not runs:
        raise ParseError("missing", path="EventName")
    events: list[Event] = []
    for job, path in found:
        if is_moderation_job(job):
            events.append(detail(moderation_event(job), job, path, root, source=source))
        else:
            events.append(job_event(job, path, source=source))
    events += [workflow_event(run, path, source=source) for run, path in runs]
    return events


def _generic(name: str, root: Node, source: str) -> GenericEvent:
    jobs = root.get("JobsDetail")
    first: Any = jobs[0] if isinstance(jobs, list) and jobs else root
    if not isinstance(first, dict):
        first = root
    job_id = first.get("JobId")
    state = first.get("State")
    return GenericEvent(
        event=name,
        job_id=job_id if isinstance(job_id, str) else None,
        state=state if isinstance(state, str) else "",
        raw=root,
        source=source,
    )
