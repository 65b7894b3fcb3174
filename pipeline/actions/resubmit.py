"""The ``retry_job`` action: resubmit a Failed CI job through the official SDK.

The request is rebuilt from the callback (``build_job_request``), the attempt count travels
with the job through Redis (``AttemptStore``: the resubmitted job's own callback knows it is
attempt 2), ``decide`` says whether to try again, and ``resubmit`` calls CI's submit-job API
(``POST /jobs`` on ``<bucket>.ci.<region>.myqcloud.com``) with ``ci_create_media_jobs``, at
most once per job and attempt (``pipeline.actions.submissions``: a claim before the call, and
CI's job list read before a second try whose first one's answer was lost).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import redis
from qcloud_cos import CosS3Client
from qcloud_cos.cos_comm import format_bucket
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from pipeline.actions.cos import error_fields, is_transient
from pipeline.actions.submissions import (
    IN_FLIGHT_S,
    SUBMITTED,
    SUBMITTING,
    UNKNOWN,
    Claim,
    SubmissionClaims,
    find_submitted,
    marker,
)
from pipeline.errors import ConfigError, PermanentError, TransientError
from pipeline.parsing.events import Event, JobEvent

DEFAULT_MAX_ATTEMPTS: Final = 2
DEFAULT_ATTEMPT_TTL_S: Final = 7 * 24 * 3600

# Failures a second run of the same request cannot fix: the input object or the request is
# wrong. CI's input errors first; then CI/COS request errors; then the input errors of
# Tencent's media processing family. A code also matches its dotted sub-codes (``InvalidInput``
# covers ``InvalidInput.DefinitionNotExist``). CICB_RETRY_NEVER_CODES replaces the set.
DEFAULT_NEVER_RETRY_CODES: Final = frozenset(
    {"InputFileNotExist", "InputFormatError", "InvalidParameter"}
    | {"InvalidArgument", "MalformedXML", "NoSuchKey", "NoSuchBucket"}
    | {"InvalidInput", "SourceFileError"}
)

# Operation nodes that are the job's results, never its parameters; so is any node whose
# name ends in "Result" (PicProcessResult, SpeechRecognitionResult, VideoTagResult...).
RESULT_NODES: Final = frozenset({"MediaInfo", "MediaResult", "TemplateName"})
# A sub-operation that carries a State is a step CI ran and reported on (DigitalWatermark
# with State Failed): these fields, and its Message, are its report, not its parameters.
STEP_REPORT_FIELDS: Final = frozenset({"State", "Code", "ErrCode", "ErrMsg", "ErrorMessage"})
# ...but a DigitalWatermark's Message is the text to embed: a parameter, kept.
MESSAGE_IS_PARAMETER: Final = frozenset({"DigitalWatermark"})
# ExtractDigitalWatermark's Message is the watermark it found, with or without a State.
MESSAGE_IS_RESULT: Final = frozenset({"ExtractDigitalWatermark"})
# Statuses and codes that mean "busy now", not "refused".
_KEY_PREFIX: Final = "cicb:attempts:"
_RESUBMITTED_PREFIX: Final = "cicb:resubmitted:"

Outcome = Literal["resubmit", "not_failed", "never_retry", "exhausted"]


class NotResubmittable(PermanentError):
    """The event cannot be turned into a submit-job request (no job, no input object)."""

    def __init__(self, job_id: str | None, reason: str) -> None:
        self.job_id = job_id
        self.reason = reason
        super().__init__(f"job {job_id}: {reason}")


class GaveUp(PermanentError):
    """A Failed job is not resubmitted again: dead-letter and notify its final failure."""

    def __init__(self, job_id: str, *, attempts: int, code: str | None, reason: str) -> None:
        self.job_id = job_id
        self.attempts = attempts
        self.code = code
        self.reason = reason
        super().__init__(f"job {job_id}: gave up after {attempts} attempt(s): {reason}")


class ResubmitRejected(PermanentError):
    """CI refused the request (a 4xx), or accepted it with an answer naming no job."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"CI answered HTTP {status} {code}: {message[:300]}")


