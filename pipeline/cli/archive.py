"""``cicb archive list|show|export`` and ``cicb replay``: what reached cicb, and running it again.

The archive (``pipeline.archive``) lives in the Redis of the workers' shared state. Each
command selects entries with the same filters: ``--since`` (a duration, such as ``90s``,
``15m``, ``1h``, ``2d``, or an ISO 8601 time), ``--until`` (the same), ``--event``, ``--tag``,
``--state``, ``--job-id`` (a job or run id) and ``--outcome``.
"""

from __future__ import annotations

import functools
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import click
import orjson
import redis

from pipeline import logs
from pipeline.archive import Archive, ArchiveEntry, Filters, NotArchived
from pipeline.brokers.kind import kind_of
from pipeline.cli.attempts import attempts_json
from pipeline.cli.common import fail, guarded, print_json, settings_or_exit, time_option
from pipeline.errors import PipelineError
from pipeline.settings import Settings

DEFAULT_LIST_LIMIT = 50
DEFAULT_REPLAY_RATE = 50.0

log = logs.get_logger("cicb.replay")


Command = Callable[..., None]


def filter_options(command: Command) -> Command:
    """The filters every archive command takes; the command gets ``filters: Filters``."""
    options = [
        click.option(
            "--since", callback=time_option, metavar="TIME", help="Received since: 1h, or ISO 8601."
        ),
        click.option(
            "--until", callback=time_option, metavar="TIME", help="Received until: 2d, or ISO 8601."
        ),
        click.option("--event", help="EventName (TaskFinish, WorkflowFinish...)."),
        click.option("--tag", help="Job Tag (Snapshot, Transcode...)."),
        click.option("--state", help="Job or run State (Success, Failed...)."),
        click.option("--job-id", help="A job id or a workflow run id."),
        click.option(
            "--outcome", help="dispatched, duplicate, unrouted, reconciled, dead_lettered."
        ),
    ]

    def with_filters(**kwargs: Any) -> None:
        names = ("since", "until", "event", "tag", "state", "job_id", "outcome")
        filters = Filters(**{name: kwargs.pop(name) for name in names})
        command(filters=filters, **kwargs)

    # The command's name, help and the options declared below this decorator.
    functools.update_wrapper(with_filters, command)
    for option in reversed(options):
        with_filters = option(with_filters)
    return with_filters


def open_archive(settings: Settings) -> Archive:
    client = kind_of(settings).state_client(timeout_s=10)
    if client is None:
        fail("the archive lives in Redis: set CICB_REDIS_URL (the broker is not Redis)", code=2)
    return Archive(
        client,
        retention_s=settings.archive_retention_s,
        max_entries=settings.archive_max_entries,
    )


def read(action: Callable[[], Any]) -> Any:
    """``action()``, failing with one line when Redis cannot be reached."""
    try:
        return guarded(action)
    except redis.RedisError as exc:
        fail(f"archive unreachable: {exc}")


def line(summary: dict[str, Any]) -> str:
    """One entry (its ``summary()``) on one line: id, received time, source, outcome, and
    its events (or its error when it has none)."""
    what = "; ".join(
        " ".join(
            str(e[k])
            for k in ("event", "tag", "state", "job_id", "run_id", "route")
            if e.get(k) is not None
        )
        for e in summary["events"]
    )
    if not what and summary["error"]:
        what = f"{summary['error']}: {summary['reason']}"
    return "  ".join(
        (summary["id"], summary["received_at"], summary["source"], summary["outcome"], what)
    )


@click.group("archive")
def archive() -> None:
    """List, show and export the callbacks cicb archived."""


@archive.command("list")
@filter_options
@click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIST_LIMIT, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def archive_list(filters: Filters, limit: int, as_json: bool) -> None:
    """List archived callbacks, newest first."""
    store = open_archive(settings_or_exit())
    entries: list[ArchiveEntry] = read(lambda: store.list(filters, limit=limit))
    if as_json:
        print_json({"count": len(entries), "entries": [e.summary() for e in entries]})
        return
    for entry in entries:
        click.echo(line(entry.summary()))
    click.echo(f"{len(entries)} archived callback(s)", err=True)


@archive.command("show")
@click.argument("entry_id")
@click.option("--body", is_flag=True, help="Write only the raw body, byte for byte.")
def archive_show(entry_id: str, body: bool) -> None:
    """Print one archived callback as JSON (its body as text when it is UTF-8), with the
    attempts of its routes' steps (as `cicb attempts ID --json` says them)."""
    settings = settings_or_exit()
    store = open_archive(settings)
    entry: ArchiveEntry = read(lambda: store.get(entry_id))
    if body:
        sys.stdout.buffer.write(entry.body)
        sys.stdout.buffer.flush()
        return
    shown = read(lambda: attempts_json(settings, entry_id))
    print_json({**entry.to_json(text_body=True), "attempts": shown["jobs"]})


