"""What the worker's processes promise about stopping and acknowledging."""

from __future__ import annotations

import subprocess
import sys

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
    from workers.base import PipelineTask

    conf = tier.app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    # A retry waiting for its countdown is not delivered a second time.
    assert conf.broker_transport_options["visibility_timeout"] > PipelineTask.retry_backoff_max
