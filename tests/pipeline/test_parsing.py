"""Parsing real Tencent CI callbacks into normalized events, and refusing everything else.

The tests about the shared samples (``../shared/samples``, what Tencent sent) read them
through ``shared_samples()``: skipped without them, failed under ``CI=true``. The others use
the project's own samples (``tests/samples``) or bodies written here.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from pipeline.errors import ParseError
from pipeline.parsing.decoding import event_from_dict
from pipeline.parsing.events import (
    GenericEvent,
    InputObject,
    JobEvent,
    OutputObject,
    WorkflowEvent,
    WorkflowRef,
)
from pipeline.parsing.reader import parse
from tests.support import SAMPLES, SHARED_SAMPLE_NAMES, shared_samples

CST = timezone(timedelta(hours=8))


def sample(name: str) -> bytes:
    """One of the project's own samples (tests/samples)."""
    return (SAMPLES / name).read_bytes()


def shared(name: str) -> bytes:
    """One of the shared samples: the test skips without them (fails under CI=true)."""
    __tracebackhide__ = True
    return (shared_samples() / name).read_bytes()


def one_job(body: bytes | str) -> JobEvent:
    events = parse(body.encode() if isinstance(body, str) else body)
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, JobEvent)
    return event


def job_xml(job: str, *, operation: str = "") -> str:
    return (
        "<Response><EventName>TaskFinish</EventName><JobsDetail>"
        f"{job}<Operation>{operation}</Operation></JobsDetail></Response>"
    )


MINIMAL_JOB = "<JobId>j1</JobId><Tag>Snapshot</Tag><State>Success</State>"


# -- the shared samples, as Tencent sent them ----------------------------------------------


def test_the_shared_samples_are_the_ones_the_tests_name() -> None:
    """So that a sample added to ../shared/samples is parsed below too."""
    assert sorted(p.name for p in shared_samples().iterdir()) == sorted(SHARED_SAMPLE_NAMES)


@pytest.mark.parametrize("name", SHARED_SAMPLE_NAMES)
def test_every_shared_sample_parses_and_round_trips(name: str) -> None:
    events = parse(shared(name))
    assert events
    for event in events:
        assert event.state == "Success"
        assert event.event in {"TaskFinish", "WorkflowFinish"}
        wire = json.loads(json.dumps(event.to_dict()))
        assert event_from_dict(wire) == event


def test_xml_and_json_of_the_same_shared_callback_give_equal_events() -> None:
    from_xml = parse(shared("tts_workflow.xml"), content_type="application/xml")
    from_json = parse(shared("tts_workflow.json"), content_type="application/json")
    assert from_xml == from_json
    assert from_xml[0].to_dict() == from_json[0].to_dict()


def test_tts_api_job() -> None:
    event = one_job(shared("tts_api.xml"))
    assert event.event == "TaskFinish"
    assert event.job_id == "j707f4864f86811ecb90d0b03267ce0e5"
    assert event.tag == "Tts"
    assert event.state == "Success"
    assert event.code == "Success"
    assert event.message is None
    assert event.queue_id == "p2242ab62c7c94486915508540933a2c6"
    assert event.outputs == (
        OutputObject(
            bucket="test-123456789",
            region="ap-chongqing",
            key="output/aixiaonan.mp3",
            md5="5b2ca33cd7357abb1e0ea29f57544df9",
        ),
    )
    assert event.created_at == datetime(2022, 6, 30, 19, 33, 18, tzinfo=CST)
    assert event.created_at is not None and event.created_at.utcoffset() == timedelta(hours=8)
    assert event.ended_at == datetime(2022, 6, 30, 11, 33, 24, tzinfo=UTC)
    assert event.input is None
    assert event.workflow is None
    assert event.template_id == "t1f1ae1dfsdc9ds41dsb31632d457ds6s2a"
    assert event.template_name == "template_tts"
    assert event.dedup_key == "TaskFinish:j707f4864f86811ecb90d0b03267ce0e5:Success"
    # The raw Operation is kept, without the empty nodes.
    assert event.operation["TtsConfig"] == {
        "Input": "Hi, I'm Aixiaonan. Nice to meet you.",
        "InputType": "Text",
    }
    assert "Format" not in event.operation["MediaInfo"]


