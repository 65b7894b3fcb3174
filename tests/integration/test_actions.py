"""The default routes with every action configured, through a real worker and real peers:
an S3 server (moto) for copy_output, a local CI /jobs API for retry_job."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import boto3
import pytest

from tests.peers import NEW_JOB_ID, CiServer
from tests.support import Stack, Target, metric, wait_until

pytestmark = pytest.mark.integration

REGION = "ap-guangzhou"
MEDIA = b"\x00\x01 rendered audio " * 4096


def job_callback(job_id: str, state: str, *, code: str = "Success", md5: str = "") -> bytes:
    return f"""<Response><EventName>TaskFinish</EventName><JobsDetail>
<Code>{code}</Code><Message>{"" if state == "Success" else "transcode failed"}</Message>
<JobId>{job_id}</JobId><State>{state}</State><Tag>Transcode</Tag>
<QueueId>p2242ab62c7c94486915508540933a2c6</QueueId>
<CreationTime>2022-06-30T19:33:18+0800</CreationTime>
<Input><BucketId>media-1250000000</BucketId><Object>in/talk.mp4</Object>
<Region>{REGION}</Region></Input>
<Operation><TemplateId>t0123456789abcdef0123456789abcdef</TemplateId>
<Output><Bucket>media-1250000000</Bucket><Region>{REGION}</Region>
<Object>out/talk.mp3</Object></Output>
<MediaResult><OutputFile><Bucket>media-1250000000</Bucket><Region>{REGION}</Region>
<ObjectName>/out/talk.mp3</ObjectName><ObjectPrefix/>
<Md5Info><Md5>{md5}</Md5><ObjectName>/out/talk.mp3</ObjectName></Md5Info>
</OutputFile></MediaResult></Operation></JobsDetail></Response>""".encode()


@pytest.fixture
def s3(s3_url: str) -> Any:
    client = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1")
    for bucket in ("media-1250000000", "archive-1250000000"):
        client.create_bucket(Bucket=bucket)
    client.put_object(Bucket="media-1250000000", Key="out/talk.mp3", Body=MEDIA)
    return client


@pytest.fixture
def actions_stack(
    make_stack: Callable[..., Stack], target: Target, ci_server: CiServer, s3_url: str
) -> Stack:
    return make_stack(
        CICB_NOTIFY_URLS=target.url,
        CICB_COPY_DEST="s3://archive-1250000000/{tag}/{job_id}/",
        CICB_S3_ENDPOINT_URL=s3_url,
        CICB_COS_SECRET_ID="AKIDtest",
        CICB_COS_SECRET_KEY="test-secret-key-never-logged",
        CICB_CI_ENDPOINT=f"http://{ci_server.endpoint}",
        CICB_RETRY_MAX_ATTEMPTS="2",
    )


def test_the_default_routes_use_every_configured_action(actions_stack: Stack) -> None:
    table = {
        r["name"]: r["chain"] for r in json.loads(actions_stack.cli("routes", "--json").stdout)
    }
    assert table["job-succeeded"] == ["cicb.notify", "cicb.copy_output"]
    assert table["job-failed"] == ["cicb.notify", "cicb.retry_job"]


def test_success_is_notified_then_its_output_copied(
    actions_stack: Stack, target: Target, s3: Any
) -> None:
    md5 = hashlib.md5(MEDIA).hexdigest()
    body = job_callback("jcopy0001", "Success", md5=md5)
    assert actions_stack.post(body).status_code == 200
    target.wait_for(1)
    key = "Transcode/jcopy0001/talk.mp3"
    copied = wait_until(
        lambda: s3.get_object(Bucket="archive-1250000000", Key=key)["Body"].read(),
        what="the copied object",
    )
    assert copied == MEDIA
    # The same callback again is a duplicate: its route does not run twice.
    assert actions_stack.post(body).status_code == 200
    wait_until(lambda: '"outcome": "duplicate"' in actions_stack.worker.log(), what="duplicate")
    assert actions_stack.worker.log().count('"outputs_copied"') == 1
    assert len(target.received) == 1
    assert actions_stack.dead_letters() == []
    samples = actions_stack.worker_metrics()
    assert metric(samples, "cicb_copied_objects_total", result="copied") == 1
    assert metric(samples, "cicb_copied_objects_total", result="skipped") == 0
    assert metric(samples, "cicb_copied_bytes_total") == len(MEDIA)
    route = {"route": "job-succeeded", "outcome": "done"}
    assert metric(samples, "cicb_tasks_total", task="cicb.copy_output", **route) == 1
    assert metric(samples, "cicb_callback_latency_seconds_count", route="job-succeeded") == 1
    # Its attempts say what was copied: one object, its bytes, nothing skipped.
    shown = json.loads(actions_stack.cli("attempts", "jcopy0001", "--json").stdout)
    [copy_step] = [s for s in shown["jobs"][0]["steps"] if s["task"] == "cicb.copy_output"]
    [copy] = copy_step["attempts"]
    assert (copy["outcome"], copy["step"]) == ("done", 1)
    assert (copy["detail"]["copied"], copy["detail"]["skipped"]) == (1, 0)
    assert copy["detail"]["copied_bytes"] == len(MEDIA)


def test_a_missing_output_is_dead_lettered_with_a_clear_reason(
    actions_stack: Stack, target: Target, s3: Any
) -> None:
    body = job_callback("jcopy0002", "Success").replace(b"out/talk.mp3", b"out/gone.mp3")
    assert actions_stack.post(body).status_code == 200
    [letter] = wait_until(actions_stack.dead_letters, what="dead letter")
    assert letter["task"] == "cicb.copy_output"
    assert "out/gone.mp3" in letter["reason"] and "does not exist" in letter["reason"]
    assert letter["attempts"] == 1


def test_a_failed_job_is_resubmitted_once_then_given_up(
    actions_stack: Stack, target: Target, ci_server: CiServer
) -> None:
    assert (
        actions_stack.post(job_callback("jfail0001", "Failed", code="InternalError")).status_code
        == 200
    )
    wait_until(lambda: ci_server.requests, timeout_s=30, what="resubmission")
    [request] = ci_server.requests
    assert request["path"] == "/jobs"
    sent = ET.fromstring(request["body"])
    assert sent.findtext("Tag") == "Transcode"
    assert sent.findtext("Input/Object") == "in/talk.mp4"
    assert sent.findtext("Operation/TemplateId") == "t0123456789abcdef0123456789abcdef"
    assert sent.findtext("QueueId") == "p2242ab62c7c94486915508540933a2c6"
    assert sent.find("Operation/MediaResult") is None

    # The new job fails too: that is attempt 2 of 2, so cicb gives up.
    assert (
        actions_stack.post(job_callback(NEW_JOB_ID, "Failed", code="InternalError")).status_code
        == 200
    )
    [letter] = wait_until(actions_stack.dead_letters, timeout_s=30, what="give up")
    assert letter["task"] == "cicb.retry_job"
    assert letter["error"] == "GaveUp"
    assert len(ci_server.requests) == 1
    samples = actions_stack.worker_metrics()
    assert metric(samples, "cicb_resubmissions_total", result="resubmitted") == 1
    assert metric(samples, "cicb_resubmissions_total", result="gave_up") == 1
    given_up = {"task": "cicb.retry_job", "outcome": "dead_lettered", "error": "GaveUp"}
    assert metric(samples, "cicb_tasks_total", route="job-failed", **given_up) == 1
    notified = [(e["job_id"], e["state"]) for e in target.wait_for(2)]
    assert notified == [("jfail0001", "Failed"), (NEW_JOB_ID, "Failed")]
    logs = actions_stack.worker.log() + actions_stack.receiver.log()
    assert "test-secret-key-never-logged" not in logs
    assert (
        "test-secret-key-never-logged" not in actions_stack.cli("dlq", "show", letter["id"]).stdout
    )


def test_an_input_error_is_never_resubmitted(
    actions_stack: Stack, target: Target, ci_server: CiServer
) -> None:
    body = job_callback("jfail0002", "Failed", code="InputFileNotExist")
    assert actions_stack.post(body).status_code == 200
    [letter] = wait_until(actions_stack.dead_letters, what="give up")
    assert letter["error"] == "GaveUp" and "InputFileNotExist" in letter["reason"]
    assert ci_server.requests == []
    assert target.wait_for(1)[0]["code"] == "InputFileNotExist"
