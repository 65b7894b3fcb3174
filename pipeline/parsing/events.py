"""The normalized event: what a Tencent CI callback means, whatever format it came in.

Events are frozen dataclasses inside a process and plain JSON (``to_dict``) across the
broker; ``decoding.event_from_dict`` turns that JSON back into the same event.

Every event has a ``source``: ``"callback"`` when CI sent it, ``"query"`` when it was read
from the answer of one of CI's job queries, ``"reconcile"`` when the reconciler found the job
finished without its callback, ``"replay"`` when ``cicb replay`` sent it again. It is a plain
string, not part of the deduplication key: the same job in the same state is one event,
however it was learned. A ``scope`` (``cicb replay --force``) is: the same callback in a new
scope runs its route again, under new deduplication and notification ids.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeAlias

from pipeline.parsing.values import (
    KIND_GENERIC,
    KIND_JOB,
    KIND_MODERATION,
    KIND_WORKFLOW,
    SOURCE_CALLBACK,
    SOURCE_QUERY,
    InputObject,
    OutputObject,
    SubFailure,
    WorkflowRef,
    digest,
    iso,
)

__all__ = [
    "KIND_GENERIC",
    "KIND_JOB",
    "KIND_MODERATION",
    "KIND_WORKFLOW",
    "SOURCE_CALLBACK",
    "SOURCE_QUERY",
    "TASK_FINISH",
    "WORKFLOW_FINISH",
    "Event",
    "GenericEvent",
    "InputObject",
    "JobEvent",
    "ModerationEvent",
    "OutputObject",
    "SubFailure",
    "WorkflowEvent",
    "WorkflowRef",
    "WorkflowTask",
]

TASK_FINISH: Final = "TaskFinish"
WORKFLOW_FINISH: Final = "WorkflowFinish"


@dataclass(frozen=True, slots=True)
class WorkflowTask:
    """One node of a finished workflow run.

    ``outputs`` are the result objects the run reports for this node (``ResultInfo``); the
    workflow callback names their keys only, so ``bucket``, ``region`` and ``md5`` are None.
    """

    type: str | None
    state: str | None
    job_id: str | None
    name: str | None
    template_id: str | None
    template_name: str | None
    created_at: datetime | None
    ended_at: datetime | None
    outputs: tuple[OutputObject, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "state": self.state,
            "job_id": self.job_id,
            "name": self.name,
            "template_id": self.template_id,
            "template_name": self.template_name,
            "created_at": iso(self.created_at),
            "ended_at": iso(self.ended_at),
            "outputs": [o.to_dict() for o in self.outputs],
        }


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A ``TaskFinish`` callback (or a job read from a query answer): one job reached ``state``.

    ``code`` and ``message`` only mean something when the job failed; ``message`` is None
    on success. ``operation`` is Tencent's raw Operation node, normalized (no empty values,
    strings only, one-or-many nodes always lists). Times are timezone-aware. ``tag`` is
    None when CI sent none and no result node names it.
    """

    event: str
    job_id: str
    tag: str | None
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
    sub_failures: tuple[SubFailure, ...] = ()
    source: str = SOURCE_CALLBACK
    scope: str | None = None

    @property
    def kind(self) -> str:
        return KIND_JOB

    @property
    def dedup_key(self) -> str:
        return scoped(f"{self.event}:{self.job_id}:{self.state}", self.scope)

    def to_dict(self) -> dict[str, Any]:
        """The snake_case, JSON-ready form (what ``cicb parse`` prints and ``notify`` sends)."""
        return {
            "event": self.event,
            "kind": KIND_JOB,
            "job_id": self.job_id,
            "tag": self.tag,
            "sub_tag": self.sub_tag,
            "state": self.state,
            "code": self.code,
            "message": self.message,
            "queue_id": self.queue_id,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "input": self.input.to_dict() if self.input else None,
            "outputs": [o.to_dict() for o in self.outputs],
            "workflow": self.workflow.to_dict() if self.workflow else None,
            "user_data": self.user_data,
            "template_id": self.template_id,
            "template_name": self.template_name,
            "sub_failures": [f.to_dict() for f in self.sub_failures],
            "operation": copy.deepcopy(dict(self.operation)),
            "source": self.source,
            **({"scope": self.scope} if self.scope else {}),
        }


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """A ``WorkflowFinish`` callback (or a run read from a workflow execution query): a whole
    workflow run reached ``state``."""

    event: str
    run_id: str
    workflow_id: str | None
    workflow_name: str | None
    state: str
    input: InputObject | None
    created_at: datetime | None
    tasks: tuple[WorkflowTask, ...]
    source: str = SOURCE_CALLBACK
    scope: str | None = None

    @property
    def tag(self) -> None:
        """Workflow runs have no Tag; here so routing reads every event the same way."""
        return None

    @property
    def job_id(self) -> None:
        return None

    @property
    def kind(self) -> str:
        return KIND_WORKFLOW

    @property
    def dedup_key(self) -> str:
        return scoped(f"{self.event}:{self.run_id}:{self.state}", self.scope)

    def to_dict(self) -> dict[str, Any]:
        """The snake_case, JSON-ready form; ``tag`` and ``job_id`` are always null."""
        return {
            "event": self.event,
            "kind": KIND_WORKFLOW,
            "run_id": self.run_id,
            "job_id": None,
            "workflow_id": self.workflow_id,
            "workflow_name": self.workflow_name,
            "tag": None,
            "state": self.state,
            "input": self.input.to_dict() if self.input else None,
            "created_at": iso(self.created_at),
            "tasks": [t.to_dict() for t in self.tasks],
            "source": self.source,
            **({"scope": self.scope} if self.scope else {}),
        }


