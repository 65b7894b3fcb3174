"""The receiver app, in process, over a fake enqueuer: token, size, envelope, answers."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.brokers.envelope import Envelope
from pipeline.errors import BrokerUnavailable, ConfigError
from pipeline.logguard import LogThrottle
from pipeline.receiver import callbacks as receiver
from pipeline.receiver.app import ReceiverApp, create_app
from pipeline.settings import Settings
from tests.support import Lines, logged

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

    async def ingest(self, envelope: dict[str, Any]) -> str:
        if self.ingest_error is not None:
            raise self.ingest_error
        self.envelopes.append(envelope)
        return f"task-{len(self.envelopes)}"

    async def aclose(self) -> None:
        pass

    async def ping(self) -> None:
        self.pings += 1
        if self.ping_error is not None:
            raise self.ping_error


@pytest.fixture
def fake() -> FakeEnqueuer:
    return FakeEnqueuer()


@pytest.fixture
def app(tmp_path: Path, fake: FakeEnqueuer) -> ReceiverApp:
    settings = Settings(receiver_token=TOKEN, max_body_bytes=LIMIT, data_dir=tmp_path)
    return create_app(settings, enqueuer_factory=lambda s: fake)


Call = Callable[..., httpx.Response]


@pytest.fixture
def call(app: ReceiverApp) -> Call:
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


# -- who may post: tokens, networks, the proxy header --------------------------------------


def make_app(tmp_path: Path, fake: FakeEnqueuer, **options: Any) -> ReceiverApp:
    settings = Settings(
        **{"receiver_token": TOKEN, "max_body_bytes": LIMIT, "data_dir": tmp_path, **options}
    )
    return create_app(settings, enqueuer_factory=lambda s: fake)


async def send(
    app: ReceiverApp, *requests: dict[str, Any], client: tuple[str, int] = ("198.51.100.9", 4242)
) -> list[httpx.Response]:
    """Make the requests at once, on one app, from one client address."""
    transport = httpx.ASGITransport(app=app, client=client)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        calls = [
            http.request(r.get("method", "POST"), r.get("url", "/callbacks"), **r.get("kw", {}))
            for r in requests
        ]
        return list(await asyncio.gather(*calls))


def callback(body: Any = BODY, token: str = TOKEN, **headers: str) -> dict[str, Any]:
    return {"kw": {"content": body, "headers": {"X-Callback-Token": token, **headers}}}


def test_every_accepted_token_is_taken_during_a_rotation(
    tmp_path: Path, fake: FakeEnqueuer
) -> None:
    app = make_app(tmp_path, fake, receiver_token="old", receiver_tokens=("new", "newer"))
    answers = asyncio.run(
        send(app, callback(token="old"), callback(token="new"), callback(token="newer"))
    )
    assert [r.status_code for r in answers] == [200, 200, 200]
    [bad] = asyncio.run(send(app, callback(token=TOKEN)))
    assert bad.status_code == 401
    assert len(fake.envelopes) == 3


def test_an_address_outside_the_networks_is_403_before_anything_is_read(
    tmp_path: Path, fake: FakeEnqueuer
) -> None:
    app = make_app(tmp_path, fake, allowed_cidrs=("10.0.0.0/8", "2001:db8::/32"))
    pulled: list[bytes] = []

    async def body() -> AsyncIterator[bytes]:
        for part in (b"<Response>", b"</Response>"):
            pulled.append(part)
            yield part

    [refused] = asyncio.run(send(app, callback(body()), client=("198.51.100.9", 4242)))
    assert refused.status_code == 403
    assert refused.headers["Connection"] == "close"
    assert len(pulled) <= 1  # httpx hands over the first chunk with the request; no more
    [no_token] = asyncio.run(send(app, callback(token="wrong"), client=("198.51.100.9", 1)))
    assert no_token.status_code == 403  # the network is checked before the token
    [inside] = asyncio.run(send(app, callback(), client=("10.1.2.3", 4242)))
    [inside6] = asyncio.run(send(app, callback(), client=("2001:db8::5", 4242)))
    assert (inside.status_code, inside6.status_code) == (200, 200)
    assert [Envelope.from_json(e).remote_addr for e in fake.envelopes] == [
        "10.1.2.3",
        "2001:db8::5",
    ]


def test_a_forwarded_header_is_ignored_unless_configured(
    tmp_path: Path, fake: FakeEnqueuer
) -> None:
    app = make_app(tmp_path, fake, allowed_cidrs=("10.0.0.0/8",))
    [forged] = asyncio.run(send(app, callback(**{"X-Forwarded-For": "10.1.2.3"})))
    assert forged.status_code == 403
    assert fake.envelopes == []


def test_the_proxy_header_gives_the_address_the_proxy_appended(
    tmp_path: Path, fake: FakeEnqueuer
) -> None:
    app = make_app(
        tmp_path, fake, allowed_cidrs=("203.0.113.0/24",), proxy_header="X-Forwarded-For"
    )
    proxy = ("127.0.0.1", 5000)
    answers = asyncio.run(
        send(
            app,
            callback(**{"X-Forwarded-For": "203.0.113.7"}),
            # A client put an allowed address first; the proxy appended the real one.
            callback(**{"X-Forwarded-For": "203.0.113.7, 198.51.100.66"}),
            # No header, or garbage: the peer (the proxy itself, not allowed) decides.
            callback(),
            callback(**{"X-Forwarded-For": "unknown"}),
            client=proxy,
        )
    )
    assert [r.status_code for r in answers] == [200, 403, 403, 403]
    [envelope] = fake.envelopes
    assert Envelope.from_json(envelope).remote_addr == "203.0.113.7"


def test_x_real_ip_as_the_proxy_header(tmp_path: Path, fake: FakeEnqueuer) -> None:
    app = make_app(tmp_path, fake, proxy_header="X-Real-IP")
    [answer] = asyncio.run(send(app, callback(**{"X-Real-IP": "2001:db8::9"})))
    assert answer.status_code == 200
    assert Envelope.from_json(fake.envelopes[0]).remote_addr == "2001:db8::9"


# -- what is logged -------------------------------------------------------------------------


@pytest.fixture
def lines() -> Iterator[Lines]:
    with logged("cicb.receiver") as handler:
        yield handler


def test_a_refusal_is_logged_with_address_and_id_never_the_token(
    tmp_path: Path, fake: FakeEnqueuer, lines: Lines
) -> None:
    app = make_app(tmp_path, fake, receiver_tokens=("second-secret",))
    near_miss = TOKEN[:-1] + "X"
    asyncio.run(
        send(
            app,
            callback(token=near_miss, **{"X-Request-Id": "req-1"}),
            {"url": f"/callbacks?token={near_miss}x&other=1", "kw": {"content": BODY}},
        )
    )
    refused = lines.named("callback.refused")
    assert len(refused) == 2
    assert {e["status"] for e in refused} == {401}
    assert {e["remote_addr"] for e in refused} == {"198.51.100.9"}
    assert "req-1" in {e["request_id"] for e in refused}
    text = repr(lines.events)
    for secret in (TOKEN, near_miss, "second-secret", "other=1"):
        assert secret not in text


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of the receiver's refusal-log throttle, for the apps the test creates."""
    clock = Clock()
    monkeypatch.setattr(receiver, "LogThrottle", functools.partial(LogThrottle, clock=clock))
    return clock


