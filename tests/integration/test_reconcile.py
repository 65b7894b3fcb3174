"""Reconcile with real processes: a receiver, a Celery worker (and beat), Valkey, a notify
target and a local CI server speaking the list, query and submit APIs through the real SDK.

The scenario of the issue: the receiver is down (no callback is posted) while 60 jobs finish
on 2 queues and 3 Tags, 10 of them Failed; one pass routes all 60 once (the failed ones reach
retry_job); the late callbacks are then all duplicates; a job that finished inside the grace
is not reconciled; a 403 on a third queue is logged and counted while the others are
reconciled.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from pipeline.brokers.kind import kind_of
from pipeline.settings import Settings
from tests.ci_queues import ci_env, ci_queue, ci_workflow
from tests.peers import CiServer, ci_error, ci_job, job_callback, serve_ci
from tests.support import (
    Process,
    Stack,
    Target,
    cicb_env,
    metric,
    run_cli,
    started,
    wait_until,
)

pytestmark = pytest.mark.integration

BUCKET = "media-1250000000"
REGION = "ap-guangzhou"
QUEUES = ("pqueueaaaa", "pqueuebbbb")
REFUSED_QUEUE = "pqueuecccc"
TAGS = ("Transcode", "Snapshot", "Tts")


@pytest.fixture
def ci() -> Iterator[CiServer]:
    with serve_ci() as server:
        yield server


def finished_jobs(now: datetime) -> list[dict[str, Any]]:
    """60 jobs on 2 queues and 3 Tags that ended 30 to 50 minutes ago, 10 of them Failed."""
    jobs = []
    for n in range(60):
        queue, tag = QUEUES[n % 2], TAGS[n % 3]
        created = now - timedelta(minutes=50) + timedelta(seconds=20 * n)
        jobs.append(
            ci_job(
                f"j{n:02d}{queue}{tag.lower()}",
                bucket=BUCKET,
                region=REGION,
                queue_id=queue,
                tag=tag,
                state="Failed" if n % 6 == 0 else "Success",
                created=created,
                ended=created + timedelta(minutes=1),
            )
        )
    return jobs


def settings_for(ci: CiServer, target: Target) -> dict[str, str]:
    queues = [f"{BUCKET}:{REGION}:{q}" for q in (*QUEUES, REFUSED_QUEUE)]
    return {
        "CICB_NOTIFY_URLS": target.url,
        "CICB_COS_SECRET_ID": "AKIDtest",
        "CICB_COS_SECRET_KEY": "test-secret-key-never-logged",
        "CICB_CI_ENDPOINT": f"http://{ci.endpoint}",
        "CICB_RECONCILE_QUEUES": ",".join(queues),
        "CICB_RECONCILE_TAGS": ",".join(TAGS),
        "CICB_RETRY_MAX_ATTEMPTS": "2",
    }


def counters(stack: Stack) -> dict[str, float]:
    """Callbacks by outcome, as the worker's /metrics counts them."""
    samples = stack.worker_metrics()
    outcomes = {
        dict(labels)["outcome"] for name, labels in samples if name == "cicb_callbacks_total"
    }
    found = {o: metric(samples, "cicb_callbacks_total", outcome=o) for o in outcomes}
    return {o: n for o, n in found.items() if n}