class _RawEvent:
    """What moderation and generic events share: no Tag, and a key from the raw callback
    when it names no job."""

    __slots__ = ()
    event: str
    job_id: str | None
    state: str
    raw: Mapping[str, Any]
    scope: str | None

    @property
    def tag(self) -> None:
        return None

    @property
    def dedup_key(self) -> str:
        return scoped(f"{self.event}:{self.job_id or digest(self.raw)}:{self.state}", self.scope)


@dataclass(frozen=True, slots=True)
class ModerationEvent(_RawEvent):
    """A content-moderation callback (``ReviewImage``, ``ReviewDocument``...) that reached
    the same URL as the job callbacks.

    ``result`` is Tencent's verdict as sent: ``"0"`` normal, ``"1"`` violating, ``"2"``
    suspect (review by hand). ``state`` is the moderation job's State; a short ("Simple")
    callback has none, so it is ``Success`` when its ``code`` is 0 and ``Failed`` otherwise.
    ``raw`` is the whole callback, normalized.
    """

    event: str
    job_id: str | None
    state: str
    code: str | None
    message: str | None
    result: str | None
    label: str | None
    url: str | None
    input: InputObject | None
    data_id: str | None
    forbidden_state: str | None
    raw: Mapping[str, Any]
    source: str = SOURCE_CALLBACK
    scope: str | None = None

    @property
    def kind(self) -> str:
        return KIND_MODERATION

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "kind": KIND_MODERATION,
            "job_id": self.job_id,
            "tag": None,
            "state": self.state,
            "code": self.code,
            "message": self.message,
            "result": self.result,
            "label": self.label,
            "url": self.url,
            "input": self.input.to_dict() if self.input else None,
            "data_id": self.data_id,
            "forbidden_state": self.forbidden_state,
            "raw": copy.deepcopy(dict(self.raw)),
            "source": self.source,
            **({"scope": self.scope} if self.scope else {}),
        }


@dataclass(frozen=True, slots=True)
class GenericEvent(_RawEvent):
    """A callback with an EventName cicb has no model for; routed by ``event`` alone.

    ``job_id`` and ``state`` are the first job's (``JobsDetail.JobId``/``State``) or the
    document's own, when it has them; ``state`` is ``""`` when it has none.
    ``raw`` is the whole callback, normalized.
    """

    event: str
    job_id: str | None
    state: str
    raw: Mapping[str, Any]
    source: str = SOURCE_CALLBACK
    scope: str | None = None

    @property
    def kind(self) -> str:
        return KIND_GENERIC

    def to_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "kind": KIND_GENERIC,
            "job_id": self.job_id,
            "tag": None,
            "state": self.state or None,
            "raw": copy.deepcopy(dict(self.raw)),
            "source": self.source,
            **({"scope": self.scope} if self.scope else {}),
        }


Event: TypeAlias = JobEvent | WorkflowEvent | ModerationEvent | GenericEvent


def scoped(key: str, scope: str | None) -> str:
    """A deduplication key in ``scope`` (none: the callback's own)."""
    return f"{key}@{scope}" if scope else key
