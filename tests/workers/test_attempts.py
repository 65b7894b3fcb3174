"""Every run of a route's step leaves an attempt record, read back as an operator does, with
``cicb attempts``: the worker tier's real worker, Valkey and HTTP targets, which sign, refuse,
stall and answer as told."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

from click.testing import CliRunner
from standardwebhooks.webhooks import Webhook

from pipeline.actions.targets import Target
from pipeline.cli import main as cicb
from tests.support import logged, wait_until
from tests.workers.conftest import Tier


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def attempts(ident: str) -> dict[str, Any]:
    result = CliRunner().invoke(cicb, ["attempts", ident, "--json"])
    assert result.exit_code == 0, result.output
    shown: dict[str, Any] = json.loads(result.output)
    return shown


def notify_step(job_id: str) -> dict[str, Any]:
    [job] = attempts(job_id)["jobs"]
    [step] = [s for s in job["steps"] if s["task"] == "cicb.notify"]
    return step


def target_of(attempt: dict[str, Any], url: str) -> dict[str, Any]:
    [tried] = [
        t for t in attempt["detail"]["targets"] if t["target"] == Target.parse(url).describe()
    ]
    return tried


def test_every_notification_attempt_is_signed_as_standard_webhooks_verifies(tier: Tier) -> None:
    tier.targets.reply("/b", (503, {}))
    tier.ingest(tier.callback("jsigned"))
    tier.idle()
    verifier = Webhook(os.environ["CICB_NOTIFY_SECRET"])
    sent = tier.targets.requests("/a") + tier.targets.requests("/b")
    assert len(sent) == 3  # /a once, /b refused once then accepted
    for request in sent:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["webhook-signature"].startswith("v1,")
        assert verifier.verify(request["body"], headers)["job_id"] == "jsigned"


def test_a_notification_refused_once_then_accepted_gives_two_attempts_with_the_answers(
    tier: Tier,
) -> None:
    a, b = tier.targets.urls
    tier.targets.reply_with("/b", 503, body=b"busy: try again later")
    tier.targets.reply_with("/b", 200, body=b'{"received": true}')
    tier.ingest(tier.callback("jonce"))
    tier.idle()
    step = notify_step("jonce")
    assert (step["route"], step["step"], step["state"]) == ("job-succeeded", 0, "done")
    second, first = step["attempts"]  # newest first
    assert (first["attempt"], first["outcome"], first["error"]) == (1, "retried", "TargetsPending")
    # Full jitter: anything up to the tier's first backoff (1 s), never over its cap (2 s).
    assert 0 <= first["wait_s"] <= 2
    assert first["due_at"] >= first["ended_at"]
    refused = target_of(first, b)
    assert (refused["status"], refused["answer"], refused["retried"]) == (
        503,
        "busy: try again later",
        True,
    )
    assert (target_of(first, a)["status"], target_of(first, a)["retried"]) == (200, False)
    assert (second["attempt"], second["outcome"], second["error"]) == (2, "done", None)
    [accepted] = second["detail"]["targets"]  # only the pending target is tried again
    assert accepted["target"] == Target.parse(b).describe()
    assert (accepted["status"], accepted["answer"]) == (200, '{"received": true}')
    # The retry ran when it was due, not before.
    late_s = (at(second["started_at"]) - at(first["due_at"])).total_seconds()
    assert late_s > -0.5
    assert all(0 <= t["seconds"] < 2 for t in first["detail"]["targets"])
    assert tier.counts("cicb_notification_status_total", "code") == {"200": 2, "503": 1}
    assert tier.count("cicb_notification_seconds_count", kind="webhook") == 3


def test_a_target_that_times_out_gives_the_error(tier: Tier) -> None:
    _, b = tier.targets.urls
    tier.targets.reply_with("/b", 200, body=b"too late", stall_s=3)  # CICB_NOTIFY_TIMEOUT_S=2
    with logged("cicb.actions") as lines:
        tier.ingest(tier.callback("jslow"))
        tier.idle(timeout_s=30)
    [lost] = [e for e in lines.named("notify.not_delivered") if e.get("job_id") == "jslow"]
    assert (lost["task"], lost["target"], lost["error"], lost["may_have_arrived"]) == (
        "cicb.notify",
        Target.parse(b).describe(),
        "timed out (ReadTimeout)",
        True,
    )
    second, first = notify_step("jslow")["attempts"]
    slow = target_of(first, b)
    assert (slow["status"], slow["error"], slow["answer"]) == (None, "timed out (ReadTimeout)", "")
    assert slow["may_have_arrived"] is True  # it did: the target took it, then stalled
    assert 2 <= slow["seconds"] < 3
    assert slow["retried"] is True
    assert target_of(second, b)["status"] == 200
    assert tier.count("cicb_notification_status_total", kind="webhook", code="timeout") == 1


def test_a_step_between_retries_shows_its_wait(tier: Tier) -> None:
    tier.targets.reply("/b", (503, {"Retry-After": "2"}))
    tier.ingest(tier.callback("jwaiting"))

    def waiting() -> dict[str, Any] | None:
        job = attempts("jwaiting")["jobs"][0]
        found = [s for s in job["steps"] if s["waiting_until"]]
        return found[0] if found else None

    step = wait_until(waiting, timeout_s=10, what="the step waiting")
    [attempt] = step["attempts"]
    assert (step["state"], attempt["outcome"]) == ("retried", "retried")
    assert attempt["wait_s"] == 2
    assert step["waiting_until"] == attempt["due_at"]
    text = CliRunner().invoke(cicb, ["attempts", "jwaiting"]).output
    tier.idle()
    assert "retried (next in 2.0 s)" in text and "retry due" in text
    done = notify_step("jwaiting")
    assert (done["state"], done["waiting_until"]) == ("done", None)


def test_a_replayed_dead_letter_keeps_its_route(tier: Tier) -> None:
    tier.targets.reply("/b", (404, {}))
    tier.ingest(tier.callback("jreplayed"))
    [letter] = tier.wait_for_dead_letters(1)
    tier.idle()
    assert letter.headers is not None
    assert letter.headers["cicb_route"] == "job-succeeded"
    assert letter.headers["cicb_last_step"] is True
    assert tier.count("cicb_callback_latency_seconds_count", route="job-succeeded") == 0
    result = CliRunner().invoke(cicb, ["dlq", "replay", letter.id])
    assert result.exit_code == 0, result.output
    tier.idle()
    assert (
        tier.count("cicb_tasks_total", task="cicb.notify", route="job-succeeded", outcome="done")
        == 1
    )
    assert tier.count("cicb_tasks_total", task="cicb.notify", route="", outcome="done") == 0
    assert tier.count("cicb_callback_latency_seconds_count", route="job-succeeded") == 1
    # The replay's run is one more attempt of the same step.
    step = notify_step("jreplayed")
    assert [a["outcome"] for a in step["attempts"]] == ["done", "dead_lettered"]
    assert step["attempts"][0]["task_id"] != step["attempts"][1]["task_id"]


def test_a_callbacks_attempts_by_its_archive_id_and_in_archive_show(tier: Tier) -> None:
    tier.targets.reply_with("/a", 500, body=b"oops")
    tier.ingest(tier.callback("jarchived"))
    tier.idle()
    listed = CliRunner().invoke(cicb, ["archive", "list", "--job-id", "jarchived", "--json"])
    [entry] = json.loads(listed.output)["entries"]
    [job] = attempts(entry["id"])["jobs"]
    assert job["job_id"] == "jarchived"
    [step] = job["steps"]
    assert [a["outcome"] for a in step["attempts"]] == ["done", "retried"]
    shown = json.loads(CliRunner().invoke(cicb, ["archive", "show", entry["id"]]).output)
    assert shown["attempts"] == [job]
    # Another callback of another job: none of its steps.
    assert attempts("jnothing") == {"id": "jnothing", "jobs": [{"job_id": "jnothing", "steps": []}]}


def test_an_answer_is_kept_to_its_first_kib_with_the_secrets_replaced(tier: Tier) -> None:
    secret = os.environ["CICB_NOTIFY_SECRET"]
    tier.targets.reply_with("/a", 200, body=f"echo {secret} ".encode() + b"x" * 3000)
    tier.ingest(tier.callback("jlong"))
    tier.idle()
    [attempt] = notify_step("jlong")["attempts"]
    a, _ = tier.targets.urls
    kept = target_of(attempt, a)["answer"]
    assert kept.startswith("echo *** xxx")
    assert secret not in kept
    assert len(kept.encode()) <= 1024


def test_a_second_copy_of_a_done_step_is_recorded_as_skipped(tier: Tier) -> None:
    from workers.actions import notify

    event = {"event": "TaskFinish", "job_id": "jtwice", "tag": "Tts", "state": "Success"}
    notify.apply_async((event,), task_id="step-twice")
    tier.idle()
    notify.apply_async((event,), task_id="step-twice")
    tier.idle()
    step = notify_step("jtwice")
    assert [a["outcome"] for a in step["attempts"]] == ["skipped", "done"]
    assert step["attempts"][0]["detail"] == {}  # it notified nobody
    assert sorted(tier.targets.paths("jtwice")) == ["/a", "/b"]


def test_retry_job_and_resubmit_job_say_what_they_decided_and_the_new_job(tier: Tier) -> None:
    from tests.workers.test_resubmit_task import FAILED, FAILED_JOB_ID

    tier.ingest(FAILED)
    wait_until(lambda: tier.redis.get(f"cicb:resubmitted:{FAILED_JOB_ID}"), what="the new job")
    tier.idle()
    new_job_id = tier.redis.get(f"cicb:resubmitted:{FAILED_JOB_ID}").decode()
    [job] = attempts(FAILED_JOB_ID)["jobs"]
    steps = {s["task"]: s for s in job["steps"]}
    [decided] = steps["cicb.retry_job"]["attempts"]
    assert (decided["route"], decided["outcome"]) == ("job-failed", "done")
    assert decided["detail"]["next_attempt"] == 2
    assert decided["detail"]["decision"]
    [resubmitted] = steps["cicb.resubmit_job"]["attempts"]
    assert resubmitted["task_id"] == decided["detail"]["resubmit_task_id"]
    assert resubmitted["detail"] == {"new_job_id": new_job_id}


def test_the_queue_of_a_run_is_its_messages_else_its_tasks_else_none() -> None:
    from celery.app.task import Context

    from workers.attempts import queue_of

    class Named:
        queue = "media"

    delivered = Context(delivery_info={"routing_key": "actions"})
    assert queue_of(Named(), delivered) == "actions"
    assert queue_of(Named(), Context()) == "media"
    # Celery calls on_failure with an empty request for an error outside the task's body,
    # and a task has no queue unless its decorator names one.
    assert queue_of(object(), Context()) == ""
