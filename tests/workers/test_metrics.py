"""What a real worker counts: each task run by outcome and route, each callback by outcome,
what notify did for each target, a route's end-to-end latency and how late CI delivered."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from pipeline.cli import main as cicb
from tests.support import wait_until
from tests.workers.conftest import Tier

MAX_RETRIES = 2  # CICB_MAX_RETRIES of the tier


def ended(body: bytes, ago_s: float) -> bytes:
    """``body`` with its job's EndTime ``ago_s`` seconds before now."""
    end = (datetime.now(UTC) - timedelta(seconds=ago_s)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    return re.sub(rb"<EndTime>[^<]*</EndTime>", f"<EndTime>{end}</EndTime>".encode(), body)


def test_a_routes_steps_are_counted_done_under_its_name_and_its_end_is_its_latency(
    tier: Tier,
) -> None:
    tier.ingest(tier.callback("jm-steps", tag="Steps"))
    wait_until(lambda: len(tier.runs()) == 2, what="both steps")
    tier.idle()
    for step in ("tests.first", "tests.second"):
        assert tier.count("cicb_tasks_total", task=step, route="steps", outcome="done") == 1
        assert tier.count("cicb_task_duration_seconds_count", task=step) == 1
    # The ingest task is no step of a route.
    assert tier.count("cicb_tasks_total", task="cicb.ingest", route="", outcome="done") == 1
    assert tier.counts("cicb_callbacks_total", "outcome") == {"dispatched": 1}
    assert tier.count("cicb_callbacks_total", route="steps", outcome="dispatched") == 1
    # One latency per callback whose route ended, not one per step.
    assert tier.count("cicb_callback_latency_seconds_count", route="steps") == 1
    assert 0 < tier.count("cicb_callback_latency_seconds_sum", route="steps") < 20


def test_how_late_ci_delivered_is_observed_by_tag(tier: Tier) -> None:
    tier.ingest(ended(tier.callback("jm-late", tag="Steps"), ago_s=90))
    tier.idle()
    assert tier.count("cicb_delivery_delay_seconds_count", tag="Steps") == 1
    assert tier.count("cicb_delivery_delay_seconds_sum", tag="Steps") == pytest.approx(90, abs=5)
    # Between one minute and two: the 120 s bucket has it, the 60 s one does not.
    assert tier.count("cicb_delivery_delay_seconds_bucket", tag="Steps", le="120.0") == 1
    assert tier.count("cicb_delivery_delay_seconds_bucket", tag="Steps", le="60.0") == 0


def test_retries_and_the_dead_letter_are_counted_with_the_error(tier: Tier) -> None:
    tier.ingest(tier.callback("jm-fail", tag="Failing"))
    tier.wait_for_dead_letters(1)
    tier.idle()
    outcomes = {
        outcome: tier.count(
            "cicb_tasks_total",
            task="tests.failing",
            route="failing",
            outcome=outcome,
            error="TransientError",
        )
        for outcome in ("retried", "dead_lettered", "done")
    }
    assert outcomes == {"retried": MAX_RETRIES, "dead_lettered": 1, "done": 0}
    # Its route never ended: no latency.
    assert tier.count("cicb_callback_latency_seconds_count", route="failing") == 0


def test_a_body_that_is_not_a_callback_counts_as_a_dead_lettered_callback(tier: Tier) -> None:
    tier.ingest(b"<not a callback")
    tier.wait_for_dead_letters(1)
    tier.idle()
    assert tier.counts("cicb_callbacks_total", "outcome") == {"dead_lettered": 1}
    assert (
        tier.count(
            "cicb_tasks_total", task="cicb.ingest", outcome="dead_lettered", error="ParseError"
        )
        == 1
    )


def test_unrouted_and_duplicate_callbacks_are_counted(tier: Tier) -> None:
    tier.ingest(tier.callback("jm-running", state="Running"))
    body = tier.callback("jm-dup", tag="Steps")
    tier.ingest(body)
    tier.idle()
    tier.ingest(body)
    tier.idle()
    assert tier.counts("cicb_callbacks_total", "outcome") == {
        "unrouted": 1,
        "dispatched": 1,
        "duplicate": 1,
    }


def test_a_step_that_already_finished_is_counted_skipped(tier: Tier) -> None:
    tier.ingest(tier.callback("jm-skip", tag="Steps"), task_id="t-skip")
    tier.idle()
    tier.ingest(tier.callback("jm-skip", tag="Steps"), task_id="t-skip")
    tier.idle()
    assert tier.count("cicb_tasks_total", task="cicb.ingest", outcome="skipped") == 1


def test_notify_counts_each_target_by_kind_and_result(tier: Tier) -> None:
    # /a takes it; /b fails once for now (retried), then refuses it for good.
    tier.targets.reply("/b", (503, {}), (400, {}))
    tier.ingest(tier.callback("jm-notify"))
    tier.wait_for_dead_letters(1)
    tier.idle()
    assert tier.counts("cicb_notifications_total", "result") == {
        "delivered": 1,
        "failed": 1,
        "refused": 1,
    }
    assert tier.count("cicb_notifications_total", kind="webhook", result="refused") == 1
    step = {"task": "cicb.notify", "route": "job-succeeded"}
    assert tier.count("cicb_tasks_total", **step, outcome="retried", error="TargetsPending") == 1
    assert (
        tier.count("cicb_tasks_total", **step, outcome="dead_lettered", error="TargetsRejected")
        == 1
    )
    # Replayed once /b takes it: only /b is told, and counted delivered.
    [letter] = tier.dead_letters()
    assert CliRunner().invoke(cicb, ["dlq", "replay", letter.id]).exit_code == 0
    wait_until(
        lambda: tier.count("cicb_notifications_total", result="delivered") == 2,
        what="the replay's delivery",
    )
    assert tier.targets.paths("jm-notify") == ["/a", "/b", "/b", "/b"]
