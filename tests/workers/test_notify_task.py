"""The ``cicb.notify`` task, run by a real worker against real HTTP targets: only the
targets still pending are sent to, and retries wait what the target asks, up to the cap."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from pipeline.actions.targets import Target
from pipeline.cli import main as cicb
from tests.support import wait_until
from tests.workers.conftest import Tier

BACKOFF_MAX_S = 2  # CICB_RETRY_BACKOFF_MAX_S of the tier
MAX_RETRIES = 2


def event(job_id: str) -> dict[str, Any]:
    return {"event": "TaskFinish", "job_id": job_id, "tag": "Tts", "state": "Success"}


def notify(tier: Tier, job_id: str, **kwargs: Any) -> None:
    from workers.actions import notify as task

    task.apply_async((event(job_id),), kwargs)


def test_a_callback_routed_to_notify_reaches_every_target_once(tier: Tier) -> None:
    tier.ingest(tier.callback("jboth"))
    tier.idle()
    assert sorted(tier.targets.paths("jboth")) == ["/a", "/b"]


def test_only_the_pending_targets_are_notified(tier: Tier) -> None:
    _, b = tier.targets.urls
    notify(tier, "jpending", pending=[Target.parse(b).id])
    tier.idle()
    assert tier.targets.paths("jpending") == ["/b"]


def test_a_retry_sends_only_to_the_targets_that_failed(tier: Tier) -> None:
    tier.targets.reply("/b", (503, {}), (502, {}))
    notify(tier, "jretry")
    tier.idle()
    paths = tier.targets.paths("jretry")
    assert paths.count("/a") == 1
    assert paths.count("/b") == 3


def test_a_retry_waits_at_least_what_retry_after_asks(tier: Tier) -> None:
    tier.targets.reply("/b", (503, {"Retry-After": str(BACKOFF_MAX_S)}))
    notify(tier, "jwait")
    tier.idle()
    first, second = tier.targets.arrivals("/b")
    # Without Retry-After the first retry waits at most the backoff base (1 s).
    assert second - first >= BACKOFF_MAX_S - 0.05


def test_retry_after_is_capped_by_the_backoff_cap(tier: Tier) -> None:
    tier.targets.reply("/b", (429, {"Retry-After": "3600"}))
    notify(tier, "jcap")
    wait_until(lambda: len(tier.targets.arrivals("/b")) == 2, timeout_s=15, what="the retry")
    first, second = tier.targets.arrivals("/b")
    assert second - first < BACKOFF_MAX_S + 3
    tier.idle()


def test_a_refusing_target_is_dead_lettered_and_replay_notifies_only_it(tier: Tier) -> None:
    _, b = tier.targets.urls
    tier.targets.reply("/b", (404, {}))
    notify(tier, "jrefused")
    [letter] = tier.wait_for_dead_letters(1)
    assert letter.task == "cicb.notify"
    assert letter.error == "TargetsRejected"
    assert letter.attempts == 1
    assert letter.kwargs == {"pending": [Target.parse(b).id]}
    tier.idle()
    assert tier.targets.paths("jrefused") == ["/a", "/b"]
    result = CliRunner().invoke(cicb, ["dlq", "replay", letter.id])
    assert result.exit_code == 0, result.output
    tier.idle()
    assert tier.targets.paths("jrefused") == ["/a", "/b", "/b"]
    assert tier.dead_letters() == []


def test_a_target_failing_every_time_is_dead_lettered_after_the_retries(tier: Tier) -> None:
    _, b = tier.targets.urls
    tier.targets.reply("/b", *[(503, {})] * (MAX_RETRIES + 1))
    notify(tier, "jdown")
    [letter] = tier.wait_for_dead_letters(1)
    assert (letter.error, letter.attempts) == ("TargetsPending", MAX_RETRIES + 1)
    assert letter.kwargs == {"pending": [Target.parse(b).id]}
    tier.idle()
    paths = tier.targets.paths("jdown")
    assert (paths.count("/a"), paths.count("/b")) == (1, MAX_RETRIES + 1)


def test_an_argument_that_is_not_an_event_is_dead_lettered_untried(tier: Tier) -> None:
    from workers.actions import notify as task

    task.apply_async(({"foo": 1},))
    [letter] = tier.wait_for_dead_letters(1)
    assert (letter.task, letter.error, letter.attempts) == ("cicb.notify", "ParseError", 1)
    assert letter.args == [{"foo": 1}]
    tier.idle()
    assert tier.targets.paths() == []
