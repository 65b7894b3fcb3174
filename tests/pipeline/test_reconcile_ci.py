"""CI's lists through the real SDK (cos-python-sdk-v5) against a local server speaking CI's
list and query APIs: paging by NextToken, creation-time windows, CI's errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.actions.cos import ci_time
from pipeline.reconcile.ci import CiJobs, CiRefused, CiUnavailable
from pipeline.settings import Settings
from tests.peers import CiServer, ci_error, ci_job, serve_ci
from tests.support import free_port

BUCKET = "media-1250000000"
REGION = "ap-guangzhou"
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ci() -> Iterator[CiServer]:
    with serve_ci() as server:
        yield server


def lister(endpoint: str) -> CiJobs:
    settings = Settings(
        cos_secret_id="AKIDtest", cos_secret_key="secret", ci_endpoint=f"http://{endpoint}"
    )
    return CiJobs.from_settings(settings)


def jobs(count: int, *, queue_id: str = "q1", tag: str = "Transcode") -> list[dict[str, object]]:
    return [
        ci_job(
            f"j{queue_id}{tag}{i:04d}",
            bucket=BUCKET,
            region=REGION,
            queue_id=queue_id,
            tag=tag,
            state="Success",
            created=T0 + timedelta(seconds=i),
            ended=T0 + timedelta(seconds=i + 30),
        )
        for i in range(count)
    ]


def listed(ci: CiServer, start: datetime, end: datetime, **kw: str) -> list[str]:
    found = lister(ci.endpoint).jobs(
        bucket=BUCKET,
        region=REGION,
        queue_id=kw.get("queue_id", "q1"),
        tag=kw.get("tag", "Transcode"),
        start=start,
        end=end,
    )
    return [str(j["JobId"]) for j in found]


def test_times_are_written_as_ci_writes_them() -> None:
    assert ci_time(datetime(2001, 1, 1, 0, 0, tzinfo=UTC)) == "2001-01-01T08:00:00+0800"


def test_every_page_is_read_oldest_first(ci: CiServer) -> None:
    ci.jobs[BUCKET] = list(reversed(jobs(250)))
    found = listed(ci, T0, T0 + timedelta(hours=1))
    assert found == [f"jq1Transcode{i:04d}" for i in range(250)]
    requests = ci.lists()
    assert [r["query"]["nextToken"] for r in requests] == ["", "100", "200"]
    first = requests[0]
    assert first["host"].startswith(f"{BUCKET}.ci.{REGION}.myqcloud.com")
    assert first["query"]["size"] == "100"
    assert first["query"]["orderByTime"] == "Asc"
    assert first["query"]["queueId"] == "q1" and first["query"]["tag"] == "Transcode"
    assert first["query"]["startCreationTime"] == "2026-05-01T20:00:00+0800"
    assert first["query"]["endCreationTime"] == "2026-05-01T21:00:00+0800"


def test_only_the_window_the_queue_and_the_tag_are_listed(ci: CiServer) -> None:
    ci.jobs[BUCKET] = jobs(100) + jobs(5, queue_id="q2") + jobs(5, tag="Snapshot")
    found = listed(ci, T0 + timedelta(seconds=10), T0 + timedelta(seconds=19))
    assert found == [f"jq1Transcode{i:04d}" for i in range(10, 20)]
    assert listed(ci, T0, T0 + timedelta(hours=1), tag="Snapshot") == [
        f"jq1Snapshot{i:04d}" for i in range(5)
    ]


def test_an_empty_page_ends_the_list(ci: CiServer) -> None:
    # An empty page has no JobsDetail and NextToken None.
    assert listed(ci, T0, T0 + timedelta(hours=1)) == []
    assert len(ci.lists()) == 1
    ci.jobs[BUCKET] = jobs(100)  # exactly one full page: the next one is empty
    assert len(listed(ci, T0, T0 + timedelta(hours=1))) == 100
    assert len(ci.lists()) == 2


def test_a_refusal_is_permanent_with_ci_s_code_and_message(ci: CiServer) -> None:
    ci.refusals["q1"] = ci_error(403, "AccessDenied", "Access Denied.")
    with pytest.raises(CiRefused) as refused:
        listed(ci, T0, T0 + timedelta(hours=1))
    assert (refused.value.status, refused.value.code) == (403, "AccessDenied")
    assert refused.value.message == "Access Denied."
    assert len(ci.lists()) == 1  # the SDK does not retry: the task owns retries
    ci.refusals["q1"] = ci_error(404, "NoSuchQueue", "queue not found")
    with pytest.raises(CiRefused, match="NoSuchQueue"):
        listed(ci, T0, T0 + timedelta(hours=1))


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
        (429, "TooManyRequests"),
        (400, "RequestLimitExceeded"),
    ],
)
def test_server_errors_and_throttling_are_transient(ci: CiServer, status: int, code: str) -> None:
    ci.refusals["q1"] = ci_error(status, code, "try later")
    with pytest.raises(CiUnavailable) as failed:
        listed(ci, T0, T0 + timedelta(hours=1))
    assert (failed.value.status, failed.value.code) == (status, code)
    assert len(ci.lists()) == 1


def test_an_unreachable_ci_is_transient() -> None:
    with pytest.raises(CiUnavailable, match="CI not reached"):
        listed(CiServer(endpoint=f"127.0.0.1:{free_port()}"), T0, T0 + timedelta(hours=1))


def test_a_workflow_s_runs_are_listed_and_one_is_read_with_its_nodes(ci: CiServer) -> None:
    run = {
        "RunId": "i1a2b3c4d5e6f708192a3b4c5d6e7f801",
        "WorkflowId": "w1",
        "WorkflowName": "thumbnails",
        "State": "Success",
        "CreateTime": ci_time(T0),
        "Object": "in/a.mp4",
        "Tasks": {"Type": "Snapshot", "JobId": "j1", "State": "Success", "EndTime": ci_time(T0)},
    }
    ci.runs[BUCKET] = [run]
    ci_jobs = lister(ci.endpoint)
    [entry] = ci_jobs.runs(
        bucket=BUCKET, region=REGION, workflow_id="w1", start=T0, end=T0 + timedelta(hours=1)
    )  # one run: the SDK gives a dict, not a list
    assert entry["RunId"] == run["RunId"] and "Tasks" not in entry
    detail = ci_jobs.run(bucket=BUCKET, region=REGION, run_id=run["RunId"])
    assert detail is not None and detail["Tasks"]["JobId"] == "j1"
    assert ci_jobs.run(bucket=BUCKET, region=REGION, run_id="inone") is None
