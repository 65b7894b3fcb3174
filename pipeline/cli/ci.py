"""``cicb ci``: see where CI's queues send their callbacks, and point them at the receiver."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

import click

from pipeline.ci import connect as connecting
from pipeline.ci.queues import CONNECTED, CiQueues, QueueReport, queue_reports, redact_token
from pipeline.cli.common import fail, guarded, print_json, settings_or_exit
from pipeline.settings import Settings


@click.group()
def ci() -> None:
    """CI's queues and workflows in CICB_CI_BUCKETS: where their callbacks go."""


def _reports(settings: Settings) -> tuple[CiQueues, list[QueueReport]]:
    if not settings.bucket_regions:
        fail(
            "set CICB_CI_BUCKETS to the buckets cicb looks after (BUCKET-APPID:REGION,...)", code=2
        )
    queues: CiQueues = guarded(lambda: CiQueues.from_settings(settings))
    return queues, guarded(lambda: queue_reports(settings, queues))


def _line(report: QueueReport, note: str) -> str:
    q = report.queue
    where = redact_token(q.notify.url) or "-"
    return f"{q.bucket}  {q.kind:<8} {q.queue_id}  {q.name!r}  {q.state or '-'}  {note}  {where}"


@ci.command("queues")
@click.option("--json", "as_json", is_flag=True)
def queues_command(as_json: bool) -> None:
    """Every queue of every kind, and every workflow with its own callback, in
    CICB_CI_BUCKETS, with where its notifications go: connected, elsewhere, off, wrong token
    or missing events."""
    _, reports = _reports(settings_or_exit())
    if as_json:
        print_json([r.to_json() for r in reports])
        return
    connected = sum(r.verdict == CONNECTED for r in reports)
    click.echo(f"{len(reports)} queue(s), {connected} connected")
    for report in reports:
        click.echo(_line(report, report.verdict))


@ci.command("connect")
@click.option("--url", help="The receiver's URL as CI reaches it (default CICB_PUBLIC_URL).")
@click.option("--bucket", "buckets", multiple=True, help="Only this bucket (repeatable).")
@click.option(
    "--queue", "queue_ids", multiple=True, help="Only this queue or workflow id (repeatable)."
)
@click.option(
    "--format",
    "result_format",
    type=click.Choice(["xml", "json"]),
    default=None,
    help="The callbacks' format (default: the queue's own, else XML).",
)
@click.option("--replace", is_flag=True, help="Also change queues that point elsewhere.")
@click.option("--dry-run", is_flag=True, help="Show the change; change nothing.")
@click.option("--yes", is_flag=True, help="Change without asking.")
def connect_command(
    url: str | None,
    buckets: tuple[str, ...],
    queue_ids: tuple[str, ...],
    result_format: str | None,
    replace: bool,
    dry_run: bool,
    yes: bool,
) -> None:
    """Point CI's queues (all of CICB_CI_BUCKETS' by default) at the receiver: the URL with
    the current token, events TaskFinish and WorkflowFinish, notifications on. Then
    `cicb doctor` checks the whole path."""
    settings = settings_or_exit()
    base = url or settings.public_url
    if not base:
        fail("give --url https://host/callbacks or set CICB_PUBLIC_URL", code=2)
    token = settings.effective_token()
    if not token:
        fail("the receiver has no token: set CICB_RECEIVER_TOKEN (or run cicb up once)", code=2)
    target = guarded(lambda: connecting.callback_url(base, token))
    if _local(target):
        click.echo(
            f"warning: CI cannot reach {urlsplit(target).hostname}: give a public URL", err=True
        )
    ci_queues, reports = _reports(settings)
    changes = guarded(
        lambda: connecting.plan(
            reports,
            url=target,
            result_format=result_format,
            buckets=buckets,
            queue_ids=queue_ids,
            replace=replace,
        )
    )
    to_set = [c for c in changes if c.action == connecting.SET]
    for change in changes:
        click.echo(_line(change.report, _described(change)))
    click.echo(f"{len(to_set)} to change, to {redact_token(target)}")
    if dry_run or not to_set:
        return
    if not yes:
        click.confirm(f"Change {len(to_set)} queue(s)?", abort=True)
    made = guarded(lambda: connecting.apply(ci_queues, to_set))
    for change in made:
        click.echo(f"changed {change.report.queue.bucket} {change.report.queue.queue_id}")
    click.echo(f"changed {len(made)} queue(s)")


def _described(change: connecting.Change) -> str:
    if change.action == connecting.KEPT:
        return "kept: points elsewhere (--replace to change it)"
    if change.action == connecting.UNCHANGED:
        return "unchanged: connected"
    return f"{change.report.verdict} -> set"


def _local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private or address.is_loopback
