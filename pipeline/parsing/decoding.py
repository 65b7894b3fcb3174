"""``event_from_dict``: the event back from the JSON ``to_dict`` made of it (across the
broker, in dead letters and the archive)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from pipeline.errors import ParseError
from pipeline.parsing.events import (
    TASK_FINISH,
    WORKFLOW_FINISH,
    Event,
    GenericEvent,
    JobEvent,
    ModerationEvent,
    WorkflowEvent,
    WorkflowTask,
)
from pipeline.parsing.values import (
    KIND_GENERIC,
    KIND_JOB,
    KIND_MODERATION,
    KIND_WORKFLOW,
    SOURCE_CALLBACK,
    OutputObject,
    SubFailure,
    WorkflowRef,
    dt,
    input_from,
)


def event_from_dict(d: Mapping[str, Any]) -> Event:
    """Rebuild the event that ``to_dict`` produced; raises ParseError on anything else.

    A dict without ``source`` (written before events had one, such as an old dead letter)
    is a callback's. A dict without ``kind`` is read by its event name.
    """
    name = d.get("event")
    by_name = {TASK_FINISH: KIND_JOB, WORKFLOW_FINISH: KIND_WORKFLOW}
    kind = d.get("kind") or (by_name.get(name) if isinstance(name, str) else None)
    try:
        source = d.get("source") or SOURCE_CALLBACK
        if not isinstance(source, str):
            raise TypeError(f"source must be a string, not {source!r}")
        scope = d.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise TypeError(f"scope must be a string, not {scope!r}")
        if kind == KIND_MODERATION:
            return ModerationEvent(
                event=d["event"],
                job_id=d.get("job_id"),
                state=d["state"],
                code=d.get("code"),
                message=d.get("message"),
                result=d.get("result"),
                label=d.get("label"),
                url=d.get("url"),
                input=input_from(d.get("input")),
                data_id=d.get("data_id"),
                forbidden_state=d.get("forbidden_state"),
                raw=copy.deepcopy(dict(d.get("raw") or {})),
                source=source,
                scope=scope,
            )
        if kind == KIND_GENERIC:
            return GenericEvent(
                event=d["event"],
                job_id=d.get("job_id"),
                state=d.get("state") or "",
                raw=copy.deepcopy(dict(d.get("raw") or {})),
                source=source,
                scope=scope,
            )
        if kind == KIND_WORKFLOW:
            return WorkflowEvent(
                event=d["event"],
                run_id=d["run_id"],
                workflow_id=d.get("workflow_id"),
                workflow_name=d.get("workflow_name"),
                state=d["state"],
                input=input_from(d.get("input")),
                created_at=dt(d.get("created_at")),
                tasks=tuple(_task_from(t) for t in d.get("tasks", ())),
                source=source,
                scope=scope,
            )
        if kind == KIND_JOB:
            wf = d.get("workflow")
            return JobEvent(
                event=d["event"],
                job_id=d["job_id"],
                tag=d.get("tag"),
                sub_tag=d.get("sub_tag"),
                state=d["state"],
                code=d.get("code"),
                message=d.get("message"),
                queue_id=d.get("queue_id"),
                created_at=dt(d.get("created_at")),
                started_at=dt(d.get("started_at")),
                ended_at=dt(d.get("ended_at")),
                input=input_from(d.get("input")),
                outputs=tuple(OutputObject(**o) for o in d.get("outputs", ())),
                workflow=WorkflowRef(**wf) if wf is not None else None,
                user_data=d.get("user_data"),
                template_id=d.get("template_id"),
                template_name=d.get("template_name"),
                operation=copy.deepcopy(dict(d.get("operation") or {})),
                sub_failures=tuple(SubFailure(**f) for f in d.get("sub_failures", ())),
                source=source,
                scope=scope,
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ParseError(f"not a serialized {name} event: {exc!r}") from exc
    raise ParseError(f"unknown event {name!r}", path="event")


def _task_from(t: Mapping[str, Any]) -> WorkflowTask:
    times = {"created_at": dt(t.get("created_at")), "ended_at": dt(t.get("ended_at"))}
    outputs = tuple(OutputObject(**o) for o in t.get("outputs", ()))
    return WorkflowTask(**{**t, **times, "outputs": outputs})
