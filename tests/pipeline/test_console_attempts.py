"""Attempts in the console, against a real Valkey: a callback's steps with each run and
each target's answer, a job's steps on its timeline, the steps waiting for a retry, and
"retry now" behind its confirmation and CSRF token. The records are written by the store the
workers use (``AttemptLog.record_in``), on a pipeline as a worker's last round trip does."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from pipeline.archive import Archive
from pipeline.attempts import INDEX_KEY, PREFIX, Attempt, AttemptLog, Waiting
from pipeline.brokers.envelope import Envelope
from pipeline.console.app import create_app
from pipeline.routing import table_for
from pipeline.settings import Settings
from tests.pipeline.test_console import CONSOLE_TOKEN, csrf_of, words
from tests.support import SAMPLES

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

JOB = "j707f4864f86811ecb90d0b03267ce0e5"
KEY = f"TaskFinish:{JOB}:Success"


@pytest.fixture
def settings(broker_url: str) -> Settings:
    return Settings(
        broker_url=broker_url,
        broker_configured=True,
        console_token=CONSOLE_TOKEN,
        console_scan_limit=40,
        log_format="json",
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, workers_online=lambda: ["celery@w1"])
    with TestClient(app, follow_redirects=False) as test_client:
        assert test_client.post("/signin", data={"token": CONSOLE_TOKEN}).status_code == 303
        yield test_client


@pytest.fixture
def r(broker_url: str) -> redis.Redis:
    return redis.Redis.from_url(broker_url)


@pytest.fixture
def log(r: redis.Redis) -> AttemptLog:
    return AttemptLog(r, retention_s=3600, max_jobs=1000)


def step_id(settings: Settings) -> str:
    [route] = [x for x in table_for(settings).routes if x.name == "job-succeeded"]
    return route.step_ids(KEY)[0]


def archived(r: redis.Redis) -> str:
    envelope = Envelope(
        body=(SAMPLES / "tts_success.xml").read_bytes(),
        content_type="application/xml",
        received_at=datetime.now(UTC),
        remote_addr="10.0.0.1",
        request_id="req-1",
    )
    event = {
        "event": "TaskFinish",
        "job_id": JOB,
        "tag": "Tts",
        "state": "Success",
        "route": "job-succeeded",
        "outcome": "dispatched",
        "key": KEY,
    }
    entry_id = Archive(r, retention_s=3600, max_entries=100).record(
        envelope, task_id="t1", outcomes=[event]
    )
    assert entry_id is not None
    return entry_id


def attempt(sid: str, n: int, outcome: str, **fields: Any) -> Attempt:
    moment = datetime(2026, 12, 4, 15, 0, n, tzinfo=UTC).isoformat()
    values: dict[str, Any] = {
        "task": "cicb.notify",
        "task_id": sid,
        "step_id": sid,
        "job_id": JOB,
        "route": "job-succeeded",
        "step": 0,
        "attempt": n,
        "worker": "celery@w1",
        "started_at": moment,
        "ended_at": moment,
        "outcome": outcome,
        "seconds": 0.012,
    }
    return Attempt(**(values | fields))


def answered(status: int, answer: str, *, retried: bool) -> dict[str, Any]:
    return {
        "targets": [
            {
                "target": "webhook:hooks.example.com#0123456789ab",
                "result": "delivered" if status == 200 else "failed",
                "status": status,
                "error": None,
                "seconds": 0.004,
                "answer": answer,
                "retried": retried,
            }
        ]
    }


def write(log: AttemptLog, r: redis.Redis, item: Attempt, waiting: Waiting | None = None) -> None:
    pipe = r.pipeline(transaction=False)
    log.record_in(pipe, item, waiting)
    pipe.execute()


def waiting_for(sid: str, retries: int) -> Waiting:
    return Waiting(
        task_id=sid,
        task="cicb.notify",
        args=[{"event": "TaskFinish", "job_id": JOB, "tag": "Tts", "state": "Success"}],
        kwargs={"pending": ["0123456789ab"]},
        queue="actions",
        retries=retries,
        headers={"cicb_route": "job-succeeded", "cicb_step": 0},
        chain=None,
        due_at=(datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
    )


def test_the_callback_page_shows_each_attempt_newest_first_with_the_answers(
    client: TestClient, settings: Settings, log: AttemptLog, r: redis.Redis
) -> None:
    entry_id = archived(r)
    sid = step_id(settings)
    first = attempt(
        sid,
        1,
        "retried",
        error="TargetsPending",
        reason="1 target(s) not notified",
        wait_s=1.5,
        detail=answered(503, "busy: try again later", retried=True),
    )
    write(log, r, first)
    write(log, r, attempt(sid, 2, "done", detail=answered(200, "thanks", retried=False)))
    page = client.get(f"/callbacks/{entry_id}")
    assert page.status_code == 200
    text = words(page.text)
    assert "cicb.notify: done after 2 tries" in text
    section = text[text.index("Steps and their attempts") :]
    assert section.index("thanks") < section.index("busy: try again later")
    assert re.search(r"2 2026-12-04T15:00:02\+00:00 done", section)
    assert "next try in 1.5 s" in section
    assert "TargetsPending: 1 target(s) not notified" in section
    # The answers are behind a click.
    assert page.text.count('<details class="target">') == 2
    # Another step id (another callback of the job) is not this callback's.
    write(log, r, attempt("another-step", 1, "done"))
    assert "another-step" not in client.get(f"/callbacks/{entry_id}").text


def test_a_job_timeline_shows_each_steps_final_state(
    client: TestClient, settings: Settings, log: AttemptLog, r: redis.Redis
) -> None:
    archived(r)
    sid = step_id(settings)
    write(log, r, attempt(sid, 1, "dead_lettered", error="TargetsRejected", reason="404"))
    text = words(client.get(f"/jobs/{JOB}").text)
    assert "cicb.notify: dead_lettered after 1 try" in text


def test_a_waiting_step_is_counted_and_retry_now_sends_it_after_the_confirmation(
    client: TestClient, settings: Settings, log: AttemptLog, r: redis.Redis
) -> None:
    entry_id = archived(r)
    sid = step_id(settings)
    write(log, r, attempt(sid, 1, "retried", wait_s=600.0), waiting_for(sid, 1))
    assert "1 step(s) waiting for a retry" in words(client.get("/").text)
    page = words(client.get(f"/callbacks/{entry_id}").text)
    assert "cicb.notify: waiting for its retry (1 try so far)" in page
    confirm = client.get(f"/steps/{sid}/retry-now")
    assert "waits for try 2" in words(confirm.text)
    assert r.llen("actions") == 0

    refused = client.post(f"/steps/{sid}/retry-now", data={"csrf": "0" * 32})
    assert refused.status_code == 403
    assert r.llen("actions") == 0

    sent = client.post(f"/steps/{sid}/retry-now", data={"csrf": csrf_of(client)})
    assert sent.status_code == 303
    assert sent.headers["location"] == f"/jobs/{JOB}?sent=cicb.notify"
    [raw] = r.lrange("actions", 0, -1)
    message = json.loads(raw)
    headers = message["headers"]
    assert (headers["id"], headers["task"], headers["retries"]) == (sid, "cicb.notify", 1)
    assert headers["cicb_route"] == "job-succeeded"
    assert "Sent cicb.notify now." in words(client.get(sent.headers["location"]).text)


def test_retry_now_on_a_step_that_is_not_waiting_is_a_404(client: TestClient) -> None:
    assert client.get("/steps/nothing/retry-now").status_code == 404
    answer = client.post("/steps/nothing/retry-now", data={"csrf": csrf_of(client)})
    assert answer.status_code == 404


def test_the_log_keeps_the_archives_count_of_jobs_and_its_retention(r: redis.Redis) -> None:
    log = AttemptLog(r, retention_s=60, max_jobs=2)
    for n, job in enumerate(("j1", "j2", "j3")):
        write(log, r, attempt(f"s{n}", 1, "done", job_id=job))
    assert log.of_job("j1") == []
    assert [a.step_id for a in log.of_job("j3")] == ["s2"]
    assert r.zcard(INDEX_KEY) == 2
    assert 0 < r.ttl(PREFIX + "j3") <= 60
    # Its next run's record takes a waiting step off the list.
    write(log, r, attempt("s9", 1, "retried", job_id="j3"), waiting_for("s9", 1))
    assert log.waiting_count() == 1
    write(log, r, attempt("s9", 2, "done", job_id="j3"))
    assert log.waiting_count() == 0
