"""Format quirks, moderation and generic callbacks, hostile bodies, and property tests."""

from __future__ import annotations

import json
import re
import time
import tracemalloc
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.errors import ParseError
from pipeline.parsing import reader
from pipeline.parsing.decoding import event_from_dict
from pipeline.parsing.events import Event, GenericEvent, JobEvent, ModerationEvent
from pipeline.parsing.reader import MAX_DEPTH, detect_format, format_of, parse
from tests.support import PARSE_CRASH, SAMPLES, assert_refused_on_purpose


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


# -- quirks ------------------------------------------------------------------------------


def test_detect_format_and_forced_format() -> None:
    assert detect_format(b"\xef\xbb\xbf \n<Response/>") == "xml"
    assert detect_format(b'  {"a": 1}') == "json"
    assert format_of("application/xml; charset=utf-8") == "xml"
    assert format_of("text/json") == "json"
    assert format_of("text/plain") is None
    body = sample("tts_success.xml")
    assert parse(body, fmt="xml") == parse(body)
    with pytest.raises(ParseError, match="not JSON"):
        parse(body, fmt="json")


def test_a_lying_content_type_is_overruled_by_the_body() -> None:
    body = sample("transcode_success.json")
    assert parse(body, content_type="application/xml") == parse(body)


def test_xml_bom_declaration_whitespace_and_utf16() -> None:
    xml = sample("snapshot_success.xml")
    expected = parse(xml)
    assert parse(b"\xef\xbb\xbf" + xml) == expected
    assert parse(b"\n\t " + xml + b"\n") == expected
    text = xml.decode()
    assert parse(text.encode("utf-16")) == expected  # a UTF-16 BOM decides the encoding


def test_xml_declared_gbk_encoding() -> None:
    text = (
        sample("tts_success.xml")
        .decode()
        .replace("Hello, nice to meet you.", "你好。很高兴认识你。")
    )
    gbk = text.replace('encoding="UTF-8"', 'encoding="GBK"').encode("gbk")
    (event,) = parse(gbk)
    assert isinstance(event, JobEvent)
    assert event.operation["TtsConfig"]["Input"] == "你好。很高兴认识你。"
    assert parse(gbk) == parse(text.encode())


def test_json_quirks_give_the_same_event_as_the_tidy_form() -> None:
    tidy = {
        "EventName": "TaskFinish",
        "JobsDetail": [
            {
                "JobId": "j1",
                "Tag": "Snapshot",
                "State": "Success",
                "Message": "",
                "Operation": {
                    "JobLevel": "0",
                    "MediaResult": {
                        "OutputFile": [
                            {
                                "Bucket": "b-1",
                                "ObjectName": ["a.jpg"],
                                "Md5Info": [{"Md5": "m", "ObjectName": ["a.jpg"]}],
                            }
                        ]
                    },
                },
            }
        ],
    }
    quirky = json.loads(json.dumps(tidy))
    job = quirky["JobsDetail"] = quirky["JobsDetail"][0]  # an object, not an array
    del job["Message"]  # left out
    job["Operation"]["JobLevel"] = 0  # a number
    out = job["Operation"]["MediaResult"]["OutputFile"] = job["Operation"]["MediaResult"][
        "OutputFile"
    ][0]
    out["ObjectName"] = "a.jpg"
    out["Md5Info"] = {"Md5": "m", "ObjectName": "a.jpg"}  # a single Md5Info as an object
    assert parse(json.dumps(quirky).encode()) == parse(json.dumps(tidy).encode())
    (event,) = parse(json.dumps(quirky).encode())
    assert [(o.key, o.md5) for o in event.outputs] == [("a.jpg", "m")]  # type: ignore[union-attr]


def test_several_jobs_in_one_body_give_one_event_each_in_both_formats() -> None:
    jobs = "".join(
        f"<JobsDetail><JobId>j{i}</JobId><Tag>Transcode</Tag><State>Success</State></JobsDetail>"
        for i in range(3)
    )
    events = parse(f"<Response><EventName>TaskFinish</EventName>{jobs}</Response>".encode())
    assert [e.job_id for e in events] == ["j0", "j1", "j2"]
    assert len({e.dedup_key for e in events}) == 3


# -- moderation and other events -----------------------------------------------------------


