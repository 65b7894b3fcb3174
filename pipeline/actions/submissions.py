"""Resubmitting a job at most once: a claim per job and attempt, and CI asked before a
second try when the first one's answer was lost.

``resubmit`` claims ``cicb:resubmit:<JobId>:<attempt>`` before it calls CI. The claim says
what is known of the call: ``submitting`` (under way), ``unknown`` (sent, no readable answer:
a timeout, a connection cut, a garbled body), ``submitted`` (with the new job's id). A call CI
answered with an error created nothing: its claim is given back. A try that finds a claim it
did not make, or an ``unknown`` one, first looks for the job in CI's job list
(``find_submitted``): the same Tag, queue and input, created since the claim, with the same
template and ``UserData`` (CI may write the output's name back resolved: it is not
compared). A request with no ``UserData`` of its own carries a marker there (``marker``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import redis

from pipeline.actions.cos import as_list, ci_time

_PREFIX: Final = "cicb:resubmit:"
SUBMITTING, UNKNOWN, SUBMITTED = "submitting", "unknown", "submitted"
# A claim still "submitting" after this long belongs to a try that died mid-call: its
# outcome is unknown. Longer than the SDK's timeout (pipeline.actions.cos).
IN_FLIGHT_S: Final = 90.0
# How far before the claim CI's list is read: clocks differ, CI's times are to the second.
CLOCK_SLACK: Final = timedelta(minutes=5)
PAGE_SIZE: Final = 100
MAX_PAGES: Final = 10


def marker(job_id: str, attempt: int) -> str:
    """What a resubmission carries in ``Operation.UserData`` when the job had none."""
    return f"cicb-resubmit:{job_id}:{attempt}"


@dataclass(frozen=True, slots=True)
class Claim:
    """A claim found in Redis: its state, when it was made, and the new job if submitted."""

    state: str
    at: float
    job_id: str | None = None

    @property
    def age_s(self) -> float:
        return time.time() - self.at


class SubmissionClaims:
    """The claims, in Redis. Methods raise ``redis.RedisError``."""

    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self._client = client
        self._ttl_s = ttl_s

    def take(self, job_id: str, attempt: int) -> Claim | None:
        """Claim the submission of ``job_id``'s run ``attempt``; None if taken now, else the
        claim that was there."""
        key = f"{_PREFIX}{job_id}:{attempt}"
        value = json.dumps({"state": SUBMITTING, "at": time.time()})
        if self._client.set(key, value, nx=True, ex=self._ttl_s):
            return None
        raw = cast(bytes | None, self._client.get(key))
        if raw is None:  # given back meanwhile: take it now
            return self.take(job_id, attempt)
        found = json.loads(raw)
        return Claim(found["state"], float(found["at"]), found.get("job"))

    def set(self, job_id: str, attempt: int, state: str, *, new_job_id: str | None = None) -> None:
        """Say what became of the call (``at``: now, the time CI's list is read from)."""
        value: dict[str, Any] = {"state": state, "at": time.time()}
        if new_job_id is not None:
            value["job"] = new_job_id
        self._client.set(f"{_PREFIX}{job_id}:{attempt}", json.dumps(value), ex=self._ttl_s)

    def give_back(self, job_id: str, attempt: int) -> None:
        """CI answered with an error: nothing was created, the next try submits."""
        self._client.delete(f"{_PREFIX}{job_id}:{attempt}")


def find_submitted(
    client: Any, *, bucket: str, request: Mapping[str, Any], since: float
) -> str | None:
    """The id of a job in CI's list that ``request`` (``ci_create_media_jobs``'s ``Jobs``)
    created since ``since`` (a Unix time), or None. Raises what the SDK raises."""
    operation = request.get("Operation") or {}
    wanted = {
        "Input": request["Input"]["Object"],
        "TemplateId": operation.get("TemplateId"),
        "UserData": operation.get("UserData"),
    }
    start = datetime.fromtimestamp(since, UTC) - CLOCK_SLACK
    end = datetime.now(UTC) + CLOCK_SLACK
    token: Any = ""
    for _ in range(MAX_PAGES):
        answer = client.ci_list_media_jobs(
            Bucket=bucket,
            Tag=request["Tag"],
            QueueId=request.get("QueueId", ""),
            StartCreationTime=ci_time(start),
            EndCreationTime=ci_time(end),
            OrderByTime="Asc",
            States="All",
            Size=PAGE_SIZE,
            NextToken=token,
        )
        jobs = as_list(answer.get("JobsDetail")) if isinstance(answer, Mapping) else []
        for job in jobs:
            if _fields_of(job) == wanted and isinstance(job.get("JobId"), str):
                return str(job["JobId"])
        token = answer.get("NextToken") if isinstance(answer, Mapping) else None
        if not jobs or not isinstance(token, str) or not token:
            return None
    return None


def _fields_of(job: Mapping[str, Any]) -> dict[str, Any]:
    inputs = as_list(job.get("Input"))
    operations = as_list(job.get("Operation"))
    operation = operations[0] if operations else {}
    return {
        "Input": inputs[0].get("Object") if inputs else None,
        "TemplateId": operation.get("TemplateId"),
        "UserData": operation.get("UserData"),
    }
