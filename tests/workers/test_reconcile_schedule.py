"""What Celery beat sends: one reconcile pass every CICB_RECONCILE_INTERVAL_S, or nothing.

``workers`` is imported inside the tests, after the worker tier set the environment up.
"""

from __future__ import annotations

from pipeline.settings import Settings
from tests.workers.conftest import Tier

KEYS = {"cos_secret_id": "AKIDtest", "cos_secret_key": "k"}


def test_beat_sends_a_pass_every_interval_that_expires_after_one(tier: Tier) -> None:
    from workers.app import RECONCILE_TASK, beat_schedule

    assert beat_schedule(Settings(**KEYS)) == {
        RECONCILE_TASK: {
            "task": "cicb.reconcile",
            "schedule": 300.0,
            "options": {"queue": "actions", "expires": 300.0},
        }
    }


def test_beat_sends_nothing_when_off_or_without_ci_keys(tier: Tier) -> None:
    from workers.app import beat_schedule

    assert beat_schedule(Settings(**KEYS, reconcile_interval_s=0)) == {}
    assert beat_schedule(Settings()) == {}


def test_workers_run_the_reconcile_tasks_and_beat_keeps_no_file(tier: Tier) -> None:
    from workers.app import configuration

    conf = configuration()
    assert "workers.reconcile" in conf["include"]
    assert conf["beat_scheduler"] == "workers.beat:Scheduler"
    assert {"cicb.reconcile", "cicb.reconcile_queue"} <= set(tier.app.tasks)


def test_beat_says_it_is_alive_while_it_sends_passes_and_leaves_when_it_stops(
    tier: Tier,
) -> None:
    from pipeline.reconcile.beats import HEARTBEAT_S, Beats
    from workers.app import RECONCILE_TASK
    from workers.beat import Scheduler

    beats = Beats(tier.redis)
    scheduler = Scheduler(app=tier.app)
    try:
        # It wakes at least once a heartbeat, whenever the pass is next due.
        assert scheduler.tick() <= HEARTBEAT_S
        assert [b.beat_id for b in beats.alive()] == [scheduler.beat_id]
    finally:
        scheduler.close()
    assert beats.alive() == []

    # A beat whose schedule has no reconcile pass sends none, and is not counted.
    quiet = Scheduler(app=tier.app)
    try:
        del quiet.schedule[RECONCILE_TASK]
        quiet.tick()
        assert beats.alive() == []
    finally:
        quiet.close()
