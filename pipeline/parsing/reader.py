"""Turn a raw Tencent CI callback body (XML or JSON) into normalized events.

``parse`` reads the body (``parsing_load``: format, encoding, safety bounds, normalization),
then builds one event per job (``TaskFinish``), one per workflow run (``WorkflowFinish``),
one per content-moderation callback (``Review*`` EventNames, or a JSON body with
``data.event``), and one ``GenericEvent`` for any other EventName. Only a body that is not
a callback at all raises, and then only ``ParseError``.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from pipeline import logs
from pipeline.errors import ParseError
from pipeline.parsing.events import (
    TASK_FINISH,
    WORKFLOW_FINISH,
    Event,
    GenericEvent,
    InputObject,
    JobEvent,
    ModerationEvent,
    OutputObject,
    WorkflowEvent,
    WorkflowRef,
    WorkflowTask,
)
from pipeline.parsing.fields import cos_headers, maps, opt_map, opt_str, req_str, strs, time
from pipeline.parsing.load import MAX_DEPTH, MAX_NODES, Format, Node, detect_format, join, load
from pipeline.parsing.outputs import key, outputs, sub_failures

__all__ = ["MAX_DEPTH", "MAX_NODES", "Format", "detect_format", "format_of", "parse"]

FormatOption = Literal["auto", "xml", "json"]

MODERATION_EVENTS: Final = frozenset(
    {"ReviewImage", "ReviewVideo", "ReviewAudio", "ReviewText", "ReviewDocument"}
    | {"ReviewHtml", "ReviewLive"}
)
_COS_URL_RE: Final = re.compile(
    r"^https?://(?P<bucket>[a-z0-9-]+-\d+)\.cos\.(?P<region>[a-z0-9-]+)\.myqcloud\.com/(?P<key>[^?#]+)"
)

log = logs.get_logger("cicb.parsing")


def parse(
    body: bytes, *, content_type: str | None = None, fmt: FormatOption = "auto"
) -> list[Event]:
    """Parse one callback body into its events (one per job; one for anything else).

    With ``fmt="auto"`` the format is decided by the body itself; ``content_type`` is only
    compared with it, and a mismatch is logged (``parse_content_type_mismatch``), never
    trusted. ``fmt="xml"`` or ``"json"`` forces the format. Raises ParseError, and nothing
    else, when the body is not a callback cicb can read; its ``path`` names the node.
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
        return _events(load(body, detected))
    except ParseError:
        raise
    except Exception as exc:  # the contract: nothing but ParseError escapes
        raise ParseError(f"unreadable callback: {type(exc).__name__}: {exc}") from exc


