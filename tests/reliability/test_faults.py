"""Nothing lost, nothing twice: real processes, broken for real. Each scenario prints counts."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from tests.reliability.harness import (
    callback,
    dead_letter_count,
    notified_jobs,
    report,
    send_all,
)
from tests.support import (
    Broker,
    Process,
    Target,
    cicb_env,
    start_receiver,
    start_worker,
    user_routes,
    wait_until,
)

pytestmark = pytest.mark.reliability

# Short enough that messages held by a killed worker come back within the test.
FAST_RECOVERY = {
    "CICB_VISIBILITY_TIMEOUT_S": "8",
    "CICB_RETRY_BACKOFF_S": "1",
    "CICB_RETRY_BACKOFF_MAX_S": "4",
}


KILL_AFTER = (200, 900)  # notifications seen before each kill
KILLS = len(KILL_AFTER)
WORKER_PROCESSES = 2  # tests.support.start_worker runs -c 2


def settle(done: Callable[[], bool], *, timeout_s: float) -> None:
    """Wait for the counts to settle; the assertions after say what went wrong if not."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.5)


def kill(worker: Process) -> None:
    """SIGKILL the worker and its pool: a machine or container dying under it."""
    assert worker.popen is not None
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait()


def test_killing_workers_loses_nothing_and_repeats_nothing(
    broker: Broker, target: Target, tmp_path: Path
) -> None:
    env = cicb_env(broker.url, CICB_NOTIFY_URLS=target.url, **FAST_RECOVERY)
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    workers = [start_worker(env, tmp_path / "worker0.log")]
    total = 2000
    sent: dict[str, object] = {}
    sender = threading.Thread(
        target=lambda: sent.update(counts=send_all(url, [callback(i) for i in range(total)]))
    )
    sender.start()
    try:
        for n, after in enumerate(KILL_AFTER, start=1):
            wait_until(lambda a=after: len(target.received) >= a, timeout_s=120, what="progress")
            kill(workers[-1])
            workers.append(start_worker(env, tmp_path / f"worker{n}.log"))
        sender.join()
        counts = sent["counts"]
        accepted = counts.accepted  # type: ignore[attr-defined]

        def settled() -> bool:
            return len(notified_jobs(target)) + dead_letter_count(env) >= accepted

        settle(settled, timeout_s=180)
        time.sleep(3)  # anything still to come would be a repeat
        jobs = notified_jobs(target)
        dead = dead_letter_count(env)
        repeats = sum(c - 1 for c in jobs.values())
        lost = accepted - len(jobs) - dead
        report(
            "worker SIGKILL x2",
            sent=counts.sent,  # type: ignore[attr-defined]
            acknowledged=accepted,
            processed=len(jobs),
            dead_lettered=dead,
            lost=lost,
            repeated_deliveries=repeats,
        )
        assert accepted == total
        assert lost == 0
        # A notification in flight when its worker is killed (sent, answer not yet
        # recorded) is sent again, with the same webhook-id, which the target uses to
        # apply it once: at most one per pool process per kill. Anything more would be a
        # route or step run twice.
        assert repeats <= KILLS * WORKER_PROCESSES
    finally:
        for w in workers:
            w.stop()
        receiver.stop()


def test_each_callback_delivered_five_times_runs_its_route_once(
    broker: Broker, target: Target, tmp_path: Path
) -> None:
    env = cicb_env(broker.url, CICB_NOTIFY_URLS=target.url)
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        jobs = 300
        # Twice one after another, then three times at once, all shuffled together.
        first = [callback(i) for i in range(jobs)]
        rest = [callback(i) for i in range(jobs) for _ in range(4)]
        random.Random(5).shuffle(rest)
        counts = send_all(url, first, workers=4)
        counts_rest = send_all(url, rest, workers=24)
        wait_until(lambda: len(notified_jobs(target)) >= jobs, timeout_s=120, what="all routed")

        def duplicates_logged() -> int:
            return worker.log().count('"outcome": "duplicate"')

        # The repeats queue behind the first deliveries; on a slow machine they
        # are still being skipped when every job has been routed once.
        wait_until(
            lambda: duplicates_logged() >= 4 * jobs, timeout_s=120, what="every repeat skipped"
        )
        time.sleep(3)
        seen = notified_jobs(target)
        duplicates = duplicates_logged()
        report(
            "duplicates x5",
            sent=counts.sent + counts_rest.sent,
            acknowledged=counts.accepted + counts_rest.accepted,
            routes_run=sum(seen.values()),
            distinct_jobs=len(seen),
            skipped_as_duplicate=duplicates,
        )
        assert counts.accepted + counts_rest.accepted == 5 * jobs
        assert len(seen) == jobs and set(seen.values()) == {1}
        assert duplicates == 4 * jobs
    finally:
        worker.stop()
        receiver.stop()


