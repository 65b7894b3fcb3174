"""CI's job and workflow lists, read through cos-python-sdk-v5 for the reconciler.

- ``jobs`` pages through ``ci_list_media_jobs`` (``GET /jobs``, 100 a page, by
  ``NextToken``) for one queue and Tag, oldest first, between two creation times;
- ``runs`` pages through ``ci_list_workflowexecution`` (``GET /workflowexecution``) for one
  workflow, and ``run`` reads one run with its nodes (``GET /workflowexecution/<RunId>``).

An empty page has no ``JobsDetail`` (or ``WorkflowExecutionList``) and ``NextToken`` None;
a page of one run holds a dict, not a list. Times go to CI as ``2001-01-01T00:00:00+0800``.

Errors, read from CI's ``<Error>`` body (the SDK's own digest needs a ``Resource`` node CI's
errors lack): a 4xx that a retry cannot fix (bad keys, no such queue or bucket) is
``CiRefused``; 5xx, 408, 429, throttling codes, timeouts, connection errors and unreadable
answers are ``CiUnavailable``, retried by the task with the usual backoff. The SDK itself
never retries (``DEFAULT_SDK_RETRIES``): the Celery task owns retries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Final

from qcloud_cos.cos_exception import CosClientError, CosServiceError

from pipeline.actions.cos import as_list, ci_time, cos_client, error_fields, is_transient
from pipeline.errors import ConfigError, PermanentError, TransientError
from pipeline.settings import Settings

# States CI calls back for; the others (Submitted, Running, Pause) may still change.
FINAL_STATES: Final = frozenset({"Success", "Failed", "Cancel"})
PAGE_SIZE: Final = 100  # the most CI gives in one page


class CiRefused(PermanentError):
    """CI refused the list request (a 4xx: bad keys, no such queue, bucket or workflow)."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"CI answered HTTP {status} {code}: {message[:300]}")


class CiUnavailable(TransientError):
    """CI or the network failed for now (5xx, throttling, timeout, connection, bad answer)."""

    def __init__(self, reason: str, *, status: int | None = None, code: str | None = None) -> None:
        self.reason = reason
        self.status = status
        self.code = code
        super().__init__(reason)


class CiJobs:
    """Lists of one CI account, through an SDK client per region (``client_for``)."""

    def __init__(self, client_for: Callable[[str], Any]) -> None:
        self._client_for = client_for

    @classmethod
    def from_settings(cls, settings: Settings) -> CiJobs:
        """Clients with ``CICB_COS_SECRET_ID``/``KEY``, at ``CICB_CI_ENDPOINT`` if set.

        Raises ``ConfigError`` without the keys or with a bad endpoint."""
        secret_id, secret_key = settings.cos_secret_id, settings.cos_secret_key
        if not (secret_id and secret_key):
            raise ConfigError("reconcile lists CI's jobs: set CICB_COS_SECRET_ID/SECRET_KEY")
        netloc, scheme = settings.ci_endpoint_parts or (None, "https")

        @functools.cache
        def client_for(region: str) -> Any:
            return cos_client(
                secret_id=secret_id,
                secret_key=secret_key,
                region=region,
                endpoint=netloc,
                scheme=scheme,
            )

        return cls(client_for)

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
        answer = _call(lambda: client.ci_get_workflowexecution(Bucket=bucket, RunId=run_id))
        runs = as_list(answer.get("WorkflowExecution")) if isinstance(answer, Mapping) else []
        return runs[0] if runs else None


def _pages(page: Callable[[str], Any], key: str) -> Iterator[dict[str, Any]]:
    token: Any = ""
    seen: set[str] = set()
    while True:
        answer = _call(functools.partial(page, token))
        if not isinstance(answer, Mapping):
            raise CiUnavailable(f"CI's list answer is not a document: {answer!r:.200}")
        items = as_list(answer.get(key))
        yield from items
        token = answer.get("NextToken")
        if not items or not token or not isinstance(token, str) or token in seen:
            return  # the last page; a token given twice would page forever
        seen.add(token)


def _call(request: Callable[[], Any]) -> Any:
    try:
        return request()
    except CosServiceError as exc:
        raise service_error(exc) from exc
    except CosClientError as exc:
        raise CiUnavailable(f"CI not reached: {exc}") from exc
    except SyntaxError as exc:  # ET.ParseError: a list can be asked for again
        raise CiUnavailable(f"CI's answer is unreadable: {exc}") from exc


def service_error(exc: CosServiceError) -> CiRefused | CiUnavailable:
    """The error a CI answer means: refused for good, or unavailable for now."""
    status = int(exc.get_status_code())
    code, message = error_fields(exc)
    if is_transient(status, code):
        return CiUnavailable(f"CI answered HTTP {status} {code}", status=status, code=code)
    return CiRefused(status, code, message)
