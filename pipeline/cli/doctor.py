"""``cicb doctor``: one line per check of the deployment (``pipeline.doctor``)."""

from __future__ import annotations

import click

from pipeline.cli.common import print_json, settings_or_exit
from pipeline.doctor import failed, run_checks
from pipeline.doctor.processes import celery_inspector


@click.command()
@click.option("--json", "as_json", is_flag=True, help="A list of {check, status, found, fix}.")
def doctor(as_json: bool) -> None:
    """Check the broker, Redis, receiver, workers, beat, CI's keys, clock and queues, dead
    letters and the archive: one line each, pass, warn or fail, with what to do. Exits 1
    when a check fails."""
    from workers.app import app

    settings = settings_or_exit()
    checks = run_checks(settings, inspect=celery_inspector(app))
    if as_json:
        print_json([c.to_json() for c in checks])
    else:
        width = max(len(c.name) for c in checks)
        for check in checks:
            click.echo(check.line(width=width))
    if failed(checks):
        raise SystemExit(1)
