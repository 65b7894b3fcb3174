"""What the worker's processes promise about stopping and acknowledging."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from tests.support import ROOT, cicb_env, free_port
from tests.workers.conftest import Tier

# A pool process, as Celery starts one: the process-init signal, then the SIGTERM that
# honcho, docker-compose or systemd sends to every process of the worker.
POOL_PROCESS = """
import os, signal, time
import workers.app
from celery.signals import worker_process_init
worker_process_init.send(sender=None)
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.2)
print("still running")
"""


def test_a_pool_process_leaves_sigterm_to_the_main_process() -> None:
    env = cicb_env(f"redis://127.0.0.1:{free_port()}/0")
    done = subprocess.run(
        [sys.executable, "-c", POOL_PROCESS],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"


def test_tasks_are_acknowledged_after_they_ran_and_given_back_when_their_worker_dies(
    tier: Tier,
) -> None:
    from workers.resources import resources

    conf = tier.app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    # A retry waiting for its countdown is not delivered a second time.
    cap_s = resources().settings.retry_backoff_max_s
    assert conf.broker_transport_options["visibility_timeout"] > cap_s


def test_importing_the_worker_side_opens_no_connection() -> None:
    # A broker that records every connection made to it.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.5)
        env = cicb_env(f"redis://127.0.0.1:{server.getsockname()[1]}/0")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", "import workers.app, workers.tasks, workers.actions"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took_s = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        with pytest.raises(TimeoutError):
            server.accept()
    assert took_s < 10


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("CICB_CI_ENDPOINT", "ftp://ci.example.com", "CICB_CI_ENDPOINT must be"),
        ("CICB_NOTIFY_URLS", "bogus://x", "a notify target must be an http(s) URL"),
        ("CICB_MAX_RETRIES", "many", "CICB_MAX_RETRIES must be an integer"),
        ("CICB_CI_BUCKETS", "media:guangzhou", "CICB_CI_BUCKETS: 'media:guangzhou' is not"),
    ],
)
def test_a_bad_setting_stops_the_worker_at_start_with_one_line(
    setting: str, value: str, says: str
) -> None:
    env = cicb_env(f"redis://127.0.0.1:{free_port()}/0", **{setting: value})
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--without-mingle"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78
    lines = [line for line in done.stderr.splitlines() if "bad setting" in line]
    assert len(lines) == 1 and says in lines[0], done.stderr
    assert "Traceback" not in done.stderr
