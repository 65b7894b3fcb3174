"""The Procfile and docker-compose.yml run the same processes as ``cicb up``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipeline.processes import (
    BEAT_COMMAND,
    CONSOLE_COMMAND,
    FLOWER_COMMAND,
    RECEIVER_COMMAND,
    WORKER_COMMAND,
)
from tests.support import (
    ROOT,
    SAMPLES,
    TOKEN,
    Process,
    Target,
    cicb_env,
    free_port,
    require,
    wait_until,
)

pytestmark = pytest.mark.integration


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_procfile_has_the_processes_of_cicb_up() -> None:
    procs = procfile()
    assert procs["web"] == RECEIVER_COMMAND
    assert procs["worker"] == WORKER_COMMAND
    assert procs["beat"] == BEAT_COMMAND
    assert procs["flower"].startswith(FLOWER_COMMAND)
    assert procs["console"] == CONSOLE_COMMAND


def test_honcho_start_runs_the_procfile(broker_url: str, target: Target, tmp_path: Path) -> None:
    receiver_port, flower_port = free_port(), free_port()
    env = cicb_env(
        broker_url,
        CICB_NOTIFY_URLS=target.url,
        CICB_RECEIVER_PORT=str(receiver_port),
        CICB_FLOWER_PORT=str(flower_port),
        CICB_CONSOLE_PORT=str(free_port()),
        CICB_CONSOLE_TOKEN="console-test-token",
        PATH=f"{Path(sys.executable).parent}:{cicb_env(broker_url)['PATH']}",
    )
    honcho = Process([sys.executable, "-m", "honcho", "start"], env, tmp_path / "honcho.log")
    honcho.start()
    try:
        url = f"http://127.0.0.1:{receiver_port}"
        wait_until(
            lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout_s=60, what="receiver"
        )
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck").is_success,
            timeout_s=60,
            what="flower",
        )
        body = (SAMPLES / "transcode_workflow.json").read_bytes()
        response = httpx.post(f"{url}/callbacks", params={"token": TOKEN}, content=body)
        assert response.status_code == 200
        [event] = target.wait_for(1, timeout_s=60)
        assert event["workflow"]["run_id"] == "ic90edd59f84f11ec9d4f525400a3c59f"
    finally:
        honcho.stop()


def test_docker_compose_file_is_valid() -> None:
    require(
        shutil.which("docker-compose") is not None,
        "docker-compose not installed (apt-get install docker-compose, as .ci/run does)",
    )
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        env={"CICB_RECEIVER_TOKEN": TOKEN, "CICB_CONSOLE_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
