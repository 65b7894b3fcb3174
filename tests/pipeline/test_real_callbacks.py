"""Every body in ``../shared/real-callbacks`` (and its ``extra/``), read in place: what Tencent
published (its docs and SDKs) and one outside project wrote, callbacks and job query answers.

The expectations are written from reading the bodies and SOURCES.md, not from the parser:
for each file its job (or run) id, event, tag, state, source, output keys and sub-failures
(for a workflow run, its failed tasks), or the refusal. The tests skip without the folder
(it is not part of the project) and fail under ``CI=true``; the project's own samples in
``tests/samples/rules`` cover each rule on a clone without it.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from structlog.testing import capture_logs

from pipeline.errors import ParseError
from pipeline.parsing.decoding import event_from_dict
from pipeline.parsing.events import Event, JobEvent, ModerationEvent, WorkflowEvent
from pipeline.parsing.reader import parse
from tests.real_callbacks import EXPECTED, Reads, Refused, body, real_callbacks
from tests.support import assert_refused_on_purpose

CST = timezone(timedelta(hours=8))


def test_the_table_names_every_file_of_the_corpus() -> None:
    """So that a body added to the corpus is read here too."""
    folder = real_callbacks()
    names = [p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".xml", ".json")]
    names += [p.name for p in (folder / "extra").iterdir()]
    assert sorted(names) == sorted(EXPECTED)
    assert len(EXPECTED) == 58


def reads(event: Event) -> Reads:
    if isinstance(event, WorkflowEvent):
        failed = tuple(t.name or "" for t in event.tasks if t.state == "Failed")
        return Reads(event.run_id, event.event, None, event.state, (), failed, event.source)
    outputs = tuple(o.key for o in event.outputs) if isinstance(event, JobEvent) else ()
    failures = tuple(f.name for f in event.sub_failures) if isinstance(event, JobEvent) else ()
    return Reads(
        event.job_id or "", event.event, event.tag, event.state, outputs, failures, event.source
    )


@pytest.mark.parametrize(("name", "expected"), EXPECTED.items(), ids=list(EXPECTED))
def test_each_real_body_gives_what_its_text_says(name: str, expected: Reads | Refused) -> None:
    data = body(name)
    if isinstance(expected, Refused):
        with pytest.raises(ParseError) as refused:
            parse(data)
        assert_refused_on_purpose(refused.value)
        assert refused.value.path == expected.path
        assert re.search(expected.reason, refused.value.reason), refused.value.reason
        return
    [event] = parse(data)
    assert reads(event) == expected
    assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


# -- details the table does not show ---------------------------------------------------------


def one(name: str) -> Event:
    [event] = parse(body(name))
    return event


def one_job(name: str) -> JobEvent:
    event = one(name)
    assert isinstance(event, JobEvent)
    return event


@pytest.mark.parametrize(
    ("xml", "json_"),
    [
        ("07_doc_transcode_workflow.xml", "08_doc_transcode_workflow.json"),
        ("26_doc_streamextract.xml", "27_doc_streamextract_multi_output.json"),
        ("34_doc_workflowfinish.xml", "35_doc_workflowfinish.json"),
    ],
)
def test_the_xml_and_json_forms_of_one_callback_give_equal_events(xml: str, json_: str) -> None:
    assert parse(body(xml)) == parse(body(json_))


def test_docprocess_pages_are_written_to_the_output_bucket() -> None:
    event = one_job("05_java_docprocess_taskfinish.xml")
    assert [(o.bucket, o.region, o.key, o.md5) for o in event.outputs] == [
        ("markjrzhang-1251704708", "ap-chongqing", "test1/1.jpg", None)
    ]


def test_md5s_and_buckets_as_the_bodies_give_them() -> None:
    voices = one_job("13_doc_voiceseparate.xml")
    assert [(o.bucket, o.key, o.md5) for o in voices.outputs] == [
        ("test-123456789", "output/audio.mp3", "3b883c0462ba845acdf3eb7e30db1a1c"),
        ("test-123456789", "output/backgroud.mp3", "62de6bb513d6105eeeb1a6ab0077cb5a"),
    ]
    segments = one_job("23_doc_segment.xml")
    assert segments.outputs[8].md5 == "a84dd4f738ce81f4e3da55b393b2fae4"
    # <Bucket></Bucket>: no bucket, the region given.
    [transcoded] = one_job("01_go_transcode_taskfinish_2021.xml").outputs
    assert (transcoded.bucket, transcoded.region) == (None, "ap-guangzhou")
    # No Bucket or Region anywhere in the body.
    [picture] = one_job("E07_proj_picprocess_single_object.json").outputs
    assert (picture.bucket, picture.region) == (None, None)


def test_a_missing_state_is_taken_from_code_and_logged() -> None:
    with capture_logs() as logs:
        event = one_job("33_doc_wordsgeneralize_no_state.xml")
    assert (event.state, event.code, event.message) == ("Success", "Success", None)
    assert {
        "event": "parse_state_inferred",
        "job_id": "ac34be3aa0bf411ed9ce39d7cc972e427",
        "code": "Success",
        "state": "Success",
        "log_level": "info",
    } in logs


def test_a_missing_tag_is_taken_from_the_result_node_and_logged() -> None:
    with capture_logs() as logs:
        event = one_job("E07_proj_picprocess_single_object.json")
    assert event.tag == "PicProcess"
    assert any(e["event"] == "parse_tag_inferred" and e["tag"] == "PicProcess" for e in logs)
    batch = one_job("49_query_doc_batchjob_running.xml")
    assert batch.tag is None and batch.to_dict()["tag"] is None


def test_a_query_answer_keeps_its_state_and_its_unset_times() -> None:
    event = one_job("44_query_java_transcode_submitted.xml")
    assert (event.state, event.source) == ("Submitted", "query")
    assert event.created_at == datetime(2022, 6, 27, 15, 23, 10, tzinfo=CST)
    assert event.started_at is None and event.ended_at is None  # "-"
    assert event.queue_id == "p2242ab62c7c94486915508540933a2c6"
    assert event.user_data == "This is my data."
    assert event.dedup_key == "TaskFinish:j8d121820f5e411ec926ef19d53ba9c6f:Submitted"
    assert event.to_dict()["source"] == "query"


def test_workflow_execution_queries() -> None:
    described = one("46_query_go_describe_workflowexecution.xml")
    assert isinstance(described, WorkflowEvent)
    assert described.workflow_name == "workflow-1"  # the query's Name
    assert described.created_at == datetime(2022, 8, 9, 14, 54, 17, tzinfo=CST)  # +08:00
    assert [(t.type, t.job_id) for t in described.tasks] == [
        ("Snapshot", "j23c11e1e17b011edaab4ab15ec33d076"),
        ("Transcode", "j168668b217b011ed8efb27bb229e2d11"),
    ]
    # The callback of the same run: one deduplication key, whatever the source.
    callback = one("34_doc_workflowfinish.xml")
    assert callback.dedup_key == described.dedup_key
    assert (callback.source, described.source) == ("callback", "query")

    failed = one("50_query_doc_workflowexecution_failed_task.xml")
    assert isinstance(failed, WorkflowEvent)
    assert failed.workflow_name is None  # <WorkflowName></WorkflowName>
    assert failed.input is not None
    assert (failed.input.bucket, failed.input.region, failed.input.key) == (
        "examplebucket-1250000000",
        "ap-beijing",
        "mars_white_test.mp4",
    )
    assert [(t.name, t.state, t.ended_at) for t in failed.tasks] == [
        ("Start", "Success", None),
        ("Snapshot_1581665960536", "Success", None),
        ("Animation_1581665960538", "Failed", None),
    ]


def test_moderation_callbacks_and_answers() -> None:
    audited = one("45_query_go_image_auditing.xml")
    assert isinstance(audited, ModerationEvent)
    assert (audited.result, audited.label, audited.data_id) == (
        "1",
        "Politics",
        "99999999999999977777777777777777",
    )
    assert audited.input is not None and audited.input.key == "202106300295654374239be721f.jpg"

    test_request = one("40_doc_reviewaudio_simple_test_noevent.json")
    assert isinstance(test_request, ModerationEvent)
    assert (test_request.kind, test_request.url, test_request.result) == (
        "moderation",
        "test_audio",
        "0",
    )
    assert test_request.input is not None
    assert test_request.input.cos_headers == {"x-cos-meta-xx": "xx"}
    assert test_request.input.key is None  # test_audio is no COS URL

    simple = one("36_doc_reviewimage_simple.json")
    assert isinstance(simple, ModerationEvent) and simple.input is not None
    assert (simple.input.bucket, simple.input.region, simple.input.key) == (
        "examplebucket-1250000000",
        "ap-shanghai",
        "test.jpg",
    )
    document = one("38_doc_reviewdocument.json")
    assert isinstance(document, ModerationEvent)
    assert (document.result, document.label, document.forbidden_state) == ("0", "Normal", "0")


def test_the_caller_may_say_where_a_body_came_from() -> None:
    [event] = parse(body("02_go_transcode_md5_progress_noeventname.xml"), source="query")
    assert event.source == "query"
    [answer] = parse(body("48_query_doc_describepicjob_submitted.xml"), source="callback")
    assert answer.source == "callback"