def test_one_pass_routes_every_lost_job_once_and_the_late_callbacks_are_duplicates(
    make_stack: Callable[..., Stack], target: Target, ci: CiServer, broker_url: str
) -> None:
    now = datetime.now(UTC)
    jobs = finished_jobs(now)
    # Ended two minutes ago, within the 10-minute grace: its callback may still come.
    recent = ci_job(
        "jrecentpqueueaaaa",
        bucket=BUCKET,
        region=REGION,
        queue_id=QUEUES[0],
        tag="Transcode",
        state="Success",
        created=now - timedelta(minutes=15),
        ended=now - timedelta(minutes=2),
    )
    ci.jobs[BUCKET] = [*jobs, recent]
    ci.refusals[REFUSED_QUEUE] = ci_error(403, "AccessDenied", "Access Denied.")
    stack = make_stack(**settings_for(ci, target))
    failed = {j["JobId"] for j in jobs if j["State"] == "Failed"}
    assert len(failed) == 10

    # What a pass would route, without routing it.
    dry = stack.cli("reconcile", "--dry-run", "--json", check=False)
    assert dry.returncode == 1, dry.stderr  # the refused queue
    shown = json.loads(dry.stdout)
    assert shown["dry_run"] is True and shown["errors"] == 1
    assert sorted(f["job_id"] for f in shown["found"]) == sorted(j["JobId"] for j in jobs)
    one = next(f for f in shown["found"] if f["job_id"] == jobs[0]["JobId"])
    assert (one["tag"], one["state"], one["queue"], one["sent"]) == (
        "Transcode",
        "Failed",
        QUEUES[0],
        False,
    )
    assert 2900 < one["late_s"] < 3100
    assert target.received == [] and counters(stack) == {}

    # One pass, as beat sends it: cicb.reconcile fans out one task per queue. The first
    # queue's first list fails for now: its task is retried with the usual backoff.
    ci.failures[QUEUES[0]] = [ci_error(503, "ServiceUnavailable", "busy")]
    settings = Settings(broker_url=broker_url)
    publisher = kind_of(settings).publisher(settings)
    publisher.send("cicb.reconcile", [], queue_name="actions")
    events = target.wait_for(60, timeout_s=120)
    wait_until(lambda: counters(stack).get("reconciled") == 60, timeout_s=60, what="60")
    notified = sorted((e["job_id"], e["state"], e["source"]) for e in events)
    assert notified == sorted((j["JobId"], j["State"], "reconcile") for j in jobs)
    # The failed ones reach retry_job, which resubmits each once through CI's API.
    wait_until(lambda: len(ci_posts(ci)) == 10, timeout_s=60, what="10 resubmissions")
    assert stack.dead_letters() == []
    log = stack.worker.log()
    retried = [line for line in log.splitlines() if "cicb.reconcile_queue[" in line]
    assert any("Retry in" in line and "HTTP 503" in line for line in retried)
    refused = [json.loads(line) for line in log.splitlines() if '"reconcile.refused"' in line]
    assert len(refused) == 1
    assert refused[0]["code"] == "AccessDenied" and refused[0]["status"] == 403
    assert refused[0]["reconcile_target"] == f"{BUCKET}:{REGION}:{REFUSED_QUEUE}"
    errors = redis.Redis.from_url(broker_url).hgetall("cicb:reconcile:errors")
    assert errors == {f"{BUCKET}:{REGION}:{REFUSED_QUEUE}".encode(): b"1", b"total": b"1"}
    found = [json.loads(line) for line in log.splitlines() if '"reconcile.found"' in line]
    assert len(found) == 60 and all(f["late_s"] > 1000 and f["tag"] in TAGS for f in found)
    assert "jrecentpqueueaaaa" not in log and "test-secret-key-never-logged" not in log

    # The receiver is back: the late callbacks are all duplicates and run nothing.
    for job in jobs:
        assert stack.post(job_callback(job)).status_code == 200
    wait_until(lambda: counters(stack).get("duplicate") == 60, timeout_s=60, what="dups")
    assert counters(stack) == {"reconciled": 60, "duplicate": 60}
    assert len(target.received) == 60 and len(ci_posts(ci)) == 10
    samples = stack.worker_metrics()
    assert metric(samples, "cicb_reconciled_callbacks_total", kind="job") == 60
    assert metric(samples, "cicb_reconcile_errors_total") == 1
    assert metric(samples, "cicb_resubmissions_total", result="resubmitted") == 10

    # A second pass finds nothing lost; the recent job is still left for a later one.
    again = json.loads(stack.cli("reconcile", "--dry-run", "--json", check=False).stdout)
    assert again["found"] == []


def ci_posts(ci: CiServer) -> list[dict[str, Any]]:
    with ci.lock:
        return [r for r in ci.requests if r["method"] == "POST"]


