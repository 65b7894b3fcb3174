"""Telling the answer of one of CI's job queries from a callback, by its shape.

The answers of ``DescribeMediaJob(s)``, ``DescribePicJob``, the batch job query, the
workflow execution queries and the image-auditing job query are read into the same events
as the callbacks, with ``source: "query"``. CI's callbacks name their event (EventName, or
``data.event`` for moderation), except some old job callbacks that send a bare
``JobsDetail`` of a finished job. So a body is a query answer when it names no event and:

- carries what only answers carry: ``RequestId``, ``NextToken``, ``NonExistJobIds``,
  ``WorkflowExecutionList``; or
- holds a ``WorkflowExecution`` (CI's workflow callbacks always name ``WorkflowFinish``); or
- holds a job that has not finished (``Submitted``, ``Running``): CI calls back only when
  a job ends.

Anything else is a callback. A caller that knows better (the reconciler, which asked)
passes ``source`` to ``parse`` instead.
"""

from __future__ import annotations

from typing import Final

from pipeline.parsing.load import Node
from pipeline.parsing.values import SOURCE_CALLBACK, SOURCE_QUERY

QUERY_MARKERS: Final = frozenset(
    {"RequestId", "NextToken", "NonExistJobIds", "WorkflowExecutionList"}
)
UNFINISHED_STATES: Final = frozenset({"Submitted", "Running"})


def source_of(root: Node) -> str:
    """``"query"`` or ``"callback"``, from the shape of a normalized body."""
    if "EventName" in root:
        return SOURCE_CALLBACK
    if QUERY_MARKERS & root.keys() or "WorkflowExecution" in root:
        return SOURCE_QUERY
    jobs = root.get("JobsDetail")
    for job in jobs if isinstance(jobs, list) else ():
        state = job.get("State") if isinstance(job, dict) else None
        # Only a string is a state; a wrong type is refused later, naming its path.
        if isinstance(state, str) and state in UNFINISHED_STATES:
            return SOURCE_QUERY
    return SOURCE_CALLBACK
