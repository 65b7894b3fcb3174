"""Hostile input beside good traffic: each refused at the receiver or dead-lettered with its
reason, never a crash, and the good callbacks flow through untouched."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.reliability.harness import callback, notified_jobs, report, send_all
from tests.support import TOKEN, Broker, Target, cicb_env, run_cli, start_receiver, start_worker

pytestmark = pytest.mark.reliability

BOMB = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">
<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Response><EventName>&lol3;</EventName></Response>"""
EXTERNAL = b"""<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<Response><EventName>&x;</EventName></Response>"""
DEEP = b"<Response>" + b"<a>" * 50_000 + b"</a>" * 50_000 + b"</Response>"
DEEP_JSON = b'{"EventName": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"

# name: (body, headers, status at the receiver, reason expected in the dead letter or None)
CORPUS: dict[str, tuple[bytes, dict[str, str], int, str | None]] = {
    "xml bomb": (BOMB, {}, 200, "DOCTYPE"),
    "external entity": (EXTERNAL, {}, 200, "DOCTYPE"),
    "deep xml": (DEEP, {}, 200, "deeper"),
    "deep json": (DEEP_JSON, {"Content-Type": "application/json"}, 200, "deeper"),
    "garbage": (bytes(range(256)) * 4, {"Content-Type": "application/xml"}, 200, "UTF-8"),
    "invalid utf-8": (b"<Response>\xff\xfe</Response>", {}, 200, "UTF-8"),
    "not a callback": (
        b'{"hello": "world"}',
        {"Content-Type": "application/json"},
        200,
        "EventName",
    ),
    "over the limit": (b"<" * (5 * 1024 * 1024 + 1), {}, 413, None),
    "empty": (b"", {}, 400, None),
    "no token": (callback(90_001), {"X-Callback-Token": ""}, 401, None),
    "wrong token": (callback(90_002), {"X-Callback-Token": "guess"}, 401, None),
}


def slow_client(url: str, results: dict[str, object]) -> None:
    """Headers, then one byte a second: must get 408, not hold the receiver."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /callbacks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            + f"X-Callback-Token: {TOKEN}\r\n\r\n".encode()
        )
        started = time.monotonic()
        answer = b""
        try:
            for _ in range(30):
                s.sendall(b"<")
                s.settimeout(1)
                try:
                    answer = s.recv(200)
                except TimeoutError:
                    continue
                break
        except OSError:
            pass
        results["slow client"] = (answer.split(b" ")[1:2], round(time.monotonic() - started, 1))


def test_hostile_inputs_beside_good_traffic(broker: Broker, target: Target, tmp_path: Path) -> None:
    env = cicb_env(broker.url, CICB_NOTIFY_URLS=target.url, CICB_BODY_TIMEOUT_S="2")
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        slow: dict[str, object] = {}
        slow_thread = threading.Thread(target=slow_client, args=(url, slow))
        slow_thread.start()
        good = [callback(i) for i in range(200)]
        good_counts: dict[str, object] = {}
        good_thread = threading.Thread(
            target=lambda: good_counts.update(c=send_all(url, good, workers=4))
        )
        good_thread.start()
        statuses = {}
        for name, (body, headers, _, _) in CORPUS.items():
            all_headers = {"X-Callback-Token": TOKEN, **headers}
            statuses[name] = httpx.post(
                f"{url}/callbacks", content=body, headers=all_headers, timeout=30
            ).status_code
        good_thread.join()
        slow_thread.join()

        expected_dead = {n for n, (_, _, status, reason) in CORPUS.items() if reason}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            letters = json.loads(run_cli("dlq", "list", "--json", env=env).stdout)
            if letters["count"] >= len(expected_dead) and len(notified_jobs(target)) >= 200:
                break
            time.sleep(0.5)
        reasons = [d["reason"] for d in letters["dead_letters"]]
        report(
            "hostile input",
            good_sent=len(good),
            good_accepted=good_counts["c"].accepted,  # type: ignore[attr-defined]
            good_notified=len(notified_jobs(target)),
            hostile=len(CORPUS) + 1,
            refused_at_receiver=sum(s != 200 for s in statuses.values()) + 1,
            dead_lettered=letters["count"],
            slow_client=slow["slow client"],
        )
        for name, (_, _, status, _) in CORPUS.items():
            assert statuses[name] == status, name
        assert slow["slow client"][0] == [b"408"]  # type: ignore[index]
        assert letters["count"] == len(expected_dead)
        assert all(r["error"] == "ParseError" for r in letters["dead_letters"])
        for name in expected_dead:
            reason = CORPUS[name][3]
            assert any(reason and reason in r for r in reasons), (name, reasons)
        assert len(notified_jobs(target)) == 200
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        worker.stop()
        receiver.stop()
