"""CI's job and workflow lists, read through cos-python-sdk-v5 for the reconciler.

- ``jobs`` pages through ``ci_list_media_jobs`` (``GET /jobs``, 100 a page, by
  ``NextToken``) for one queue and Tag, oldest first, between two creation times;
- ``runs`` pages through ``ci_list_workflowexecution`` (``GET /workflowexecution``) for one
  workflow, and ``run`` reads one run with its nodes (``GET /workflowexecution/<RunId>``).

An empty page has no ``JobsDetail`` (or ``WorkflowExecutionList``) and ``NextToken`` None;
a page of one run holds a dict, not a list. Times go to CI as ``2001-01-01T00:00:00+0800``.

Errors are ``pipeline.actions.cos.ci_call``'s: ``CiRefused`` (a 4xx a retry cannot fix) and
``CiUnavailable`` (retried by the task with the usual backoff). The SDK itself never retries
(``DEFAULT_SDK_RETRIES``): the Celery task owns retries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Final

from pipeline.actions.cos import (
    CiRefused,
    CiUnavailable,
    as_list,
    ci_call,
    ci_clients,
    ci_time,
)
from pipeline.settings import Settings

__all__ = ["FINAL_STATES", "PAGE_SIZE", "CiJobs", "CiRefused", "CiUnavailable"]

# States CI calls back for; the others (Submitted, Running, Pause) may still change.
FINAL_STATES: Final = frozenset({"Success", "Failed", "Cancel"})
PAGE_SIZE: Final = 100  # the most CI gives in one page


class CiJobs:
    """Lists of one CI account, through an SDK client per region (``client_for``)."""

    def __init__(self, client_for: Callable[[str], Any]) -> None:
        self._client_for = client_for

    @classmethod
    def from_settings(cls, settings: Settings) -> CiJobs:
        """Clients with ``CICB_COS_SECRET_ID``/``KEY``, at ``CICB_CI_ENDPOINT`` if set.

        Raises ``ConfigError`` without the keys or with a bad endpoint."""
        return cls(ci_clients(settings, purpose="reconcile lists CI's jobs"))

    def jobs(
        self, *, bucket: str, region: str, queue_id: str, tag: str, start: datetime, end: datetime
    ) -> Iterator[dict[str, Any]]:
        """The jobs of ``queue_id`` with ``tag`` created between ``start`` and ``end``,
        oldest first, in every state, as the SDK reads them. Raises CiRefused, CiUnavailable.
        """
        client = self._client_for(region)

        def page(token: str) -> Any:
            return client.ci_list_media_jobs(
                Bucket=bucket,
                Tag=tag,
                QueueId=queue_id,
                StartCreationTime=ci_time(start),
                EndCreationTime=ci_time(end),
                OrderByTime="Asc",
                States="All",
                Size=PAGE_SIZE,
                NextToken=token,
            )

        return _pages(page, "JobsDetail")

    def runs(
        self, *, bucket: str, region: str, workflow_id: str, start: datetime, end: datetime
    ) -> Iterator[dict[str, Any]]:
        """The runs of ``workflow_id`` created between ``start`` and ``end``, oldest first,
        as the list gives them (``RunId``, ``State``, ``CreationTime``, no nodes)."""
        client = self._client_for(region)

        def page(token: str) -> Any:
            return client.ci_list_workflowexecution(
                Bucket=bucket,
                WorkflowId=workflow_id,
                StartCreationTime=ci_time(start),
                EndCreationTime=ci_time(end),
                OrderByTime="Asc",
                States="All",
                Size=PAGE_SIZE,
                NextToken=token,
            )

        return _pages(page, "WorkflowExecutionList")

    def run(self, *, bucket: str, region: str, run_id: str) -> dict[str, Any] | None:
        """One run with its nodes (``Tasks``), or None if CI's answer holds none."""
        client = self._client_for(region)
        answer = ci_call(lambda: client.ci_get_workflowexecution(Bucket=bucket, RunId=run_id))
        runs = as_list(answer.get("WorkflowExecution")) if isinstance(answer, Mapping) else []
        return runs[0] if runs else None


def _pages(page: Callable[[str], Any], key: str) -> Iterator[dict[str, Any]]:
    token: Any = ""
    seen: set[str] = set()
    while True:
        answer = ci_call(functools.partial(page, token))
        if not isinstance(answer, Mapping):
            raise CiUnavailable(f"CI's list answer is not a document: {answer!r:.200}")
        items = as_list(answer.get(key))
        yield from items
        token = answer.get("NextToken")
        if not items or not token or not isinstance(token, str) or token in seen:
            return  # the last page; a token given twice would page forever
        seen.add(token)
