"""``cicb up``, ``cicb receiver``, ``cicb worker``: the processes."""

from __future__ import annotations

import os
import sys

import click

from pipeline import metrics, processes
from pipeline.cli.common import (
    fail,
    settings_or_exit,
)
from pipeline.settings import Settings

STOP_SIGNAL_CODES = (130, 143)  # honcho's exit codes after SIGINT or SIGTERM


@click.command()
def up() -> None:
    """Run everything here: embedded broker (unless CICB_BROKER_URL), receiver, worker, beat,
    Flower, console."""
    from honcho.manager import Manager

    settings = settings_or_exit()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = processes.ensure_token(settings)
    console_token = processes.ensure_console_token(settings)
    env = {
        **os.environ,
        "CICB_RECEIVER_TOKEN": token,
        "CICB_CONSOLE_TOKEN": console_token,
        "CICB_BROKER_URL": settings.broker_url,
    }
    manager = Manager()
    for name, command in processes.commands(settings).items():
        manager.add_process(name, command, env=env)
    click.echo(f"callback URL: {settings.callback_url}?token={token}")
    click.echo(f"Flower:       http://{settings.flower_host}:{settings.flower_port}/")
    click.echo(
        f"console:      http://{settings.console_host}:{settings.console_port}/"
        f"  (sign in with {console_token})"
    )
    receiver_metrics = f"http://{settings.receiver_host}:{settings.receiver_port}/metrics"
    click.echo(f"metrics:      {receiver_metrics} (receiver, queues)")
    if settings.worker_metrics_port:
        worker_metrics = f"http://{settings.worker_metrics_host}:{settings.worker_metrics_port}"
        click.echo(f"              {worker_metrics}/metrics (workers)")
    click.echo("check:        cicb doctor (in another terminal, once everything is up)")
    manager.loop()
    # Stopped by Ctrl-C or SIGTERM with every process down: that is a clean stop.
    sys.exit(0 if manager.returncode in STOP_SIGNAL_CODES else manager.returncode)


@click.command()
@click.option("--workers", default=1, show_default=True, help="Receiver processes.")
def receiver(workers: int) -> None:
    """Run the receiver (uvicorn) on CICB_RECEIVER_HOST:CICB_RECEIVER_PORT."""
    import signal

    settings = settings_or_exit()
    if not settings.effective_token():
        fail("set CICB_RECEIVER_TOKEN (or run cicb up, which makes one)", code=2)
    # uvicorn stops gracefully on SIGTERM (no new connections, requests under way finish),
    # then raises the signal again with the handler it found: exit 0 then, a clean stop.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    # Every receiver process counts into one folder; the one a scrape reaches adds them up.
    metrics_dir = metrics.use_multiprocess()
    try:
        _serve_receiver(settings, workers)
    finally:
        metrics_dir.remove()


def _serve_receiver(settings: Settings, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "pipeline.receiver.app:create_app",
        factory=True,
        host=settings.receiver_host,
        port=settings.receiver_port,
        workers=workers,
        log_config=None,
        # The token may be in the query string: no access log, which would write it down.
        access_log=False,
        # The client address is the socket peer unless CICB_PROXY_HEADER says otherwise;
        # uvicorn's own proxy-header handling would trust X-Forwarded-For from localhost.
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker on ingest and actions (extra arguments go to celery worker)."""
    from workers.app import app

    settings_or_exit()  # a bad setting stops it here, with the reason
    argv = processes.WORKER_COMMAND.split()[3:]  # after "celery -A workers.app"
    app.worker_main([*argv, *celery_args])
