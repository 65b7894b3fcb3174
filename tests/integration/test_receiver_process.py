"""A real ``cicb receiver`` process: graceful stop, slow clients, source networks, secrets in
its log, and a broker that goes away and comes back."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.support import TOKEN, Broker, Process, cicb_env, start_receiver, wait_until

pytestmark = pytest.mark.integration

BODY = b"<Response><EventName>TaskFinish</EventName><JobsDetail/></Response>"


def post(url: str, body: bytes = BODY, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{url}/callbacks",
        content=body,
        headers={"X-Callback-Token": TOKEN, **headers},
        timeout=15,
    )


def queued(broker_url: str) -> int:
    client = redis.Redis.from_url(broker_url)
    try:
        return int(client.llen("ingest"))
    finally:
        client.close()


def signal_group(process: Process, sig: int) -> None:
    assert process.popen is not None
    os.killpg(process.popen.pid, sig)


# -- graceful stop --------------------------------------------------------------------------


def test_sigterm_lets_a_request_under_way_finish(broker_url: str, tmp_path: Path) -> None:
    receiver, url = start_receiver(cicb_env(broker_url), tmp_path / "receiver.log")
    try:
        midway, signalled = threading.Event(), threading.Event()
        parts = [BODY[:10], BODY[10:30], BODY[30:]]
        answers: list[httpx.Response | BaseException] = []

        def body() -> Iterator[bytes]:
            yield parts[0]
            midway.set()
            signalled.wait(10)
            for part in parts[1:]:
                time.sleep(0.3)
                yield part

        def send() -> None:
            try:
                answers.append(
                    httpx.post(
                        f"{url}/callbacks",
                        content=body(),
                        headers={"X-Callback-Token": TOKEN},
                        timeout=20,
                    )
                )
            except BaseException as exc:
                answers.append(exc)

        thread = threading.Thread(target=send)
        thread.start()
        assert midway.wait(10)
        time.sleep(0.3)  # the request is in the server, its body half sent
        signal_group(receiver, signal.SIGTERM)
        time.sleep(0.5)
        # Stopping: no new connection is taken, while the one under way goes on.
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)
        signalled.set()
        thread.join(20)

        [answer] = answers
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 200
        assert queued(broker_url) == 1
        assert receiver.popen is not None
        assert receiver.popen.wait(15) == 0
    finally:
        receiver.stop()


def test_an_idle_receiver_exits_0_on_sigterm(broker_url: str, tmp_path: Path) -> None:
    receiver, url = start_receiver(cicb_env(broker_url), tmp_path / "receiver.log")
    assert post(url).status_code == 200
    assert receiver.popen is not None
    signal_group(receiver, signal.SIGTERM)
    assert receiver.popen.wait(15) == 0


# -- slow clients ---------------------------------------------------------------------------


def test_a_byte_a_second_client_gets_408_while_callbacks_flow(
    broker_url: str, tmp_path: Path
) -> None:
    env = cicb_env(broker_url, CICB_BODY_TIMEOUT_S="2")
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        slow = socket.create_connection(("127.0.0.1", port), timeout=15)
        head = (
            f"POST /callbacks HTTP/1.1\r\nHost: x\r\nX-Callback-Token: {TOKEN}\r\n"
            f"Content-Type: application/xml\r\nContent-Length: {len(BODY)}\r\n\r\n"
        )
        slow.sendall(head.encode())
        started = time.monotonic()

        def drip() -> None:
            for byte in BODY:
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    return
                time.sleep(1)

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()

        time.sleep(0.5)
        t0 = time.monotonic()
        fast = post(url)
        fast_s = time.monotonic() - t0
        assert fast.status_code == 200
        assert fast_s < 1.0

        reply = slow.recv(4096)
        slow_s = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert 1.8 < slow_s < 5
        # The connection is closed: the rest of the drip goes nowhere.
        assert wait_until(lambda: slow.recv(4096) == b"", timeout_s=5, what="closed")
        slow.close()
        assert queued(broker_url) == 1
        print(
            f"\nfast callback {fast_s * 1000:.0f} ms; byte-a-second client 408 after {slow_s:.1f} s"
        )
    finally:
        receiver.stop()


# -- who may post ---------------------------------------------------------------------------


def test_networks_and_the_proxy_header_in_a_real_server(broker_url: str, tmp_path: Path) -> None:
    strict = cicb_env(broker_url, CICB_ALLOWED_CIDRS="10.0.0.0/8")
    receiver, url = start_receiver(strict, tmp_path / "strict.log")
    try:
        # uvicorn's own proxy handling would believe this header from localhost: it is off.
        assert post(url, **{"X-Forwarded-For": "10.1.2.3"}).status_code == 403
        assert post(url).status_code == 403
    finally:
        receiver.stop()

    proxied = {**strict, "CICB_PROXY_HEADER": "X-Forwarded-For"}
    receiver, url = start_receiver(proxied, tmp_path / "proxied.log")
    try:
        assert post(url, **{"X-Forwarded-For": "10.1.2.3"}).status_code == 200
        assert post(url, **{"X-Forwarded-For": "10.1.2.3, 127.0.0.1"}).status_code == 403
        assert queued(broker_url) == 1
    finally:
        receiver.stop()


def test_no_secret_reaches_the_receivers_log(broker_url: str, tmp_path: Path) -> None:
    secrets = {
        "CICB_RECEIVER_TOKENS": "rotated-token-abcdef",
        "CICB_NOTIFY_SECRET": "whsec_notify-secret",
        "CICB_COS_SECRET_ID": "AKIDcossecretid",
        "CICB_COS_SECRET_KEY": "cos-secret-key-value",
    }
    env = cicb_env(broker_url, CICB_LOG_LEVEL="DEBUG", **secrets)
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    try:
        assert post(url).status_code == 200
        assert httpx.post(f"{url}/callbacks?token=rotated-token-abcdef", content=BODY).is_success
        near_misses = [TOKEN[:-1], "rotated-token-abcdeX"]
        for wrong in near_misses:
            assert httpx.post(f"{url}/callbacks?token={wrong}", content=BODY).status_code == 401
            assert post(url, **{"X-Callback-Token": wrong}).status_code == 401
        assert httpx.get(f"{url}/readyz").status_code == 200
    finally:
        receiver.stop()
    log = receiver.log()
    assert "callback.refused" in log
    for value in [TOKEN, *secrets.values(), *near_misses]:
        assert value not in log


def test_garbage_connections_cannot_flood_the_log(broker_url: str, tmp_path: Path) -> None:
    receiver, url = start_receiver(cicb_env(broker_url), tmp_path / "receiver.log")
    port = int(url.rsplit(":", 1)[1])
    try:
        for i in range(50):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"\x16\x03\x01 not http at all %d\r\n\r\n" % i)
                s.recv(4096)
        assert post(url).status_code == 200
    finally:
        receiver.stop()
    assert 1 <= receiver.log().count("Invalid HTTP request received.") <= 10


# -- the broker goes away and comes back ----------------------------------------------------


@pytest.fixture
def own_valkey(tmp_path: Path) -> Iterator[Broker]:
    """A broker of the test's own, without persistence: it comes back empty."""
    server = Broker(tmp_path, persistent=False)
    server.start()
    yield server
    server.stop()