def format_of(content_type: str | None) -> Format | None:
    """The format a Content-Type claims (``application/xml``, ``text/json``...), or None."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media.endswith(("/xml", "+xml")):
        return "xml"
    if media.endswith(("/json", "+json")):
        return "json"
    return None


def _events(root: Node) -> list[Event]:
    data = root.get("data")
    if "EventName" not in root and isinstance(data, dict) and "event" in data:
        return [_moderation_simple(root, data)]
    name = req_str(root, "EventName", "")
    if name == TASK_FINISH:
        jobs = maps(root, "JobsDetail", "")
        if not jobs:
            raise ParseError("missing", path="JobsDetail")
        return [_job(job, f"JobsDetail[{i}]") for i, job in enumerate(jobs)]
    if name == WORKFLOW_FINISH:
        execution = opt_map(root, "WorkflowExecution", "")
        if execution is None:
            raise ParseError("missing", path="WorkflowExecution")
        return [_workflow(execution, "WorkflowExecution")]
    if name in MODERATION_EVENTS or name.startswith("Review"):
        jobs = maps(root, "JobsDetail", "")
        return [
            _moderation_detail(name, job, f"JobsDetail[{i}]", root) for i, job in enumerate(jobs)
        ] or [_moderation_detail(name, {}, "JobsDetail", root)]
    return [_generic(name, root)]


def _job(job: Node, path: str) -> JobEvent:
    job_id = req_str(job, "JobId", path)
    tag = req_str(job, "Tag", path)
    state = req_str(job, "State", path)
    op_path = join(path, "Operation")
    op = opt_map(job, "Operation", path) or {}
    return JobEvent(
        event=TASK_FINISH,
        job_id=job_id,
        tag=tag,
        sub_tag=opt_str(job, "SubTag", path),
        state=state,
        code=opt_str(job, "Code", path),
        # Tencent's Message on success is noise ("", "success", "done"...).
        message=None if state == "Success" else opt_str(job, "Message", path),
        queue_id=opt_str(job, "QueueId", path),
        created_at=time(job, "CreationTime", path),
        started_at=time(job, "StartTime", path),
        ended_at=time(job, "EndTime", path),
        input=_input(
            (opt_map(job, "Input", path), join(path, "Input")),
            (opt_map(op, "Input", op_path), join(op_path, "Input")),
        ),
        outputs=outputs(op, state, op_path),
        workflow=_workflow_ref(job, path),
        user_data=opt_str(op, "UserData", op_path) or opt_str(job, "UserData", path),
        template_id=opt_str(op, "TemplateId", op_path),
        template_name=opt_str(op, "TemplateName", op_path),
        operation=op,
        sub_failures=sub_failures(op, op_path),
    )


def _workflow(wf: Node, path: str) -> WorkflowEvent:
    tasks = [_task(task, f"{path}.Tasks[{i}]") for i, task in enumerate(maps(wf, "Tasks", path))]
    return WorkflowEvent(
        event=WORKFLOW_FINISH,
        run_id=req_str(wf, "RunId", path),
        workflow_id=opt_str(wf, "WorkflowId", path),
        workflow_name=opt_str(wf, "WorkflowName", path),
        state=req_str(wf, "State", path),
        input=_input((wf, path)),
        created_at=time(wf, "CreateTime", path),
        tasks=tuple(tasks),
    )


def _task(task: Node, path: str) -> WorkflowTask:
    found: list[OutputObject] = []
    info = opt_map(task, "ResultInfo", path)
    if info is not None:
        ipath = join(path, "ResultInfo")
        for field in ("ObjectInfo", "SpriteObjectInfo"):
            for i, obj in enumerate(maps(info, field, ipath)):
                for name in strs(obj, "ObjectName", f"{ipath}.{field}[{i}]"):
                    found.append(OutputObject(None, None, key(name), None))
    return WorkflowTask(
        type=opt_str(task, "Type", path),
        state=opt_str(task, "State", path),
        job_id=opt_str(task, "JobId", path),
        name=opt_str(task, "Name", path),
        template_id=opt_str(task, "TemplateId", path),
        template_name=opt_str(task, "TemplateName", path),
        created_at=time(task, "CreateTime", path),
        ended_at=time(task, "EndTime", path),
        outputs=tuple(found),
    )


def _workflow_ref(job: Node, path: str) -> WorkflowRef | None:
    # The API documents Workflow as one-or-many; a job belongs to one run, so take the first.
    refs = maps(job, "Workflow", path)
    if not refs:
        return None
    wf, wpath = refs[0], join(path, "Workflow")
    return WorkflowRef(
        run_id=opt_str(wf, "RunId", wpath),
        workflow_id=opt_str(wf, "WorkflowId", wpath),
        workflow_name=opt_str(wf, "WorkflowName", wpath),
        name=opt_str(wf, "Name", wpath),
    )


def _input(*sources: tuple[Node | None, str]) -> InputObject | None:
    """Merge input nodes; earlier sources win. None when none of them says anything."""
    bucket = region = obj = None
    headers: dict[str, str] = {}
    for node, path in reversed(sources):
        if node is None:
            continue
        bucket = opt_str(node, "BucketId", path) or opt_str(node, "Bucket", path) or bucket
        region = opt_str(node, "Region", path) or region
        obj = opt_str(node, "Object", path) or obj
        headers.update(cos_headers(node, "CosHeaders", path))
    if bucket is None and region is None and obj is None and not headers:
        return None
    return InputObject(bucket=bucket, region=region, key=obj, cos_headers=headers)


def _moderation_detail(name: str, job: Node, path: str, root: Node) -> ModerationEvent:
    """``{"EventName": "ReviewDocument", "JobsDetail": {JobId, State, Suggestion...}}``."""
    state = opt_str(job, "State", path) or "Success"
    url = opt_str(job, "Url", path)
    source = _input((job, path)) or _input_from_url(url)
    return ModerationEvent(
        event=name,
        job_id=opt_str(job, "JobId", path),
        state=state,
        code=opt_str(job, "Code", path),
        message=opt_str(job, "Message", path) if state == "Failed" else None,
        result=opt_str(job, "Suggestion", path) or opt_str(job, "Result", path),
        label=opt_str(job, "Label", path),
        url=url,
        input=source,
        data_id=opt_str(job, "DataId", path),
        forbidden_state=opt_str(job, "ForbidState", path),
        raw=root,
    )


def _moderation_simple(root: Node, data: Node) -> ModerationEvent:
    """``{"code": 0, "message": "...", "data": {"event": "ReviewImage", "result": 0...}}``."""
    code = opt_str(root, "code", "")
    failed = code is not None and code != "0"
    url = opt_str(data, "url", "data")
    source = _input_from_url(url)
    headers = cos_headers(data, "cos_headers", "data")
    if headers:
        base = source or InputObject(None, None, None, {})
        source = InputObject(base.bucket, base.region, base.key, headers)
    return ModerationEvent(
        event=req_str(data, "event", "data"),
        job_id=opt_str(data, "trace_id", "data"),
        state="Failed" if failed else "Success",
        code=code,
        message=opt_str(root, "message", "") if failed else None,
        result=opt_str(data, "result", "data"),
        label=opt_str(data, "label", "data"),
        url=url,
        input=source,
        data_id=opt_str(data, "data_id", "data"),
        forbidden_state=opt_str(data, "forbidden_status", "data"),
        raw=root,
    )


def _input_from_url(url: str | None) -> InputObject | None:
    """Bucket, region and key of a COS URL (``https://b-125.cos.ap-x.myqcloud.com/k``)."""
    match = _COS_URL_RE.match(url or "")
    if match is None:
        return None
    return InputObject(match["bucket"], match["region"], match["key"], {})


def _generic(name: str, root: Node) -> GenericEvent:
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
    )
