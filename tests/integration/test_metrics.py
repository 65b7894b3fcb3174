"""What Prometheus reads from a running stack (real Valkey, a prefork worker with two pool
processes, the receiver): after callbacks that are routed, retried, dead-lettered and
unrouted, every metric reads the counts that were sent."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import (
    CICB,
    SAMPLES,
    TOKEN,
    Process,
    Samples,
    Stack,
    Target,
    cicb_env,
    deploy_metric_names,
    free_port,
    metric,
    scrape,
    start_receiver,
    started,
    user_routes,
    wait_until,
)

pytestmark = pytest.mark.integration

SAMPLE = (SAMPLES / "tts_success.xml").read_bytes()
SAMPLE_JOB_ID = b"j707f4864f86811ecb90d0b03267ce0e5"
PIDS_KEY = "cicb:test:pids"
# A step that takes a while and says which pool process ran it.
SLOW_ROUTES = (
    "import os, time\n"
    "import redis\n"
    "from pipeline import Route, task\n"
    "from pipeline.settings import get_settings\n"
    "routes = [Route('slow', ['metrics.slow'], tag='Slow')]\n"
    "@task(name='metrics.slow')\n"
    "def slow(event):\n"
    "    time.sleep(0.5)\n"
    "    client = redis.Redis.from_url(get_settings().broker_url)\n"
    f"    client.rpush('{PIDS_KEY}', os.getpid())\n"
)


def callback(*, tag: str = "Tts", state: str = "Success") -> bytes:
    job_id = f"j{uuid.uuid4().hex}"
    body = SAMPLE.replace(SAMPLE_JOB_ID, job_id.encode())
    body = body.replace(b"<Tag>Tts</Tag>", f"<Tag>{tag}</Tag>".encode())
    return body.replace(b"<State>Success</State>", f"<State>{state}</State>".encode())


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def test_every_metric_reads_the_counts_that_were_sent(
    make_stack: Callable[..., Stack], target: Target, tmp_path: Path, broker_url: str
) -> None:
    stack = make_stack(
        CICB_NOTIFY_URLS=target.url,
        **user_routes(tmp_path, "slowroutes", SLOW_ROUTES),
    )
    target.statuses = [503]  # the first notification fails for now: retried
    notified = [callback() for _ in range(6)]
    slow = [callback(tag="Slow") for _ in range(6)]
    unrouted = callback(state="Running")
    garbage = b"\xff<not a callback"
    for body in [*notified, *slow, unrouted, garbage]:
        assert stack.post(body).status_code == 200
    assert stack.post(notified[0], headers={"X-Callback-Token": "wrong"}).status_code == 401
    client = redis.Redis.from_url(broker_url)
    target.wait_for(6)
    wait_until(lambda: client.llen(PIDS_KEY) == 6, what="the slow steps")
    wait_until(lambda: len(stack.dead_letters()) == 1, what="the garbage's dead letter")
    wait_until(lambda: client.zcard("cicb:inflight") == 0, what="nothing in flight")

    work = stack.worker_metrics()
    routed = len(notified) + len(slow)
    # Callbacks: what ingest did with each event.
    assert metric(work, "cicb_callbacks_total", outcome="dispatched") == routed
    assert metric(work, "cicb_callbacks_total", route="job-succeeded", outcome="dispatched") == 6
    assert metric(work, "cicb_callbacks_total", route="slow", outcome="dispatched") == 6
    assert metric(work, "cicb_callbacks_total", outcome="unrouted") == 1
    assert metric(work, "cicb_callbacks_total", outcome="dead_lettered") == 1
    # Tasks, by route and outcome.
    notify = {"task": "cicb.notify", "route": "job-succeeded"}
    assert metric(work, "cicb_tasks_total", **notify, outcome="done") == 6
    assert (
        metric(work, "cicb_tasks_total", **notify, outcome="retried", error="TargetsPending") == 1
    )
    assert metric(work, "cicb_tasks_total", task="metrics.slow", route="slow", outcome="done") == 6
    assert (
        metric(
            work,
            "cicb_tasks_total",
            task="cicb.ingest",
            outcome="dead_lettered",
            error="ParseError",
        )
        == 1
    )
    assert metric(work, "cicb_tasks_total", task="cicb.ingest", outcome="done") == routed + 1
    # What notify did for each target.
    assert metric(work, "cicb_notifications_total", kind="webhook", result="delivered") == 6
    assert metric(work, "cicb_notifications_total", kind="webhook", result="failed") == 1
    # Latency: one per routed callback, at its route's end; a slow step takes 0.5 s.
    assert metric(work, "cicb_callback_latency_seconds_count") == routed
    assert metric(work, "cicb_callback_latency_seconds_count", route="slow") == 6
    assert metric(work, "cicb_callback_latency_seconds_sum", route="slow") >= 6 * 0.5
    assert metric(work, "cicb_task_duration_seconds_count", task="metrics.slow") == 6
    assert metric(work, "cicb_task_duration_seconds_sum", task="metrics.slow") >= 6 * 0.5
    # How late CI delivered: every callback with an EndTime, by Tag (the sample's is 2022).
    assert metric(work, "cicb_delivery_delay_seconds_count", tag="Tts") == 6 + 1
    assert metric(work, "cicb_delivery_delay_seconds_count", tag="Slow") == 6
    assert metric(work, "cicb_delivery_delay_seconds_bucket", tag="Slow", le="86400.0") == 0
    assert metric(work, "cicb_tasks_scheduled") == 0
    assert metric(work, "cicb_archive_entries") == len(notified) + len(slow) + 2
    # Both pool processes ran slow steps; one scrape has the counts of both.
    assert len(set(client.lrange(PIDS_KEY, 0, -1))) == 2

    front = stack.receiver_metrics()
    assert metric(front, "cicb_receiver_responses_total", status="200") == routed + 2
    assert metric(front, "cicb_receiver_responses_total", status="401") == 1
    assert metric(front, "cicb_receiver_enqueue_seconds_count") == routed + 2
    dead = metric(front, "cicb_queue_messages", queue="dead_letter")
    assert dead == len(stack.dead_letters()) == 1
    assert metric(front, "cicb_queue_messages", queue="ingest") == 0
    assert metric(front, "cicb_queue_messages", queue="actions") == 0
    assert ("cicb_ingest_oldest_age_seconds", frozenset()) in front
    assert metric(front, "cicb_ingest_oldest_age_seconds") == 0
    assert metric(front, "cicb_inflight_messages") == 0  # every task finished

    # Every metric the alert rules and the dashboard query is in these two scrapes
    # (``up`` is Prometheus's own).
    assert deploy_metric_names() - {"up"} <= names(work) | names(front)


def test_callbacks_no_worker_takes_show_as_depth_and_age(broker_url: str, tmp_path: Path) -> None:
    receiver, url = start_receiver(cicb_env(broker_url), tmp_path / "receiver.log")
    try:
        for _ in range(3):
            response = httpx.post(
                f"{url}/callbacks",
                content=callback(),
                headers={"X-Callback-Token": cicb_env(broker_url)["CICB_RECEIVER_TOKEN"]},
            )
            assert response.status_code == 200
        time.sleep(1.5)
        front = scrape(f"{url}/metrics")
        assert metric(front, "cicb_queue_messages", queue="ingest") == 3
        assert 1.5 <= metric(front, "cicb_ingest_oldest_age_seconds") < 30
        # Kept in flight until a worker finishes them; none lost.
        assert metric(front, "cicb_inflight_messages") == 3
        assert ("cicb_inflight_lost_messages", frozenset()) in front
        assert metric(front, "cicb_inflight_lost_messages") == 0
    finally:
        receiver.stop()


def test_a_retry_waiting_out_its_backoff_is_scheduled(
    make_stack: Callable[..., Stack], target: Target
) -> None:
    stack = make_stack(
        CICB_NOTIFY_URLS=target.url, CICB_RETRY_BACKOFF_S="60", CICB_RETRY_BACKOFF_MAX_S="120"
    )
    target.default_status = 503
    assert stack.post(callback()).status_code == 200
    wait_until(
        lambda: metric(stack.worker_metrics(), "cicb_tasks_scheduled") == 1,
        what="the retry to wait",
    )
    work = stack.worker_metrics()
    assert metric(work, "cicb_tasks_total", task="cicb.notify", outcome="retried") == 1
    assert metric(work, "cicb_notifications_total", result="failed") == 1


def test_a_receiver_of_several_processes_counts_them_all_in_every_scrape(
    broker_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = cicb_env(broker_url, CICB_RECEIVER_PORT=str(port))
    receiver = Process([CICB, "receiver", "--workers", "2"], env, tmp_path / "receiver.log")
    url = f"http://127.0.0.1:{port}"
    receiver.start()
    try:
        started(receiver, lambda: httpx.get(f"{url}/healthz").is_success, what="receiver up")
        for _ in range(20):
            # A connection each, so the two processes share them.
            response = httpx.post(
                f"{url}/callbacks", content=callback(), headers={"X-Callback-Token": TOKEN}
            )
            assert response.status_code == 200
        # Whichever process answers the scrape, it shows both processes' counts.
        for _ in range(6):
            front = scrape(f"{url}/metrics")
            assert metric(front, "cicb_receiver_responses_total", status="200") == 20
            assert metric(front, "cicb_receiver_enqueue_seconds_count") == 20
    finally:
        receiver.stop()
