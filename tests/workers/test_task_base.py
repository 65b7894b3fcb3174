"""``PipelineTask``, run by a real worker: a bound on redeliveries, one run per finished
message, retries with the shared backoff, and dead letters that keep the work whole."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipeline.brokers.inflight import Inflight, SweepResult
from pipeline.cli import main as cicb
from tests.support import wait_until
from tests.workers.conftest import Tier, refuse

MAX_DELIVERIES = 3
MAX_RETRIES = 2


def test_a_message_that_keeps_killing_its_worker_is_dead_lettered_not_run(tier: Tier) -> None:
    # Three earlier deliveries of this message never finished: each killed its worker.
    tier.redis.set("cicb:deliveries:t-deadly:0", MAX_DELIVERIES)
    tier.ingest(tier.callback("jdeadly", tag="Steps"), task_id="t-deadly")
    [letter] = tier.wait_for_dead_letters(1)
    assert letter.task == "cicb.ingest"
    assert letter.error == "RedeliveryLimit"
    assert f"delivered {MAX_DELIVERIES + 1} times" in letter.reason
    assert letter.queue == "ingest"
    tier.idle()
    assert tier.runs() == []
    # It never ran, so nothing holds its key: a replay runs its route.
    assert tier.redis.get("cicb:dedup:TaskFinish:jdeadly:Success") is None
    result = CliRunner().invoke(cicb, ["dlq", "replay", letter.id])
    assert result.exit_code == 0, result.output
    wait_until(lambda: len(tier.runs()) == 2, what="the replayed route")
    assert tier.runs() == ["first:jdeadly", "second:jdeadly"]
    assert tier.dead_letters() == []


def test_a_message_delivered_up_to_the_limit_still_runs(tier: Tier) -> None:
    tier.redis.set("cicb:deliveries:t-lucky:0", MAX_DELIVERIES - 1)
    tier.ingest(tier.callback("jlucky", tag="Steps"), task_id="t-lucky")
    wait_until(lambda: len(tier.runs()) == 2, what="the route")
    tier.idle()
    assert tier.dead_letters() == []


def test_a_finished_message_delivered_again_is_not_run_again(
    tier: Tier, caplog: pytest.LogCaptureFixture
) -> None:
    # Its worker died after the task finished and before the ack.
    tier.redis.set("cicb:done:t-finished", 1)
    tier.ingest(tier.callback("jfinished", tag="Steps"), task_id="t-finished")
    tier.idle()
    assert tier.runs() == []
    assert tier.redis.get("cicb:dedup:TaskFinish:jfinished:Success") is None
    assert any(
        isinstance(r.msg, dict) and r.msg.get("event") == "task.already_completed"
        for r in caplog.records
    )


def test_a_finished_task_is_recorded_and_no_longer_kept(tier: Tier) -> None:
    task_id = tier.ingest(tier.callback("jrecorded", tag="Steps"))
    wait_until(lambda: len(tier.runs()) == 2, what="the route")
    tier.idle()
    assert tier.redis.exists(f"cicb:done:{task_id}") == 1
    assert tier.redis.ttl(f"cicb:done:{task_id}") > 3600
    assert tier.redis.hlen("cicb:inflight:messages") == 0


def test_a_transient_error_is_retried_then_dead_lettered_with_its_work(tier: Tier) -> None:
    tier.ingest(tier.callback("jflaky", tag="Failing"))
    [letter] = tier.wait_for_dead_letters(1)
    assert tier.runs() == ["failing:jflaky"] * (MAX_RETRIES + 1)
    assert letter.task == "tests.failing"
    assert letter.queue == "actions"
    assert letter.error == "TransientError"
    assert letter.reason == "the peer is away"
    assert letter.attempts == MAX_RETRIES + 1
    assert letter.args[0]["job_id"] == "jflaky"
    tier.idle()  # dead-lettered work is no longer kept in flight
    counted = tier.count(
        "cicb_tasks_total",
        task="tests.failing",
        route="failing",
        outcome="dead_lettered",
        error="TransientError",
    )
    assert counted == 1
    assert tier.count("cicb_tasks_total", task="tests.failing", outcome="retried") == MAX_RETRIES


def test_a_failed_step_is_dead_lettered_with_its_id_and_the_steps_after_it(tier: Tier) -> None:
    tier.ingest(tier.callback("jchain", tag="FailFirst"))
    [letter] = tier.wait_for_dead_letters(1)
    assert letter.task == "tests.failing" and letter.task_id
    assert [step["task"] for step in letter.chain or []] == ["tests.second"]
    assert tier.runs() == ["failing:jchain"] * (MAX_RETRIES + 1)  # second never ran
    tier.idle()


@pytest.mark.parametrize("refusals", [1, 2])
def test_a_step_whose_next_step_the_broker_refused_is_sent_again_not_dead_lettered(
    tier: Tier, monkeypatch: pytest.MonkeyPatch, refusals: int
) -> None:
    # The first step runs and is recorded done; then the broker refuses the second as Celery
    # sends it (outside the task's body): the first's message goes out again, its delivery
    # finds it done, and the rest of the chain is sent (refused again: the same once more).
    # Without the sweep to fall back on (RabbitMQ has none; on Redis it would find the
    # first's message lost seconds later).
    monkeypatch.setattr(Inflight, "sweep", lambda *_: SweepResult())
    left = refuse(monkeypatch, tier.app.tasks["tests.second"], times=refusals)
    tier.ingest(tier.callback("jnextrefused", tag="Steps"))
    wait_until(lambda: len(tier.runs()) == 2, what="the second step, once it was sent")
    tier.idle()
    assert left == []
    assert tier.runs() == ["first:jnextrefused", "second:jnextrefused"]
    assert tier.dead_letters() == []
    by_outcome = tier.counts("cicb_tasks_total", "outcome")
    # ingest, first and second done; first's message found done once per refusal.
    assert by_outcome == {"done": 3, "skipped": refusals}
    # The copies sent again are the route's step still (its headers kept).
    skipped = {"task": "tests.first", "route": "steps", "outcome": "skipped"}
    assert tier.count("cicb_tasks_total", **skipped) == refusals
