"""``cicb attempts``: which steps of a job's routes ran, when, how many times, and what each
notify target answered; ``cicb attempts retry-now`` runs a step waiting for its retry now.

The attempts (``pipeline.attempts``) live in the Redis of the workers' shared state, beside
the archive, and are kept as long as it keeps callbacks.
"""

from __future__ import annotations

import re
from typing import Any

import click
import redis

from pipeline.archive import Archive
from pipeline.attempts import AttemptLog, StepAttempts, by_step, retry_now, route_steps
from pipeline.brokers.kind import kind_of
from pipeline.cli.common import fail, guarded, print_json, settings_or_exit
from pipeline.routing import table_for
from pipeline.settings import Settings

# An archive entry's id (a stream id): otherwise the id is a job's or a run's.
CALLBACK_ID = re.compile(r"\d+-\d+")


def open_log(settings: Settings) -> tuple[redis.Redis, AttemptLog]:
    client = kind_of(settings).state_client(timeout_s=10)
    if client is None:
        fail("attempts live in Redis: set CICB_REDIS_URL (the broker is not Redis)", code=2)
    log = AttemptLog(
        client, retention_s=settings.archive_retention_s, max_jobs=settings.archive_max_entries
    )
    return client, log


def steps_for(settings: Settings, ident: str) -> dict[str, list[StepAttempts]]:
    """Each job's steps with their attempts: those of the archived callback ``ident`` (its
    routes' steps), or every step of job (or run) ``ident``."""
    client, log = open_log(settings)
    if not CALLBACK_ID.fullmatch(ident):
        return {ident: by_step(log.of_job(ident))}
    archive = Archive(
        client,
        retention_s=settings.archive_retention_s,
        max_entries=settings.archive_max_entries,
    )
    entry = archive.get(ident)
    wanted = route_steps(entry.events, table_for(settings))
    found = log.of_jobs(wanted.values())
    return {
        job_id: by_step(a for a in attempts if a.step_id in wanted)
        for job_id, attempts in found.items()
    }


def attempts_json(settings: Settings, ident: str) -> dict[str, Any]:
    """What ``--json`` prints, and ``cicb archive show`` adds to an entry."""
    jobs = steps_for(settings, ident)
    _, log = open_log(settings)
    waiting = {w.task_id: w.due_at for w in log.waiting()}
    return {
        "id": ident,
        "jobs": [
            {
                "job_id": job_id,
                "steps": [
                    {**s.to_json(), "waiting_until": waiting.get(s.attempts[0].task_id)}
                    for s in steps
                ],
            }
            for job_id, steps in jobs.items()
        ],
    }


def echo_steps(shown: dict[str, Any]) -> None:
    """The steps of ``attempts_json``, as lines for a person, newest attempt first."""
    for job in shown["jobs"]:
        click.echo(f"job {job['job_id']}: {len(job['steps'])} step(s)")
        for step in job["steps"]:
            place = f" step {step['step']}" if step["step"] is not None else ""
            wait = f", retry due {step['waiting_until']}" if step["waiting_until"] else ""
            click.echo(
                f"  {step['task']} (route {step['route'] or '-'}{place}): {step['state']}, "
                f"{len(step['attempts'])} attempt(s){wait}"
            )
            for a in step["attempts"]:
                what = a["outcome"]
                if a["wait_s"] is not None:
                    what += f" (next in {a['wait_s']} s)"
                if a["error"]:
                    what += f"  {a['error']}: {a['reason']}"
                click.echo(
                    f"    try {a['attempt']}  {a['started_at']}  {what}  "
                    f"[{a['seconds'] * 1000:.0f} ms on {a['worker']}]  task {a['task_id']}"
                )
                for target in a["detail"].get("targets", []):
                    answered = target["status"] if target["status"] is not None else target["error"]
                    if target.get("may_have_arrived"):
                        answered = f"{answered}, may have arrived"
                    again = "  (will retry)" if target["retried"] else ""
                    click.echo(
                        f"      {target['target']}  {answered}  {target['seconds'] * 1000:.0f} ms"
                        f"  {target['answer'][:80]!r}{again}"
                    )
                others = {k: v for k, v in a["detail"].items() if k != "targets"}
                if others:
                    click.echo(f"      {others}")


class ShowByDefault(click.Group):
    """``cicb attempts ID`` is ``cicb attempts show ID``."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands:
            args = ["show", *args]
        return super().resolve_command(ctx, args)


@click.group("attempts", cls=ShowByDefault)
def attempts() -> None:
    """Every run of a job's steps: cicb attempts JOB_OR_CALLBACK_ID [--json]."""


@attempts.command("show")
@click.argument("ident", metavar="JOB_OR_CALLBACK_ID")
@click.option("--json", "as_json", is_flag=True)
def attempts_show(ident: str, as_json: bool) -> None:
    """Which steps ran for a job (or run, or archived callback), when, how many times, and
    what each notify target answered; newest attempt first."""
    settings = settings_or_exit()
    try:
        shown: dict[str, Any] = guarded(lambda: attempts_json(settings, ident))
    except redis.RedisError as exc:
        fail(f"Redis unreachable: {exc}")
    if as_json:
        print_json(shown)
        return
    if not any(job["steps"] for job in shown["jobs"]):
        click.echo(f"no attempt kept for {ident}")
        return
    echo_steps(shown)


@attempts.command("retry-now")
@click.argument("task_id")
def attempts_retry_now(task_id: str) -> None:
    """Run a step waiting for its retry now (TASK_ID: its task id, as `cicb attempts` says)."""
    settings = settings_or_exit()
    _, log = open_log(settings)
    publisher = kind_of(settings).publisher(settings)
    try:
        waiting = guarded(lambda: retry_now(log, task_id, publisher))
    except redis.RedisError as exc:
        fail(f"Redis unreachable: {exc}")
    finally:
        publisher.close()
    click.echo(f"sent {waiting.task} {task_id} (try {waiting.retries + 1}) now")