def test_broker_outage_answers_503_and_loses_nothing_after(
    broker: Broker, target: Target, tmp_path: Path
) -> None:
    # Messages a worker had taken when the connection broke come back after the
    # visibility timeout: short here, so the test sees them.
    env = cicb_env(broker.url, CICB_NOTIFY_URLS=target.url, **FAST_RECOVERY)
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    worker = start_worker(env, tmp_path / "worker.log")
    statuses: list[tuple[int, int]] = []  # (job number, status)
    stop = threading.Event()

    def load() -> None:
        n = 0
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    status = client.post(
                        f"{url}/callbacks",
                        content=callback(n),
                        headers={"X-Callback-Token": env["CICB_RECEIVER_TOKEN"]},
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                statuses.append((n, status))
                n += 1

    sender = threading.Thread(target=load)
    sender.start()
    try:
        wait_until(lambda: len(statuses) > 100, what="load running")
        broker.stop()
        wait_until(lambda: any(s == 503 for _, s in statuses), what="503 while down")
        ready_while_down = httpx.get(f"{url}/readyz", timeout=30).status_code
        time.sleep(2)
        broker.start()
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="ready again")
        mark = len(statuses)
        wait_until(lambda: sum(s == 200 for _, s in statuses[mark:]) > 100, what="200s again")
    finally:
        stop.set()
        sender.join()
    try:
        accepted = {f"TaskFinish:jrel{n:08d}:Success" for n, s in statuses if s == 200}
        settle(lambda: accepted <= set(notified_jobs(target)), timeout_s=120)
        jobs = notified_jobs(target)
        report(
            "broker outage",
            sent=len(statuses),
            acknowledged=len(accepted),
            refused_503=sum(s == 503 for _, s in statuses),
            other=sum(s not in (200, 503) for _, s in statuses),
            processed=len(jobs),
            lost=len(accepted - set(jobs)),
            repeated_side_effects=sum(c - 1 for c in jobs.values()),
        )
        assert ready_while_down == 503
        assert accepted <= set(jobs)
        assert all(s in (200, 503) for _, s in statuses)
    finally:
        worker.stop()
        receiver.stop()


def test_a_message_the_transport_drops_is_published_again(
    broker: Broker, target: Target, tmp_path: Path
) -> None:
    env = cicb_env(broker.url, CICB_NOTIFY_URLS=target.url, **FAST_RECOVERY)
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    try:
        assert send_all(url, [callback(1)]).accepted == 1
        # What a worker killed right after BRPOP leaves behind: the message is gone from
        # the queue and was never recorded as unacknowledged.
        client = redis.Redis.from_url(broker.url)
        assert client.rpop("ingest") is not None
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            [event] = target.wait_for(1, timeout_s=90)
            assert event["job_id"] == "jrel00000001"
            assert '"message.republished"' in worker.log()
            settle(lambda: client.zcard("cicb:inflight") == 0, timeout_s=30)
            report("dropped message", republished=1, notified=len(target.received))
            assert client.zcard("cicb:inflight") == 0  # forgotten once its tasks finished
        finally:
            worker.stop()
    finally:
        receiver.stop()


def test_sigterm_lets_a_worker_finish_or_return_its_tasks(
    broker: Broker, target: Target, tmp_path: Path
) -> None:
    routes = user_routes(
        tmp_path,
        "slowroutes",
        "import time\n"
        "from pipeline import logs\n"
        "@route(tag='Tts', after=['notify'])\n"
        "@app.task(base=PipelineTask, name='slowroutes.render')\n"
        "def render(event):\n"
        "    logs.get_logger('slow').info('render.started')\n"
        "    time.sleep(2)\n",
    )
    env = cicb_env(broker.url, CICB_NOTIFY_URLS=target.url, **routes, **FAST_RECOVERY)
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    first = start_worker(env, tmp_path / "worker0.log")
    try:
        assert send_all(url, [callback(i) for i in range(10)]).accepted == 10
        wait_until(lambda: "render.started" in first.log(), what="a task running")
        started = time.monotonic()
        code = first.stop(signal.SIGTERM, timeout_s=60)
        stop_s = time.monotonic() - started
        finished_before_stop = len(target.received)
        second = start_worker(env, tmp_path / "worker1.log")
        try:
            wait_until(lambda: len(notified_jobs(target)) >= 10, timeout_s=90, what="all ten")
            time.sleep(2)
            jobs = notified_jobs(target)
            report(
                "worker SIGTERM",
                exit_code=code,
                stop_s=round(stop_s, 1),
                notified_before_stop=finished_before_stop,
                notified=len(jobs),
                repeated=sum(c - 1 for c in jobs.values()),
            )
            assert code == 0
            assert len(jobs) == 10 and set(jobs.values()) == {1}
        finally:
            second.stop()
    finally:
        receiver.stop()