def test_refusals_are_logged_at_most_ten_a_minute_then_counted_in_one_line(
    tmp_path: Path, fake: FakeEnqueuer, lines: Lines, clock: Clock
) -> None:
    app = make_app(tmp_path, fake, allowed_cidrs=("10.0.0.0/8",))
    asyncio.run(send(app, *[callback(token="wrong") for _ in range(50)]))
    assert len(lines.named("callback.refused")) == 10
    assert lines.named("callback.refusals_suppressed") == []  # said at the next window

    clock.now += 59.9  # still the same minute: counted, not logged
    asyncio.run(send(app, callback(token="wrong")))
    assert len(lines.named("callback.refused")) == 10
    assert lines.named("callback.refusals_suppressed") == []

    clock.now += 0.1  # the next minute: one line for the 41 left out, then the refusal
    asyncio.run(send(app, callback(token="wrong", **{"X-Request-Id": "next-minute"})))
    [summary] = lines.named("callback.refusals_suppressed")
    assert summary["count"] == 41
    refused = lines.named("callback.refused")
    assert len(refused) == 11
    assert refused[-1]["request_id"] == "next-minute"
    assert lines.events.index(summary) < lines.events.index(refused[-1])

    # A window without refusals past the limit ends with no summary at all.
    clock.now += 60
    asyncio.run(send(app, callback(token="wrong")))
    assert len(lines.named("callback.refusals_suppressed")) == 1
    assert len(lines.named("callback.refused")) == 12
    assert fake.envelopes == []


