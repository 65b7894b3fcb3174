"""``cicb dlq``: list, show, replay and purge dead letters."""

from __future__ import annotations

import sys

import click

from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.kind import kind_of
from pipeline.brokers.queues import connection, dead_letter_queue
from pipeline.cli.common import (
    fail,
    guarded,
    print_json,
    settings_or_exit,
)
from pipeline.settings import Settings


@click.group()
def dlq() -> None:
    """List, show, replay and purge dead letters."""


def _dead_letters(settings: Settings) -> DeadLetterQueue:
    return DeadLetterQueue(lambda: connection(settings), dead=dead_letter_queue(settings))


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True)
def dlq_list(as_json: bool) -> None:
    """Count and list the dead letters, oldest first."""
    letters: list[DeadLetter] = guarded(_dead_letters(settings_or_exit()).entries)
    if as_json:
        print_json({"count": len(letters), "dead_letters": [d.summary() for d in letters]})
        return
    click.echo(f"{len(letters)} dead letter(s)")
    for d in letters:
        click.echo(f"{d.id}  {d.failed_at}  {d.task}  attempts={d.attempts}  {d.error}: {d.reason}")


@dlq.command("show")
@click.argument("dead_letter_id")
@click.option("--body", is_flag=True, help="Write only the raw callback body, byte for byte.")
def dlq_show(dead_letter_id: str, body: bool) -> None:
    """Print one dead letter as JSON (with the callback body decoded when it is text)."""
    letter: DeadLetter = guarded(lambda: _dead_letters(settings_or_exit()).get(dead_letter_id))
    envelope = letter.envelope()
    if body:
        if envelope is None:
            fail(f"dead letter {dead_letter_id} holds no callback body")
        sys.stdout.buffer.write(envelope.body)
        return
    print_json(letter.to_json())


@dlq.command("replay")
@click.argument("dead_letter_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
def dlq_replay(dead_letter_id: str | None, replay_all: bool) -> None:
    """Send a dead letter (or all) back to the queue it came from."""
    if bool(dead_letter_id) == replay_all:
        fail("give a dead letter ID or --all", code=2)
    settings = settings_or_exit()
    publisher = kind_of(settings).publisher(settings)

    def resend(letter: DeadLetter) -> None:
        publisher.send(
            letter.task,
            letter.args,
            letter.kwargs,
            queue_name=letter.queue,
            chain=letter.chain,
            headers=letter.headers,
        )

    count = guarded(lambda: _dead_letters(settings).replay(resend, dead_letter_id))
    click.echo(f"replayed {count} dead letter(s)")


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Really delete every dead letter.")
def dlq_purge(yes: bool) -> None:
    """Delete every dead letter."""
    if not yes:
        fail("purge deletes every dead letter: add --yes", code=2)
    count = guarded(_dead_letters(settings_or_exit()).purge)
    click.echo(f"purged {count} dead letter(s)")
