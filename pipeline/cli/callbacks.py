"""``cicb send``, ``cicb parse``, ``cicb routes``: callbacks and where they go."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import httpx

from pipeline.cli.common import (
    fail,
    json_or_text,
    one_or_many,
    print_json,
    read_events,
    settings_or_exit,
)
from pipeline.errors import PipelineError
from pipeline.parsing.reader import FormatOption
from pipeline.routing import RouteTable, table_for
from pipeline.settings import Settings


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--url", help="Callback URL [default: CICB_RECEIVER_URL or the local receiver].")
@click.option("--token", help="Token [default: CICB_RECEIVER_TOKEN or the one cicb up kept].")
@click.option("--json", "as_json", is_flag=True, help="Print the responses as JSON.")
def send(files: tuple[Path, ...], url: str | None, token: str | None, as_json: bool) -> None:
    """POST each FILE to the receiver, as Tencent CI would."""
    settings = settings_or_exit()
    url = url or settings.callback_url
    token = token or settings.effective_token()
    headers = {"X-Callback-Token": token} if token else {}
    results = []
    with httpx.Client(timeout=30) as client:
        for path in files:
            body = path.read_bytes()
            ctype = "application/json" if body.lstrip()[:1] in (b"{", b"[") else "application/xml"
            try:
                response = client.post(
                    url, content=body, headers={**headers, "Content-Type": ctype}
                )
            except httpx.HTTPError as exc:
                fail(f"{path}: cannot reach {url}: {exc}")
            results.append(
                {
                    "file": str(path),
                    "status": response.status_code,
                    "response": json_or_text(response),
                }
            )
    if as_json:
        print_json(results)
    else:
        for r in results:
            click.echo(f"{r['file']}: {r['status']} {json.dumps(r['response'])}")
    if any(r["status"] != 200 for r in results):
        sys.exit(1)


@click.command("parse")
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "xml", "json"]),
    default="auto",
    show_default=True,
    help="Read the body as this format (auto: decided by the body).",
)
def parse_command(file: Path, fmt: FormatOption) -> None:
    """Print the normalized event(s) of a callback body, or of a CI job query answer, as
    JSON (a list when several)."""
    print_json(one_or_many([e.to_dict() for e in read_events(file, fmt)]))


def _table(settings: Settings) -> RouteTable:
    try:
        return table_for(settings)
    except PipelineError as exc:
        fail(str(exc), code=2)


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.pass_context
def routes(ctx: click.Context, as_json: bool) -> None:
    """Print the effective route table, in the order routes are tried (first match wins)."""
    if ctx.invoked_subcommand is not None:
        return
    table = _table(settings_or_exit())
    if as_json:
        print_json([r.to_json() for r in table.routes])
        return
    for r in table.routes:
        match = " ".join(
            f"{k}={'|'.join(v)}"
            for k, v in (("event", r.event), ("tag", r.tag), ("state", r.state))
        )
        click.echo(f"{r.name:24} {match:50} -> {' | '.join(r.chain)}")


@routes.command()
@click.argument("file", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def explain(file: Path, as_json: bool) -> None:
    """Say which route, and which chain of tasks, each event in FILE would take."""
    table = _table(settings_or_exit())
    answers = [table.explain(event) for event in read_events(file)]
    if as_json:
        print_json(one_or_many(answers))
        return
    for a in answers:
        ident = a["job_id"] or a["run_id"]
        where = f"route {a['route']}: {' | '.join(a['chain'])}" if a["route"] else "unrouted"
        click.echo(f"{a['event']} {ident} tag={a['tag']} state={a['state']} -> {where}")
