"""The services cicb talks to, on one test host: a notify target and CI's API stand-in.

``python -m tests.cluster.peer --host ADDRESS --out DIR`` serves the target on port
``TARGET_PORT`` (every POST answered 200 and written to ``DIR/notified.jsonl``: its
``webhook-id`` and when it came) and CI's API on ``CI_PORT`` (``tests.peers``, creating a job
for each submission; ``DIR/submitted.json`` holds every submission's input, rewritten each
second and at exit).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from tests.peers import CiServer, serve_ci

TARGET_PORT = 9000
CI_PORT = 9001


def serve_target(host: str, out: Path) -> ThreadingHTTPServer:
    lock = threading.Lock()
    log = (out / "notified.jsonl").open("a")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            line = json.dumps({"id": self.headers.get("webhook-id", ""), "at": time.time()})
            with lock:
                log.write(line + "\n")
                log.flush()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, TARGET_PORT), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def dump(ci: CiServer, out: Path) -> None:
    inputs = [
        ElementTree.fromstring(r["body"]).findtext("Input/Object") or "" for r in ci.submissions()
    ]
    partial = out / "submitted.json.part"
    partial.write_text(json.dumps(inputs))
    os.replace(partial, out / "submitted.json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve_target(args.host, args.out)
    with serve_ci(host=args.host, port=CI_PORT) as ci:
        ci.creates_jobs = True
        print("peer ready", flush=True)
        while not stop.wait(1.0):
            dump(ci, args.out)
        dump(ci, args.out)


if __name__ == "__main__":
    main()