def test_cicb_reconcile_sends_the_lost_jobs_to_ingest_once(
    ci: CiServer, target: Target, broker_url: str
) -> None:
    now = datetime.now(UTC)
    ci.jobs[BUCKET] = finished_jobs(now - timedelta(hours=2))  # before the first look-back
    ci.refusals[REFUSED_QUEUE] = ci_error(403, "InvalidAccessKeyId", "no such SecretId")
    env = {**cicb_env(broker_url), **settings_for(ci, target)}
    first = json.loads(run_cli("reconcile", "--json", env=env, check=False).stdout)
    assert first["found"] == []
    done = run_cli("reconcile", "--since", "4h", env=env, check=False)
    assert done.returncode == 1  # the refused queue
    assert done.stdout.count("routed  ") == 60
    assert f"{BUCKET}:{REGION}:{REFUSED_QUEUE}: listed 0, lost 0, pending 0, error:" in done.stdout
    queued = redis.Redis.from_url(broker_url).llen("ingest")
    assert queued == 60
    again = json.loads(run_cli("reconcile", "--since", "4h", "--json", env=env, check=False).stdout)
    assert again["found"] == [] and redis.Redis.from_url(broker_url).llen("ingest") == 60


def test_beat_schedules_the_passes(
    make_stack: Callable[..., Stack], target: Target, ci: CiServer, tmp_path: Path
) -> None:
    stack = make_stack(**settings_for(ci, target), CICB_RECONCILE_INTERVAL_S="1")
    beat = Process(
        [sys.executable, "-m", "celery", "-A", "workers.app", "beat", "--loglevel", "INFO"],
        stack.env,
        tmp_path / "beat.log",
    ).start()
    try:
        started(beat, lambda: "beat: Starting" in beat.log(), what="beat")
        # Each tick lists each queue and Tag; the refused queue once a tick.
        wait_until(
            lambda: len([r for r in ci.lists() if r["query"]["queueId"] == QUEUES[1]]) >= 6,
            timeout_s=60,
            what="two passes",
        )
    finally:
        beat.stop()
    assert "cicb.reconcile" in beat.log()
    assert stack.worker.log().count('"reconcile.planned"') >= 2


def test_reconcile_lists_the_queues_it_found_in_ci_buckets_alone(
    ci: CiServer, broker_url: str
) -> None:
    """No CICB_RECONCILE_QUEUES, no callback yet: the queues come from CICB_CI_BUCKETS (a
    media queue whose workflow runs Transcode, a picture queue) and CI is asked for them
    once an hour."""
    now = datetime.now(UTC)
    created = now - timedelta(minutes=40)
    jobs = [
        ci_job(
            f"j{n}found{tag.lower()}",
            bucket=BUCKET,
            region=REGION,
            queue_id=queue,
            tag=tag,
            state="Success",
            created=created + timedelta(seconds=n),
            ended=created + timedelta(minutes=1),
        )
        for n, (queue, tag) in enumerate(
            [
                ("pfoundmedia", "Transcode"),
                ("pfoundmedia", "Transcode"),
                ("pfoundpic", "PicProcess"),
            ]
        )
    ]
    ci.jobs[BUCKET] = jobs
    ci.queues[(BUCKET, "media")] = [ci_queue("pfoundmedia", url=None)]
    ci.queues[(BUCKET, "pic")] = [ci_queue("pfoundpic", url=None)]
    ci.queues[(BUCKET, "doc")] = [ci_queue("pfounddoc", url=None)]
    ci.workflows[BUCKET] = [ci_workflow("wfound", queue_id="pfoundmedia", url=None)]
    env = {**cicb_env(broker_url), **ci_env(ci.endpoint)}
    done = run_cli("reconcile", "--json", env=env, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(f["job_id"] for f in report["found"]) == sorted(j["JobId"] for j in jobs)
    listed = {(r["query"].get("queueId"), r["query"].get("tag")) for r in ci.lists()}
    assert listed >= {("pfoundmedia", "Transcode"), ("pfoundpic", "PicProcess")}
    assert not any(q == "pfounddoc" for q, _ in listed)  # CI's job list has no doc jobs
    assert any(r["path"] == "/workflowexecution" for r in ci.lists())
    asked = [r for r in ci.requests if r["path"] in ("/queue", "/workflow")]
    again = run_cli("reconcile", "--json", env=env, check=False)
    assert again.returncode == 0 and json.loads(again.stdout)["found"] == []
    assert [r for r in ci.requests if r["path"] in ("/queue", "/workflow")] == asked
