"""The built-in actions routes can chain: notify, copy_output, retry_job.

Each is a thin task over ``pipeline``: it receives the event as the JSON that crosses the
broker (``to_dict``), decodes it once with ``event_from_dict`` (a dict that is not an event
is a ``ParseError``, dead-lettered) and passes the typed event on. ``PipelineTask`` retries
transient errors with backoff and jitter and dead-letters the rest. Their settings are read
and checked when the worker starts, so a bad target, secret or template stops it with the
reason.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from pipeline import logs
from pipeline.actions.copying import COPIED, copy_outputs
from pipeline.actions.cos import cos_client
from pipeline.actions.notify import DELIVERED, FAILED, REFUSED, Delivery
from pipeline.actions.notify import notify as notify_targets
from pipeline.actions.resubmit import AttemptStore, decide, input_region, resubmit
from pipeline.actions.s3 import S3Client, s3_client
from pipeline.actions.targets import Target
from pipeline.attempts import redacted_answer
from pipeline.errors import ConfigError
from pipeline.logguard import secret_redactor
from pipeline.parsing.decoding import event_from_dict
from workers.app import app
from workers.attempts import note
from workers.base import PipelineTask, backoff_s, publishing
from workers.metrics import worker_metrics
from workers.resources import resources

log = logs.get_logger("cicb.actions")

# Objects an attempt record lists of a copy (it counts them all).
MAX_NOTED_OBJECTS = 20
RESUBMIT_NAMESPACE = uuid.UUID("5f0d8a52-7c1e-4b8e-9a51-2e6f3b7d1c04")


@functools.cache
def http_client() -> httpx.Client:
    return httpx.Client(timeout=resources().settings.notify_timeout_s, follow_redirects=False)


@functools.cache
def s3_for(region: str | None) -> S3Client:
    return s3_client(region, endpoint_url=resources().settings.s3_endpoint_url)


@functools.cache
def attempt_store() -> AttemptStore:
    client = resources().client
    if client is None:
        raise ConfigError("retry_job keeps attempt counts in Redis: set CICB_REDIS_URL")
    return AttemptStore(client)


def ci_client(region: str) -> Any:
    """The COS SDK client for CI in ``region`` (or at ``CICB_CI_ENDPOINT``)."""
    settings = resources().settings
    if not (settings.cos_secret_id and settings.cos_secret_key):
        raise ConfigError("retry_job is not configured: set CICB_COS_SECRET_ID/SECRET_KEY")
    netloc, scheme = settings.ci_endpoint_parts or (None, "https")
    return cos_client(
        secret_id=settings.cos_secret_id,
        secret_key=settings.cos_secret_key,
        region=region,
        endpoint=netloc,
        scheme=scheme,
    )


@functools.cache
def settings_redactor() -> Callable[[str], str]:
    return secret_redactor(resources().settings)


def redactor(target: Target) -> Callable[[str], str]:
    """What hides a target's secrets (``Target.secrets``) and the settings' in its answer."""
    own = target.secrets()
    redact_settings = settings_redactor()

    def redact(text: str) -> str:
        for secret in own:
            text = text.replace(secret, "***")
        return redact_settings(text)

    return redact


def delivery_code(delivery: Delivery) -> str:
    """The status code a target answered, or ``timeout``/``network`` when it did not."""
    if delivery.status is not None:
        return str(delivery.status)
    return "timeout" if (delivery.error or "").startswith("timed out") else "network"


def tried(deliveries: list[Delivery], *, retries_left: bool) -> list[dict[str, Any]]:
    """The attempt record's entry of each target tried: which, what it answered, how fast,
    and whether it will be tried again (it failed for now, none refused, retries remain)."""
    again = retries_left and not any(d.result == REFUSED for d in deliveries)
    return [
        {
            "target": d.target.describe(),
            "result": d.result,
            "status": d.status,
            "error": d.error,
            "seconds": round(d.seconds, 4),
            "answer": redacted_answer(d.answer, redactor(d.target)),
            "may_have_arrived": d.may_have_arrived,
            "retried": again and d.result == FAILED,
        }
        for d in deliveries
    ]


@app.task(base=PipelineTask, bind=True, name="cicb.notify")
def notify(self: PipelineTask, event: dict[str, Any], pending: list[str] | None = None) -> int:
    """Notify ``CICB_NOTIFY_URLS`` of the event (on a retry or replay, the targets pending)."""
    logs.bind_event(event)
    decoded = event_from_dict(event)
    res = resources()
    targets = res.notify_targets
    if pending is not None:
        targets = tuple(t for t in res.notify_targets if t.id in pending)
        if gone := set(pending) - {t.id for t in targets}:
            log.warning("notify.targets_gone", target_ids=sorted(gone))
    if not targets:
        log.warning("notify.no_targets")
        return 0
    metrics = worker_metrics()
    deliveries: list[Delivery] = []

    def count(delivery: Delivery) -> None:
        kind = delivery.target.kind
        metrics.notifications.labels(kind, delivery.result).inc()
        metrics.notification_seconds.labels(kind).observe(delivery.seconds)
        metrics.notification_status.labels(kind, delivery_code(delivery)).inc()
        deliveries.append(delivery)
        if delivery.result != DELIVERED:
            log.warning(
                "notify.not_delivered",
                target=delivery.target.describe(),
                result=delivery.result,
                status=delivery.status,
                error=delivery.error,
                may_have_arrived=delivery.may_have_arrived,
            )

    # Targets failing for now raise TargetsPending: the task base retries only them.
    try:
        notify_targets(
            http_client(), targets, decoded, webhook_key=res.webhook_key, on_result=count
        )
    finally:
        left = self.request.retries < res.settings.max_retries
        note(targets=tried(deliveries, retries_left=left))
    log.info("notified", targets=[t.describe() for t in targets])
    return len(targets)


@app.task(base=PipelineTask, name="cicb.copy_output")
def copy_output(event: dict[str, Any]) -> list[dict[str, Any]]:
    """Copy the event's outputs to ``CICB_COPY_DEST``, server side; skip what is already there."""
    logs.bind_event(event)
    decoded = event_from_dict(event)
    target = resources().copy_target
    if target is None:
        raise ConfigError("copy_output is not configured: set CICB_COPY_DEST")
    copies = copy_outputs(decoded, target=target, client_for=s3_for)
    metrics = worker_metrics()
    for copy in copies:
        copied = copy.status == COPIED
        metrics.copied_objects.labels("copied" if copied else "skipped").inc()
        if copied:
            metrics.copied_bytes.inc(copy.size_bytes)
    results = [c.to_dict() for c in copies]
    done = [c for c in copies if c.status == COPIED]
    note(
        copied=len(done),
        skipped=len(copies) - len(done),
        copied_bytes=sum(c.size_bytes for c in done),
        objects=results[:MAX_NOTED_OBJECTS],
    )
    log.info("outputs_copied", copies=results)
    return results


