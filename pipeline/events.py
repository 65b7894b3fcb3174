"""The normalized event: what a Tencent CI callback means, whatever format it came in.

Events are frozen dataclasses inside a process and plain JSON (``to_dict``) across the
broker; ``event_from_dict`` turns that JSON back into the same event.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias

from pipeline.errors import ParseError

TASK_FINISH: Final = "TaskFinish"
WORKFLOW_FINISH: Final = "WorkflowFinish"


@dataclass(frozen=True, slots=True)
class OutputObject:
    """One object a job wrote to COS."""

    bucket: str | None
    region: str | None
    key: str
    md5: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "region": self.region, "key": self.key, "md5": self.md5}


@dataclass(frozen=True, slots=True)
class InputObject:
    """The COS object a job or workflow ran on; ``cos_headers`` maps header name to value."""

    bucket: str | None
    region: str | None
    key: str | None
    cos_headers: Mapping[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "region": self.region,
            "key": self.key,
            "cos_headers": dict(self.cos_headers),
        }


@dataclass(frozen=True, slots=True)
class WorkflowRef:
    """The workflow run a job belongs to; ``name`` is the workflow node's name."""

    run_id: str | None
    workflow_id: str | None
    workflow_name: str | None
    name: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow_id": self.workflow_id,
            "workflow_name": self.workflow_name,
            "name": self.name,
        }


@dataclass(frozen=True, slots=True)
class WorkflowTask:
    """One node of a finished workflow run."""

    type: str | None
    state: str | None
    job_id: str | None
    name: str | None
    template_id: str | None
    template_name: str | None
    created_at: datetime | None
    ended_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "state": self.state,
            "job_id": self.job_id,
            "name": self.name,
            "template_id": self.template_id,
            "template_name": self.template_name,
            "created_at": _iso(self.created_at),
            "ended_at": _iso(self.ended_at),
        }


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A ``TaskFinish`` callback: one job reached ``state``.

    ``code`` and ``message`` only mean something when the job failed; ``message`` is None
    on success. ``operation`` is Tencent's raw Operation node, normalized (no empty values,
    strings only, one-or-many nodes always lists). Times are timezone-aware.
    """

    event: str
    job_id: str
    tag: str
    state: str
    code: str | None
    message: str | None
    queue_id: str | None
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    input: InputObject | None
    outputs: tuple[OutputObject, ...]
    workflow: WorkflowRef | None
    user_data: str | None
    template_id: str | None
    template_name: str | None
    operation: Mapping[str, Any]
    sub_tag: str | None = None

    @property
    def dedup_key(self) -> str:
        return f"{self.event}:{self.job_id}:{self.state}"

    def to_dict(self) -> dict[str, Any]:
        """The snake_case, JSON-ready form (what ``cicb parse`` prints and ``notify`` sends)."""
        return {
            "event": self.event,
            "job_id": self.job_id,
            "tag": self.tag,
            "sub_tag": self.sub_tag,
            "state": self.state,
            "code": self.code,
            "message": self.message,
            "queue_id": self.queue_id,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "ended_at": _iso(self.ended_at),
            "input": self.input.to_dict() if self.input else None,
            "outputs": [o.to_dict() for o in self.outputs],
            "workflow": self.workflow.to_dict() if self.workflow else None,
            "user_data": self.user_data,
            "template_id": self.template_id,
            "template_name": self.template_name,
            "operation": copy.deepcopy(dict(self.operation)),
        }


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """A ``WorkflowFinish`` callback: a whole workflow run reached ``state``."""

    event: str
    run_id: str
    workflow_id: str | None
    workflow_name: str | None
    state: str
    input: InputObject | None
    created_at: datetime | None
    tasks: tuple[WorkflowTask, ...]

    @property
    def tag(self) -> None:
        """Workflow runs have no Tag; here so routing reads every event the same way."""
        return None

    @property
    def job_id(self) -> None:
        return None

    @property
    def dedup_key(self) -> str:
        return f"{self.event}:{self.run_id}:{self.state}"

    def to_dict(self) -> dict[str, Any]:
        """The snake_case, JSON-ready form; ``tag`` and ``job_id`` are always null."""
        return {
            "event": self.event,
            "run_id": self.run_id,
            "job_id": None,
            "workflow_id": self.workflow_id,
            "workflow_name": self.workflow_name,
            "tag": None,
            "state": self.state,
            "input": self.input.to_dict() if self.input else None,
            "created_at": _iso(self.created_at),
            "tasks": [t.to_dict() for t in self.tasks],
        }


Event: TypeAlias = JobEvent | WorkflowEvent


def event_from_dict(d: Mapping[str, Any]) -> Event:
    """Rebuild the event that ``to_dict`` produced; raises ParseError on anything else."""
    kind = d.get("event")
    try:
        if kind == WORKFLOW_FINISH:
            return WorkflowEvent(
                event=kind,
                run_id=d["run_id"],
                workflow_id=d.get("workflow_id"),
                workflow_name=d.get("workflow_name"),
                state=d["state"],
                input=_input_from(d.get("input")),
                created_at=_dt(d.get("created_at")),
                tasks=tuple(_task_from(t) for t in d.get("tasks", ())),
            )
        if kind == TASK_FINISH:
            wf = d.get("workflow")
            return JobEvent(
                event=kind,
                job_id=d["job_id"],
                tag=d["tag"],
                sub_tag=d.get("sub_tag"),
                state=d["state"],
                code=d.get("code"),
                message=d.get("message"),
                queue_id=d.get("queue_id"),
                created_at=_dt(d.get("created_at")),
                started_at=_dt(d.get("started_at")),
                ended_at=_dt(d.get("ended_at")),
                input=_input_from(d.get("input")),
                outputs=tuple(OutputObject(**o) for o in d.get("outputs", ())),
                workflow=WorkflowRef(**wf) if wf is not None else None,
                user_data=d.get("user_data"),
                template_id=d.get("template_id"),
                template_name=d.get("template_name"),
                operation=copy.deepcopy(dict(d.get("operation") or {})),
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ParseError(f"not a serialized {kind} event: {exc!r}") from exc
    raise ParseError(f"unknown event {kind!r}", path="event")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _task_from(t: Mapping[str, Any]) -> WorkflowTask:
    times = {"created_at": _dt(t.get("created_at")), "ended_at": _dt(t.get("ended_at"))}
    return WorkflowTask(**{**t, **times})


def _input_from(value: Mapping[str, Any] | None) -> InputObject | None:
    if value is None:
        return None
    return InputObject(
        bucket=value.get("bucket"),
        region=value.get("region"),
        key=value.get("key"),
        cos_headers=dict(value.get("cos_headers") or {}),
    )
