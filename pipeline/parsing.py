"""Turn a raw Tencent CI callback body (XML or JSON) into normalized events.

Both formats go through the same normalization first, so the XML and the JSON form of one
callback give equal events: empty values are dropped, every scalar becomes a string, and the
nodes Tencent sends one-or-many (``_LIST_KEYS``) are always lists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import xmltodict

from pipeline.errors import ParseError
from pipeline.events import (
    TASK_FINISH,
    WORKFLOW_FINISH,
    Event,
    InputObject,
    JobEvent,
    OutputObject,
    WorkflowEvent,
    WorkflowRef,
    WorkflowTask,
)

# XML gives a list only when a node repeats, JSON sometimes gives an object for one item.
_LIST_KEYS: Final = frozenset(
    {"CosHeaders", "ObjectName", "Md5Info", "Tasks", "WatermarkTemplateId", "JobsDetail"}
    | {"OutputFile", "SpriteOutputFile"}
)
# Tencent never declares a DTD; refusing one outright rules out entity expansion attacks.
_DTD_RE: Final = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)
_XML_ROOT: Final = "Response"

Node = dict[str, Any]


def parse(body: bytes, *, content_type: str | None = None) -> list[Event]:
    """Parse one callback body into its events (one per job; one for a workflow run).

    The format is decided from the body itself (``<`` XML, ``{``/``[`` JSON); ``content_type``
    is only a hint and is not trusted. Raises ParseError, and nothing else, when the body is
    not a callback cicb can read; its ``path`` names the offending node.
    """
    try:
        return _events(_load(body))
    except ParseError:
        raise
    except Exception as exc:  # the contract: nothing but ParseError escapes
        raise ParseError(f"unreadable callback: {type(exc).__name__}: {exc}") from exc


def _load(body: bytes) -> Node:
    try:
        text = bytes(body).decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise ParseError(f"body is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    if not text:
        raise ParseError("empty body")
    if text[0] == "<":
        raw = _load_xml(text)
    elif text[0] in "{[":
        raw = _load_json(text)
    else:
        raise ParseError(f"body is neither XML nor JSON (starts with {text[:20]!r})")
    try:
        root = _normalize(raw)
    except RecursionError as exc:
        raise ParseError("document is nested too deeply") from exc
    if not isinstance(root, dict):
        raise ParseError("callback document is empty")
    return root


def _load_xml(text: str) -> Any:
    if _DTD_RE.search(text):
        raise ParseError("XML with a DOCTYPE or ENTITY declaration is refused")
    try:
        doc = xmltodict.parse(text, disable_entities=True, xml_attribs=False)
    except Exception as exc:  # expat errors and xmltodict's own ValueErrors alike
        raise ParseError(f"invalid XML: {exc}") from exc
    if not isinstance(doc, dict) or _XML_ROOT not in doc:
        root = next(iter(doc), "") if isinstance(doc, dict) else ""
        raise ParseError(f"XML root must be <{_XML_ROOT}>, got <{root}>", path=str(root))
    return doc[_XML_ROOT]


def _load_json(text: str) -> Any:
    try:
        doc = json.loads(text, parse_int=str, parse_float=str, parse_constant=str)
    except (ValueError, RecursionError) as exc:
        raise ParseError(f"invalid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ParseError(f"JSON callback must be an object, got {_kind(doc)}")
    wrapped = doc.get(_XML_ROOT)
    if "EventName" not in doc and isinstance(wrapped, dict):
        return wrapped
    return doc


def _normalize(value: Any) -> Any:
    """Drop empty values, stringify scalars, make one-or-many nodes lists; None if empty."""
    if isinstance(value, dict):
        out: Node = {}
        for key, item in value.items():
            norm = _normalize(item)
            if norm is None:
                continue
            if key in _LIST_KEYS and not isinstance(norm, list):
                norm = [norm]
            out[str(key)] = norm
        return out or None
    if isinstance(value, list):
        items = [n for n in map(_normalize, value) if n is not None]
        return items or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        # XML text is stripped by xmltodict; strip JSON strings too so both agree.
        return value.strip() or None
    if value is None:
        return None
    raise ParseError(f"unexpected value of type {type(value).__name__}")


def _events(root: Node) -> list[Event]:
    name = _req_str(root, "EventName", "")
    if name == TASK_FINISH:
        jobs = _maps(root, "JobsDetail", "")
        if not jobs:
            raise ParseError("missing", path="JobsDetail")
        return [_job(job, f"JobsDetail[{i}]") for i, job in enumerate(jobs)]
    if name == WORKFLOW_FINISH:
        execution = _map(root, "WorkflowExecution", "")
        if execution is None:
            raise ParseError("missing", path="WorkflowExecution")
        return [_workflow(execution, "WorkflowExecution")]
    raise ParseError(f"unsupported EventName {name!r}", path="EventName")


def _job(job: Node, path: str) -> JobEvent:
    job_id = _req_str(job, "JobId", path)
    tag = _req_str(job, "Tag", path)
    state = _req_str(job, "State", path)
    op_path = _join(path, "Operation")
    op = _map(job, "Operation", path) or {}
    return JobEvent(
        event=TASK_FINISH,
        job_id=job_id,
        tag=tag,
        sub_tag=_str(job, "SubTag", path),
        state=state,
        code=_str(job, "Code", path),
        # Tencent's Message on success is noise ("", "success", "done"...).
        message=None if state == "Success" else _str(job, "Message", path),
        queue_id=_str(job, "QueueId", path),
        created_at=_time(job, "CreationTime", path),
        started_at=_time(job, "StartTime", path),
        ended_at=_time(job, "EndTime", path),
        input=_input(
            (_map(job, "Input", path), _join(path, "Input")),
            (_map(op, "Input", op_path), _join(op_path, "Input")),
        ),
        outputs=_outputs(op, state, op_path),
        workflow=_workflow_ref(job, path),
        user_data=_str(op, "UserData", op_path) or _str(job, "UserData", path),
        template_id=_str(op, "TemplateId", op_path),
        template_name=_str(op, "TemplateName", op_path),
        operation=op,
    )


def _workflow(wf: Node, path: str) -> WorkflowEvent:
    tasks = [_task(task, f"{path}.Tasks[{i}]") for i, task in enumerate(_maps(wf, "Tasks", path))]
    return WorkflowEvent(
        event=WORKFLOW_FINISH,
        run_id=_req_str(wf, "RunId", path),
        workflow_id=_str(wf, "WorkflowId", path),
        workflow_name=_str(wf, "WorkflowName", path),
        state=_req_str(wf, "State", path),
        input=_input((wf, path)),
        created_at=_time(wf, "CreateTime", path),
        tasks=tuple(tasks),
    )


def _task(task: Node, path: str) -> WorkflowTask:
    return WorkflowTask(
        type=_str(task, "Type", path),
        state=_str(task, "State", path),
        job_id=_str(task, "JobId", path),
        name=_str(task, "Name", path),
        template_id=_str(task, "TemplateId", path),
        template_name=_str(task, "TemplateName", path),
        created_at=_time(task, "CreateTime", path),
        ended_at=_time(task, "EndTime", path),
    )


def _workflow_ref(job: Node, path: str) -> WorkflowRef | None:
    wf = _map(job, "Workflow", path)
    if wf is None:
        return None
    wpath = _join(path, "Workflow")
    return WorkflowRef(
        run_id=_str(wf, "RunId", wpath),
        workflow_id=_str(wf, "WorkflowId", wpath),
        workflow_name=_str(wf, "WorkflowName", wpath),
        name=_str(wf, "Name", wpath),
    )


def _input(*sources: tuple[Node | None, str]) -> InputObject | None:
    """Merge input nodes; earlier sources win. None when none of them says anything."""
    bucket = region = key = None
    headers: dict[str, str] = {}
    for node, path in reversed(sources):
        if node is None:
            continue
        bucket = _str(node, "BucketId", path) or _str(node, "Bucket", path) or bucket
        region = _str(node, "Region", path) or region
        key = _str(node, "Object", path) or key
        for i, header in enumerate(_maps(node, "CosHeaders", path)):
            hpath = f"{path}.CosHeaders[{i}]"
            name = _str(header, "Key", hpath)
            if name is not None:
                headers[name] = _str(header, "Value", hpath) or ""
    if bucket is None and region is None and key is None and not headers:
        return None
    return InputObject(bucket=bucket, region=region, key=key, cos_headers=headers)


def _outputs(op: Node, state: str, path: str) -> tuple[OutputObject, ...]:
    """Objects listed in MediaResult; else Operation.Output when it names one real key."""
    outputs: list[OutputObject] = []
    result = _map(op, "MediaResult", path)
    if result is not None:
        rpath = _join(path, "MediaResult")
        for i, file in enumerate(_maps(result, "OutputFile", rpath)):
            fpath = f"{rpath}.OutputFile[{i}]"
            outputs += _output_file(file, fpath)
            for j, sprite in enumerate(_maps(file, "SpriteOutputFile", fpath)):
                outputs += _output_file(sprite, f"{fpath}.SpriteOutputFile[{j}]")
    if outputs or state != "Success":
        return tuple(outputs)
    out = _map(op, "Output", path)
    if out is None:
        return ()
    opath = _join(path, "Output")
    obj = _str(out, "Object", opath)
    if obj is None or "${" in obj:  # a template such as output/snapshot-${Number}.jpg
        return ()
    return (OutputObject(_str(out, "Bucket", opath), _str(out, "Region", opath), _key(obj), None),)


def _output_file(file: Node, path: str) -> list[OutputObject]:
    bucket = _str(file, "Bucket", path)
    region = _str(file, "Region", path)
    prefix = _str(file, "ObjectPrefix", path)
    md5s: dict[str, str] = {}
    for i, info in enumerate(_maps(file, "Md5Info", path)):
        ipath = f"{path}.Md5Info[{i}]"
        md5 = _str(info, "Md5", ipath)
        # ObjectName is one-or-many everywhere, so it is a list here too.
        names = _strs(info, "ObjectName", ipath)
        md5s.update({_key(name, prefix): md5 for name in names if md5 is not None})
    keys = [_key(name, prefix) for name in _strs(file, "ObjectName", path)]
    return [OutputObject(bucket, region, key, md5s.get(key)) for key in keys]


def _key(name: str, prefix: str | None = None) -> str:
    """The COS key of ``name``: no leading ``/``, joined to ``prefix`` when relative to it.

    ObjectPrefix is a plain key prefix (``output/snapshot-`` + ``0.jpg``), not a folder.
    """
    key = name.lstrip("/")
    pre = (prefix or "").lstrip("/")
    return key if not pre or key.startswith(pre) else pre + key


def _time(node: Node, key: str, path: str) -> datetime | None:
    value = _str(node, key, path)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ParseError(f"bad time {value!r}", path=_join(path, key)) from exc
    if parsed.tzinfo is None:
        raise ParseError(f"time {value!r} has no UTC offset", path=_join(path, key))
    return parsed


def _str(node: Mapping[str, Any], key: str, path: str) -> str | None:
    value = node.get(key)
    if value is not None and not isinstance(value, str):
        raise ParseError(f"expected a string, got {_kind(value)}", path=_join(path, key))
    return value


def _req_str(node: Mapping[str, Any], key: str, path: str) -> str:
    value = _str(node, key, path)
    if value is None:
        raise ParseError("missing", path=_join(path, key))
    return value


def _strs(node: Mapping[str, Any], key: str, path: str) -> list[str]:
    values = node.get(key) or []
    if not isinstance(values, list):
        raise ParseError(f"expected a list, got {_kind(values)}", path=_join(path, key))
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ParseError(
                f"expected a string, got {_kind(value)}", path=f"{_join(path, key)}[{i}]"
            )
    return list(values)


def _map(node: Mapping[str, Any], key: str, path: str) -> Node | None:
    value = node.get(key)
    if value is not None and not isinstance(value, dict):
        raise ParseError(f"expected an object, got {_kind(value)}", path=_join(path, key))
    return value


def _maps(node: Mapping[str, Any], key: str, path: str) -> list[Node]:
    """A one-or-many node of objects (normalization already made it a list)."""
    values = node.get(key) or []
    if not isinstance(values, list):
        raise ParseError(f"expected a list, got {_kind(values)}", path=_join(path, key))
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise ParseError(
                f"expected an object, got {_kind(value)}", path=f"{_join(path, key)}[{i}]"
            )
    return values


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else type(value).__name__
