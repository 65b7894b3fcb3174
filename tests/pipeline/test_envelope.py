"""The envelope crosses the broker as plain JSON and gives back the body byte for byte."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.brokers.envelope import SHOWN_BODY_CHARS, Envelope, shown
from pipeline.errors import PermanentError


def over_the_wire(envelope: Envelope) -> Envelope:
    """What a worker rebuilds from the task argument the receiver published."""
    return Envelope.from_json(json.loads(json.dumps(envelope.to_json())))


def make(body: bytes) -> Envelope:
    return Envelope.received_now(
        body, content_type="application/xml", remote_addr="203.0.113.7", request_id="req-1"
    )


def test_received_now_stamps_an_aware_utc_time() -> None:
    before = datetime.now(UTC)
    envelope = make(b"<Response/>")
    assert before <= envelope.received_at <= datetime.now(UTC)
    assert envelope.received_at.utcoffset() is not None


def test_a_utf8_body_travels_as_text_and_round_trips() -> None:
    body = "<Response><UserData>任务完成 ✓</UserData><Message/></Response>\n".encode()
    envelope = make(body)
    data = envelope.to_json()
    assert data["body_encoding"] == "utf-8"
    assert data["body"] == body.decode("utf-8")
    assert data["content_type"] == "application/xml"
    assert data["remote_addr"] == "203.0.113.7"
    assert data["request_id"] == "req-1"

    back = over_the_wire(envelope)
    assert back == envelope
    assert back.body == body


def test_a_binary_body_travels_as_base64_and_round_trips_byte_for_byte() -> None:
    body = bytes(range(256)) + b"\xff\xfe<Response>\xc3\x28</Response>"
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    envelope = Envelope.received_now(
        body, content_type=None, remote_addr=None, request_id="req-bin"
    )
    data = envelope.to_json()
    assert data["body_encoding"] == "base64"
    assert data["body"].isascii()

    back = over_the_wire(envelope)
    assert back.body == body
    assert back == envelope


def valid() -> dict[str, Any]:
    return make(b"<Response/>").to_json()


@pytest.mark.parametrize(
    "broken",
    [
        None,
        "not an envelope",
        [],
        {},
        {k: v for k, v in valid().items() if k != "body"},
        {k: v for k, v in valid().items() if k != "body_encoding"},
        {k: v for k, v in valid().items() if k != "received_at"},
        {k: v for k, v in valid().items() if k != "request_id"},
        {**valid(), "body_encoding": "gzip"},
        {**valid(), "body": 42},
        {**valid(), "body_encoding": "base64", "body": "not base64!"},
        {**valid(), "received_at": "yesterday"},
    ],
    ids=[
        "none",
        "string",
        "list",
        "empty",
        "no-body",
        "no-encoding",
        "no-received-at",
        "no-request-id",
        "unknown-encoding",
        "body-not-text",
        "bad-base64",
        "bad-time",
    ],
)
def test_a_broken_envelope_is_a_permanent_error(broken: Any) -> None:
    with pytest.raises(PermanentError):
        Envelope.from_json(broken)


def test_flower_is_shown_the_start_of_a_long_body_and_every_field() -> None:
    body = "<Response>" + "<JobId>j1</JobId>" * 200 + "</Response>"
    data = make(body.encode()).to_json()
    text = shown(data)
    [seen] = ast.literal_eval(text)
    assert seen == {**data, "body": body[:SHOWN_BODY_CHARS] + "..."}
    assert len(text) < 600  # not the kilobyte of body Celery's repr would keep


def test_flower_is_shown_a_short_body_whole() -> None:
    data = make(b"<Response/>").to_json()
    assert ast.literal_eval(shown(data)) == [data]
