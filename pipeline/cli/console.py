"""``cicb console``: the web console."""

from __future__ import annotations

import signal
import sys

import click

from pipeline.cli.common import fail, settings_or_exit


@click.command()
def console() -> None:
    """Run the console (uvicorn) on CICB_CONSOLE_HOST:CICB_CONSOLE_PORT."""
    import uvicorn

    settings = settings_or_exit()
    if not settings.effective_console_token():
        fail("set CICB_CONSOLE_TOKEN (or run cicb up, which makes one)", code=2)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(
        "pipeline.console.app:create_app",
        factory=True,
        host=settings.console_host,
        port=settings.console_port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
