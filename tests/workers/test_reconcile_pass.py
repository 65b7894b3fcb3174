"""cicb.reconcile on the worker tier: a pass that the broker cannot take is retried."""

from __future__ import annotations

import uuid

import pytest

from tests.support import wait_until
from tests.workers.conftest import Tier, refuse

SAMPLE_QUEUE_ID = b"p2242ab62c7c94486915508540933a2c6"  # tier.callback's


def test_a_broker_that_cannot_take_a_queues_pass_retries_the_reconcile_pass(
    tier: Tier, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workers.reconcile as reconcile

    refusals = refuse(monkeypatch, reconcile.reconcile_queue)
    # Its queue is learned: a target of the pass. A queue of its own (a worker writes what
    # it learned once a minute, and the tier empties Redis between tests).
    queue_id = f"p{uuid.uuid4().hex}".encode()
    assert SAMPLE_QUEUE_ID in tier.callback("jlearned")
    tier.ingest(tier.callback("jlearned").replace(SAMPLE_QUEUE_ID, queue_id))
    tier.idle()
    tier.app.send_task("cicb.reconcile", queue="actions")
    wait_until(
        lambda: tier.count("cicb_tasks_total", task="cicb.reconcile_queue", outcome="done"),
        timeout_s=30,
        what="the queue's pass, sent by the retried reconcile pass",
    )
    tier.idle()
    assert refusals == []
    assert tier.dead_letters() == []
    retried = {"task": "cicb.reconcile", "outcome": "retried", "error": "BrokerUnavailable"}
    assert tier.count("cicb_tasks_total", **retried) == 1
    assert tier.count("cicb_tasks_total", task="cicb.reconcile", outcome="done") == 1
