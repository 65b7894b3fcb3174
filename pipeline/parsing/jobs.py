"""One job (a ``JobsDetail`` node of a callback or of a job query answer) to its JobEvent.

CI is loose here, so two fields may be inferred, each logged when it is:

- ``State``, when missing, from ``Code``: ``Success`` is a success, any other code a
  failure (``parse_state_inferred``). Without either the job is refused.
- ``Tag``, when missing, from ``Operation.Tag`` (where CI's answers listing several jobs
  write it), else from the result node that names it (``PicProcessResult`` is a
  PicProcess job, ``parse_tag_inferred``); with none it stays None and the job is routed
  by its state.
"""

from __future__ import annotations

from typing import Final

from pipeline import logs
from pipeline.errors import ParseError
from pipeline.parsing.events import TASK_FINISH, JobEvent, WorkflowRef
from pipeline.parsing.fields import input_of, maps, one_map, opt_str, req_str, time
from pipeline.parsing.load import Node, join
from pipeline.parsing.outputs import outputs, result_tag, sub_failures

SUCCESS: Final = "Success"
FAILED: Final = "Failed"

log = logs.get_logger("cicb.parsing")


def job_event(job: Node, path: str, *, source: str) -> JobEvent:
    """The event of one job, whatever its state (a query answer's may be Running)."""
    job_id = req_str(job, "JobId", path)
    state = _state(job, job_id, path)
    op_path = join(path, "Operation")
    op = one_map(job, "Operation", path) or {}
    return JobEvent(
        event=TASK_FINISH,
        job_id=job_id,
        tag=_tag(job, op, job_id, path, op_path),
        sub_tag=opt_str(job, "SubTag", path),
        state=state,
        code=opt_str(job, "Code", path),
        # Tencent's Message on success is noise ("", "success", "done"...).
        message=None if state == SUCCESS else opt_str(job, "Message", path),
        queue_id=opt_str(job, "QueueId", path),
        created_at=time(job, "CreationTime", path),
        started_at=time(job, "StartTime", path),
        ended_at=time(job, "EndTime", path),
        input=input_of(
            (one_map(job, "Input", path), join(path, "Input")),
            (one_map(op, "Input", op_path), join(op_path, "Input")),
        ),
        outputs=outputs(op, state, op_path),
        workflow=_workflow_ref(job, path),
        user_data=opt_str(op, "UserData", op_path) or opt_str(job, "UserData", path),
        template_id=opt_str(op, "TemplateId", op_path),
        template_name=opt_str(op, "TemplateName", op_path),
        operation=op,
        sub_failures=sub_failures(op, op_path),
        source=source,
    )


def _state(job: Node, job_id: str, path: str) -> str:
    state = opt_str(job, "State", path)
    if state is not None:
        return state
    code = opt_str(job, "Code", path)
    if code is None:
        raise ParseError("missing (and no Code to infer it from)", path=join(path, "State"))
    state = SUCCESS if code == SUCCESS else FAILED
    log.info("parse_state_inferred", job_id=job_id, code=code, state=state)
    return state


def _tag(job: Node, op: Node, job_id: str, path: str, op_path: str) -> str | None:
    tag = opt_str(job, "Tag", path) or opt_str(op, "Tag", op_path)
    if tag is not None:
        return tag
    tag = result_tag(op)
    log.info("parse_tag_inferred", job_id=job_id, tag=tag)
    return tag


def _workflow_ref(job: Node, path: str) -> WorkflowRef | None:
    # The API documents Workflow as one-or-many; a job belongs to one run, so take the first.
    wf = one_map(job, "Workflow", path)
    if wf is None:
        return None
    wpath = join(path, "Workflow")
    return WorkflowRef(
        run_id=opt_str(wf, "RunId", wpath),
        workflow_id=opt_str(wf, "WorkflowId", wpath),
        workflow_name=opt_str(wf, "WorkflowName", wpath),
        name=opt_str(wf, "Name", wpath),
    )


def jobs(root: Node) -> list[tuple[Node, str]]:
    """The ``JobsDetail`` nodes of a body (one object or a list), each with its path."""
    return [(job, f"JobsDetail[{i}]") for i, job in enumerate(maps(root, "JobsDetail", ""))]
