"""Reconcile's targets found in CICB_CI_BUCKETS: the queues whose jobs CI lists, with the Tags
their workflows and kind give, every workflow; asked at most hourly, the last answer kept
when CI cannot be asked."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from pipeline.ci.queues import WORKFLOW, CiQueues, Notify, Queue
from pipeline.reconcile import QueueTarget, ReconcileStore, WorkflowTarget, discovered, plan
from pipeline.reconcile.ci import CiUnavailable
from pipeline.settings import Settings

BUCKET, REGION = "media-1250000000", "ap-guangzhou"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


class FakeQueues(CiQueues):
    """CI's queues of one bucket; ``down`` makes every call fail for now."""

    def __init__(self) -> None:
        super().__init__(lambda region: None)  # type: ignore[arg-type,return-value]
        self.calls = 0
        self.down = False

    def queues(self, bucket: str, region: str) -> Iterator[Queue]:
        self.calls += 1
        if self.down:
            raise CiUnavailable("CI answered HTTP 503")
        for kind, ident in (("media", "pmedia"), ("pic", "ppic"), ("doc", "pdoc"), ("ai", "pai")):
            yield Queue(bucket, region, kind, ident, ident, "Active", Notify())

    def workflows(self, bucket: str, region: str) -> Iterator[Queue]:
        yield Queue(
            bucket,
            region,
            WORKFLOW,
            "wone",
            "wone",
            "Active",
            Notify(),
            workflow_queue="pmedia",
            workflow_tags=("Snapshot", "Transcode"),
        )


@pytest.fixture
def store(broker_url: str) -> ReconcileStore:
    return ReconcileStore(redis.Redis.from_url(broker_url), retention_s=7 * 24 * 3600)


SETTINGS = Settings(ci_buckets=(f"{BUCKET}:{REGION}",), reconcile_tags=("Tts",))


def test_the_queues_ci_lists_jobs_for_with_the_tags_it_can_learn(store: ReconcileStore) -> None:
    ci = FakeQueues()
    found = discovered(SETTINGS, store, now=NOW, ci=lambda: ci)
    assert found == [
        QueueTarget(BUCKET, REGION, "pmedia", ("Snapshot", "Transcode")),
        QueueTarget(BUCKET, REGION, "ppic", ("PicProcess",)),
        QueueTarget(BUCKET, REGION, "pai", ()),
        WorkflowTarget(BUCKET, REGION, "wone"),
    ]
    # In a pass, the configured Tags come first; the AI queue takes them too.
    targets = {t.name: t for t in plan(SETTINGS, store, now=NOW, discovered=found)}
    assert targets[f"{BUCKET}:{REGION}:pmedia"].tags == ("Tts", "Snapshot", "Transcode")  # type: ignore[union-attr]
    assert targets[f"{BUCKET}:{REGION}:pai"].tags == ("Tts",)  # type: ignore[union-attr]
    assert f"{BUCKET}:{REGION}:workflow:wone" in targets


def test_ci_is_asked_at_most_hourly_and_its_last_answer_kept_when_it_is_down(
    store: ReconcileStore,
) -> None:
    ci = FakeQueues()
    first = discovered(SETTINGS, store, now=NOW, ci=lambda: ci)
    assert discovered(SETTINGS, store, now=NOW + timedelta(minutes=59), ci=lambda: ci) == first
    assert ci.calls == 1
    ci.down = True
    assert discovered(SETTINGS, store, now=NOW + timedelta(minutes=61), ci=lambda: ci) == first
    assert ci.calls == 2
    ci.down = False
    discovered(SETTINGS, store, now=NOW + timedelta(minutes=62), ci=lambda: ci)
    assert ci.calls == 3


def test_without_buckets_nothing_is_asked(store: ReconcileStore) -> None:
    ci = FakeQueues()
    assert discovered(Settings(), store, now=NOW, ci=lambda: ci) == [] and ci.calls == 0
