"""``cicb``: run the processes, send and inspect callbacks, see routes, manage dead letters."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from pipeline import logs, processes
from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.kind import kind_of
from pipeline.brokers.queues import connection
from pipeline.errors import PipelineError
from pipeline.parsing import parse
from pipeline.parsing.events import Event
from pipeline.parsing.reader import FormatOption
from pipeline.routing import RouteTable, table_for
from pipeline.settings import Settings, get_settings

# honcho's exit codes when it stopped everything because it got SIGINT or SIGTERM.
STOP_SIGNAL_CODES = (130, 143)


def _settings() -> Settings:
    try:
        return get_settings()
    except PipelineError as exc:
        _fail(str(exc), code=2)


def _fail(message: str, *, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _read_events(path: Path, fmt: FormatOption = "auto") -> list[Event]:
    try:
        return parse(path.read_bytes(), fmt=fmt)
    except PipelineError as exc:
        _fail(f"{path}: {exc}")


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _one_or_many(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else items


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


@main.command()
def up() -> None:
    """Run everything here: embedded broker (unless CICB_BROKER_URL), receiver, worker, Flower."""
    from honcho.manager import Manager

    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = processes.ensure_token(settings)
    env = {**os.environ, "CICB_RECEIVER_TOKEN": token, "CICB_BROKER_URL": settings.broker_url}
    manager = Manager()
    for name, command in processes.commands(settings).items():
        manager.add_process(name, command, env=env)
    click.echo(f"callback URL: {settings.callback_url}?token={token}")
    click.echo(f"Flower:       http://{settings.flower_host}:{settings.flower_port}/")
    manager.loop()
    # Stopped by Ctrl-C or SIGTERM with every process down: that is a clean stop.
    sys.exit(0 if manager.returncode in STOP_SIGNAL_CODES else manager.returncode)


@main.command()
@click.option("--workers", default=1, show_default=True, help="Receiver processes.")
def receiver(workers: int) -> None:
    """Run the receiver (uvicorn) on CICB_RECEIVER_HOST:CICB_RECEIVER_PORT."""
    import signal

    import uvicorn

    settings = _settings()
    if not settings.effective_token():
        _fail("set CICB_RECEIVER_TOKEN (or run cicb up, which makes one)", code=2)
    # uvicorn stops gracefully on SIGTERM (no new connections, requests under way finish),
    # then raises the signal again with the handler it found: exit 0 then, a clean stop.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
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


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker on ingest and actions (extra arguments go to celery worker)."""
    from workers.app import app

    _settings()  # a bad setting stops it here, with the reason
    argv = processes.WORKER_COMMAND.split()[3:]  # after "celery -A workers.app"
    app.worker_main([*argv, *celery_args])


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--url", help="Callback URL [default: CICB_RECEIVER_URL or the local receiver].")
@click.option("--token", help="Token [default: CICB_RECEIVER_TOKEN or the one cicb up kept].")
@click.option("--json", "as_json", is_flag=True, help="Print the responses as JSON.")
def send(files: tuple[Path, ...], url: str | None, token: str | None, as_json: bool) -> None:
    """POST each FILE to the receiver, as Tencent CI would."""
    settings = _settings()
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
                _fail(f"{path}: cannot reach {url}: {exc}")
            results.append(
                {
                    "file": str(path),
                    "status": response.status_code,
                    "response": _json_or_text(response),
                }
            )
    if as_json:
        _print_json(results)
    else:
        for r in results:
            click.echo(f"{r['file']}: {r['status']} {json.dumps(r['response'])}")
    if any(r["status"] != 200 for r in results):
        sys.exit(1)


@main.command("parse")
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
    _print_json(_one_or_many([e.to_dict() for e in _read_events(file, fmt)]))


def _table(settings: Settings) -> RouteTable:
    try:
        return table_for(settings)
    except PipelineError as exc:
        _fail(str(exc), code=2)


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.pass_context
def routes(ctx: click.Context, as_json: bool) -> None:
    """Print the effective route table, in the order routes are tried (first match wins)."""
    if ctx.invoked_subcommand is not None:
        return
    table = _table(_settings())
    if as_json:
        _print_json([r.to_json() for r in table.routes])
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
    table = _table(_settings())
    answers: list[dict[str, Any]] = []
    for event in _read_events(file):
        route = table.resolve(event)
        data = event.to_dict()
        answers.append(
            {
                "event": event.event,
                "job_id": data.get("job_id"),
                "run_id": data.get("run_id"),
                "tag": event.tag,
                "state": event.state,
                "route": route.name if route else None,
                "chain": list(route.chain) if route else [],
            }
        )
    if as_json:
        _print_json(_one_or_many(answers))
        return
    for a in answers:
        ident = a["job_id"] or a["run_id"]
        where = f"route {a['route']}: {' | '.join(a['chain'])}" if a["route"] else "unrouted"
        click.echo(f"{a['event']} {ident} tag={a['tag']} state={a['state']} -> {where}")


@main.group()
def dlq() -> None:
    """List, show, replay and purge dead letters."""


def _dead_letters(settings: Settings) -> DeadLetterQueue:
    return DeadLetterQueue(lambda: connection(settings))


def _guarded(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except PipelineError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"broker unreachable: {exc}")


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(as_json: bool) -> None:
    """Count and list the dead letters, oldest first."""
    letters: list[DeadLetter] = _guarded(_dead_letters(_settings()).entries)
    if as_json:
        _print_json({"count": len(letters), "dead_letters": [d.summary() for d in letters]})
        return
    click.echo(f"{len(letters)} dead letter(s)")
    for d in letters:
        click.echo(f"{d.id}  {d.failed_at}  {d.task}  attempts={d.attempts}  {d.error}: {d.reason}")


@dlq.command("show")
@click.argument("dead_letter_id")
@click.option("--body", is_flag=True, help="Write only the raw callback body, byte for byte.")
def dlq_show(dead_letter_id: str, body: bool) -> None:
    """Print one dead letter as JSON (with the callback body decoded when it is text)."""
    letter: DeadLetter = _guarded(lambda: _dead_letters(_settings()).get(dead_letter_id))
    envelope = letter.envelope()
    if body:
        if envelope is None:
            _fail(f"dead letter {dead_letter_id} holds no callback body")
        sys.stdout.buffer.write(envelope.body)
        return
    _print_json(letter.to_json())


@dlq.command("replay")
@click.argument("dead_letter_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dlq_replay(dead_letter_id: str | None, replay_all: bool) -> None:
    """Send a dead letter (or all) back to the queue it came from."""
    if bool(dead_letter_id) == replay_all:
        _fail("give a dead letter ID or --all", code=2)
    settings = _settings()
    publisher = kind_of(settings).publisher(settings)

    def resend(letter: DeadLetter) -> None:
        publisher.send(
            letter.task, letter.args, letter.kwargs, queue_name=letter.queue, chain=letter.chain
        )

    count = _guarded(lambda: _dead_letters(settings).replay(resend, dead_letter_id))
    click.echo(f"replayed {count} dead letter(s)")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Really delete every dead letter.")
def dlq_purge(yes: bool) -> None:
    """Delete every dead letter."""
    if not yes:
        _fail("purge deletes every dead letter: add --yes", code=2)
    count = _guarded(_dead_letters(_settings()).purge)
    click.echo(f"purged {count} dead letter(s)")


if __name__ == "__main__":
    main()