class ResubmitFailed(TransientError):
    """CI or the network failed for now (5xx, throttling, timeout, connection refused)."""

    def __init__(self, reason: str, *, status: int | None = None, code: str | None = None) -> None:
        self.reason = reason
        self.status = status
        self.code = code
        super().__init__(reason)


class AttemptStoreUnavailable(TransientError):
    """Redis did not answer; the attempt count is unknown, so nothing is submitted."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a job callback. ``attempt`` is the run the callback reports (1: the
    original job); ``next_attempt`` is set only when the outcome is ``resubmit``."""

    outcome: Outcome
    job_id: str
    attempt: int
    code: str | None
    reason: str
    next_attempt: int | None = None

    @property
    def resubmit(self) -> bool:
        return self.outcome == "resubmit"

    @property
    def gave_up(self) -> bool:
        """A Failed job that stays failed (never-retry code or attempts used up)."""
        return self.outcome in ("never_retry", "exhausted")

    def error(self) -> GaveUp:
        return GaveUp(self.job_id, attempts=self.attempt, code=self.code, reason=self.reason)


class AttemptStore:
    """Attempt numbers of jobs this action submitted, in Redis: ``cicb:attempts:<job_id>``.

    A job cicb never resubmitted is attempt 1. ``cicb:resubmitted:<job_id>`` remembers the
    job that replaced a failed one, so a duplicate callback or a task retry after the submit
    returns that job instead of creating another.
    """

    def __init__(self, client: redis.Redis, *, ttl_s: int = DEFAULT_ATTEMPT_TTL_S) -> None:
        self._client = client
        self._claims = SubmissionClaims(client, ttl_s=ttl_s)

    def attempt_of(self, job_id: str) -> int:
        value = self._get(_KEY_PREFIX + job_id)
        return int(value) if value is not None else 1

    def resubmitted_as(self, job_id: str) -> str | None:
        value = self._get(_RESUBMITTED_PREFIX + job_id)
        return value.decode() if value is not None else None

    def record(
        self, new_job_id: str, attempt: int, ttl_s: int, *, resubmitted_from: str | None = None
    ) -> None:
        """Remember that ``new_job_id`` is run number ``attempt``, for ``ttl_s`` seconds."""
        try:
            with self._client.pipeline(transaction=True) as pipe:
                pipe.set(_KEY_PREFIX + new_job_id, attempt, ex=ttl_s)
                if resubmitted_from is not None:
                    pipe.set(_RESUBMITTED_PREFIX + resubmitted_from, new_job_id, ex=ttl_s)
                    SubmissionClaims(pipe, ttl_s=ttl_s).set(
                        resubmitted_from, attempt, SUBMITTED, new_job_id=new_job_id
                    )
                pipe.execute()
        except redis.RedisError as exc:
            raise AttemptStoreUnavailable(f"recording attempt of {new_job_id}: {exc}") from exc

    def claim(self, job_id: str, attempt: int) -> Claim | None:
        """Claim the resubmission of ``job_id`` as run ``attempt`` (``SubmissionClaims``)."""
        try:
            return self._claims.take(job_id, attempt)
        except redis.RedisError as exc:
            raise AttemptStoreUnavailable(f"claiming {job_id}:{attempt}: {exc}") from exc

    def claimed(self, job_id: str, attempt: int, state: str) -> None:
        try:
            self._claims.set(job_id, attempt, state)
        except redis.RedisError as exc:
            raise AttemptStoreUnavailable(f"claim of {job_id}:{attempt}: {exc}") from exc

    def give_back(self, job_id: str, attempt: int) -> None:
        try:
            self._claims.give_back(job_id, attempt)
        except redis.RedisError as exc:
            raise AttemptStoreUnavailable(f"claim of {job_id}:{attempt}: {exc}") from exc

    def _get(self, key: str) -> bytes | None:
        try:
            return cast(bytes | None, self._client.get(key))
        except redis.RedisError as exc:
            raise AttemptStoreUnavailable(f"reading {key}: {exc}") from exc


