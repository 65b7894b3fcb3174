"""``cicb``: run the processes, send and inspect callbacks, see routes, manage dead letters.

One module per group of commands; this one holds the group and puts them together.
"""

from __future__ import annotations

import os
import sys

import click

from pipeline import logs
from pipeline.cli import archive, attempts, callbacks, dlq, run
from pipeline.cli.ci import ci as ci_command
from pipeline.cli.console import console as console_command
from pipeline.cli.doctor import doctor as doctor_command
from pipeline.cli.reconcile import beat as beat_command
from pipeline.cli.reconcile import reconcile as reconcile_command
from pipeline.errors import PipelineError
from pipeline.settings import Settings, get_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Receive Tencent Cloud Infinite job callbacks and act on them with Celery."""
    # Find the modules named in CICB_ROUTES from the current directory, as `celery -A` does.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # Every log line goes to stderr, so what a command prints on stdout stays readable by a
    # script. A bad setting is reported by the commands that need settings; an offline
    # one (parse) logs with the defaults.
    try:
        settings = get_settings()
    except PipelineError:
        settings = Settings()
    logs.configure(settings)


for command in (run.up, run.receiver, run.worker, callbacks.send, callbacks.parse_command):
    main.add_command(command)
main.add_command(callbacks.routes)
main.add_command(dlq.dlq)
main.add_command(reconcile_command)
main.add_command(beat_command)
main.add_command(archive.archive)
main.add_command(archive.replay)
main.add_command(console_command)
main.add_command(ci_command)
main.add_command(doctor_command)
main.add_command(attempts.attempts)
