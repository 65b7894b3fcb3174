"""One-step no-op routes for the end-to-end benchmark, and Celery's own no-op for the ceiling.

Both count what they did in Redis (``bench:done``) so the benchmark can time them.
"""

import os
from typing import Any

import redis

from pipeline import Route, task
from workers.app import app

# Straight to the bench's Valkey (not through the proxy that counts the worker's round trips).
counter = redis.Redis.from_url(os.environ["BENCH_COUNTER_URL"])

routes = [Route("bench", ["bench.noop"])]


@task(name="bench.noop")
def noop(event: dict[str, Any]) -> None:
    counter.incr("bench:done")


@app.task(name="bench.plain_noop")
def plain_noop() -> None:
    counter.incr("bench:done")
