"""The receiver app, in process, over a fake enqueuer: token, size, envelope, answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from pipeline.envelope import Envelope
from pipeline.errors import BrokerUnavailable, ConfigError
from pipeline.receiver import create_app
from pipeline.settings import Settings

TOKEN = "t0k3n"
LIMIT = 1024
BODY = "<Response><EventName>TaskFinish</EventName><UserData>完成</UserData></Response>".encode()


class FakeEnqueuer:
    """Records what the receiver publishes; fails like a broker when told to."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.ingest_error: Exception | None = None
        self.ping_error: Exception | None = None
        self.pings = 0

    def ingest(self, envelope: dict[str, Any]) -> str:
        if self.ingest_error is not None:
            raise self.ingest_error
        self.envelopes.append(envelope)
        return f"task-{len(self.envelopes)}"

    def ping(self) -> None:
        self.pings += 1
        if self.ping_error is not None:
            raise self.ping_error


@pytest.fixture
def fake() -> FakeEnqueuer:
    return FakeEnqueuer()


@pytest.fixture
def app(tmp_path: Path, fake: FakeEnqueuer) -> Starlette:
    settings = Settings(receiver_token=TOKEN, max_body_bytes=LIMIT, data_dir=tmp_path)
    return create_app(settings, enqueuer_factory=lambda s: fake)


Call = Callable[..., httpx.Response]


@pytest.fixture
def call(app: Starlette) -> Call:
    """Make one request to the app through httpx's ASGI transport, from sync test code."""

    def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=("198.51.100.9", 4242))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(go())

    return request


def post(call: Call, body: Any = BODY, **kwargs: Any) -> httpx.Response:
    headers = {"X-Callback-Token": TOKEN, **kwargs.pop("headers", {})}
    return call("POST", "/callbacks", content=body, headers=headers, **kwargs)


# -- the token ----------------------------------------------------------------------------


def test_no_token_is_401_and_nothing_is_enqueued(call: Call, fake: FakeEnqueuer) -> None:
    response = call("POST", "/callbacks", content=BODY)
    assert response.status_code == 401
    assert response.json()["error"]
    assert response.headers["X-Request-Id"] == response.json()["request_id"]
    assert fake.envelopes == []


@pytest.mark.parametrize("wrong", ["t0k3", "t0k3n ", "T0K3N", "t0k3nn", "令牌"])
def test_a_wrong_token_is_401(call: Call, fake: FakeEnqueuer, wrong: str) -> None:
    assert call("POST", "/callbacks", params={"token": wrong}, content=BODY).status_code == 401
    assert post(call, headers={"X-Callback-Token": wrong.encode()}).status_code == 401
    assert fake.envelopes == []


def test_the_token_is_accepted_in_the_query(call: Call, fake: FakeEnqueuer) -> None:
    response = call("POST", f"/callbacks?token={TOKEN}", content=BODY)
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"
    assert len(fake.envelopes) == 1


def test_the_token_is_accepted_in_the_header(call: Call, fake: FakeEnqueuer) -> None:
    response = call("POST", "/callbacks", content=BODY, headers={"X-Callback-Token": TOKEN})
    assert response.status_code == 200
    assert len(fake.envelopes) == 1


def test_the_token_file_is_used_when_no_token_is_set(tmp_path: Path, fake: FakeEnqueuer) -> None:
    (tmp_path / "token").write_text("from-file\n")
    app = create_app(Settings(data_dir=tmp_path), enqueuer_factory=lambda s: fake)

    async def go() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            good = await client.post("/callbacks?token=from-file", content=BODY)
            bad = await client.post(f"/callbacks?token={TOKEN}", content=BODY)
            return good.status_code, bad.status_code

    assert asyncio.run(go()) == (200, 401)
    assert len(fake.envelopes) == 1


def test_create_app_without_any_token_is_a_config_error(tmp_path: Path, fake: FakeEnqueuer) -> None:
    made: list[Settings] = []

    def factory(settings: Settings) -> FakeEnqueuer:
        made.append(settings)
        return fake

    with pytest.raises(ConfigError, match="CICB_RECEIVER_TOKEN"):
        create_app(Settings(receiver_token=None, data_dir=tmp_path), enqueuer_factory=factory)
    assert made == []


# -- the body -----------------------------------------------------------------------------


def test_an_empty_body_is_400(call: Call, fake: FakeEnqueuer) -> None:
    response = post(call, b"")
    assert response.status_code == 400
    assert fake.envelopes == []


