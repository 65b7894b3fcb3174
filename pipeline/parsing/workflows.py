"""One workflow run (``WorkflowExecution``, of a ``WorkflowFinish`` callback or of a workflow
execution query) to its WorkflowEvent.

The callback names the workflow ``WorkflowName``, the query ``Name``; the list query's
runs (``WorkflowExecutionList``) carry ``CreationTime`` where the others have
``CreateTime``. The input ``Object`` is a key, or (in some query answers) a COS URL, which
gives the bucket and region too.
"""

from __future__ import annotations

from typing import Final

from pipeline.parsing.events import WORKFLOW_FINISH, InputObject, WorkflowEvent, WorkflowTask
from pipeline.parsing.fields import (
    input_from_url,
    input_of,
    maps,
    one_map,
    opt_str,
    req_str,
    strs,
    time,
)
from pipeline.parsing.load import Node, join
from pipeline.parsing.outputs import key
from pipeline.parsing.values import OutputObject

# Where a run's nodes live: the callback's and the query's one run, the list query's runs.
EXECUTION_KEYS: Final = ("WorkflowExecution", "WorkflowExecutionList")


def executions(root: Node) -> list[tuple[Node, str]]:
    """Every workflow run in a body (one object or a list, under either key), with its path."""
    found: list[tuple[Node, str]] = []
    for name in EXECUTION_KEYS:
        runs = maps(root, name, "")
        found += [(run, name if len(runs) == 1 else f"{name}[{i}]") for i, run in enumerate(runs)]
    return found


def workflow_event(wf: Node, path: str, *, source: str) -> WorkflowEvent:
    tasks = maps(wf, "Tasks", path)
    return WorkflowEvent(
        event=WORKFLOW_FINISH,
        run_id=req_str(wf, "RunId", path),
        workflow_id=opt_str(wf, "WorkflowId", path),
        workflow_name=opt_str(wf, "WorkflowName", path) or opt_str(wf, "Name", path),
        state=req_str(wf, "State", path),
        input=_run_input(wf, path),
        created_at=time(wf, "CreateTime", path) or time(wf, "CreationTime", path),
        tasks=tuple(_task(task, f"{path}.Tasks[{i}]") for i, task in enumerate(tasks)),
        source=source,
    )


def _run_input(wf: Node, path: str) -> InputObject | None:
    found = input_of((wf, path))
    url = input_from_url(found.key if found else None)
    if found is None or url is None:
        return found
    return InputObject(url.bucket, url.region, url.key, found.cos_headers)


def _task(task: Node, path: str) -> WorkflowTask:
    found: list[OutputObject] = []
    info = one_map(task, "ResultInfo", path)
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
