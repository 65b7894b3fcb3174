"""Content-moderation callbacks and answers to their ModerationEvents.

Three shapes reach the same URL as the job callbacks:

- the detailed form: ``{"EventName": "ReviewDocument", "JobsDetail": {JobId, State...}}``;
  a moderation job query answer has the same ``JobsDetail`` and no EventName, so its
  event is told from the fields the kind of moderation writes (``moderation_event``);
- the simple form, snake_case: ``{"code": 0, "message": ..., "data": {"event": ...}}``;
- CI's test request, sent when a callback URL is set: the simple form without ``event``.
  It is a moderation event named ``Review`` (``UNNAMED``), never an error.
"""

from __future__ import annotations

from typing import Final

from pipeline.parsing.events import InputObject, ModerationEvent
from pipeline.parsing.fields import cos_headers, input_from_url, input_of, opt_str, req_str
from pipeline.parsing.load import Node

UNNAMED: Final = "Review"
"""The event of a moderation callback that does not say which kind (CI's test request)."""
EVENT_PREFIX: Final = "Review"

# What marks a JobsDetail as a moderation job's: no Tag, no Operation, and a verdict.
_VERDICT_KEYS: Final = ("Result", "Suggestion", "Label")
# The field each kind of moderation writes, first match wins; anything else is an image's.
_KIND_MARKERS: Final = (
    ("AudioText", "ReviewAudio"),
    ("Snapshot", "ReviewVideo"),
    ("SnapshotCount", "ReviewVideo"),
    ("PageSegment", "ReviewDocument"),
    ("ImageResults", "ReviewHtml"),
    ("TextResults", "ReviewHtml"),
    ("Section", "ReviewText"),
    ("SectionCount", "ReviewText"),
)
_IMAGE: Final = "ReviewImage"


def is_moderation_name(name: str) -> bool:
    return name.startswith(EVENT_PREFIX)


def is_simple(root: Node) -> bool:
    """The simple form (or the test request): a ``data`` object, with ``event`` or beside
    a ``code``, and no EventName."""
    data = root.get("data")
    return (
        "EventName" not in root and isinstance(data, dict) and ("event" in data or "code" in root)
    )


def is_moderation_job(job: Node) -> bool:
    """A JobsDetail that holds a moderation verdict, not a media job."""
    return "Tag" not in job and "Operation" not in job and any(k in job for k in _VERDICT_KEYS)


def moderation_event(job: Node) -> str:
    """The event of a moderation job named by no EventName, from the fields it has."""
    return next((name for marker, name in _KIND_MARKERS if marker in job), _IMAGE)


def detail(name: str, job: Node, path: str, root: Node, *, source: str) -> ModerationEvent:
    """``{"EventName": "ReviewDocument", "JobsDetail": {JobId, State, Suggestion...}}``."""
    state = opt_str(job, "State", path) or "Success"
    url = opt_str(job, "Url", path)
    return ModerationEvent(
        event=name,
        job_id=opt_str(job, "JobId", path),
        state=state,
        code=opt_str(job, "Code", path),
        message=opt_str(job, "Message", path) if state == "Failed" else None,
        result=opt_str(job, "Suggestion", path) or opt_str(job, "Result", path),
        label=opt_str(job, "Label", path),
        url=url,
        input=input_of((job, path)) or input_from_url(url),
        data_id=opt_str(job, "DataId", path),
        forbidden_state=opt_str(job, "ForbidState", path),
        raw=root,
        source=source,
    )


def simple(root: Node, *, source: str) -> ModerationEvent:
    """``{"code": 0, "message": "...", "data": {"event": "ReviewImage", "result": 0...}}``;
    without ``event``, CI's test request."""
    data: Node = root["data"]
    code = opt_str(root, "code", "")
    failed = code is not None and code != "0"
    url = opt_str(data, "url", "data")
    found = input_from_url(url)
    headers = cos_headers(data, "cos_headers", "data")
    if headers:
        base = found or InputObject(None, None, None, {})
        found = InputObject(base.bucket, base.region, base.key, headers)
    return ModerationEvent(
        event=req_str(data, "event", "data") if "event" in data else UNNAMED,
        job_id=opt_str(data, "trace_id", "data"),
        state="Failed" if failed else "Success",
        code=code,
        message=opt_str(root, "message", "") if failed else None,
        result=opt_str(data, "result", "data"),
        label=opt_str(data, "label", "data"),
        url=url,
        input=found,
        data_id=opt_str(data, "data_id", "data"),
        forbidden_state=opt_str(data, "forbidden_status", "data"),
        raw=root,
        source=source,
    )