def test_superresolution_workflow_job() -> None:
    event = one_job(shared("superresolution_workflow.xml"))
    assert event.tag == "SuperResolution"
    assert event.sub_tag == "DigitalWatermark"
    assert event.input == InputObject(
        bucket="test-123456789",
        region="ap-chongqing",
        key="input/demo.mp4",
        cos_headers={
            "Content-Type": "video/mp4",
            "x-cos-request-id": "NjJiZDYwYTFfNjUzYTYyNjRfZjEwZl8xMmZhYzY5",
            "EventName": "cos:ObjectCreated:Put",
            "Size": "1424687",
        },
    )
    assert event.workflow == WorkflowRef(
        run_id="ic90edd59f84f11ec9d4f525400a3c59f",
        workflow_id="web6ac56c1ef54dbfa44d7f4103203be9",
        workflow_name="workflow-test",
        name="SuperResolution_1581665960537",
    )
    assert event.user_data == "This is my SuperResolution job."
    # MediaResult wins over the templated Operation.Output (output/super_resolution.${ext}).
    assert [o.key for o in event.outputs] == ["output/super_resolution.mp4"]
    assert event.outputs[0].md5 == "852883012a6ba726e6ed8d9b984edfdf"
    assert event.operation["WatermarkTemplateId"] == [
        "t143ae6e040af6431aa772c9ec3f0a3f36",
        "t12a74d11687d444deba8a6cc52051ac27",
    ]
    assert event.operation["DigitalWatermark"]["State"] == "Failed"


def test_workflow_job_takes_cos_headers_from_operation_input() -> None:
    event = one_job(shared("tts_workflow.json"))
    assert event.input is not None
    assert event.input.cos_headers["Size"] == "265"
    assert event.input.key is None


def test_workflow_finish() -> None:
    (event,) = parse(shared("workflow_finish.xml"))
    assert isinstance(event, WorkflowEvent)
    assert event.event == "WorkflowFinish"
    assert event.run_id == "i70ae991a152911ecb184525400a8700f"
    assert event.workflow_id == "w29ba54d02b7340dd9fb44eb5beb786b9"
    assert event.workflow_name is None
    assert event.tag is None
    assert event.job_id is None
    assert event.state == "Success"
    assert event.created_at == datetime(2021, 9, 14, 15, 0, 26, tzinfo=CST)
    assert event.input is not None
    assert event.input.key == "62ddbc1245.mp4"
    assert event.input.bucket is None
    assert event.input.cos_headers == {"x-cos-meta-id": "62ddbc1245", "Content-Type": "video/mp4"}
    assert len(event.tasks) == 1
    task = event.tasks[0]
    assert task.type == "Transcode"
    assert task.job_id == "j70bab192152911ecab79bba409874f7f"
    assert task.template_name == "HLS-FHD"
    assert task.ended_at == datetime(2021, 9, 14, 15, 0, 42, tzinfo=CST)
    assert event.dedup_key == "WorkflowFinish:i70ae991a152911ecb184525400a8700f:Success"
    data = event.to_dict()
    assert data["tag"] is None and data["job_id"] is None
    assert data["tasks"][0]["created_at"] == "2021-09-14T15:00:27+08:00"


# -- rules, on the project's own samples and bodies written here ----------------------------


def test_content_type_is_only_a_hint() -> None:
    body = sample("tts_success.xml")
    assert parse(body, content_type="application/json") == parse(body)


def test_failed_job_keeps_code_and_message_and_has_no_outputs() -> None:
    body = job_xml(
        "<Code>InternalError</Code><Message>decode failed: invalid data</Message>"
        "<JobId>jf</JobId><Tag>Transcode</Tag><State>Failed</State>"
        "<CreationTime>2022-06-30T19:33:18+0800</CreationTime>",
        operation="<Output><Bucket>b-1</Bucket><Region>ap-guangzhou</Region>"
        "<Object>out/x.mp4</Object></Output>",
    )
    event = one_job(body)
    assert event.state == "Failed"
    assert event.code == "InternalError"
    assert event.message == "decode failed: invalid data"
    assert event.outputs == ()
    assert event.dedup_key == "TaskFinish:jf:Failed"


def test_message_on_success_is_dropped() -> None:
    event = one_job(job_xml(MINIMAL_JOB + "<Message>done</Message>"))
    assert event.message is None


def test_jobs_detail_array_gives_one_event_per_job() -> None:
    body = {
        "EventName": "TaskFinish",
        "JobsDetail": [
            {"JobId": "j1", "Tag": "Transcode", "State": "Success"},
            {"JobId": "j2", "Tag": "Snapshot", "State": "Failed", "Code": "E1"},
        ],
    }
    events = parse(json.dumps(body).encode())
    assert [(e.job_id, e.tag, e.state) for e in events] == [
        ("j1", "Transcode", "Success"),
        ("j2", "Snapshot", "Failed"),
    ]


