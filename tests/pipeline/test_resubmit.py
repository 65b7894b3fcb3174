"""retry_job's resubmission: the real SDK against a local server answering CI's /jobs API."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from pipeline.actions.cos import ci_time, cos_client
from pipeline.actions.resubmit import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_NEVER_RETRY_CODES,
    AttemptStore,
    GaveUp,
    NotResubmittable,
    ResubmitFailed,
    ResubmitRejected,
    build_job_request,
    decide,
    input_region,
    resubmit,
)
from pipeline.errors import PermanentError, TransientError
from pipeline.parsing.events import Event, JobEvent
from pipeline.parsing.reader import parse
from tests.peers import NEW_JOB_ID, CiServer
from tests.support import SAMPLES, free_port

BUCKET = "test-1234567890"
REGION = "ap-chongqing"

FAILED_TRANSCODE = b"""<Response><EventName>TaskFinish</EventName><JobsDetail>
<Code>InternalError</Code><Message>transcode worker lost</Message>
<CreationTime>2022-06-30T19:30:20+0800</CreationTime>
<EndTime>2022-06-30T19:31:56+0800</EndTime>
<Input><BucketId>test-1234567890</BucketId><Object>input/demo.mp4</Object>
<Region>ap-chongqing</Region>
<CosHeaders><Key>Content-Type</Key><Value>video/mp4</Value></CosHeaders></Input>
<JobId>j06668dc0f86811ecb90d0b03267ce0e5</JobId>
<Operation>
<MediaInfo><Format><Duration>13.654000</Duration></Format></MediaInfo>
<MediaResult><OutputFile><Bucket>test-1234567890</Bucket><ObjectName>out/demo.mp4</ObjectName>
<Region>ap-chongqing</Region></OutputFile></MediaResult>
<Output><Bucket>test-1234567890</Bucket><Object>out/demo.${ext}</Object>
<Region>ap-chongqing</Region></Output>
<TemplateId>t1460606b9752148c4ab182f55163ba7cd</TemplateId>
<TemplateName>template_transcode</TemplateName>
<UserData>order-42</UserData><JobLevel>0</JobLevel>
</Operation>
<QueueId>p2242ab62c7c94486915508540933a2c6</QueueId>
<StartTime>2022-06-30T19:30:21+0800</StartTime><State>Failed</State>
<Tag>Transcode</Tag></JobsDetail></Response>"""

FAILED_WORKFLOW_JOB = b"""<Response><EventName>TaskFinish</EventName><JobsDetail>
<Code>InternalError</Code><Message>super resolution failed</Message>
<Input><BucketId>test-1234567890</BucketId><Object>input/demo.mp4</Object>
<Region>ap-chongqing</Region></Input>
<JobId>j2b4e0f4af86911ecb90d0b03267ce0e5</JobId>
<Operation>
<DigitalWatermark><IgnoreError>false</IgnoreError><Message>123456789ab</Message>
<State>Failed</State><Type>Text</Type><Version>V1</Version></DigitalWatermark>
<MediaInfo><Format><Size>15134046</Size></Format></MediaInfo>
<Output><Bucket>test-1234567890</Bucket><Object>output/super_resolution.${ext}</Object>
<Region>ap-chongqing</Region></Output>
<TemplateId>t1f1ae1dfsdc9ds41dsb31632d45710642a</TemplateId>
<TemplateName>template_superresolution</TemplateName>
<TranscodeTemplateId>t156c107210e7243c5817354565d81b578</TranscodeTemplateId>
<UserData>This is my SuperResolution job.</UserData><JobLevel>0</JobLevel>
<WatermarkTemplateId>t143ae6e040af6431aa772c9ec3f0a3f36</WatermarkTemplateId>
<WatermarkTemplateId>t12a74d11687d444deba8a6cc52051ac27</WatermarkTemplateId>
</Operation>
<QueueId>p2242ab62c7c94486915508540933a2c6</QueueId><State>Failed</State>
<Tag>SuperResolution</Tag>
<Workflow><Name>SuperResolution_1581665960537</Name>
<RunId>ic90edd59f84f11ec9d4f525400a3c59f</RunId>
<WorkflowId>web6ac56c1ef54dbfa44d7f4103203be9</WorkflowId>
<WorkflowName>workflow-test</WorkflowName></Workflow>
</JobsDetail></Response>"""

CI_ERROR = b"""<?xml version='1.0' encoding='utf-8' ?><Error><Code>{code}</Code>
<Message>{message}</Message><RequestId>NjJiZDYwYTFfNjUzYTYyNjRfZjEwZl8xMmZhYzY5</RequestId>
<TraceId>OGVmYzZiMmQzYjA2OWNhODk0NTRkMTBiOWVmMDAxODc0OWRkZjk0ZDM1NmI1M2E2MTRlY2MzZDhmNmI5MWI1OTBjYzE2MjAxN2M1MzJiOTdkZjMxMDVlYTZjN2FiMmI0</TraceId></Error>"""


@pytest.fixture
def store(broker_url: str) -> Iterator[AttemptStore]:
    client = redis.Redis.from_url(broker_url)
    yield AttemptStore(client)
    client.close()


def client_for(endpoint: str) -> Any:
    return cos_client(
        secret_id="AKIDexample0123456789",
        secret_key="secret-key-example-0123456789",
        region=REGION,
        endpoint=endpoint,
        scheme="http",
        timeout_s=5,
    )


def event(body: bytes) -> JobEvent:
    (parsed,) = parse(body)
    assert isinstance(parsed, JobEvent)
    return parsed


def decide_for(ev: Event, store: AttemptStore) -> Any:
    return decide(
        ev,
        attempts=store,
        max_attempts=DEFAULT_MAX_ATTEMPTS,
        never_codes=DEFAULT_NEVER_RETRY_CODES,
    )


def test_resubmits_through_the_sdk_and_records_the_attempt(
    ci_server: CiServer, store: AttemptStore, broker_url: str
) -> None:
    failed = event(FAILED_TRANSCODE)
    decision = decide_for(failed, store)
    assert decision.resubmit and decision.attempt == 1 and decision.next_attempt == 2

    new_id = resubmit(
        failed,
        client=client_for(ci_server.endpoint),
        attempts=store,
        attempt=decision.next_attempt,
    )

    assert new_id == NEW_JOB_ID
    [sent] = ci_server.requests
    assert sent["method"] == "POST"
    assert sent["path"] == "/jobs"
    assert sent["headers"]["Host"] == f"{BUCKET}.ci.{REGION}.myqcloud.com"
    assert sent["headers"]["Authorization"].startswith("q-sign-algorithm=sha1&q-ak=AKIDexample")
    assert sent["headers"]["Content-Type"] == "application/xml"
    request = ET.fromstring(sent["body"])
    assert request.tag == "Request"
    assert request.findtext("Tag") == "Transcode"
    assert request.findtext("Input/Object") == "input/demo.mp4"
    assert request.findtext("QueueId") == "p2242ab62c7c94486915508540933a2c6"
    # The queue's callback settings apply to the new job, as to the first.
    assert [request.find(k) for k in ("CallBack", "CallBackFormat", "CallBackType")] == [None] * 3
    operation = request.find("Operation")
    assert operation is not None
    assert [child.tag for child in operation] == [
        "Output",
        "TemplateId",
        "UserData",
        "JobLevel",
    ]
    assert operation.findtext("TemplateId") == "t1460606b9752148c4ab182f55163ba7cd"
    assert operation.findtext("Output/Bucket") == BUCKET
    assert operation.findtext("Output/Region") == REGION
    assert operation.findtext("Output/Object") == "out/demo.${ext}"
    assert operation.findtext("UserData") == "order-42"

    # The attempt travels with the new job: its own callback is attempt 2, the last one.
    assert redis.Redis.from_url(broker_url).get(f"cicb:attempts:{NEW_JOB_ID}") == b"2"
    assert store.attempt_of(NEW_JOB_ID) == 2
    second_failure = dataclasses.replace(failed, job_id=NEW_JOB_ID)
    again = decide_for(second_failure, store)
    assert again.outcome == "exhausted" and again.gave_up and not again.resubmit
    assert again.attempt == 2
    error = again.error()
    assert isinstance(error, GaveUp) and isinstance(error, PermanentError)
    assert (error.attempts, error.code) == (2, "InternalError")


def test_a_duplicate_callback_does_not_submit_twice(
    ci_server: CiServer, store: AttemptStore
) -> None:
    failed = event(FAILED_TRANSCODE)
    client = client_for(ci_server.endpoint)
    first = resubmit(failed, client=client, attempts=store, attempt=2)
    second = resubmit(failed, client=client, attempts=store, attempt=2)
    assert first == second == NEW_JOB_ID
    assert len(ci_server.requests) == 1


def test_a_workflow_job_is_resubmitted_as_a_job(ci_server: CiServer, store: AttemptStore) -> None:
    failed = event(FAILED_WORKFLOW_JOB)
    assert failed.workflow is not None
    assert failed.workflow.run_id == "ic90edd59f84f11ec9d4f525400a3c59f"
    decision = decide_for(failed, store)
    assert decision.resubmit

    resubmit(failed, client=client_for(ci_server.endpoint), attempts=store, attempt=2)

    request = ET.fromstring(ci_server.requests[0]["body"])
    assert request.findtext("Tag") == "SuperResolution"
    assert request.find("Workflow") is None
    assert request.find("CallBack") is None  # the queue's callback settings apply
    operation = request.find("Operation")
    assert operation is not None
    assert operation.find("MediaInfo") is None
    assert operation.find("TemplateName") is None
    assert operation.findtext("TranscodeTemplateId") == "t156c107210e7243c5817354565d81b578"
    assert [e.text for e in operation.findall("WatermarkTemplateId")] == [
        "t143ae6e040af6431aa772c9ec3f0a3f36",
        "t12a74d11687d444deba8a6cc52051ac27",
    ]
    # The step's report goes, the watermark text to embed stays.
    watermark = operation.find("DigitalWatermark")
    assert watermark is not None
    assert {e.tag: e.text for e in watermark} == {
        "IgnoreError": "false",
        "Message": "123456789ab",
        "Type": "Text",
        "Version": "V1",
    }


def test_success_is_not_resubmitted(store: AttemptStore) -> None:
    succeeded = event(FAILED_TRANSCODE.replace(b"<State>Failed</State>", b"<State>Success</State>"))
    decision = decide_for(succeeded, store)
    assert decision.outcome == "not_failed"
    assert not decision.resubmit and not decision.gave_up


@pytest.mark.parametrize("code", ["InputFileNotExist", "InvalidInput.DefinitionNotExist"])
def test_never_retry_codes_give_up(store: AttemptStore, code: str) -> None:
    body = FAILED_TRANSCODE.replace(b"InternalError", code.encode())
    decision = decide_for(event(body), store)
    assert decision.outcome == "never_retry" and decision.gave_up
    assert decision.code == code and decision.attempt == 1
    assert code in str(decision.error())


def test_attempts_used_up_give_up(store: AttemptStore) -> None:
    failed = event(FAILED_TRANSCODE)
    store.record(failed.job_id, 2, 60)
    decision = decide_for(failed, store)
    assert decision.outcome == "exhausted" and decision.attempt == 2
    assert decision.next_attempt is None
    more = decide(failed, attempts=store, max_attempts=3, never_codes=DEFAULT_NEVER_RETRY_CODES)
    assert more.resubmit and more.next_attempt == 3


def test_a_callback_without_input_object_is_not_resubmittable() -> None:
    failed = dataclasses.replace(event(FAILED_TRANSCODE), input=None)
    with pytest.raises(NotResubmittable) as caught:
        build_job_request(failed)
    assert isinstance(caught.value, PermanentError)
    with pytest.raises(NotResubmittable, match="no input region"):
        input_region(failed)
    assert input_region(event(FAILED_TRANSCODE)) == REGION


def test_a_job_without_a_tag_is_not_resubmittable(store: AttemptStore) -> None:
    untagged = dataclasses.replace(event(FAILED_TRANSCODE), tag="")
    with pytest.raises(NotResubmittable, match="no Tag"):
        decide_for(untagged, store)
    with pytest.raises(NotResubmittable, match="no Tag"):
        build_job_request(untagged)


@pytest.mark.parametrize(
    "body",
    [
        (SAMPLES / "workflowfinish_success.xml").read_bytes(),
        b'{"code": 4001, "message": "down", "data": {"event": "ReviewImage", "trace_id": "t1"}}',
    ],
    ids=["workflow", "moderation"],
)
def test_only_a_job_can_be_resubmitted(body: bytes, store: AttemptStore) -> None:
    (other,) = parse(body)
    assert not isinstance(other, JobEvent)
    with pytest.raises(NotResubmittable, match=f"not a job callback: '{other.event}'"):
        decide_for(other, store)
    with pytest.raises(NotResubmittable):
        build_job_request(other)
    with pytest.raises(NotResubmittable):
        input_region(other)
    with pytest.raises(NotResubmittable):
        resubmit(other, client=None, attempts=store, attempt=2)  # refused before any call


def test_ci_500_is_transient(ci_server: CiServer, store: AttemptStore) -> None:
    ci_server.answers.append((500, CI_ERROR.replace(b"{code}", b"InternalError")))
    with pytest.raises(ResubmitFailed) as caught:
        resubmit(
            event(FAILED_TRANSCODE),
            client=client_for(ci_server.endpoint),
            attempts=store,
            attempt=2,
        )
    assert isinstance(caught.value, TransientError)
    assert caught.value.status == 500
    assert caught.value.__cause__ is not None
    assert store.resubmitted_as("j06668dc0f86811ecb90d0b03267ce0e5") is None


def test_ci_400_is_permanent(ci_server: CiServer, store: AttemptStore) -> None:
    error = CI_ERROR.replace(b"{code}", b"InvalidArgument")
    ci_server.answers.append((400, error.replace(b"{message}", b"invalid queue id")))
    with pytest.raises(ResubmitRejected) as caught:
        resubmit(
            event(FAILED_TRANSCODE),
            client=client_for(ci_server.endpoint),
            attempts=store,
            attempt=2,
        )
    assert isinstance(caught.value, PermanentError)
    assert (caught.value.status, caught.value.code) == (400, "InvalidArgument")
    assert caught.value.message == "invalid queue id"
    assert len(ci_server.requests) == 1  # no SDK retry of a refusal


def test_closed_port_is_transient(store: AttemptStore) -> None:
    with pytest.raises(ResubmitFailed) as caught:
        resubmit(
            event(FAILED_TRANSCODE),
            client=client_for(f"127.0.0.1:{free_port()}"),
            attempts=store,
            attempt=2,
        )
    assert isinstance(caught.value, TransientError)
    assert caught.value.__cause__ is not None


def test_an_unreadable_success_answer_is_checked_with_ci_before_a_new_try(
    ci_server: CiServer, store: AttemptStore
) -> None:
    # CI may have created the job: the next try reads CI's job list before submitting.
    ci_server.creates_jobs = True
    ci_server.answers.append((200, b"<Response><JobsDetail><Code>Success"))
    ci_server.jobs[BUCKET] = [submitted_job("jmade", FAILED_TRANSCODE_REQUEST)]
    failed = event(FAILED_TRANSCODE)
    client = client_for(ci_server.endpoint)
    with pytest.raises(ResubmitFailed) as caught:
        resubmit(failed, client=client, attempts=store, attempt=2)
    assert "answer was lost" in str(caught.value)
    assert resubmit(failed, client=client, attempts=store, attempt=2) == "jmade"
    assert len(ci_server.submissions()) == 1


def submitted_job(job_id: str, request: dict[str, str]) -> dict[str, Any]:
    """A job CI created from a submission, as its job list shows it."""
    return {
        "JobId": job_id,
        "Tag": request["Tag"],
        "State": "Submitted",
        "CreationTime": ci_time(datetime.now(UTC)),
        "QueueId": request["QueueId"],
        "Input": {"Object": request["Input"]},
        "Operation": {"TemplateId": request["TemplateId"], "UserData": request["UserData"]},
    }


FAILED_TRANSCODE_REQUEST = {
    "Tag": "Transcode",
    "QueueId": "p2242ab62c7c94486915508540933a2c6",
    "Input": "input/demo.mp4",
    "TemplateId": "t1460606b9752148c4ab182f55163ba7cd",
    "UserData": "order-42",
}


def test_a_submission_whose_answer_was_lost_is_not_made_twice(
    ci_server: CiServer, store: AttemptStore
) -> None:
    ci_server.creates_jobs = True
    ci_server.hangups = 1  # CI creates the job, and the answer never comes back
    failed = event(FAILED_TRANSCODE)
    client = client_for(ci_server.endpoint)
    with pytest.raises(ResubmitFailed):
        resubmit(failed, client=client, attempts=store, attempt=2)
    [created] = ci_server.jobs[BUCKET]
    # The next try asks CI first, finds the job, and submits nothing.
    new_id = resubmit(failed, client=client, attempts=store, attempt=2)
    assert new_id == created["JobId"]
    assert len(ci_server.submissions()) == 1
    assert [r["path"] for r in ci_server.lists()] == ["/jobs"]
    assert store.resubmitted_as(failed.job_id) == new_id
    assert store.attempt_of(new_id) == 2
    # ...and from then on it is known without asking.
    assert resubmit(failed, client=client, attempts=store, attempt=2) == new_id
    assert len(ci_server.lists()) == 1


def test_a_submission_that_never_reached_ci_is_made_on_the_next_try(
    ci_server: CiServer, store: AttemptStore
) -> None:
    ci_server.creates_jobs = True
    failed = event(FAILED_TRANSCODE)
    with pytest.raises(ResubmitFailed):
        resubmit(failed, client=client_for(f"127.0.0.1:{free_port()}"), attempts=store, attempt=2)
    # Its outcome is unknown to cicb: CI's list says no such job, so it is submitted now.
    new_id = resubmit(failed, client=client_for(ci_server.endpoint), attempts=store, attempt=2)
    assert [j["JobId"] for j in ci_server.jobs[BUCKET]] == [new_id]
    assert len(ci_server.submissions()) == 1


def test_a_refused_submission_gives_its_claim_back(
    ci_server: CiServer, store: AttemptStore
) -> None:
    ci_server.creates_jobs = True
    ci_server.answers.append((503, CI_ERROR.replace(b"{code}", b"ServiceUnavailable")))
    failed = event(FAILED_TRANSCODE)
    client = client_for(ci_server.endpoint)
    with pytest.raises(ResubmitFailed):
        resubmit(failed, client=client, attempts=store, attempt=2)
    # CI answered: it created nothing, and the next try submits without asking.
    resubmit(failed, client=client, attempts=store, attempt=2)
    assert len(ci_server.submissions()) == 2 and ci_server.lists() == []
    assert len(ci_server.jobs[BUCKET]) == 1


def test_a_second_try_while_the_first_is_under_way_waits(
    ci_server: CiServer, store: AttemptStore
) -> None:
    failed = event(FAILED_TRANSCODE)
    assert store.claim(failed.job_id, 2) is None  # another worker is calling CI now
    with pytest.raises(ResubmitFailed) as caught:
        resubmit(failed, client=client_for(ci_server.endpoint), attempts=store, attempt=2)
    assert "under way" in str(caught.value)
    assert ci_server.submissions() == []


def test_a_job_without_user_data_carries_a_marker_it_is_found_by(
    ci_server: CiServer, store: AttemptStore
) -> None:
    ci_server.creates_jobs = True
    ci_server.hangups = 1
    body = FAILED_TRANSCODE.replace(b"<UserData>order-42</UserData>", b"")
    failed = event(body)
    client = client_for(ci_server.endpoint)
    with pytest.raises(ResubmitFailed):
        resubmit(failed, client=client, attempts=store, attempt=2)
    [request] = ci_server.submissions()
    marker = f"cicb-resubmit:{failed.job_id}:2"
    assert ET.fromstring(request["body"]).findtext("Operation/UserData") == marker
    # Another job of the same input and template, not this one's: not taken for it.
    other = {**FAILED_TRANSCODE_REQUEST, "UserData": "someone else's"}
    ci_server.jobs[BUCKET].insert(0, submitted_job("jother", other))
    [_, created] = ci_server.jobs[BUCKET]
    assert resubmit(failed, client=client, attempts=store, attempt=2) == created["JobId"]
    assert len(ci_server.submissions()) == 1


def test_an_error_answer_declaring_entities_is_read_as_text_not_expanded(
    ci_server: CiServer, store: AttemptStore
) -> None:
    hostile = (
        b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY x "expanded">]>'
        b"<Error><Code>&x;</Code><Message>&x;</Message></Error>"
    )
    ci_server.answers.append((400, hostile))
    with pytest.raises(ResubmitRejected) as caught:
        resubmit(
            event(FAILED_TRANSCODE),
            client=client_for(ci_server.endpoint),
            attempts=store,
            attempt=2,
        )
    # Refused by the safe reader: kept as the raw text, never interpreted.
    assert caught.value.code is None
    assert caught.value.message == hostile.decode()
