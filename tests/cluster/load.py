"""Callbacks as CI sends them, from a test host: ``python -m tests.cluster.load``.

Sends ``--count`` distinct callbacks at ``--rate`` a second, one receiver after the other,
half of them a Failed job that the default route resubmits (``tests.reliability.harness``).
Each answer is a line of ``--out``: the callback's number, its status (0: no answer) and
when it was answered. A slow answer does not hold the next callback back.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.reliability.harness import callback, failed_callback


def body(n: int) -> bytes:
    return failed_callback(n) if n % 2 else callback(n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--receivers", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=40.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    receivers = args.receivers.split(",")
    lock = threading.Lock()
    out = open(args.out, "a")  # noqa: SIM115 - written until the end
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=200))

    def send(n: int) -> None:
        url = receivers[n % len(receivers)]
        try:
            status = client.post(
                f"{url}/callbacks", content=body(n), headers={"X-Callback-Token": args.token}
            ).status_code
        except httpx.HTTPError:
            status = 0
        with lock:
            out.write(json.dumps({"n": n, "status": status, "at": time.time()}) + "\n")
            out.flush()

    start = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        for n in range(args.count):
            time.sleep(max(0.0, start + n / args.rate - time.monotonic()))
            pool.submit(send, n)
    out.close()
    print("load done", flush=True)


if __name__ == "__main__":
    main()