def test_json_wrapped_in_response_and_with_bom() -> None:
    inner = json.loads(sample("transcode_workflow.json"))
    wrapped = b"\xef\xbb\xbf \n" + json.dumps({"Response": inner}).encode()
    (event,) = parse(wrapped)
    assert event.job_id == "j7d0eafdaf86c11ecbdf419856486c0ab"
    assert parse(wrapped) == parse(sample("transcode_workflow.json"))


def test_snapshot_object_names_join_object_prefix() -> None:
    operation = (
        "<MediaResult><OutputFile><Bucket>b-1</Bucket><Region>ap-chongqing</Region>"
        "<Md5Info><Md5>aaa</Md5><ObjectName>1.jpg</ObjectName></Md5Info>"
        "<ObjectName>0.jpg</ObjectName><ObjectName>1.jpg</ObjectName>"
        "<ObjectName>output/snapshot-2.jpg</ObjectName>"
        "<ObjectPrefix>output/snapshot-</ObjectPrefix>"
        "<SpriteOutputFile><Bucket>b-1</Bucket><Region>ap-chongqing</Region>"
        "<ObjectName>0.jpg</ObjectName><ObjectPrefix>output/sprite-</ObjectPrefix>"
        "</SpriteOutputFile></OutputFile></MediaResult>"
        "<Output><Object>output/snapshot-${Number}.jpg</Object></Output>"
    )
    event = one_job(job_xml(MINIMAL_JOB, operation=operation))
    assert [(o.key, o.md5) for o in event.outputs] == [
        ("output/snapshot-0.jpg", None),
        ("output/snapshot-1.jpg", "aaa"),
        ("output/snapshot-2.jpg", None),
        ("output/sprite-0.jpg", None),
    ]
    assert {(o.bucket, o.region) for o in event.outputs} == {("b-1", "ap-chongqing")}


def test_several_output_files_in_json() -> None:
    body = {
        "EventName": "TaskFinish",
        "JobsDetail": {
            "JobId": "j1",
            "Tag": "Segment",
            "State": "Success",
            "Operation": {
                "MediaResult": {
                    "OutputFile": [
                        {"Bucket": "b", "ObjectName": ["/a/1.ts", "/a/2.ts"]},
                        {"Bucket": "b", "ObjectName": "a/index.m3u8", "Md5Info": []},
                    ]
                }
            },
        },
    }
    event = one_job(json.dumps(body))
    assert [o.key for o in event.outputs] == ["a/1.ts", "a/2.ts", "a/index.m3u8"]


def test_output_falls_back_to_operation_output_without_placeholder() -> None:
    operation = "<Output><Bucket>b-1</Bucket><Region>r</Region><Object>/o/x.mp4</Object></Output>"
    event = one_job(job_xml(MINIMAL_JOB, operation=operation))
    assert event.outputs == (OutputObject(bucket="b-1", region="r", key="o/x.mp4", md5=None),)
    templated = operation.replace("/o/x.mp4", "o/x.${ext}")
    assert one_job(job_xml(MINIMAL_JOB, operation=templated)).outputs == ()


def test_json_numbers_and_bools_become_strings() -> None:
    body = {
        "EventName": "TaskFinish",
        "JobsDetail": {
            "JobId": "j1",
            "Tag": "Transcode",
            "State": "Success",
            "Operation": {"JobLevel": 0, "Ratio": 1.50, "IgnoreError": False, "Empty": {}},
        },
    }
    event = one_job(json.dumps(body))
    assert event.operation == {"JobLevel": "0", "Ratio": "1.5", "IgnoreError": "false"}


def test_to_dict_is_json_ready_and_snake_case() -> None:
    event = one_job(sample("superresolution_workflow.xml"))
    data = json.loads(json.dumps(event.to_dict()))
    assert {
        *("event", "job_id", "tag", "state", "code", "message", "queue_id", "created_at"),
        *("started_at", "ended_at", "input", "outputs", "workflow", "user_data"),
        *("template_id", "template_name", "operation"),
    } <= data.keys()
    assert data["created_at"] == "2022-06-30T20:02:17+08:00"
    assert data["outputs"] == [
        {
            "bucket": "examplebucket-1250000000",
            "region": "ap-chongqing",
            "key": "output/super_resolution.mp4",
            "md5": "852883012a6ba726e6ed8d9b984edfdf",
        }
    ]
    assert data["workflow"]["run_id"] == "ic90edd59f84f11ec9d4f525400a3c59f"
    assert data["input"]["cos_headers"]["Size"] == "1424687"
    assert event_from_dict(data) == event


def test_to_dict_does_not_share_the_operation() -> None:
    event = one_job(sample("tts_success.xml"))
    event.to_dict()["operation"]["TtsConfig"]["InputType"] = "changed"
    assert event.operation["TtsConfig"]["InputType"] == "Text"