def test_a_broker_error_is_logged_and_answered_without_secrets(
    tmp_path: Path, fake: FakeEnqueuer, lines: Lines
) -> None:
    app = make_app(tmp_path, fake, broker_url="redis://:hunter2@127.0.0.1:1/0")
    fake.ingest_error = BrokerUnavailable("cannot reach redis://:hunter2@127.0.0.1:1/0")
    fake.ping_error = fake.ingest_error
    [answer, ready] = asyncio.run(send(app, callback(), {"method": "GET", "url": "/readyz"}))
    assert (answer.status_code, ready.status_code) == (503, 503)
    assert "hunter2" not in ready.text
    [logged] = lines.named("callback.not_enqueued")
    assert "hunter2" not in repr(logged)
    assert "***" in logged["error"]


def test_an_odd_request_id_is_replaced(tmp_path: Path, fake: FakeEnqueuer) -> None:
    app = make_app(tmp_path, fake)
    answers = asyncio.run(
        send(
            app,
            callback(**{"X-Request-Id": "x" * 129}),
            callback(**{"X-Request-Id": "a b\\nforged=1"}),
            callback(**{"X-Request-Id": "ok-id_1.2:3"}),
        )
    )
    ids = [r.headers["X-Request-Id"] for r in answers]
    assert ids[0] != "x" * 129
    assert ids[1] != "a b\\nforged=1"
    assert ids[2] == "ok-id_1.2:3"


# -- hostile bodies -------------------------------------------------------------------------


def test_a_slow_body_is_408_while_a_good_callback_flows(tmp_path: Path, fake: FakeEnqueuer) -> None:
    app = make_app(tmp_path, fake, body_timeout_s=0.3)

    async def a_byte_at_a_time() -> AsyncIterator[bytes]:
        for byte in b"<Response></Response>":
            await asyncio.sleep(0.1)
            yield bytes([byte])

    async def go() -> tuple[httpx.Response, httpx.Response, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def good() -> tuple[httpx.Response, float]:
            [answer] = await send(app, callback())
            return answer, loop.time() - started

        (slow,), (fast, fast_s) = await asyncio.gather(
            send(app, callback(a_byte_at_a_time())), good()
        )
        return slow, fast, fast_s

    slow, fast, fast_s = asyncio.run(go())
    assert slow.status_code == 408
    assert "0.3" in slow.json()["error"]
    assert slow.headers["Connection"] == "close"
    assert fast.status_code == 200
    assert fast_s < 0.3
    [envelope] = fake.envelopes
    assert Envelope.from_json(envelope).body == BODY


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (None, BODY),
        ("text/html", BODY),
        ("application/json", BODY),
        ("multipart/form-data; boundary=zzz", BODY),
        ("application/xml", b"<Response>\xff\xfe\xc3\x28 invalid utf-8</Response>"),
        ("application/xml; charset=utf-8", b"\xef\xbb\xbf" + BODY),
        ("\x7f\x01nonsense", b"\x00\x01\x02 garbage"),
    ],
)
def test_content_types_and_encodings_are_not_the_receivers_business(
    tmp_path: Path, fake: FakeEnqueuer, content_type: str | None, body: bytes
) -> None:
    app = make_app(tmp_path, fake)
    headers = {"Content-Type": content_type} if content_type is not None else {}
    [answer] = asyncio.run(send(app, callback(body, **headers)))
    assert answer.status_code == 200
    [data] = fake.envelopes
    envelope = Envelope.from_json(data)
    assert envelope.body == body
    if content_type is not None:
        assert envelope.content_type == content_type


# -- a fuzz run -----------------------------------------------------------------------------


