"""Nothing lost, nothing twice: real processes, broken for real. Each scenario prints counts."""

from __future__ import annotations

import collections
import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from xml.etree import ElementTree

import httpx
import pytest
import redis

from tests.peers import CiServer, serve_ci
from tests.reliability.harness import (
    at_defaults,
    callback,
    dead_letter_count,
    failed_callback,
    first_arrivals,
    log_lines,
    notified_jobs,
    report,
    send_all,
    wait_inflight_empty,
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


KILL_AFTER = (200, 900)  # the target's requests whose answers wait for a kill
KILLS = len(KILL_AFTER)
WORKER_PROCESSES = 2  # tests.support.start_worker runs -c 2
# A notification sent again after a kill first reached the target at most this long before
# the kill: between its arrival and its completion record the worker only reads the answer
# and writes to Redis. From a request's arrival to the worker's "notified" line measured
# 1 ms (median), 15 ms (99th percentile), 0.12 s at most over 2,000 on the 2-core machine
# at a load of 10, and repeats came 0-0.06 s before their kill; 1 s leaves room for a
# slower machine.
REPEAT_WINDOW_S = 1.0
# Or this long after the kill's timestamp: a request sent just before the signal, which the
# target's thread read after it (0.11 s once, measured). Nothing else can arrive then: the
# next worker is not up yet.
KILL_SLACK_S = 0.5


def settle(done: Callable[[], bool], *, timeout_s: float) -> None:
    """Wait for the counts to settle; the assertions after say what went wrong if not."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        time.sleep(0.5)


def kill(worker: Process) -> float:
    """SIGKILL the worker and its pool: a machine or container dying under it.

    Returns when (``time.time()``), taken right before the signal.
    """
    assert worker.popen is not None
    at = time.time()
    os.killpg(worker.popen.pid, signal.SIGKILL)
    worker.popen.wait()
    return at


def test_killing_workers_loses_nothing_and_repeats_nothing(
    broker: Broker, target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cicb up's defaults: what killed workers held comes back from the sweep, a step they were
    # running once its lease (30 s) expires.
    env = at_defaults(cicb_env(broker.url, CICB_NOTIFY_URLS=target.url))
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    workers = [start_worker(env, tmp_path / "worker0.log")]
    # Each kill lands while a notification is in flight: the target holds its answer to the
    # KILL_AFTER-th request until the worker that sent it is dead (then answers a closed
    # connection: socketserver prints a BrokenPipeError). The other pool process is wherever
    # it happens to be.
    answers = itertools.count(1)
    holding = {n: threading.Event() for n in KILL_AFTER}
    released = {n: threading.Event() for n in KILL_AFTER}
    held: dict[int, str] = {}  # the webhook-id of each held request
    answer = target.answer

    def held_answer() -> tuple[int, bytes, dict[str, str]]:
        n = next(answers)
        if n in holding:
            held[n] = target.answering.headers.get("webhook-id", "")
            holding[n].set()
            released[n].wait(60)
        return answer()

    monkeypatch.setattr(target, "answer", held_answer)
    total = 2000
    sent: dict[str, object] = {}
    sender = threading.Thread(
        target=lambda: sent.update(counts=send_all(url, [callback(i) for i in range(total)]))
    )
    sender.start()
    kills: list[float] = []
    try:
        for n, after in enumerate(KILL_AFTER, start=1):
            assert holding[after].wait(120), f"no progress: {after} notifications not reached"
            kills.append(kill(workers[-1]))
            released[after].set()
            workers.append(start_worker(env, tmp_path / f"worker{n}.log"))
        sender.join()
        counts = sent["counts"]
        accepted = counts.accepted  # type: ignore[attr-defined]

        def settled() -> bool:
            return len(notified_jobs(target)) + dead_letter_count(env) >= accepted

        settle(settled, timeout_s=180)
        # Messages the killed workers held come back after the visibility timeout, lost ones
        # after the sweep's delay: a repeat can come until every task has finished.
        wait_inflight_empty(broker.url, timeout_s=180)
        jobs = notified_jobs(target)
        dead = dead_letter_count(env)
        repeated = sorted(k for k, c in jobs.items() if c > 1)
        repeats = sum(c - 1 for c in jobs.values())
        lost = accepted - len(jobs) - dead
        first = first_arrivals(target)
        # For each repeated notification: how long before the nearest kill after it its first
        # copy arrived (negative: arrived just after the kill's timestamp was taken).
        leads = {
            k: min((t - first[k] for t in kills if t - first[k] >= -KILL_SLACK_S), default=None)
            for k in repeated
        }
        report(
            "worker SIGKILL x2",
            sent=counts.sent,  # type: ignore[attr-defined]
            acknowledged=accepted,
            processed=len(jobs),
            dead_lettered=dead,
            lost=lost,
            kills=len(kills),
            held_at_kills=[held.get(n) for n in KILL_AFTER],
            repeated_deliveries=repeats,
            repeat_first_arrival_before_kill_s=sorted(
                round(v, 4) if v is not None else None for v in leads.values()
            ),
        )
        assert accepted == total
        assert dead == 0
        assert lost == 0
        # The window the README leaves open here (no target's answer is lost in this test): a
        # notification in flight when its worker is killed (sent, answer not yet recorded) is
        # sent again, with the same webhook-id.
        # So every repeat's first copy reached the target just before a kill, and each pool
        # process had at most one in flight per kill. A step run again for any other reason
        # (a chain dispatched twice under new task ids, a redelivered message whose
        # completion was recorded) would be a repeat outside the window.
        assert all(v is not None and v <= REPEAT_WINDOW_S for v in leads.values()), leads
        assert repeats <= KILLS * WORKER_PROCESSES
        # And the notification held in flight at each kill was sent again, not dropped. The
        # second kill can hold the first's, sent again once its lease expired: it then came
        # three times.
        for key, times_held in collections.Counter(held.values()).items():
            assert jobs[key] > times_held, (key, times_held, leads)
    finally:
        for event in released.values():
            event.set()
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
        wait_inflight_empty(broker.url, timeout_s=60)
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


# Redis is away this long, SIGKILLed under load a third of the way in.
OUTAGE_S = 5.0
# What workers held when Redis went away is published again within this long of its return,
# at the settings `cicb up` runs with; and every callback answered 200 before Redis died is
# notified within DRAIN_S (the backlog too, while new callbacks keep coming).
RECOVERY_S = 10.0
DRAIN_S = 30.0


def test_broker_outage_answers_503_and_loses_and_repeats_nothing(
    broker: Broker, target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis SIGKILLed under load and back 5 s later, at cicb up's defaults: every callback
    answered 200 is notified once, every Failed one resubmitted once, and what the workers
    held when it died runs again within seconds of its return."""
    with serve_ci() as ci:
        ci.creates_jobs = True
        env = at_defaults(
            cicb_env(
                broker.url,
                CICB_NOTIFY_URLS=target.url,
                CICB_COS_SECRET_ID="AKIDoutage0123456789",
                CICB_COS_SECRET_KEY="outage-secret-key-0123456789",
                CICB_CI_ENDPOINT=f"http://{ci.endpoint}",
            )
        )
        outage(broker, target, ci, env, tmp_path, monkeypatch)


def outage(
    broker: Broker,
    target: Target,
    ci: CiServer,
    env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    worker = start_worker(env, tmp_path / "worker.log")
    statuses: list[tuple[int, int, float]] = []  # (job number, status, when answered)
    stop = threading.Event()

    def load() -> None:
        n = 0
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                body = callback(n) if n % 2 == 0 else failed_callback(n)
                try:
                    status = client.post(
                        f"{url}/callbacks",
                        content=body,
                        headers={"X-Callback-Token": env["CICB_RECEIVER_TOKEN"]},
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                statuses.append((n, status, time.time()))
                n += 1
                time.sleep(0.01)  # about 50 a second while Redis is up

    # Redis goes away while a notification is in flight: the target holds its answer to
    # one until the broker is dead, so that notify task finishes while Redis is away.
    hold, holding, released = threading.Event(), threading.Event(), threading.Event()
    hold_lock = threading.Lock()
    answer = target.answer

    def held_answer() -> tuple[int, bytes, dict[str, str]]:
        with hold_lock:
            mine = hold.is_set() and not holding.is_set()
            if mine:
                holding.set()
        if mine:
            released.wait(60)
        return answer()

    monkeypatch.setattr(target, "answer", held_answer)
    sender = threading.Thread(target=load)
    sender.start()
    try:
        wait_until(lambda: len(statuses) > 300, timeout_s=60, what="load running")
        hold.set()
        assert holding.wait(60), "no notification to hold"
        killed_at = time.time()
        broker.kill()
        released.set()
        wait_until(lambda: any(s == 503 for _, s, _ in statuses), what="503 while down")
        ready_while_down = httpx.get(f"{url}/readyz", timeout=30).status_code
        time.sleep(max(0.0, OUTAGE_S - (time.time() - killed_at)))
        broker.start()
        back_at = time.time()
        wait_until(lambda: httpx.get(f"{url}/readyz").status_code == 200, what="ready again")
        mark = len(statuses)
        wait_until(lambda: sum(s == 200 for _, s, _ in statuses[mark:]) > 300, what="200s again")
    finally:
        released.set()
        stop.set()
        sender.join()
    try:
        accepted = {n for n, s, _ in statuses if s == 200}
        keys = {
            n: f"TaskFinish:jrel{n:08d}:{'Success' if n % 2 == 0 else 'Failed'}" for n in accepted
        }
        failed = {n for n in accepted if n % 2}
        settle(lambda: set(keys.values()) <= set(notified_jobs(target)), timeout_s=120)
        settle(lambda: len(resubmitted(ci)) >= len(failed), timeout_s=60)
        # A repeat can come for as long as a task message is kept: wait until none is.
        wait_inflight_empty(broker.url, timeout_s=120)
        jobs = notified_jobs(target)
        repeated = {k for k, c in jobs.items() if c > 1}
        first = first_arrivals(target)
        # Answered 200 before the kill, not notified when Redis died: what workers held.
        held = [k for n, k in keys.items() if statuses_at(statuses, n) < killed_at]
        held = [k for k in held if first.get(k, float("inf")) >= killed_at]
        drain_s = max((first[k] - back_at for k in held if k in first), default=0.0)
        republished = [
            datetime.fromisoformat(line["timestamp"]).timestamp()
            for line in log_lines(worker.log())
            if line.get("event") == "message.republished"
        ]
        recovery_s = max(republished, default=back_at) - back_at
        ready_s = min((t for _, s, t in statuses if s == 200 and t > back_at), default=back_at)
        refused = [t for _, s, t in statuses if s == 503]
        submissions = resubmitted(ci)
        not_recorded = [
            line for line in log_lines(worker.log()) if line.get("event") == "task.end_not_recorded"
        ]
        report(
            "broker outage (defaults, Redis SIGKILLed 5 s)",
            sent=len(statuses),
            acknowledged=len(accepted),
            refused_503=len(refused),
            other=sum(s not in (200, 503) for _, s, _ in statuses),
            processed=len(jobs),
            lost=len(set(keys.values()) - set(jobs)),
            repeated=sorted(repeated),
            unfinished_when_killed=len(held),
            republished=len(republished),
            republished_within_s=round(recovery_s, 1),
            all_notified_within_s=round(drain_s, 1),
            window_503_s=round(max(refused) - min(refused), 1) if refused else 0,
            ready_again_s=round(ready_s - back_at, 1),
            failed_accepted=len(failed),
            resubmitted=len(submissions),
            resubmitted_twice=sorted(i for i, c in submissions.items() if c > 1),
            end_not_recorded=len(not_recorded),
        )
        assert ready_while_down == 503
        assert all(s in (200, 503) for _, s, _ in statuses)
        assert set(keys.values()) <= set(jobs)  # nothing lost
        # Nothing repeated: a task that finished while Redis was away waited for it, under
        # its lease, to record that it had; the log would say where it could not.
        assert not_recorded == []
        assert repeated == set()
        # Every Failed callback resubmitted, each once.
        assert set(submissions) == {f"input/jrel{n:08d}.mp4" for n in failed}
        assert set(submissions.values()) == {1}
        assert republished, "nothing was held when Redis died: the scenario tested no recovery"
        assert recovery_s <= RECOVERY_S
        assert drain_s <= DRAIN_S
    finally:
        worker.stop()
        receiver.stop()


def statuses_at(statuses: list[tuple[int, int, float]], n: int) -> float:
    """When callback ``n`` was answered."""
    return next(t for m, _, t in statuses if m == n)


def resubmitted(ci: CiServer) -> collections.Counter[str]:
    """How many times CI was asked to run each input again."""
    return collections.Counter(
        ElementTree.fromstring(r["body"]).findtext("Input/Object") or "" for r in ci.submissions()
    )


def test_a_message_the_transport_drops_is_published_again(
    broker: Broker, target: Target, tmp_path: Path
) -> None:
    env = at_defaults(cicb_env(broker.url, CICB_NOTIFY_URLS=target.url))
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
        "    logs.get_logger('slow').info('render.started', job_id=event['job_id'])\n"
        "    time.sleep(2)\n",
    )
    # The default visibility timeout: what the stopping worker does not finish must come
    # back from its warm shutdown, not from a timeout, and a task the second worker has
    # held for a few seconds must not be delivered to it a second time.
    env = cicb_env(broker.url, CICB_NOTIFY_URLS=target.url, **routes)
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    first = start_worker(env, tmp_path / "worker0.log")
    try:
        assert send_all(url, [callback(i) for i in range(10)]).accepted == 10
        # Both pool processes in the middle of a task when the SIGTERM comes.
        wait_until(
            lambda: first.log().count('"render.started"') >= WORKER_PROCESSES,
            what="a task running in each pool process",
        )
        running_at_stop = first.log().count('"render.started"')
        started = time.monotonic()
        code = first.stop(signal.SIGTERM, timeout_s=60)
        stop_s = time.monotonic() - started
        finished_before_stop = len(target.received)
        second = start_worker(env, tmp_path / "worker1.log")
        try:
            wait_until(lambda: len(notified_jobs(target)) >= 10, timeout_s=90, what="all ten")
            wait_inflight_empty(broker.url, timeout_s=60)
            jobs = notified_jobs(target)
            logs = [first.log(), second.log()]
            starts = collections.Counter(
                line["job_id"] for line in log_lines(*logs) if line.get("event") == "render.started"
            )
            report(
                "worker SIGTERM",
                exit_code=code,
                stop_s=round(stop_s, 1),
                running_at_stop=running_at_stop,
                notified_before_stop=finished_before_stop,
                notified=len(jobs),
                repeated=sum(c - 1 for c in jobs.values()),
                renders_started=sum(starts.values()),
            )
            assert code == 0
            assert len(jobs) == 10 and set(jobs.values()) == {1}
            # A task running at the SIGTERM finished there, once: not cut short and run
            # again by the second worker.
            assert sorted(starts) == [f"jrel{i:08d}" for i in range(10)]
            assert set(starts.values()) == {1}, starts
            assert not any("WorkerLostError" in log for log in logs)
        finally:
            second.stop()
    finally:
        receiver.stop()
