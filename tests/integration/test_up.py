"""``cicb up`` as ``make run`` uses it: embedded broker, receiver, worker, Flower, console."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import httpx
import pytest

from tests.support import (
    CICB,
    SAMPLES,
    Process,
    Target,
    UpPorts,
    metric,
    run_cli,
    scrape,
    wait_until,
)

pytestmark = pytest.mark.integration


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_runs_everything_stops_on_ctrl_c_and_resumes_with_its_data(
    tmp_path: Path, target: Target
) -> None:
    ports = UpPorts()
    env = ports.env(CICB_NOTIFY_URLS=target.url, FLOWER_UNAUTHENTICATED_API="true")
    receiver = f"http://127.0.0.1:{ports.receiver}"
    flower = f"http://127.0.0.1:{ports.flower}"

    def start(n: int) -> Process:
        up = Process([CICB, "up"], env, tmp_path / f"up{n}.log", cwd=tmp_path).start()
        wait_until(
            lambda: httpx.get(f"{receiver}/readyz").status_code == 200,
            timeout_s=60,
            what="receiver ready",
        )
        wait_until(
            lambda: httpx.get(f"{flower}/api/workers", params={"refresh": "1"}).json(),
            timeout_s=60,
            what="Flower sees the worker",
        )
        return up

    up = start(1)
    try:
        # Two pool processes per CPU, not Celery's one: steps mostly wait on the network.
        workers = httpx.get(f"{flower}/api/workers", params={"refresh": "1"}).json()
        [worker] = workers.values()
        assert worker["stats"]["pool"]["max-concurrency"] == 2 * (os.cpu_count() or 1)
        token = (tmp_path / ".cicb" / "token").read_text().strip()
        assert f"{receiver}/callbacks?token={token}" in up.log()
        # The console's URL, with the token cicb up made and kept for it.
        console_token = (tmp_path / ".cicb" / "console-token").read_text().strip()
        console = f"http://127.0.0.1:{ports.console}/"
        assert f"{console}  (sign in with {console_token})" in up.log()
        signin = wait_until(lambda: httpx.get(f"{console}signin"), what="console up")
        assert signin.status_code == 200

        sent = run_cli("send", str(SAMPLES / "tts_success.xml"), env=env, cwd=tmp_path)
        assert ": 200 " in sent.stdout
        [event] = target.wait_for(1)
        assert event["job_id"] == "j707f4864f86811ecb90d0b03267ce0e5"

        (tmp_path / "garbage.xml").write_bytes(b"<Response><EventName>TaskFinish</Even")
        run_cli("send", str(tmp_path / "garbage.xml"), env=env, cwd=tmp_path)
        listed = lambda: json.loads(run_cli("dlq", "list", "--json", env=env, cwd=tmp_path).stdout)  # noqa: E731
        wait_until(lambda: listed()["count"] == 1, what="dead letter")

        # Flower shows the dead-lettered callback as a failed task, with its reason.
        failed = wait_until(
            lambda: httpx.get(f"{flower}/api/tasks", params={"state": "FAILURE"}).json(),
            what="failed task in Flower",
        )
        [task] = failed.values()
        assert task["name"] == "cicb.ingest"
        assert "ParseError" in task["exception"]

        # Prometheus' view: the receiver's and the worker's /metrics, as cicb up printed them.
        worker_metrics = f"http://127.0.0.1:{ports.worker_metrics}/metrics"
        assert f"{receiver}/metrics" in up.log() and worker_metrics in up.log()
        front, work = scrape(f"{receiver}/metrics"), scrape(worker_metrics)
        assert metric(front, "cicb_queue_messages", queue="dead_letter") == 1
        assert metric(front, "cicb_receiver_responses_total", status="200") == 2
        assert metric(work, "cicb_callbacks_total", outcome="dispatched") == 1
        assert metric(work, "cicb_callbacks_total", outcome="dead_lettered") == 1
        assert metric(work, "cicb_callback_latency_seconds_count", route="job-succeeded") == 1

    except BaseException:
        up.stop()
        raise
    os.killpg(up.popen.pid, signal.SIGINT)  # type: ignore[union-attr]  # Ctrl-C
    assert up.popen.wait(30) == 0  # type: ignore[union-attr]
    assert not any(port_open(p) for p in ports.all())

    up = start(2)
    try:
        assert (tmp_path / ".cicb" / "token").read_text().strip() == token
        assert (tmp_path / ".cicb" / "console-token").read_text().strip() == console_token
        assert listed()["count"] == 1  # the broker's append-only file kept the dead letter
    finally:
        up.stop(signal.SIGINT)
    assert not any(port_open(p) for p in ports.all())