def test_moderation_simple_callback() -> None:
    body = {
        "code": 0,
        "message": "Test request when setting callback url",
        "data": {
            "event": "ReviewImage",
            "trace_id": "test_trace_id",
            "url": "https://examplebucket-1250000000.cos.ap-chengdu.myqcloud.com/a/test.jpg",
            "result": 1,
            "forbidden_status": 0,
            "porn_info": {"hit_flag": 1, "label": "", "score": 95},
            "cos_headers": {"x-cos-meta-id": "42"},
        },
    }
    (event,) = parse(json.dumps(body).encode())
    assert isinstance(event, ModerationEvent)
    assert (event.event, event.tag, event.state) == ("ReviewImage", None, "Success")
    assert (event.job_id, event.result, event.message) == ("test_trace_id", "1", None)
    assert event.input is not None
    assert (event.input.bucket, event.input.region, event.input.key) == (
        "examplebucket-1250000000",
        "ap-chengdu",
        "a/test.jpg",
    )
    assert event.input.cos_headers == {"x-cos-meta-id": "42"}
    assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event
    failed = {**body, "code": 4001, "message": "image download failed"}
    (bad,) = parse(json.dumps(failed).encode())
    assert isinstance(bad, ModerationEvent)
    assert (bad.state, bad.code, bad.message) == ("Failed", "4001", "image download failed")


def test_moderation_document_callback() -> None:
    body = {
        "EventName": "ReviewDocument",
        "JobsDetail": {
            "JobId": "st6666",
            "State": "Success",
            "CreationTime": "",
            "Url": "",
            "Object": "docs/a.pdf",
            "Label": "Porn",
            "Suggestion": 2,
            "PageCount": 1,
            "BucketId": "examplebucket-1250000000",
            "Region": "ap-chongqing",
            "ForbidState": 0,
            "CosHeaders": {"x-cos-meta-id": "666666"},
        },
    }
    (event,) = parse(json.dumps(body).encode())
    assert isinstance(event, ModerationEvent)
    assert (event.event, event.job_id, event.state) == ("ReviewDocument", "st6666", "Success")
    assert (event.result, event.label, event.forbidden_state) == ("2", "Porn", "0")
    assert event.input is not None and event.input.key == "docs/a.pdf"
    assert event.input.cos_headers == {"x-cos-meta-id": "666666"}
    assert event.dedup_key == "ReviewDocument:st6666:Success"


def test_new_event_names_are_generic_events_with_their_state() -> None:
    body = b'{"EventName": "TaskStart", "JobsDetail": {"JobId": "j9", "State": "Running"}}'
    (event,) = parse(body)
    assert isinstance(event, GenericEvent)
    assert (event.event, event.job_id, event.state, event.tag) == (
        "TaskStart",
        "j9",
        "Running",
        None,
    )
    assert event.to_dict()["raw"]["JobsDetail"] == [{"JobId": "j9", "State": "Running"}]
    assert event.dedup_key == "TaskStart:j9:Running"
    (same,) = parse(b"<Response><EventName>Ping</EventName><At>1</At></Response>")
    (again,) = parse(b'{"EventName": "Ping", "At": 1}')
    assert same == again and same.dedup_key == again.dedup_key


