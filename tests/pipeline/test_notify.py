"""notify against a real HTTP server: deliver, retry later, or give up on a refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.errors import DeliveryError, DeliveryRejected, PermanentError, TransientError
from pipeline.notify import TargetsPending, TargetsRejected, notify
from pipeline.parsing import parse
from tests.support import Target, free_port

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "samples"


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=2) as client:
        yield client


@pytest.fixture
def event() -> dict[str, Any]:
    [parsed] = parse((SAMPLES / "tts_api.xml").read_bytes())
    data = parsed.to_dict()
    data["user_data"] = "回调 ✓"
    return data


def test_a_200_delivers_the_event_as_json(
    client: httpx.Client, target: Target, event: dict[str, Any]
) -> None:
    notify(client, [target.url], event)

    [request] = target.received
    assert request["path"] == "/hook"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"].decode("utf-8")) == event
    assert target.bodies() == [event]


@pytest.mark.parametrize("status", [503, 500, 429, 408])
def test_a_retryable_status_leaves_the_target_pending(
    client: httpx.Client, target: Target, event: dict[str, Any], status: int
) -> None:
    target.default_status = status
    with pytest.raises(TargetsPending) as raised:
        notify(client, [target.url], event)
    assert isinstance(raised.value, TransientError)
    assert raised.value.pending == [target.url]
    assert raised.value.replay_kwargs == {"pending": [target.url]}
    [cause] = raised.value.causes
    assert isinstance(cause, DeliveryError)
    assert str(status) in str(cause)
    assert len(target.received) == 1


@pytest.mark.parametrize("status", [404, 400, 410])
def test_a_refusal_is_a_permanent_rejection(
    client: httpx.Client, target: Target, event: dict[str, Any], status: int
) -> None:
    target.default_status = status
    with pytest.raises(TargetsRejected) as raised:
        notify(client, [target.url], event)
    assert isinstance(raised.value, PermanentError)
    assert f"HTTP {status}" in str(raised.value)
    assert raised.value.pending == [target.url]
    [cause] = raised.value.causes
    assert isinstance(cause, DeliveryRejected)
    assert cause.status == status
    assert cause.url == target.url


def test_a_closed_port_leaves_the_target_pending(
    client: httpx.Client, event: dict[str, Any]
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    with pytest.raises(TargetsPending) as raised:
        notify(client, [url], event)
    assert raised.value.pending == [url]
    assert "connection failed" in str(raised.value)


def test_one_refusal_does_not_stop_delivery_to_the_other_targets(
    client: httpx.Client, target: Target, event: dict[str, Any]
) -> None:
    refused, good = f"{target.url}/refused", f"{target.url}/good"
    target.statuses = [404, 200]
    with pytest.raises(TargetsRejected) as raised:
        notify(client, [refused, good], event)
    assert raised.value.pending == [refused]
    assert [(r["path"], r["status"]) for r in target.received] == [
        ("/hook/refused", 404),
        ("/hook/good", 200),
    ]
    assert target.bodies() == [event]


def test_a_refusal_and_a_failure_leave_both_pending_as_a_rejection(
    client: httpx.Client, target: Target, event: dict[str, Any]
) -> None:
    down = f"http://127.0.0.1:{free_port()}/hook"
    refused, good = f"{target.url}/refused", f"{target.url}/good"
    target.statuses = [410, 200]
    with pytest.raises(TargetsRejected) as raised:
        notify(client, [down, refused, good], event)
    assert sorted(raised.value.pending) == sorted([down, refused])
    assert len(raised.value.causes) == 2
    assert target.bodies() == [event]


def test_a_failure_retries_only_the_failed_target(
    client: httpx.Client, target: Target, event: dict[str, Any]
) -> None:
    busy, good = f"{target.url}/busy", f"{target.url}/good"
    target.statuses = [200, 503]
    with pytest.raises(TargetsPending) as raised:
        notify(client, [good, busy], event)
    assert raised.value.pending == [busy]
    notify(client, raised.value.pending, event)
    assert [r["path"] for r in target.received if r["status"] == 200] == [
        "/hook/good",
        "/hook/busy",
    ]
