"""The rules for what CI is loose about, and for its job query answers, on the project's own
samples (``tests/samples/rules``): they hold on a clone without ``../shared``.

One sample per rule, XML and JSON where both exist (the two must give equal events):
nodes as one object or a list, State from Code, Tag from the result node or from
Operation, the input's bucket from BucketId, DocProcess pages,
CI's moderation test request, time forms, a callback without EventName, query answers
(jobs, a workflow run, the list of runs, an image auditing job) and malformed bodies.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from structlog.testing import capture_logs

from pipeline.errors import ParseError
from pipeline.parsing.decoding import event_from_dict
from pipeline.parsing.events import GenericEvent, JobEvent, ModerationEvent, WorkflowEvent
from pipeline.parsing.reader import MAX_DEPTH, events_of, parse
from tests.support import ROOT, SAMPLES, assert_refused_on_purpose

RULES = SAMPLES / "rules"
FILES = sorted(p.name for p in RULES.iterdir())
PAIRS = sorted(
    {n.rsplit(".", 1)[0] for n in FILES if n.endswith(".xml")}
    & {n.rsplit(".", 1)[0] for n in FILES if n.endswith(".json")}
)
CST = timezone(timedelta(hours=8))
BUCKET = "examplebucket-1250000000"


def rule(name: str) -> bytes:
    return (RULES / name).read_bytes()


def jobs_of(name: str) -> list[JobEvent]:
    events = parse(rule(name))
    assert all(isinstance(e, JobEvent) for e in events)
    return events  # type: ignore[return-value]


# (id, event, tag, state, source, output keys) of each event, or the refusal of the body.
EXPECTED: dict[str, list[tuple[str, str, str | None, str, str, list[str]]] | str] = {
    "nodes_as_lists": [
        (
            "c1a2b3c4d5e6f708192a3b4c5d6e7f801",
            "TaskFinish",
            "PicProcess",
            "Success",
            "callback",
            ["output/photo-small.webp", "output/photo-large.webp"],
        )
    ],
    "state_from_code": [
        (
            "j2a2b3c4d5e6f708192a3b4c5d6e7f801",
            "TaskFinish",
            "WordsGeneralize",
            "Success",
            "callback",
            ["output/words.json"],
        ),
        (
            "j2b2b3c4d5e6f708192a3b4c5d6e7f801",
            "TaskFinish",
            "WordsGeneralize",
            "Failed",
            "callback",
            [],
        ),
    ],
    "tag_from_result": [
        (
            "s3a2b3c4d5e6f708192a3b4c5d6e7f801",
            "TaskFinish",
            "SpeechRecognition",
            "Success",
            "callback",
            ["asr/meeting.txt", "asr/meeting.txt.detail"],
        ),
        ("j3b2b3c4d5e6f708192a3b4c5d6e7f801", "TaskFinish", None, "Success", "callback", []),
    ],
    "tag_in_operation": [
        (
            "jaa2b3c4d5e6f708192a3b4c5d6e7f801",
            "TaskFinish",
            "Transcode",
            "Success",
            "query",
            ["output/lecture.mp4"],
        ),
        ("jab2b3c4d5e6f708192a3b4c5d6e7f801", "TaskFinish", "Snapshot", "Failed", "query", []),
    ],
    "docprocess_pages": [
        (
            "d4a2b3c4d5e6f708192a3b4c5d6e7f801",
            "TaskFinish",
            "DocProcess",
            "Success",
            "callback",
            ["pages/report-1.jpg", "pages/report-2.jpg", "pages/report-3.jpg"],
        )
    ],
    "moderation_test_request": [("test_trace_id", "Review", None, "Success", "callback", [])],
    "times": [
        ("j5a2b3c4d5e6f708192a3b4c5d6e7f801", "TaskFinish", "Transcode", "Cancel", "callback", []),
        ("j5b2b3c4d5e6f708192a3b4c5d6e7f801", "TaskFinish", "Transcode", "Cancel", "callback", []),
    ],
    "no_eventname_callback": [
        (
            "j6a2b3c4d5e6f708192a3b4c5d6e7f801",
            "TaskFinish",
            "Transcode",
            "Success",
            "callback",
            ["output/clip.mp4"],
        )
    ],
    "query_describemediajobs": [
        ("j7a2b3c4d5e6f708192a3b4c5d6e7f801", "TaskFinish", "Transcode", "Running", "query", []),
        (
            "j7b2b3c4d5e6f708192a3b4c5d6e7f801",
            "TaskFinish",
            "Transcode",
            "Success",
            "query",
            ["output/short.mp4"],
        ),
    ],
    "query_workflowexecution": [
        ("i8a2b3c4d5e6f708192a3b4c5d6e7f801", "WorkflowFinish", None, "Failed", "query", [])
    ],
    "query_workflowexecutionlist": [
        ("i9a2b3c4d5e6f708192a3b4c5d6e7f801", "WorkflowFinish", None, "Success", "query", []),
        ("i9b2b3c4d5e6f708192a3b4c5d6e7f801", "WorkflowFinish", None, "Running", "query", []),
    ],
    "query_image_auditing": [
        ("si9c2b3c4d5e6f708192a3b4c5d6e7f80", "ReviewImage", None, "Success", "query", [])
    ],
    # Line 1 is the declaration, blanked, not cut: the line numbers are the body's own.
    # Line 3 is `  <EventName>TaskFinish</Event>`: the stray name starts at column 26.
    "malformed_after_declaration": r"^invalid XML at line 3, column 26: mismatched tag$",
    # Line 7 is the `}` after `"Tag": "Transcode",`, at column 3.
    "malformed_trailing_comma": r"^invalid JSON at line 7, column 3: Expecting property name",
}


def test_every_rule_sample_has_its_expectations() -> None:
    assert sorted({n.rsplit(".", 1)[0] for n in FILES}) == sorted(EXPECTED)


@pytest.mark.parametrize("name", FILES)
def test_each_rule_sample_gives_its_events_or_its_refusal(name: str) -> None:
    expected = EXPECTED[name.rsplit(".", 1)[0]]
    if isinstance(expected, str):
        with pytest.raises(ParseError) as refused:
            parse(rule(name))
        assert_refused_on_purpose(refused.value)
        assert re.search(expected, refused.value.reason), refused.value.reason
        return
    events = parse(rule(name))
    got = []
    for e in events:
        ident = e.run_id if isinstance(e, WorkflowEvent) else e.job_id
        keys = [o.key for o in e.outputs] if isinstance(e, JobEvent) else []
        got.append((ident, e.event, e.tag, e.state, e.source, keys))
    assert got == expected
    for event in events:
        assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


@pytest.mark.parametrize("stem", PAIRS)
def test_xml_and_json_of_a_rule_sample_give_equal_events(stem: str) -> None:
    from_xml, from_json = parse(rule(f"{stem}.xml")), parse(rule(f"{stem}.json"))
    assert from_xml == from_json
    assert [e.to_dict() for e in from_xml] == [e.to_dict() for e in from_json]


# -- each rule in detail -----------------------------------------------------------------------


def test_a_node_of_one_object_or_a_list_of_them_reads_the_same() -> None:
    [event] = jobs_of("nodes_as_lists.json")  # every node a list; PicProcessResult of two
    assert event.input is not None and event.input.cos_headers == {"Content-Type": "image/png"}
    assert event.workflow is not None and event.workflow.workflow_name == "resize"
    assert event.user_data == "two sizes"
    # The templated Output.Object is no output: the result nodes say what was written.
    assert {(o.bucket, o.region) for o in event.outputs} == {(BUCKET, "ap-guangzhou")}
    assert event.operation["PicProcessResult"][1]["ProcessResult"]["Width"] == "1280"


def test_several_objects_where_one_is_meant_read_the_first() -> None:
    body = {
        "EventName": "TaskFinish",
        "JobsDetail": {
            "JobId": "j1",
            "Tag": "Transcode",
            "State": "Success",
            "Operation": [{"UserData": "first"}, {"UserData": "second"}],
        },
    }
    [event] = parse(json.dumps(body).encode())
    assert isinstance(event, JobEvent) and event.user_data == "first"
    # A string where an object is meant stays a refusal.
    body["JobsDetail"]["Operation"] = "x"  # type: ignore[index]
    with pytest.raises(ParseError, match="expected an object"):
        parse(json.dumps(body).encode())


def test_a_missing_state_is_taken_from_code_and_logged() -> None:
    with capture_logs() as logs:
        ok, failed = jobs_of("state_from_code.xml")
    assert (ok.state, ok.message) == ("Success", None)  # Message "done" on success is noise
    assert (failed.state, failed.code, failed.message) == (
        "Failed",
        "InternalError",
        "text decode failed",
    )
    assert failed.outputs == ()
    inferred = [(e["job_id"], e["state"]) for e in logs if e["event"] == "parse_state_inferred"]
    assert inferred == [(ok.job_id, "Success"), (failed.job_id, "Failed")]


def test_a_missing_tag_is_taken_from_the_result_node_else_null_and_logged() -> None:
    with capture_logs() as logs:
        named, unnamed = jobs_of("tag_from_result.json")
    assert (named.tag, unnamed.tag) == ("SpeechRecognition", None)
    assert [e["tag"] for e in logs if e["event"] == "parse_tag_inferred"] == [
        "SpeechRecognition",
        None,
    ]
    assert unnamed.to_dict()["tag"] is None
    assert event_from_dict(unnamed.to_dict()) == unnamed


def test_a_tag_inside_operation_is_the_tag_and_an_input_bucket_id_its_bucket() -> None:
    # CI's answers listing several jobs write Tag under Operation and the input's bucket as
    # BucketId; neither is an inference, so nothing is logged.
    with capture_logs() as logs:
        done, failed = jobs_of("tag_in_operation.xml")
    assert (done.tag, failed.tag) == ("Transcode", "Snapshot")
    assert not [e for e in logs if e["event"] == "parse_tag_inferred"]
    assert done.input is not None and failed.input is not None
    assert (done.input.bucket, done.input.region, done.input.key) == (
        BUCKET,
        "ap-guangzhou",
        "input/lecture.mp4",
    )
    assert (failed.input.bucket, failed.input.region) == ("otherbucket-1250000000", "ap-shanghai")
    assert (failed.code, failed.message) == ("InvalidInput", "input file not found")
    assert done.user_data == "course 12"
    # A Tag at the job's top level wins over one inside Operation.
    body = {"JobsDetail": {"JobId": "j1", "Tag": "Animation", "State": "Success"}}
    body["JobsDetail"]["Operation"] = {"Tag": "Transcode"}  # type: ignore[assignment]
    [event] = parse(json.dumps(body).encode())
    assert isinstance(event, JobEvent) and event.tag == "Animation"


def test_docprocess_pages_are_outputs_in_the_output_bucket() -> None:
    [event] = jobs_of("docprocess_pages.xml")
    assert {(o.bucket, o.region, o.md5) for o in event.outputs} == {(BUCKET, "ap-guangzhou", None)}


def test_the_moderation_test_request_is_a_moderation_event_never_an_error() -> None:
    [event] = parse(rule("moderation_test_request.json"))
    assert isinstance(event, ModerationEvent)
    assert (event.kind, event.code, event.message, event.url) == (
        "moderation",
        "0",
        None,
        "test_image",
    )
    assert event.input is not None and event.input.cos_headers == {"x-cos-meta-project": "demo"}
    assert event.dedup_key == "Review:test_trace_id:Success"


def test_time_forms() -> None:
    first, second = jobs_of("times.json")
    for job in (first, second):
        assert job.created_at == datetime(2023, 3, 1, 14, 0, 0, tzinfo=CST)
        assert job.started_at == datetime(2023, 3, 1, 14, 0, 1, tzinfo=CST)
        assert job.ended_at is None  # "-" and "" alike
    assert first.to_dict()["started_at"] == "2023-03-01T14:00:01+08:00"


def test_a_bare_jobs_detail_of_a_finished_job_is_a_callback() -> None:
    [event] = jobs_of("no_eventname_callback.xml")
    assert (event.event, event.source) == ("TaskFinish", "callback")
    assert event.outputs[0].md5 == "0123456789abcdef0123456789abcdef"


def test_a_job_query_answer() -> None:
    running, done = jobs_of("query_describemediajobs.xml")
    assert running.ended_at is None and running.outputs == ()
    assert done.dedup_key == "TaskFinish:j7b2b3c4d5e6f708192a3b4c5d6e7f801:Success"
    # The callback of that job in that state is the same event to deduplication.
    callback = rule("no_eventname_callback.xml").replace(
        b"j6a2b3c4d5e6f708192a3b4c5d6e7f801", b"j7b2b3c4d5e6f708192a3b4c5d6e7f801"
    )
    [called_back] = parse(callback)
    assert (called_back.source, called_back.dedup_key) == ("callback", done.dedup_key)


def test_workflow_execution_queries() -> None:
    [run] = parse(rule("query_workflowexecution.xml"))
    assert isinstance(run, WorkflowEvent)
    assert (run.workflow_name, run.state) == ("thumbnails", "Failed")
    assert run.input is not None
    assert (run.input.bucket, run.input.region, run.input.key) == (
        BUCKET,
        "ap-guangzhou",
        "input/talk.mp4",
    )
    assert [(t.name, t.state) for t in run.tasks] == [("Snapshot_1581665960536", "Failed")]
    first, second = parse(rule("query_workflowexecutionlist.xml"))
    assert isinstance(first, WorkflowEvent) and isinstance(second, WorkflowEvent)
    assert first.created_at == datetime(2023, 3, 1, 18, 0, 0, tzinfo=CST)  # CreationTime
    assert second.input is not None and second.input.key == "input/b.mp4"


def test_an_image_auditing_query_answer() -> None:
    [event] = parse(rule("query_image_auditing.xml"))
    assert isinstance(event, ModerationEvent)
    assert (event.result, event.label, event.data_id) == ("2", "Porn", "upload-42")
    assert event.input is not None and event.input.key == "avatars/42.png"


@pytest.mark.parametrize(
    ("fields", "event"),
    [
        ({"AudioText": "hi", "Section": {"Text": "hi"}}, "ReviewAudio"),
        ({"SnapshotCount": "1", "Snapshot": {"Url": "u"}}, "ReviewVideo"),
        ({"PageSegment": {"Results": {"Url": "u"}}}, "ReviewDocument"),
        ({"ImageResults": {"Results": {"Url": "u"}}}, "ReviewHtml"),
        ({"SectionCount": "1", "Section": {"Text": "t"}}, "ReviewText"),
        ({"Score": "0", "Text": "t"}, "ReviewImage"),
    ],
)
def test_a_moderation_answer_is_named_by_the_fields_its_kind_writes(
    fields: dict[str, object], event: str
) -> None:
    answer = {"Response": {"JobsDetail": {"JobId": "x1", "State": "Success", "Result": 0}}}
    answer["Response"]["JobsDetail"].update(fields)
    [parsed] = parse(json.dumps(answer).encode())
    assert isinstance(parsed, ModerationEvent)
    assert (parsed.event, parsed.source) == (event, "callback")


def test_stream_extract_streams_are_outputs_when_no_result_names_any() -> None:
    body = {
        "EventName": "TaskFinish",
        "JobsDetail": {
            "JobId": "j1",
            "Tag": "StreamExtract",
            "State": "Success",
            "Operation": {
                "Output": {
                    "Bucket": BUCKET,
                    "Region": "ap-guangzhou",
                    "StreamExtract": [
                        {"Index": "0", "Output": "out/v.mp4"},
                        {"Index": "1", "Output": "/out/a.m4a"},
                    ],
                }
            },
        },
    }
    [event] = parse(json.dumps(body).encode())
    assert isinstance(event, JobEvent)
    assert [o.key for o in event.outputs] == ["out/v.mp4", "out/a.m4a"]


def test_an_unknown_result_node_names_outputs_and_never_refuses() -> None:
    body = {
        "EventName": "TaskFinish",
        "JobsDetail": {
            "JobId": "j1",
            "State": "Success",
            "Operation": {
                "Output": {"Bucket": BUCKET, "Region": "ap-guangzhou"},
                "FooBarResult": {"ObjectName": ["/foo/1.bin", "foo/2.bin"], "Odd": {"x": "y"}},
                "OtherResult": {"ObjectName": {"not": "a name"}},
            },
        },
    }
    [event] = parse(json.dumps(body).encode())
    assert isinstance(event, JobEvent)
    assert event.tag == "FooBar"
    assert [o.key for o in event.outputs] == ["foo/1.bin", "foo/2.bin"]


# -- source ----------------------------------------------------------------------------------


def test_every_event_type_carries_its_source_across_the_broker() -> None:
    samples = [
        "nodes_as_lists.xml",
        "query_workflowexecution.xml",
        "moderation_test_request.json",
    ]
    events = [e for name in samples for e in parse(rule(name))]
    events.append(parse(b'{"EventName": "TaskStart", "JobsDetail": {"JobId": "j9"}}')[0])
    assert [type(e) for e in events] == [JobEvent, WorkflowEvent, ModerationEvent, GenericEvent]
    for event in events:
        data = json.loads(json.dumps(event.to_dict()))
        assert data["source"] == event.source
        assert event_from_dict(data) == event
        # A dict written before events had a source (an old dead letter) is a callback's.
        older = {k: v for k, v in data.items() if k != "source"}
        assert event_from_dict(older).source == "callback"
        # A later stage marks its own events with dataclasses.replace.
        marked = dataclasses.replace(event, source="reconcile")
        assert event_from_dict(json.loads(json.dumps(marked.to_dict()))) == marked
        assert marked.dedup_key == event.dedup_key
    with pytest.raises(ParseError):
        event_from_dict({**events[0].to_dict(), "source": ["query"]})


def test_the_caller_may_name_the_source_and_read_a_document_already_loaded() -> None:
    answer = rule("query_describemediajobs.json")
    assert {e.source for e in parse(answer, source="reconcile")} == {"reconcile"}
    document = json.loads(answer)["Response"]
    assert events_of(document) == parse(answer)
    assert events_of(document, source="reconcile") == parse(answer, source="reconcile")
    with pytest.raises(ParseError, match="EventName"):
        events_of({"NextToken": "1"})


# -- what stays refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        (b"<Response>" + b"<JobsDetail>" * (MAX_DEPTH + 2), "deeper than 64|mismatched|no element"),
        (
            b'<!DOCTYPE r [<!ENTITY x "y">]><Response><JobsDetail><JobId>&x;</JobId>'
            b"<State>Running</State></JobsDetail><RequestId>r</RequestId></Response>",
            "DOCTYPE",
        ),
        (
            b'{"RequestId": "r", "JobsDetail": '
            + b"[" * (MAX_DEPTH + 2)
            + b"]" * (MAX_DEPTH + 2)
            + b"}",
            "deeper than 64",
        ),
        (b"<Response><JobsDetail><JobId>\xff</JobId></JobsDetail></Response>", "not UTF-8"),
        (
            b'{"RequestId": "r", "JobsDetail": [' + b"{}," * 100_001 + b"{}]}",
            "more than 100000",
        ),
        (b'{"code": 0, "data": {"event": {"a": "b"}}}', "expected a string"),
        (b'{"NextToken": "t"}', "missing"),
        # Found by the fuzz run: a repeated State while telling a query from a callback.
        (
            b"<Response><JobsDetail><JobId>j</JobId><State>Running</State>"
            b"<State>Success</State></JobsDetail></Response>",
            r"JobsDetail\[0\]\.State: expected a string",
        ),
    ],
    ids=[
        *("deep xml", "dtd", "deep json", "bad utf-8", "too many nodes", "event object"),
        *("empty", "repeated state"),
    ],
)
def test_bodies_without_event_name_are_still_bounded_and_refused(body: bytes, refusal: str) -> None:
    with pytest.raises(ParseError) as refused:
        parse(body)
    assert_refused_on_purpose(refused.value)
    assert re.search(refusal, str(refused.value)), refused.value


def test_the_readme_names_every_field_of_every_event() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[
        text.index("## The event\n") : text.index("\n## ", text.index("## The event\n") + 1)
    ]
    named = set(re.findall(r"`([a-z_]+)`", section))
    samples = ["nodes_as_lists.xml", "query_workflowexecution.xml", "moderation_test_request.json"]
    events = [e for name in samples for e in parse(rule(name))]
    events += parse(b'{"EventName": "TaskStart"}')
    for event in events:
        assert sorted(event.to_dict().keys() - named) == [], type(event).__name__
    assert "source" in named and "query" in named and "callback" in named
