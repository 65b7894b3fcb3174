"""The ``cicb.ingest`` task, run by a real worker: each callback runs its route once, a
chain dispatched again repeats no finished step, and what cannot be read is kept."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from pipeline.cli import main as cicb
from pipeline.routing import Route
from tests.support import wait_until
from tests.workers.conftest import Tier, refuse

STEPS = ["first", "second"]


def counters(tier: Tier) -> dict[str, float]:
    """Events ingested in this test, by outcome (``cicb_callbacks_total``)."""
    return tier.counts("cicb_callbacks_total", "outcome")


def test_a_callback_delivered_twice_runs_its_route_once(tier: Tier) -> None:
    body = tier.callback("jtwice", tag="Steps")
    tier.ingest(body)
    tier.ingest(body)
    tier.idle()
    assert tier.runs() == ["first:jtwice", "second:jtwice"]
    assert counters(tier) == {"dispatched": 1, "duplicate": 1}


def test_a_chain_dispatched_again_repeats_no_finished_step(tier: Tier) -> None:
    from workers.tasks import dispatch

    event = {"event": "TaskFinish", "job_id": "jagain", "tag": "Steps", "state": "Success"}
    route = Route("steps", ["tests.first", "tests.second"])
    now = datetime.now(UTC)
    dispatch(route, event, "TaskFinish:jagain:Success", received_at=now)
    tier.idle()
    dispatch(route, event, "TaskFinish:jagain:Success", received_at=now)
    tier.idle()
    assert tier.runs() == ["first:jagain", "second:jagain"]
    # Another callback (another key) is other work.
    dispatch(route, {**event, "job_id": "jother"}, "TaskFinish:jother:Success", received_at=now)
    tier.idle()
    assert tier.runs()[2:] == ["first:jother", "second:jother"]


def test_an_ingest_message_delivered_again_after_a_crash_repeats_no_step(tier: Tier) -> None:
    body = tier.callback("jcrash", tag="Steps")
    tier.ingest(body, task_id="t-crash")
    tier.idle()
    # The worker died after dispatching and before recording the ingest task done or the
    # key confirmed: the message comes back with its claim still held.
    tier.redis.delete("cicb:done:t-crash")
    tier.redis.set("cicb:dedup:TaskFinish:jcrash:Success", "claimed:t-crash")
    tier.ingest(body, task_id="t-crash")
    tier.idle()
    assert tier.runs() == ["first:jcrash", "second:jcrash"]
    assert counters(tier)["dispatched"] == 2  # dispatched again; its steps did nothing


def test_a_callback_no_route_takes_is_counted_and_remembered(tier: Tier) -> None:
    tier.ingest(tier.callback("jrunning", state="Running"))
    tier.idle()
    assert tier.runs() == [] and tier.targets.paths() == []
    assert counters(tier) == {"unrouted": 1}
    assert tier.redis.get("cicb:dedup:TaskFinish:jrunning:Running") == b"done"


def test_a_body_that_is_not_a_callback_is_dead_lettered_byte_for_byte(tier: Tier) -> None:
    garbage = b"\xff\xfe<not a callback>\x00"
    tier.ingest(garbage)
    [letter] = tier.wait_for_dead_letters(1)
    assert letter.task == "cicb.ingest"
    assert letter.error == "ParseError"
    assert letter.attempts == 1
    assert letter.received_at is not None
    envelope = letter.envelope()
    assert envelope is not None and envelope.body == garbage
    assert base64.b64decode(letter.args[0]["body"]) == garbage
    tier.idle()
    assert counters(tier) == {"dead_lettered": 1}


def test_a_callback_whose_route_could_not_start_is_not_a_duplicate_when_replayed(
    tier: Tier,
) -> None:
    # Its route names a task no worker has: dead-lettered, and its key given back, so the
    # replay (once the workers know the task) is not skipped as a duplicate of itself.
    tier.ingest(tier.callback("jbroken", tag="Broken"))
    [letter] = tier.wait_for_dead_letters(1)
    assert (letter.task, letter.error) == ("cicb.ingest", "ConfigError")
    assert "tests.nobody" in letter.reason
    assert tier.redis.get("cicb:dedup:TaskFinish:jbroken:Success") is None
    result = CliRunner().invoke(cicb, ["dlq", "replay", letter.id])
    assert result.exit_code == 0, result.output
    wait_until(lambda: counters(tier).get("dead_lettered") == 2, what="the replay to fail")
    [again] = tier.dead_letters()
    assert (again.task, again.error) == ("cicb.ingest", "ConfigError")
    tier.idle()
    assert "duplicate" not in counters(tier)


def test_a_broker_that_cannot_take_the_route_retries_the_callback_not_dead_letters_it(
    tier: Tier, monkeypatch: pytest.MonkeyPatch
) -> None:
    refusals = refuse(monkeypatch, tier.app.tasks["tests.first"])
    tier.ingest(tier.callback("jbrokeraway", tag="Steps"))
    wait_until(lambda: len(tier.runs()) == 2, what="the route, once the broker is back")
    tier.idle()
    assert refusals == []
    assert tier.runs() == ["first:jbrokeraway", "second:jbrokeraway"]
    assert tier.dead_letters() == []
    retried = {"task": "cicb.ingest", "outcome": "retried", "error": "BrokerUnavailable"}
    assert tier.count("cicb_tasks_total", **retried) == 1
    assert counters(tier) == {"dispatched": 1}