@archive.command("export")
@filter_options
def archive_export(filters: Filters) -> None:
    """Write the matching callbacks as JSON lines, oldest first, each body in base64."""
    store = open_archive(settings_or_exit())
    out = sys.stdout.buffer

    def write_all() -> int:
        written = 0
        for entry in store.entries(filters, newest_first=False):
            out.write(orjson.dumps(entry.to_json()) + b"\n")
            written += 1
        out.flush()
        return written

    written: int = read(write_all)
    click.echo(f"exported {written} archived callback(s)", err=True)


def progress(total: int) -> Callable[[int], None]:
    """Report ``done/total`` on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        return lambda done: None

    def show(done: int) -> None:
        end = "\n" if done >= total else ""
        click.echo(f"\rreplayed {done}/{total}", nl=False, err=True)
        click.echo(end, nl=False, err=True)

    return show


def paced(count: int, rate: float) -> Iterator[int]:
    """0..count-1, the i-th not before ``i / rate`` seconds after the first."""
    start = time.monotonic()
    for i in range(count):
        wait_s = start + i / rate - time.monotonic()
        if wait_s > 0:
            time.sleep(wait_s)
        yield i


@click.command("replay")
@filter_options
@click.option("--dry-run", is_flag=True, help="Print what matches; send nothing.")
@click.option("--force", is_flag=True, help="Run the routes again, even what already ran.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_REPLAY_RATE,
    show_default=True,
    help="Callbacks sent a second.",
)
@click.option("--json", "as_json", is_flag=True)
def replay(filters: Filters, dry_run: bool, force: bool, rate: float, as_json: bool) -> None:
    """Send archived callbacks through ingest again, oldest first.

    Without --force, deduplication skips what was already routed: only what never completed
    runs. With --force every match runs its route again, in a new deduplication scope (new
    notification ids). Earlier replays are archived too, but never sent again.
    """
    if not filters.any():
        fail("replay needs at least one filter (--since 1h, for example)", code=2)
    settings = settings_or_exit()
    store = open_archive(settings)
    # Summaries only: the bodies are read again one at a time as they are sent.
    matched: list[dict[str, Any]] = read(
        lambda: [
            e.summary() for e in store.entries(filters, newest_first=False) if e.source != "replay"
        ]
    )
    scope = f"replay-{uuid.uuid4().hex[:8]}" if force else None
    if not as_json:
        for summary in matched:
            click.echo(line(summary))
        click.echo(f"matched {len(matched)} archived callback(s)")
    sent, gone = 0, 0
    if not dry_run and matched:
        sent, gone = send(store, matched, settings, scope=scope, rate=rate)
    log.info(
        "replay",
        filters=filters.to_json(),
        matched=len(matched),
        sent=sent,
        gone=gone,
        force=force,
        scope=scope,
        dry_run=dry_run,
        rate=rate,
    )
    if as_json:
        print_json(
            {
                "filters": filters.to_json(),
                "matched": len(matched),
                "entries": matched,
                "sent": sent,
                "gone": gone,
                "dry_run": dry_run,
                "force": force,
                "scope": scope,
            }
        )
    elif dry_run:
        click.echo("dry run: nothing sent")
    else:
        click.echo(f"sent {sent} callback(s) to ingest" + (f" in scope {scope}" if scope else ""))


def send(
    store: Archive,
    matched: list[dict[str, Any]],
    settings: Settings,
    *,
    scope: str | None,
    rate: float,
) -> tuple[int, int]:
    """Send each matched entry's body to ``cicb.ingest`` at ``rate`` a second; return how
    many were sent and how many had left the archive since they matched."""
    publisher = kind_of(settings).publisher(settings)
    show = progress(len(matched))
    sent, gone = 0, 0
    try:
        for i in paced(len(matched), rate):
            try:
                entry = store.get(matched[i]["id"])
            except NotArchived:
                gone += 1  # trimmed since it matched
                continue
            publisher.ingest(entry.replay_envelope(scope=scope).to_json())
            sent += 1
            show(i + 1)
    except (PipelineError, redis.RedisError) as exc:
        log.error("replay.stopped", sent=sent, matched=len(matched), error=str(exc))
        fail(f"stopped after sending {sent} of {len(matched)}: {exc}")
    finally:
        publisher.close()
    return sent, gone
