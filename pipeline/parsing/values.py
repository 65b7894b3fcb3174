"""The small value objects events are made of, and the helpers that serialize them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

KIND_JOB: Final = "job"
KIND_WORKFLOW: Final = "workflow"
KIND_MODERATION: Final = "moderation"
KIND_GENERIC: Final = "generic"

# Where an event came from: a callback CI sent, or an answer of one of CI's job queries.
# A plain string on every event, so a later stage can mark its own with dataclasses.replace.
SOURCE_CALLBACK: Final = "callback"
SOURCE_QUERY: Final = "query"


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
class SubFailure:
    """A step inside a job that failed on its own (``Operation.DigitalWatermark.State``
    Failed) while the job as a whole succeeded. ``name`` is the Operation node's name."""

    name: str
    code: str | None
    message: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "code": self.code, "message": self.message}


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def digest(raw: Mapping[str, Any]) -> str:
    """A stable short id for a callback that carries none, so duplicates still collide."""
    canonical = json.dumps(raw, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(canonical).hexdigest()[:32]


def input_from(value: Mapping[str, Any] | None) -> InputObject | None:
    if value is None:
        return None
    return InputObject(
        bucket=value.get("bucket"),
        region=value.get("region"),
        key=value.get("key"),
        cos_headers=dict(value.get("cos_headers") or {}),
    )