# -- hostile bodies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"<Response>" * (MAX_DEPTH + 1),
        b"<Response>"
        + b"<a>" * (MAX_DEPTH + 1)
        + b"x"
        + b"</a>" * (MAX_DEPTH + 1)
        + b"</Response>",
        b'{"EventName": "X", "a": ' + b'{"a": ' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 2),
        b"[" * 200 + b"]" * 200,
    ],
    ids=["xml unclosed", "xml deep", "json deep", "json deep list"],
)
def test_nesting_deeper_than_the_bound_is_refused(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse(body)


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://example.com/x.dtd"><Response/>',
        b"<Response><EventName>&x;</EventName></Response>",
        b'<?xml version="1.0" encoding="rot13"?><Response/>',
        b'<?xml version="1.0" encoding="nope"?><Response/>',
        b"<Response><EventName>TaskFinish</EventName><JobsDetail>"
        b"<JobId>j</JobId><Tag>T</Tag><State>Success</State><Workflow>x</Workflow>"
        b"</JobsDetail></Response>",
    ],
    ids=["external dtd", "undefined entity", "not a text encoding", "unknown encoding", "type"],
)
def test_other_bad_xml_is_a_parse_error(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse(body)


FIVE_MIB = 5 * 1024 * 1024
TOO_MANY = "more than 100000"  # the README: more than 100,000 nodes is a ParseError
# Each body, and what parse must make of it: a ParseError matching the pattern, or (None) one
# GenericEvent whose name is the 5 MiB of text: long, but one node, and a name cicb does not
# know is kept, never refused.
HOSTILE: dict[str, tuple[bytes, str | None]] = {
    "xml deep": (b"<Response>" + b"<a>" * (FIVE_MIB // 3), f"{TOO_MANY}|deeper than 64"),
    "xml wide": (b"<Response>" + b"<a>x</a>" * (FIVE_MIB // 8) + b"</Response>", TOO_MANY),
    "xml long text": (
        b"<Response><EventName>" + b"x" * FIVE_MIB + b"</EventName></Response>",
        None,
    ),
    "json deep": (b"[" * FIVE_MIB, f"{TOO_MANY}|deeper than 64"),
    "json wide": (b"[" + b"{}," * (FIVE_MIB // 3) + b"{}]", TOO_MANY),
    "json long string": (b'{"EventName": "' + b"x" * FIVE_MIB + b'"}', None),
    "json many keys": (
        b"{" + b",".join(b'"k%d": 1' % i for i in range(400_000)) + b"}",
        TOO_MANY,
    ),
    "xml many attributes": (
        b"<Response " + b" ".join(b'a%d="1"' % i for i in range(400_000)) + b"/>",
        TOO_MANY,
    ),
    "json long list": (
        b'{"EventName": "X", "a": [' + b"1," * (FIVE_MIB // 2) + b"1]}",
        TOO_MANY,
    ),
}


@pytest.mark.parametrize(("body", "refusal"), HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_5_mib_body_takes_bounded_time_and_memory(body: bytes, refusal: str | None) -> None:
    events: list[Event] = []
    error: ParseError | None = None
    tracemalloc.start()
    started = time.monotonic()
    try:
        events = parse(body)
    except ParseError as exc:
        error = exc
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.monotonic() - started < 5.0  # a sanity bound, not a benchmark
    assert peak < 48 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    if refusal is None:
        assert error is None, error
        [event] = events
        assert isinstance(event, GenericEvent)
        assert event.event == "x" * FIVE_MIB
    else:
        assert error is not None, f"accepted: {events!r:.200}"
        assert re.search(refusal, error.reason), error.reason


# -- properties ----------------------------------------------------------------------------

# Characters XML 1.0 allows: no surrogates, no control characters, not U+FFFE or U+FFFF.
_TEXT = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"
    ),
    max_size=20,
)
_NAMES = st.from_regex(r"[A-Z][A-Za-z0-9]{0,11}", fullmatch=True).filter(
    lambda n: n not in {"ObjectName", "Md5Info", "CosHeaders", "JobsDetail", "Tasks"}
)
_LEAF = st.one_of(_TEXT, st.integers(-(10**6), 10**6))
_TREE = st.recursive(
    _LEAF, lambda kids: st.dictionaries(_NAMES, kids, min_size=1, max_size=4), max_leaves=12
)


@st.composite
def job_details(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(st.from_regex(r"[a-z0-9/]{1,12}\.mp4", fullmatch=True), max_size=4))
    result: dict[str, Any] = {"Bucket": draw(_TEXT), "Region": "ap-chongqing"}
    if names:
        result["ObjectName"] = names[0] if len(names) == 1 else names
        md5 = [{"Md5": draw(_TEXT), "ObjectName": n} for n in names]
        result["Md5Info"] = md5[0] if len(md5) == 1 else md5
    operation = {"MediaResult": {"OutputFile": result}, "Extra": draw(_TREE)}
    return {
        "JobId": draw(st.from_regex(r"j[0-9a-f]{8}", fullmatch=True)),
        "Tag": draw(_NAMES),
        "State": draw(st.sampled_from(["Success", "Failed", "Running", "Cancel"])),
        "Code": draw(_TEXT),
        "Message": draw(_TEXT),
        "Operation": operation,
    }


def _xml(name: str, value: Any) -> str:
    if isinstance(value, list):
        return "".join(_xml(name, v) for v in value)
    if isinstance(value, dict):
        return f"<{name}>" + "".join(_xml(k, v) for k, v in value.items()) + f"</{name}>"
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"<{name}>{text}</{name}>"


@settings(max_examples=200, deadline=None)
@given(job_details())
def test_a_job_rendered_as_xml_and_as_json_gives_equal_events(job: dict[str, Any]) -> None:
    doc = {"EventName": "TaskFinish", "JobsDetail": job}
    from_json = parse(json.dumps(doc, ensure_ascii=False).encode())
    from_xml = parse(_xml("Response", doc).encode())
    assert from_xml == from_json
    assert [e.to_dict() for e in from_xml] == [e.to_dict() for e in from_json]


def wrapped(value: Any, data: st.DataObject) -> Any:
    """``value`` with the objects of some of its nodes (drawn) put in lists of one, as CI's
    JSON does; the items of a list stay items."""
    if isinstance(value, list):
        return [_unwrapped_item(v, data) for v in value]
    if isinstance(value, dict):
        inner = {k: wrapped(v, data) for k, v in value.items()}
        return [inner] if data.draw(st.booleans()) else inner
    return value


def _unwrapped_item(value: Any, data: st.DataObject) -> Any:
    if isinstance(value, dict):
        return {k: wrapped(v, data) for k, v in value.items()}
    return value


@settings(max_examples=200, deadline=None)
@given(job_details(), st.data())
def test_any_node_as_one_object_or_a_list_of_one_gives_equal_events(
    job: dict[str, Any], data: st.DataObject
) -> None:
    doc = {"EventName": "TaskFinish", "JobsDetail": job}
    listed = {"EventName": "TaskFinish", "JobsDetail": wrapped(job, data)}
    from_objects = parse(json.dumps(doc, ensure_ascii=False).encode())
    from_lists = parse(json.dumps(listed, ensure_ascii=False).encode())
    assert from_lists == from_objects
    assert from_lists == parse(_xml("Response", doc).encode())


KNOWN_EVENTS = ("TaskFinish", "WorkflowFinish")  # and Review*: events with a body of their own


def is_new_event_name(name: str) -> bool:
    return name not in KNOWN_EVENTS and not name.startswith("Review")


@settings(max_examples=200, deadline=None)
@given(_TEXT, _TREE)
def test_any_new_event_name_is_a_generic_event_in_both_formats(name: str, extra: Any) -> None:
    assume(is_new_event_name(name.strip()))
    doc = {"EventName": name, "JobLevel": "0", "Extra": extra}
    bodies = (json.dumps(doc, ensure_ascii=False).encode(), _xml("Response", doc).encode())
    for body in bodies:
        if not name.strip():
            with pytest.raises(ParseError) as refused:
                parse(body)
            assert refused.value.path == "EventName"
            continue
        [event] = parse(body)
        assert isinstance(event, GenericEvent)
        assert event.event == name.strip()
        assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event


def depth(value: Any) -> int:
    if isinstance(value, dict | list):
        items = value.values() if isinstance(value, dict) else value
        return 1 + max(map(depth, items), default=0)
    return 0


def events_or_refusal(body: bytes) -> list[Event]:
    """``parse(body)``'s events, each of which must round-trip through JSON; [] when it is
    refused, which must be one of the parser's own refusals, never a crash inside it."""
    try:
        events = parse(body)
    except ParseError as exc:
        assert_refused_on_purpose(exc)
        return []
    assert events
    for event in events:
        assert event_from_dict(json.loads(json.dumps(event.to_dict()))) == event
    return events


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_arbitrary_bytes_give_events_or_a_deliberate_parse_error(body: bytes) -> None:
    # Bare: a body that starts with neither "<" nor "{" or "[" (after whitespace, and with no
    # byte order mark) is neither XML nor JSON.
    boms = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
    if not body.startswith(boms) and body.lstrip(b" \t\r\n")[:1] not in (b"<", b"{", b"["):
        with pytest.raises(ParseError) as refused:
            parse(body)
        assert_refused_on_purpose(refused.value)
    else:
        events_or_refusal(body)

    # Inside <Response>: without markup the body is text, and a Response of text alone names
    # no event.
    wrapped = b"<Response>" + body + b"</Response>"
    if b"<" not in body and b"&" not in body:
        with pytest.raises(ParseError) as refused:
            parse(wrapped)
        assert_refused_on_purpose(refused.value)
    else:
        events_or_refusal(wrapped)

    # After '{"EventName":', Python's own json module is the judge: what it cannot read is
    # refused, and an object it reads naming a new event is that one event.
    named = b'{"EventName":' + body
    try:
        doc = json.loads(named.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError included
        with pytest.raises(ParseError) as refused:
            parse(named)
        assert_refused_on_purpose(refused.value)
        return
    events = events_or_refusal(named)
    name = doc.get("EventName") if isinstance(doc, dict) else None
    new = isinstance(name, str) and name.strip() and is_new_event_name(name.strip())
    if new and depth(doc) <= MAX_DEPTH:
        assert [(type(e), e.event) for e in events] == [(GenericEvent, name.strip())]


def test_an_unexpected_exception_in_the_parser_is_a_parse_error_the_tests_tell_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What assert_refused_on_purpose looks for is what parse says when it crashes."""

    def crash(root: Any, source: str | None) -> list[Event]:
        raise IndexError("list index out of range")

    monkeypatch.setattr(reader, "_events", crash)
    with pytest.raises(ParseError) as crashed:
        parse(sample("tts_success.xml"))
    assert crashed.value.reason.startswith(PARSE_CRASH)
    assert isinstance(crashed.value.__cause__, IndexError)
    with pytest.raises(AssertionError, match="the parser crashed"):
        assert_refused_on_purpose(crashed.value)