def job_of(event: Event) -> JobEvent:
    """``event`` if it is a job's callback naming its Tag; raises NotResubmittable."""
    if not isinstance(event, JobEvent):
        raise NotResubmittable(event.job_id, f"not a job callback: {event.event!r}")
    if not event.tag:  # CI's submit-job API requires one
        raise NotResubmittable(event.job_id, "the callback names no Tag")
    return event


def input_region(event: Event) -> str:
    """The region of the job's input bucket, where CI runs it; raises NotResubmittable."""
    job = job_of(event)
    region = job.input.region if job.input else None
    if not region:
        raise NotResubmittable(job.job_id, "the callback names no input region")
    return region


def build_job_request(event: Event) -> dict[str, Any]:
    """The ``Jobs`` dict of ``ci_create_media_jobs`` that runs the callback's job again.

    Tag, ``Input.Object`` (the input key), the Operation minus its results (``RESULT_NODES``
    and the reports of the steps CI ran, see ``STEP_REPORT_FIELDS``) and QueueId; the
    queue's callback settings apply to the new job. A workflow's job is resubmitted as a
    standalone job: the workflow's later nodes do not run again. Raises NotResubmittable.
    """
    job = job_of(event)
    key = job.input.key if job.input else None
    if not key:
        raise NotResubmittable(job.job_id, "the callback names no input object")
    request: dict[str, Any] = {"Tag": job.tag, "Input": {"Object": key}}
    request["Operation"] = _operation(job.operation)
    if job.queue_id:
        request["QueueId"] = job.queue_id
    return request