def test_event_from_dict_rejects_garbage() -> None:
    with pytest.raises(ParseError):
        event_from_dict({"event": "Nope"})
    with pytest.raises(ParseError):
        event_from_dict({"event": "TaskFinish", "tag": "Tts"})


BAD_BODIES = {
    "empty": b"",
    "whitespace": b" \n\t ",
    "garbage": b"\x00\x01\x02garbage",
    "invalid utf-8": b"<Response>\xff\xfe</Response>",
    "invalid utf-8 json": b'{"EventName": "\xc3\x28"}',
    "plain text": b"hello",
    "json null": b"null",
    "json list": b"[1, 2]",
    "json not a callback": b'{"hello": "world"}',
    "json empty object": b"{}",
    "bad json": b'{"EventName": ',
    "deep json": b"[" * 100_000,
    "bad xml": b"<Response><EventName>TaskFinish</Response>",
    "xml wrong root": b"<Foo><EventName>TaskFinish</EventName></Foo>",
    "xml empty root": b"<Response/>",
    "xml two roots": b"<Response/><Response/>",
    "no jobs detail": b"<Response><EventName>TaskFinish</EventName></Response>",
    "jobs detail string": b'{"EventName": "TaskFinish", "JobsDetail": "x"}',
    "event name object": b'{"EventName": {"a": "b"}, "JobsDetail": {}}',
    "job id list": b'{"EventName": "TaskFinish", '
    b'"JobsDetail": {"JobId": ["a", "b"], "Tag": "T", "State": "Success"}}',
    "operation string": b'{"EventName": "TaskFinish", '
    b'"JobsDetail": {"JobId": "a", "Tag": "T", "State": "Success", "Operation": "x"}}',
    "object name object": b'{"EventName": "TaskFinish", "JobsDetail": {"JobId": "a", '
    b'"Tag": "T", "State": "Success", '
    b'"Operation": {"MediaResult": {"OutputFile": {"ObjectName": {"a": "b"}}}}}}',
    "bad time": job_xml(MINIMAL_JOB + "<EndTime>yesterday</EndTime>").encode(),
    "naive time": job_xml(MINIMAL_JOB + "<EndTime>2022-06-30T19:33:18</EndTime>").encode(),
    "workflow without run id": b"<Response><EventName>WorkflowFinish</EventName>"
    b"<WorkflowExecution><State>Success</State></WorkflowExecution></Response>",
    "doctype": b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaa">]>'
    b"<Response><EventName>&a;</EventName></Response>",
    "entity bomb": b'<!doctype lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
    b"<Response><EventName>&lol2;</EventName></Response>",
    "external entity": b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    b"<Response><EventName>&x;</EventName></Response>",
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_bodies_raise_parse_error_only(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse(body)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (job_xml("<Tag>Tts</Tag><State>Success</State>"), "JobsDetail[0].JobId"),
        # No State, and no Code to infer it from.
        (job_xml("<JobId>j</JobId><Tag>Tts</Tag>"), "JobsDetail[0].State"),
        ('{"JobsDetail": {"JobId": "j"}}', "JobsDetail[0].State"),
        ('{"Jobs": {"JobId": "j"}}', "EventName"),
        ('{"EventName": "TaskFinish", "JobsDetail": "x"}', "JobsDetail[0]"),
        (
            '{"EventName": "TaskFinish", "JobsDetail": [{"JobId": "a", "Tag": "T", '
            '"State": "Success"}, {"Tag": "T", "State": "Success"}]}',
            "JobsDetail[1].JobId",
        ),
        (job_xml(MINIMAL_JOB + "<EndTime>soon</EndTime>"), "JobsDetail[0].EndTime"),
        (
            "<Response><EventName>WorkflowFinish</EventName><WorkflowExecution>"
            "<RunId>r</RunId></WorkflowExecution></Response>",
            "WorkflowExecution.State",
        ),
    ],
)
def test_parse_error_names_the_path(body: str, path: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(body.encode())
    assert info.value.path == path


def test_unknown_event_name_is_a_generic_event_not_an_error() -> None:
    (event,) = parse(b"<Response><EventName>Whatever</EventName></Response>")
    assert isinstance(event, GenericEvent)
    assert (event.event, event.tag, event.state, event.job_id) == ("Whatever", None, "", None)
    assert event.raw == {"EventName": "Whatever"}
    assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_entity_is_refused_before_parsing() -> None:
    with pytest.raises(ParseError, match="DOCTYPE"):
        parse(BAD_BODIES["entity bomb"])