def test_503_while_the_broker_is_down_and_200_when_it_is_back(
    own_valkey: Broker, tmp_path: Path
) -> None:
    receiver, url = start_receiver(cicb_env(own_valkey.url), tmp_path / "receiver.log")
    try:
        assert post(url).status_code == 200
        assert httpx.get(f"{url}/readyz").status_code == 200

        own_valkey.stop()
        down_at = time.monotonic()
        statuses: list[int] = []
        slowest_s = 0.0
        while time.monotonic() - down_at < 4:
            t0 = time.monotonic()
            statuses.append(post(url).status_code)
            slowest_s = max(slowest_s, time.monotonic() - t0)
        assert statuses and set(statuses) == {503}, statuses
        t0 = time.monotonic()
        ready = httpx.get(f"{url}/readyz", timeout=15)
        ready_s = time.monotonic() - t0
        assert ready.status_code == 503
        assert ready_s < 5

        own_valkey.start()
        up_at = time.monotonic()
        wait_until(lambda: post(url).status_code == 200, timeout_s=15, what="200 again")
        back_s = time.monotonic() - up_at
        wait_until(
            lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout_s=15, what="ready"
        )
        # Every 200 is on the broker (the restarted Valkey started empty: --save "").
        answers = [post(url).status_code for _ in range(20)]
        assert answers == [200] * 20
        assert queued(own_valkey.url) == 21
        print(
            f"\nbroker down: {len(statuses)} callbacks, all 503, slowest {slowest_s:.2f} s,"
            f" /readyz 503 in {ready_s:.2f} s;"
            f" back: 200 after {back_s:.2f} s"
        )
    finally:
        receiver.stop()