def _operation(operation: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in operation.items():
        if name in RESULT_NODES or name.endswith("Result"):
            continue
        if isinstance(value, list):
            out[name] = [_parameters(name, v) if isinstance(v, Mapping) else v for v in value]
        else:
            out[name] = _parameters(name, value) if isinstance(value, Mapping) else value
    return copy.deepcopy(out)


def _parameters(name: str, node: Mapping[str, Any]) -> dict[str, Any]:
    """A sub-operation without the fields CI filled in when it ran."""
    drop: set[str] = set()
    if "State" in node:
        drop |= STEP_REPORT_FIELDS
        if name not in MESSAGE_IS_PARAMETER:
            drop.add("Message")  # the step's own message, like the job's
    if name in MESSAGE_IS_RESULT:
        drop.add("Message")
    return {k: v for k, v in node.items() if k not in drop}


def decide(
    event: Event,
    *,
    attempts: AttemptStore,
    max_attempts: int,
    never_codes: frozenset[str],
) -> Decision:
    """Resubmit a Failed job (with the next attempt number) or say why not.

    Not Failed: nothing to do. A code in ``never_codes`` (or a dotted sub-code of one), or
    ``max_attempts`` runs already made: give up. Reads the attempt count from ``attempts``.
    Raises NotResubmittable for an event that is not a job's.
    """
    if max_attempts < 1:
        raise ConfigError(f"CICB_RETRY_MAX_ATTEMPTS must be at least 1, got {max_attempts}")
    job = job_of(event)
    state, code = job.state, job.code
    attempt = attempts.attempt_of(job.job_id)

    def decision(outcome: Outcome, reason: str, next_attempt: int | None = None) -> Decision:
        return Decision(outcome, job.job_id, attempt, code, reason, next_attempt)

    if state != "Failed":
        return decision("not_failed", f"state is {state}, not Failed")
    if code is not None and _matches(code, never_codes):
        return decision("never_retry", f"code {code} is never retried: {job.message}")
    if attempt >= max_attempts:
        return decision("exhausted", f"{attempt} of {max_attempts} attempt(s) used: {code}")
    return decision("resubmit", f"attempt {attempt} failed: {code}", attempt + 1)


def _matches(code: str, codes: frozenset[str]) -> bool:
    return code in codes or any(code.startswith(c + ".") for c in codes)


def resubmit(
    event: Event,
    *,
    client: CosS3Client,
    attempts: AttemptStore,
    attempt: int,
    ttl_s: int = DEFAULT_ATTEMPT_TTL_S,
) -> str:
    """Submit the event's job again as run number ``attempt``; return the new job's id.

    ``client`` must be for the input bucket's region (``cos_client``). At most one job is
    created per job and attempt: if this job was already resubmitted (a duplicate callback,
    a retry of this task) that job's id is returned; if an earlier try's answer was lost,
    CI's job list is read first and a job found there is returned. A request with no
    ``UserData`` carries the marker ``cicb-resubmit:<JobId>:<attempt>`` in it. Raises
    ResubmitFailed (retry), ResubmitRejected or NotResubmittable (dead letter),
    AttemptStoreUnavailable (retry).
    """
    job = job_of(event)
    jobs = build_job_request(job)
    old_job_id = job.job_id
    if not jobs["Operation"].get("UserData"):
        jobs["Operation"]["UserData"] = marker(old_job_id, attempt)
    previous = attempts.resubmitted_as(old_job_id)
    if previous is not None:
        return previous
    bucket = job.input.bucket if job.input else None
    try:
        format_bucket(bucket, None)
    except CosClientError as exc:
        raise NotResubmittable(old_job_id, f"bad input bucket {bucket!r}: {exc}") from exc
    assert bucket is not None
    claim = attempts.claim(old_job_id, attempt)
    if claim is not None:
        # Another try made this claim: it is under way, or its answer was lost.
        found = claim.job_id or _look_up(client, bucket, jobs, since=claim.at)
        if found is not None:
            attempts.record(found, attempt, ttl_s, resubmitted_from=old_job_id)
            return found
        if claim.state == SUBMITTING and claim.age_s < IN_FLIGHT_S:
            raise ResubmitFailed(f"job {old_job_id}: a resubmission is under way")
        attempts.claimed(old_job_id, attempt, SUBMITTING)  # CI has none: submit it now
    try:
        answer = client.ci_create_media_jobs(
            Bucket=bucket, Jobs=jobs, Lst={}, ContentType="application/xml"
        )
    except CosServiceError as exc:
        attempts.give_back(old_job_id, attempt)  # CI answered: it created nothing
        raise _service_error(exc) from exc
    except (CosClientError, SyntaxError) as exc:
        # Not reached, or sent and its answer lost or unreadable (SyntaxError: ET.ParseError,
        # or the SDK's eval of the parsed answer): CI may have created the job. The next
        # try reads CI's job list before it submits again.
        attempts.claimed(old_job_id, attempt, UNKNOWN)
        raise ResubmitFailed(f"CI's answer was lost ({exc}); CI is asked before a new try") from exc
    new_job_id = _job_id_of(answer)
    attempts.record(new_job_id, attempt, ttl_s, resubmitted_from=old_job_id)
    return new_job_id


def _look_up(client: CosS3Client, bucket: str, jobs: dict[str, Any], *, since: float) -> str | None:
    """A job an earlier try created, from CI's job list; raises ResubmitFailed."""
    try:
        return find_submitted(client, bucket=bucket, request=jobs, since=since)
    except CosServiceError as exc:
        error = _service_error(exc)
        raise ResubmitFailed(f"cannot read CI's job list: {error}", status=error.status) from exc
    except (CosClientError, SyntaxError) as exc:
        raise ResubmitFailed(f"cannot read CI's job list: {exc}") from exc


def _service_error(exc: CosServiceError) -> ResubmitFailed | ResubmitRejected:
    status = int(exc.get_status_code())
    code, message = error_fields(exc)
    if is_transient(status, code):
        return ResubmitFailed(f"CI answered HTTP {status} {code}", status=status, code=code)
    return ResubmitRejected(status, code, message)


def _job_id_of(answer: Any) -> str:
    details = answer.get("JobsDetail") if isinstance(answer, Mapping) else None
    first = details[0] if isinstance(details, list) and details else None
    job_id = first.get("JobId") if isinstance(first, Mapping) else None
    if not isinstance(job_id, str) or not job_id:
        raise ResubmitRejected(200, None, f"no JobsDetail.JobId in the answer: {answer!r:.300}")
    return job_id