def test_a_body_over_the_declared_limit_is_413(call: Call, fake: FakeEnqueuer) -> None:
    response = post(call, b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["error"]
    assert fake.envelopes == []


def test_a_body_at_the_limit_is_accepted(call: Call, fake: FakeEnqueuer) -> None:
    assert post(call, b"x" * LIMIT).status_code == 200
    assert len(fake.envelopes) == 1


def test_a_content_length_over_the_limit_is_413_before_reading(call: Call) -> None:
    response = post(call, b"<Response/>", headers={"Content-Length": str(LIMIT * 10)})
    assert response.status_code == 413


def test_a_streamed_body_over_the_limit_is_413(call: Call, fake: FakeEnqueuer) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            sent.append(256)
            yield b"y" * 256

    response = post(call, chunks())
    assert response.status_code == 413
    assert fake.envelopes == []
    assert sum(sent) > LIMIT


def test_a_streamed_body_under_the_limit_is_accepted_whole(call: Call, fake: FakeEnqueuer) -> None:
    parts = [b"<Response>", "<UserData>分块</UserData>".encode(), b"\xff\x00", b"</Response>"]

    async def chunks() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    response = post(call, chunks())
    assert response.status_code == 200
    [envelope] = fake.envelopes
    assert Envelope.from_json(envelope).body == b"".join(parts)


# -- what is enqueued -----------------------------------------------------------------------


def test_an_accepted_callback_is_enqueued_byte_for_byte(call: Call, fake: FakeEnqueuer) -> None:
    response = post(call, BODY, headers={"Content-Type": "application/xml; charset=utf-8"})
    assert response.status_code == 200

    [data] = fake.envelopes
    envelope = Envelope.from_json(data)
    assert envelope.body == BODY
    assert envelope.content_type == "application/xml; charset=utf-8"
    assert envelope.remote_addr == "198.51.100.9"
    assert envelope.request_id
    assert response.headers["X-Request-Id"] == envelope.request_id
    assert response.json() == {"request_id": envelope.request_id, "status": "accepted"}


def test_a_binary_body_is_enqueued_byte_for_byte(call: Call, fake: FakeEnqueuer) -> None:
    body = bytes(range(256))
    assert post(call, body, headers={"Content-Type": "application/octet-stream"}).status_code == 200
    [data] = fake.envelopes
    assert data["body_encoding"] == "base64"
    assert Envelope.from_json(data).body == body


def test_each_callback_gets_its_own_request_id_unless_one_is_given(
    call: Call, fake: FakeEnqueuer
) -> None:
    first, second = post(call), post(call)
    given = post(call, headers={"X-Request-Id": "abc-123"})
    ids = [r.headers["X-Request-Id"] for r in (first, second, given)]
    assert ids[0] != ids[1]
    assert ids[2] == "abc-123"
    assert [Envelope.from_json(e).request_id for e in fake.envelopes] == ids


def test_broker_unavailable_is_503_never_200(call: Call, fake: FakeEnqueuer) -> None:
    fake.ingest_error = BrokerUnavailable("connection refused")
    response = post(call)
    assert response.status_code == 503
    assert response.json()["request_id"] == response.headers["X-Request-Id"]
    assert fake.envelopes == []


# -- health, readiness, metrics -----------------------------------------------------------


def test_healthz_is_200_without_asking_the_broker(call: Call, fake: FakeEnqueuer) -> None:
    fake.ping_error = BrokerUnavailable("down")
    assert call("GET", "/healthz").status_code == 200
    assert fake.pings == 0


def test_readyz_follows_the_broker(call: Call, fake: FakeEnqueuer) -> None:
    assert call("GET", "/readyz").status_code == 200
    fake.ping_error = BrokerUnavailable("broker unreachable: refused")
    response = call("GET", "/readyz")
    assert response.status_code == 503
    assert "refused" in response.json()["error"]
    assert fake.pings == 2


def test_metrics_count_responses_by_status(call: Call) -> None:
    assert call("POST", "/callbacks", content=BODY).status_code == 401
    assert post(call).status_code == 200
    assert post(call).status_code == 200
    response = call("GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert 'cicb_receiver_responses_total{status="401"} 1.0' in lines
    assert 'cicb_receiver_responses_total{status="200"} 2.0' in lines
    assert any(line.startswith("cicb_receiver_enqueue_seconds_count 2.0") for line in lines)


def test_callbacks_only_take_post(call: Call, fake: FakeEnqueuer) -> None:
    assert call("GET", f"/callbacks?token={TOKEN}").status_code == 405
    assert fake.envelopes == []