# What a client or a proxy may write as an X-Forwarded-For entry: the text, the address the
# receiver must take from it (None: no address, the peer decides), and whether it is inside
# the fuzz run's networks, 198.51.100.0/24 and 2001:db8::/32. Written out by hand, not
# computed with the code under test.
FORWARDED: list[tuple[str, str | None, bool]] = [
    ("198.51.100.7", "198.51.100.7", True),
    ("198.51.100.7:8443", "198.51.100.7", True),
    ('"198.51.100.200"', "198.51.100.200", True),
    ("198.51.101.7", "198.51.101.7", False),
    ("203.0.113.1", "203.0.113.1", False),
    ("2001:db8::3", "2001:db8::3", True),
    ("[2001:DB8:0::3]:443", "2001:db8::3", True),
    ("2001:db9::3", "2001:db9::3", False),
    ("::1", "::1", False),
    ("198.51.100.256", None, False),
    ("unknown", None, False),
    ("junk", None, False),
]


def test_a_fuzz_run_of_random_requests(tmp_path: Path, fake: FakeEnqueuer) -> None:
    """Random bodies, chunkings, tokens, content types, forwarded addresses and request ids,
    for ``CICB_RECEIVER_FUZZ_SECONDS`` (default 2): each answer is the one expected, never a
    5xx, and each 200 enqueued its body byte for byte. The seed is printed for a replay."""
    budget_s = float(os.environ.get("CICB_RECEIVER_FUZZ_SECONDS", "2"))
    seed = int(os.environ.get("CICB_FUZZ_SEED", str(random.randrange(2**32))))
    print(f"receiver fuzz seed {seed}")
    rng = random.Random(seed)
    app = make_app(
        tmp_path,
        fake,
        receiver_tokens=("second",),
        allowed_cidrs=("198.51.100.0/24", "2001:db8::/32"),
        proxy_header="X-Forwarded-For",
    )
    printable = [chr(c) for c in range(0x20, 0x7F)] + ["é", "令", "\t"]

    def header_text(n: int) -> str:
        return "".join(rng.choice(printable) for _ in range(n)).strip()

    def forwarded_entry() -> tuple[str, str | None, bool]:
        if rng.random() < 0.2:
            # Noise: starts with a letter that is no hex digit, and has no comma.
            return "x" + header_text(11).replace(",", ""), None, False
        return rng.choice(FORWARDED)

    async def go() -> int:
        transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 1))
        count = 0
        deadline = time.monotonic() + budget_s
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            while time.monotonic() < deadline:
                count += 1
                body = rng.randbytes(
                    rng.choice([0, 1, 17, LIMIT, LIMIT + 1, rng.randrange(2 * LIMIT)])
                )
                token = rng.choice([TOKEN, "second", "", TOKEN + "x", header_text(8)])
                entries = [forwarded_entry() for _ in range(rng.randrange(3))]
                forwarded = ", ".join(text for text, _, _ in entries)
                headers = {"X-Callback-Token": token, "Content-Type": header_text(20)}
                if forwarded:
                    headers["X-Forwarded-For"] = forwarded
                if rng.random() < 0.3:
                    headers["X-Request-Id"] = header_text(rng.randrange(200))
                cuts = sorted(rng.randrange(len(body) + 1) for _ in range(rng.randrange(4)))

                async def chunks(data: bytes = body, at: list[int] = cuts) -> AsyncIterator[bytes]:
                    for start, end in zip([0, *at], [*at, len(data)], strict=True):
                        yield data[start:end]

                before = len(fake.envelopes)
                raw = {k.encode(): v.encode() for k, v in headers.items()}
                answer = await http.post("/callbacks", content=chunks(), headers=raw)
                # The last entry is the one the proxy appended; without one that is an
                # address, the peer (192.0.2.1, outside the networks) is the client.
                _, address, allowed = entries[-1] if entries else ("", None, False)
                remote = address or "192.0.2.1"
                if not allowed:
                    expected = 403
                elif token not in (TOKEN, "second"):
                    expected = 401
                elif len(body) > LIMIT:
                    expected = 413
                elif not body:
                    expected = 400
                else:
                    expected = 200
                assert answer.status_code == expected, (seed, headers, len(body))
                if expected == 200:
                    envelope = Envelope.from_json(fake.envelopes[-1])
                    assert envelope.body == body
                    assert envelope.remote_addr == remote
                else:
                    assert len(fake.envelopes) == before
        return count

    count = asyncio.run(go())
    print(f"receiver fuzz: {count} requests in {budget_s:g} s")
    assert count > 50