@app.task(base=PipelineTask, name="cicb.retry_job")
def retry_job(event: dict[str, Any]) -> str:
    """Resubmit a Failed job after a backoff, or give up (dead letter) with the reason."""
    logs.bind_event(event)
    decoded = event_from_dict(event)
    res = resources()
    decision = decide(
        decoded,
        attempts=attempt_store(),
        max_attempts=res.settings.retry_max_attempts,
        never_codes=res.never_retry_codes,
    )
    note(decision=decision.reason)
    if decision.gave_up:
        worker_metrics().resubmissions.labels("gave_up").inc()
        note(gave_up=True)
        raise decision.error()
    if not decision.resubmit:
        return decision.reason
    delay_s = backoff_s(decision.attempt - 1, res.settings)
    # One task id per job and attempt: a retry_job run twice (its worker died after this)
    # sends the same message again, which its completion record makes a no-op.
    task_id = str(uuid.uuid5(RESUBMIT_NAMESPACE, f"{decoded.job_id}|{decision.next_attempt}"))
    with publishing(f"resubmission of {decoded.job_id} not scheduled"):
        resubmit_job.apply_async(
            (event,), {"attempt": decision.next_attempt}, countdown=delay_s, task_id=task_id
        )
    note(
        next_attempt=decision.next_attempt,
        resubmit_in_s=round(delay_s, 3),
        resubmit_task_id=task_id,
    )
    log.info("job_resubmit_scheduled", attempt=decision.next_attempt, delay_s=delay_s)
    return decision.reason


@app.task(base=PipelineTask, name="cicb.resubmit_job")
def resubmit_job(event: dict[str, Any], attempt: int) -> str:
    """Submit the job again through CI's API as run number ``attempt``; return the new id."""
    logs.bind_event(event)
    decoded = event_from_dict(event)
    client = ci_client(input_region(decoded))
    new_job_id = resubmit(decoded, client=client, attempts=attempt_store(), attempt=attempt)
    worker_metrics().resubmissions.labels("resubmitted").inc()
    note(new_job_id=new_job_id)
    log.info("job_resubmitted", attempt=attempt, new_job_id=new_job_id)
    return new_job_id
