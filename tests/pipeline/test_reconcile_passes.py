"""Reconcile's planning and passes against a real Valkey and a local CI server reached
through the real SDK: windows, checkpoints, learned targets, locks, what is lost and sent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from pipeline.brokers.envelope import Envelope
from pipeline.errors import TransientError
from pipeline.guard import Guard
from pipeline.ingest import ingest
from pipeline.parsing.reader import parse
from pipeline.reconcile import (
    CiJobs,
    QueueTarget,
    Reconciler,
    ReconcileStore,
    WorkflowTarget,
    plan,
    target_from_json,
    target_to_json,
    window,
)
from pipeline.reconcile.plan import DEFAULT_FIRST_LOOKBACK_S, DEFAULT_OVERLAP_S
from pipeline.reconcile.store import LEARN_REFRESH_S, TARGETS_KEY, learned_members
from pipeline.routing import RouteTable, table_for
from pipeline.settings import Settings
from tests.peers import CiServer, ci_error, ci_job, ci_time, job_callback, serve_ci
from tests.support import SAMPLES, free_port

BUCKET = "media-1250000000"
REGION = "ap-guangzhou"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
GRACE_S = 600
WEEK_S = 7 * 86400
QUEUE = QueueTarget(BUCKET, REGION, "q1", ("Transcode",))


@pytest.fixture
def ci() -> Iterator[CiServer]:
    with serve_ci() as server:
        yield server


@pytest.fixture
def client(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url)


@pytest.fixture
def store(client: redis.Redis) -> ReconcileStore:
    return ReconcileStore(client, retention_s=WEEK_S)


def ci_settings(ci: CiServer, **kw: Any) -> Settings:
    return Settings(
        cos_secret_id="AKIDtest", cos_secret_key="k", ci_endpoint=f"http://{ci.endpoint}", **kw
    )


class Sent(list[dict[str, Any]]):
    """The envelopes a pass put on ingest."""

    def job_ids(self) -> list[str]:
        return [json.loads(e["body"])["JobsDetail"][0]["JobId"] for e in self]


def reconciler(ci: CiServer, store: ReconcileStore, sent: Sent, **kw: Any) -> Reconciler:
    options: dict[str, Any] = {"now": NOW, "grace_s": GRACE_S, **kw}
    return Reconciler(
        ci=CiJobs.from_settings(ci_settings(ci)), store=store, publish=sent.append, **options
    )


def job(
    job_id: str, state: str, *, ago_s: float, ran_s: float = 60, tag: str = "Transcode"
) -> dict[str, Any]:
    """A job created ``ago_s`` before NOW that ran ``ran_s`` (None: still running)."""
    created = NOW - timedelta(seconds=ago_s)
    ended = None if state in ("Running", "Submitted") else created + timedelta(seconds=ran_s)
    return ci_job(
        job_id,
        bucket=BUCKET,
        region=REGION,
        queue_id="q1",
        tag=tag,
        state=state,
        created=created,
        ended=ended,
    )


# -- windows ------------------------------------------------------------------------------


def test_the_first_window_looks_back_from_now_minus_the_grace() -> None:
    span = window(checkpoint=None, now=NOW, grace_s=GRACE_S, retention_s=WEEK_S)
    assert span.end == NOW - timedelta(seconds=GRACE_S)
    assert span.start == span.end - timedelta(seconds=DEFAULT_FIRST_LOOKBACK_S)


def test_a_window_starts_at_the_checkpoint_minus_the_overlap() -> None:
    checkpoint = NOW - timedelta(hours=2)
    span = window(checkpoint=checkpoint, now=NOW, grace_s=GRACE_S, retention_s=WEEK_S)
    assert span.start == checkpoint - timedelta(seconds=DEFAULT_OVERLAP_S)
    assert span.end == NOW - timedelta(seconds=GRACE_S)


def test_since_and_until_replace_the_window_but_never_pass_the_grace_or_retention() -> None:
    since, until = NOW - timedelta(days=2), NOW - timedelta(days=1)
    span = window(
        checkpoint=NOW, now=NOW, grace_s=GRACE_S, retention_s=WEEK_S, since=since, until=until
    )
    assert (span.start, span.end) == (since, until)
    late = window(checkpoint=None, now=NOW, grace_s=GRACE_S, retention_s=WEEK_S, until=NOW)
    assert late.end == NOW - timedelta(seconds=GRACE_S)
    old = window(
        checkpoint=None,
        now=NOW,
        grace_s=GRACE_S,
        retention_s=WEEK_S,
        since=NOW - timedelta(days=30),
    )
    assert old.start == NOW - timedelta(seconds=WEEK_S)  # the deduplication keys end there
    assert window(checkpoint=NOW, now=NOW, grace_s=GRACE_S, retention_s=WEEK_S, overlap_s=0).empty


# -- targets ------------------------------------------------------------------------------


def callback_event(queue_id: str, tag: str, *, workflow_id: str | None = None) -> Any:
    node = ci_job(
        "j1",
        bucket=BUCKET,
        region=REGION,
        queue_id=queue_id,
        tag=tag,
        state="Success",
        created=NOW,
        ended=NOW,
    )
    if workflow_id:
        node["Workflow"] = {"RunId": "i1", "WorkflowId": workflow_id, "Name": "n"}
    [event] = parse(job_callback(node))
    return event


def test_targets_are_the_configured_queues_and_what_callbacks_named(
    store: ReconcileStore, client: redis.Redis
) -> None:
    store.learn(callback_event("q2", "Snapshot"), now_s=NOW.timestamp())
    store.learn(callback_event("q1", "Tts", workflow_id="w9"), now_s=NOW.timestamp())
    settings = Settings(
        reconcile_queues=(f"{BUCKET}:{REGION}:q1", "other-125:ap-beijing:q3"),
        reconcile_tags=("Transcode",),
    )
    targets = plan(settings, store, now=NOW)
    assert targets == [
        QueueTarget(BUCKET, REGION, "q1", ("Transcode", "Tts")),
        QueueTarget("other-125", "ap-beijing", "q3", ("Transcode",)),
        QueueTarget(BUCKET, REGION, "q2", ("Transcode", "Snapshot")),
        WorkflowTarget(BUCKET, REGION, "w9"),
    ]
    assert [target_from_json(target_to_json(t)) for t in targets] == targets
    # Learned targets are forgotten after the retention; a queue with no Tag is skipped.
    later = NOW + timedelta(seconds=WEEK_S + 1)
    assert plan(Settings(reconcile_queues=("b-1:r:q",)), store, now=later) == []
    assert client.zcard(TARGETS_KEY) == 0


def test_a_worker_writes_a_learned_target_at_most_once_a_minute(
    store: ReconcileStore, client: redis.Redis
) -> None:
    event = callback_event("q1", "Transcode")
    store.learn(event, now_s=1000.0)
    store.learn(event, now_s=1000.0 + LEARN_REFRESH_S - 1)
    assert client.zscore(TARGETS_KEY, f"queue|{BUCKET}|{REGION}|q1|Transcode") == 1000.0
    store.learn(event, now_s=1000.0 + LEARN_REFRESH_S)
    assert client.zscore(TARGETS_KEY, f"queue|{BUCKET}|{REGION}|q1|Transcode") == 1060.0


def test_learning_never_fails_a_callback() -> None:
    unreachable = redis.Redis(port=free_port(), socket_timeout=0.5)
    ReconcileStore(unreachable, retention_s=60).learn(callback_event("q1", "Transcode"))


# -- locks --------------------------------------------------------------------------------


def test_one_pass_at_a_time_holds_a_target(store: ReconcileStore, client: redis.Redis) -> None:
    with store.lock("b:r:q1") as first:
        assert first is not None
        with store.lock("b:r:q1") as second:
            assert second is None
        with store.lock("b:r:q2") as other:
            assert other is not None
        client.expire("cicb:reconcile:lock:b:r:q1", 5)
        first.refresh()
        assert client.ttl("cicb:reconcile:lock:b:r:q1") > 5
    with store.lock("b:r:q1") as again:
        assert again is not None


def test_a_busy_target_is_not_listed(ci: CiServer, store: ReconcileStore) -> None:
    with store.lock(QUEUE.name):
        report = reconciler(ci, store, Sent()).reconcile(QUEUE)
    assert report.busy and ci.lists() == []


# -- passes -------------------------------------------------------------------------------


def test_a_pass_sends_each_lost_finished_job_once(
    ci: CiServer, store: ReconcileStore, client: redis.Redis
) -> None:
    ci.jobs[BUCKET] = [
        job("jlost1", "Success", ago_s=3000),
        job("jlost2", "Failed", ago_s=2900),
        job("jlost3", "Cancel", ago_s=2800),
        job("jdone", "Success", ago_s=2700),  # its callback came
        job("jclaimed", "Success", ago_s=2600),  # its callback is being processed
        job("jrunning", "Running", ago_s=2500),
        job("jrecent", "Success", ago_s=900, ran_s=600),  # ended 300 s ago: within the grace
        job("jold", "Success", ago_s=5000),  # before the first window
    ]
    client.set("cicb:dedup:TaskFinish:jdone:Success", "done")
    client.set("cicb:dedup:TaskFinish:jclaimed:Success", "claimed:task-1")
    sent = Sent()
    report = reconciler(ci, store, sent).reconcile(QUEUE)
    assert sent.job_ids() == ["jlost1", "jlost2", "jlost3"]
    assert (report.listed, report.pending) == (7, 2)
    assert [f.to_json()["late_s"] for f in report.found] == [2940, 2840, 2740]
    envelope = sent[0]
    assert envelope["source"] == "reconcile" and envelope["request_id"] == "reconcile-jlost1"
    assert envelope["content_type"] == "application/json"
    # The running job holds the checkpoint back, so the next pass sees it again.
    checkpoint = store.checkpoint(f"queue|{BUCKET}|{REGION}|q1|Transcode")
    assert checkpoint == NOW - timedelta(seconds=2500)
    # A second pass, before anything ran: nothing is sent twice.
    again = Sent()
    assert reconciler(ci, store, again).reconcile(QUEUE).found == [] and again == []


def test_the_envelope_takes_a_callback_s_path_and_the_late_callback_is_a_duplicate(
    ci: CiServer, store: ReconcileStore, client: redis.Redis
) -> None:
    node = job("jlate", "Failed", ago_s=3000)
    ci.jobs[BUCKET] = [node]
    sent = Sent()
    reconciler(ci, store, sent).reconcile(QUEUE)
    guard = Guard(client, dedup_ttl_s=60)
    table: RouteTable = table_for(Settings())
    dispatched: list[tuple[str, str]] = []
    [outcome] = ingest(
        Envelope.from_json(sent[0]),  # as cicb.ingest reads the message
        table=table,
        dispatch=lambda r, e, k: dispatched.append((r.name, k)),
        guard=guard,
        owner="t1",
    )
    assert (outcome["outcome"], outcome["source"]) == ("reconciled", "reconcile")
    assert dispatched == [("job-failed", "TaskFinish:jlate:Failed")]
    late = {**sent[0], "body": job_callback(node).decode(), "content_type": "application/xml"}
    del late["source"]
    [duplicate] = ingest(
        Envelope.from_json(late), table=table, dispatch=lambda *a: None, guard=guard, owner="t2"
    )
    assert duplicate["outcome"] == "duplicate"


def test_a_job_that_ends_later_is_sent_by_a_later_pass(ci: CiServer, store: ReconcileStore) -> None:
    ci.jobs[BUCKET] = [job("jslow", "Running", ago_s=3000)]
    reconciler(ci, store, Sent()).reconcile(QUEUE)
    ci.jobs[BUCKET] = [job("jslow", "Success", ago_s=3000, ran_s=2000)]  # ended 1000 s ago
    sent = Sent()
    reconciler(ci, store, sent, now=NOW + timedelta(seconds=300)).reconcile(QUEUE)
    assert sent.job_ids() == ["jslow"]


def test_a_job_pending_for_too_long_no_longer_holds_the_checkpoint(
    ci: CiServer, store: ReconcileStore
) -> None:
    ci.jobs[BUCKET] = [job("jstuck", "Pause", ago_s=3000)]
    reconciler(ci, store, Sent(), max_pending_s=1200).reconcile(QUEUE)
    checkpoint = store.checkpoint(f"queue|{BUCKET}|{REGION}|q1|Transcode")
    assert checkpoint == NOW - timedelta(seconds=GRACE_S + 1200)


def test_a_dry_run_sends_nothing_and_moves_no_checkpoint(
    ci: CiServer, store: ReconcileStore
) -> None:
    ci.jobs[BUCKET] = [job("jlost", "Success", ago_s=3000)]
    sent = Sent()
    report = reconciler(ci, store, sent, dry_run=True).reconcile(QUEUE)
    assert [f.to_json()["job_id"] for f in report.found] == ["jlost"]
    assert not report.found[0].sent and sent == []
    assert store.checkpoint(f"queue|{BUCKET}|{REGION}|q1|Transcode") is None
    # ...so the real pass still finds it.
    assert reconciler(ci, store, sent).reconcile(QUEUE).found[0].sent
    assert sent.job_ids() == ["jlost"]


def test_until_leaves_the_checkpoints_alone(ci: CiServer, store: ReconcileStore) -> None:
    ci.jobs[BUCKET] = [job("jold", "Success", ago_s=90000)]
    sent = Sent()
    since, until = NOW - timedelta(days=2), NOW - timedelta(days=1)
    reconciler(ci, store, sent, since=since, until=until).reconcile(QUEUE)
    assert sent.job_ids() == ["jold"]
    assert store.checkpoint(f"queue|{BUCKET}|{REGION}|q1|Transcode") is None


def test_a_pass_reads_at_most_max_jobs_and_goes_on_from_there(
    ci: CiServer, store: ReconcileStore
) -> None:
    ci.jobs[BUCKET] = [job(f"j{i:03d}", "Success", ago_s=3000 - i) for i in range(150)]
    sent = Sent()
    reconciler(ci, store, sent, max_jobs=120).reconcile(QUEUE)
    assert len(sent) == 120
    reconciler(ci, store, sent, now=NOW + timedelta(seconds=1)).reconcile(QUEUE)
    assert sorted(sent.job_ids()) == [f"j{i:03d}" for i in range(150)]


def test_a_refused_queue_is_counted_and_the_others_still_reconciled(
    ci: CiServer, store: ReconcileStore
) -> None:
    ci.jobs[BUCKET] = [job("jlost", "Success", ago_s=3000)]
    ci.refusals["q0"] = ci_error(403, "AccessDenied", "Access Denied.")
    refused = QueueTarget(BUCKET, REGION, "q0", ("Transcode", "Snapshot"))
    sent = Sent()
    reports = reconciler(ci, store, sent).reconcile_all([refused, QUEUE])
    assert reports[0].error is not None and "AccessDenied" in reports[0].error
    assert len([r for r in ci.lists() if r["query"]["queueId"] == "q0"]) == 1  # stopped there
    assert sent.job_ids() == ["jlost"]
    assert store.errors() == {refused.name: 1, "total": 1}


def test_each_targets_last_pass_is_kept_for_the_console_and_a_dry_run_is_not(
    ci: CiServer, store: ReconcileStore
) -> None:
    ci.jobs[BUCKET] = [job("jlost", "Success", ago_s=3000)]
    ci.refusals["q0"] = ci_error(403, "AccessDenied", "Access Denied.")
    refused = QueueTarget(BUCKET, REGION, "q0", ("Transcode",))
    reconciler(ci, store, Sent(), dry_run=True).reconcile(QUEUE)
    assert store.last_passes(10) == []
    reconciler(ci, store, Sent()).reconcile_all([refused, QUEUE])
    passes = {p["target"]: p for p in store.last_passes(10)}
    assert passes[QUEUE.name]["found"] == 1 and passes[QUEUE.name]["error"] is None
    assert "AccessDenied" in passes[refused.name]["error"]
    assert {p["at"] for p in passes.values()} == {NOW.isoformat()}


def test_a_passing_failure_is_raised_for_a_retry_and_nothing_is_marked_sent(
    ci: CiServer, store: ReconcileStore
) -> None:
    ci.jobs[BUCKET] = [job("jlost", "Success", ago_s=3000)]

    def broker_down(envelope: dict[str, Any]) -> None:
        raise TransientError("broker did not take the message")

    rec = Reconciler(
        ci=CiJobs.from_settings(ci_settings(ci)),
        store=store,
        publish=broker_down,
        now=NOW,
        grace_s=GRACE_S,
    )
    with pytest.raises(TransientError):
        rec.reconcile(QUEUE)
    assert store.checkpoint(f"queue|{BUCKET}|{REGION}|q1|Transcode") is None
    sent = Sent()
    reconciler(ci, store, sent).reconcile(QUEUE)
    assert sent.job_ids() == ["jlost"]
    ci.refusals["q1"] = ci_error(503, "ServiceUnavailable", "busy")
    [report] = reconciler(ci, store, Sent(), now=NOW + timedelta(seconds=1)).reconcile_all([QUEUE])
    assert report.error is not None and "503" in report.error
    assert store.errors() == {}  # only refusals are counted


def test_a_lost_workflow_run_is_sent_with_its_nodes(ci: CiServer, store: ReconcileStore) -> None:
    created = NOW - timedelta(seconds=3000)
    ci.runs[BUCKET] = [
        {
            "RunId": f"i{n}",
            "WorkflowId": "w1",
            "WorkflowName": "thumbnails",
            "State": state,
            "CreateTime": ci_time(created + timedelta(seconds=n)),
            "Object": "in/a.mp4",
            "Tasks": {
                "Type": "Snapshot",
                "JobId": f"j{n}",
                "State": state,
                "EndTime": ci_time(created + timedelta(seconds=60)),
            },
        }
        for n, state in enumerate(["Success", "Failed", "Running"])
    ]
    ci.runs[BUCKET][2]["Tasks"]["EndTime"] = "-"
    sent = Sent()
    report = reconciler(ci, store, sent).reconcile(WorkflowTarget(BUCKET, REGION, "w1"))
    bodies = [json.loads(e["body"]) for e in sent]
    assert [b["WorkflowExecution"]["RunId"] for b in bodies] == ["i0", "i1"]
    assert bodies[0]["WorkflowExecution"]["Tasks"]["JobId"] == "j0"
    assert [f.event.dedup_key for f in report.found] == [
        "WorkflowFinish:i0:Success",
        "WorkflowFinish:i1:Failed",
    ]
    assert report.pending == 1


def test_the_targets_a_real_callback_names() -> None:
    [job_of_workflow] = parse((SAMPLES / "transcode_workflow.xml").read_bytes())
    assert learned_members(job_of_workflow) == [
        "queue|examplebucket-1250000000|ap-chongqing|p2242ab62c7c94486915508540933a2c6|Transcode",
        "workflow|examplebucket-1250000000|ap-chongqing|web6ac56c1ef54dbfa44d7f4103203be9",
    ]
    # A WorkflowFinish callback names no region: its workflow is learned from its jobs'.
    [run] = parse((SAMPLES / "workflowfinish_success.xml").read_bytes())
    assert learned_members(run) == []
