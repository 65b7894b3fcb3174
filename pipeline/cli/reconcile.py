"""``cicb reconcile``: one reconcile pass, here and now; ``cicb beat``: the process that
schedules them (``pipeline.reconcile``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from pipeline import processes
from pipeline.brokers.kind import kind_of
from pipeline.cli.common import fail, guarded, print_json, settings_or_exit, time_option
from pipeline.reconcile import CiJobs, Reconciler, ReconcileStore, Report, discovered, plan


@click.command()
@click.option(
    "--since",
    callback=time_option,
    metavar="DURATION",
    help="List jobs created since then (1h, 2d, or an ISO 8601 time), not from the checkpoints.",
)
@click.option(
    "--until",
    callback=time_option,
    metavar="TIME",
    help="...and created before then (never after now minus the grace); checkpoints stay.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be routed; send nothing.")
@click.option("--json", "as_json", is_flag=True)
def reconcile(since: datetime | None, until: datetime | None, dry_run: bool, as_json: bool) -> None:
    """Ask CI which jobs finished, and route those whose callback never came (one pass)."""
    settings = settings_or_exit()
    if not settings.cos_configured:
        fail("reconcile lists CI's jobs: set CICB_COS_SECRET_ID and CICB_COS_SECRET_KEY", code=2)
    kind = kind_of(settings)
    client = kind.state_client()
    if client is None:
        fail("reconcile keeps its checkpoints in Redis: set CICB_REDIS_URL", code=2)
    now = datetime.now(UTC)
    store = ReconcileStore(client, retention_s=settings.dedup_ttl_s)
    found = guarded(lambda: discovered(settings, store, now=now))
    targets = guarded(lambda: plan(settings, store, now=now, discovered=found))
    publish = None if dry_run else kind.publisher(settings).ingest
    reconciler = Reconciler(
        ci=guarded(lambda: CiJobs.from_settings(settings)),
        store=store,
        publish=publish,
        now=now,
        grace_s=settings.reconcile_grace_s,
        since=since,
        until=until,
        dry_run=dry_run,
    )
    reports: list[Report] = guarded(lambda: reconciler.reconcile_all(targets))
    failed = [r for r in reports if r.error]
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "found": [f.to_json() for r in reports for f in r.found],
                "targets": [{**r.to_json(), "found": len(r.found)} for r in reports],
                "errors": len(failed),
            }
        )
    else:
        _print(reports, dry_run=dry_run, configured=bool(targets))
    if failed:
        raise SystemExit(1)


def _print(reports: list[Report], *, dry_run: bool, configured: bool) -> None:
    if not configured:
        click.echo(
            "nothing to reconcile: set CICB_RECONCILE_QUEUES and CICB_RECONCILE_TAGS, "
            "or let callbacks name their queues"
        )
    verb = "would route" if dry_run else "routed"
    for report in reports:
        for found in report.found:
            job: dict[str, Any] = found.to_json()
            late = "?" if job["late_s"] is None else f"{job['late_s']}s"
            ident = job.get("job_id") or job.get("run_id")
            where = f"{report.target}  late {late}"
            click.echo(f"{verb}  {ident}  {job['tag']}  {job['state']}  {where}")
    for report in reports:
        status = "busy (another pass holds it)" if report.busy else f"error: {report.error}"
        click.echo(
            f"{report.target}: listed {report.listed}, lost {len(report.found)}, "
            f"pending {report.pending}" + (f", {status}" if report.busy or report.error else "")
        )


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat(celery_args: tuple[str, ...]) -> None:
    """Run Celery beat: it sends a reconcile pass every CICB_RECONCILE_INTERVAL_S. One per
    deployment (extra arguments go to celery beat)."""
    from workers.app import app

    settings_or_exit()
    argv = processes.BEAT_COMMAND.split()[3:]  # after "celery -A workers.app"
    app.start([*argv, *celery_args])
