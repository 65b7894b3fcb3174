"""retry_job and resubmit_job, run by the tier's worker against its CI stand-in: a Failed job
is resubmitted once, even when CI's answer to the submission is lost."""

from __future__ import annotations

import pytest

from tests.support import SAMPLES, wait_until
from tests.workers.conftest import Tier, refuse

FAILED = (SAMPLES / "transcode_failed.xml").read_bytes()
FAILED_JOB_ID = "j7d0eafdaf86c11ecbdf419856486c0ab"


def test_a_failed_job_is_resubmitted_once(tier: Tier) -> None:
    tier.ingest(FAILED)
    wait_until(lambda: tier.ci.submissions(), what="the resubmission")
    tier.idle()
    assert len(tier.ci.submissions()) == 1
    new = tier.redis.get(f"cicb:resubmitted:{FAILED_JOB_ID}")
    assert new is not None and new.decode() == tier.ci.jobs[next(iter(tier.ci.jobs))][0]["JobId"]


def test_retry_job_after_a_timeout_that_did_submit_does_not_submit_again(tier: Tier) -> None:
    tier.ci.hangups = 1  # CI creates the job; its answer never comes back
    tier.ingest(FAILED)
    wait_until(
        lambda: tier.redis.get(f"cicb:resubmitted:{FAILED_JOB_ID}"),
        timeout_s=30,
        what="the resubmission found in CI's job list",
    )
    tier.idle()
    # One submission; the retry asked CI's job list and found the job it had created.
    assert len(tier.ci.submissions()) == 1
    assert len(tier.ci.lists()) == 1
    [created] = tier.ci.jobs[next(iter(tier.ci.jobs))]
    assert tier.redis.get(f"cicb:resubmitted:{FAILED_JOB_ID}") == created["JobId"].encode()
    assert tier.count("cicb_resubmissions_total", result="resubmitted") == 1
    assert tier.dead_letters() == []


def test_a_broker_that_cannot_take_the_resubmission_retries_retry_job_not_dead_letters_it(
    tier: Tier, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.actions as actions

    refuse(monkeypatch, actions.resubmit_job)
    tier.ingest(FAILED)
    wait_until(lambda: tier.ci.submissions(), timeout_s=30, what="the resubmission")
    tier.idle()
    assert len(tier.ci.submissions()) == 1
    assert tier.dead_letters() == []
    retried = {"task": "cicb.retry_job", "outcome": "retried", "error": "BrokerUnavailable"}
    assert tier.count("cicb_tasks_total", **retried) == 1
