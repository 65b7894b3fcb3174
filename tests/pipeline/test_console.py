"""The console's web app against a real Valkey (Starlette's TestClient): sign-in, sessions,
CSRF, and what each page shows."""

from __future__ import annotations

import html
import re
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from pipeline.actions.resubmit import AttemptStore
from pipeline.archive import Archive
from pipeline.brokers.deadletters import DeadLetter, DeadLetterQueue
from pipeline.brokers.envelope import Envelope
from pipeline.brokers.inflight import Inflight
from pipeline.brokers.queues import connection
from pipeline.console.app import create_app
from pipeline.console.auth import COOKIE, Guard
from pipeline.errors import ConfigError
from pipeline.parsing import parse
from pipeline.parsing.events import JobEvent
from pipeline.reconcile.store import ReconcileStore
from pipeline.routing import table_for
from pipeline.settings import Settings
from tests.support import SAMPLES, Lines, free_port, logged

with warnings.catch_warnings():
    # Starlette 1 asks for httpx2 over httpx; the client works the same with httpx.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CONSOLE_TOKEN = "console-token-0123456789"
TTS_JOB = "j707f4864f86811ecb90d0b03267ce0e5"


@pytest.fixture
def lines() -> Iterator[Lines]:
    with logged("cicb.console") as handler:
        yield handler


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
def archive(broker_url: str) -> Archive:
    return Archive(redis.Redis.from_url(broker_url), retention_s=3600, max_entries=1000)


@pytest.fixture
def dead(settings: Settings) -> DeadLetterQueue:
    return DeadLetterQueue(lambda: connection(settings))


@pytest.fixture
def anonymous(settings: Settings) -> Iterator[TestClient]:
    with TestClient(
        create_app(settings, workers_online=lambda: ["celery@w1"]), follow_redirects=False
    ) as client:
        yield client


@pytest.fixture
def client(anonymous: TestClient) -> TestClient:
    answer = anonymous.post("/signin", data={"token": CONSOLE_TOKEN})
    assert answer.status_code == 303
    return anonymous


def words(page: str) -> str:
    """A page's text as a reader sees it: tags gone, entities read, spaces collapsed."""
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    return re.sub(r" ([,.])(?= |$)", r"\1", text)


def csrf_of(client: TestClient, path: str = "/routes") -> str:
    page = client.get(path).text
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found is not None, page
    return found.group(1)


def record(
    archive: Archive,
    body: bytes,
    *,
    request_id: str,
    events: list[dict[str, Any]],
    outcome: str | None = None,
    received_at: datetime | None = None,
    source: str = "callback",
    error: str | None = None,
) -> str:
    envelope = Envelope(
        body=body,
        content_type="application/xml",
        received_at=received_at or datetime.now(UTC),
        remote_addr="10.0.0.1",
        request_id=request_id,
        source=source,
    )
    entry_id = archive.record(
        envelope, task_id="t1", outcomes=events, outcome=outcome, error=error, reason="bad"
    )
    assert entry_id is not None
    return entry_id


def job_event(job_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "event": "TaskFinish",
        "job_id": job_id,
        "run_id": None,
        "tag": "Tts",
        "state": "Success",
        "source": "callback",
        "route": "job-succeeded",
        "outcome": "dispatched",
        **fields,
    }


def letter(task: str = "cicb.ingest", **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "task": task,
        "queue": "ingest",
        "args": [
            Envelope.received_now(
                b"<garbage", content_type="application/xml", remote_addr=None, request_id="rq-1"
            ).to_json()
        ],
        "kwargs": {},
        "error": "ParseError",
        "reason": "not well-formed",
        "attempts": 1,
        **fields,
    }
    return DeadLetter(**values)


# -- sign-in and sessions ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/callbacks", "/callbacks/1-0", "/jobs/j1", "/dead-letters", "/routes"]
)
def test_without_a_session_every_page_sends_to_the_sign_in_page(
    anonymous: TestClient, path: str, lines: Lines
) -> None:
    answer = anonymous.get(path)
    assert (answer.status_code, answer.headers["location"]) == (303, "/signin")
    assert "Sign in" in anonymous.get("/signin").text
    [refused] = lines.named("console.refused")
    assert (refused["status"], refused["reason"], refused["path"]) == (401, "no session", path)


def test_without_a_session_a_form_changes_nothing(
    anonymous: TestClient, dead: DeadLetterQueue
) -> None:
    dead.put(letter())
    answer = anonymous.post("/dead-letters/purge", data={"csrf": "x"})
    assert answer.status_code == 401
    assert len(dead.entries()) == 1


def test_a_wrong_token_is_refused_logged_without_it_and_gives_no_cookie(
    anonymous: TestClient, lines: Lines
) -> None:
    near_miss = CONSOLE_TOKEN[:-1] + "X"
    answer = anonymous.post("/signin", data={"token": near_miss})
    assert answer.status_code == 401
    assert "Wrong token." in answer.text
    assert COOKIE not in answer.cookies
    assert anonymous.get("/").status_code == 303
    refused = lines.named("console.refused")
    assert [(e["status"], e["reason"]) for e in refused] == [
        (401, "wrong token"),
        (401, "no session"),
    ]
    assert near_miss not in repr(lines.events) and CONSOLE_TOKEN not in repr(lines.events)


def test_signing_in_sets_an_http_only_strict_session_cookie(anonymous: TestClient) -> None:
    answer = anonymous.post("/signin", data={"token": CONSOLE_TOKEN})
    assert (answer.status_code, answer.headers["location"]) == (303, "/")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert CONSOLE_TOKEN not in cookie
    assert anonymous.get("/").status_code == 200


def test_signing_out_ends_the_session(client: TestClient) -> None:
    answer = client.post("/signout", data={"csrf": csrf_of(client)})
    assert (answer.status_code, answer.headers["location"]) == (303, "/signin")
    assert client.get("/").status_code == 303


def test_a_forged_or_expired_session_is_no_session() -> None:
    now = [1_000_000.0]
    guard = Guard(CONSOLE_TOKEN, clock=lambda: now[0])
    cookie = guard.new_cookie()
    assert guard.session(cookie) is not None
    issued, nonce, mac = cookie.split(".")
    assert guard.session(f"{issued}.{nonce}x.{mac}") is None
    assert guard.session(f"{int(issued) + 1}.{nonce}.{mac}") is None
    assert Guard("another token", clock=lambda: now[0]).session(cookie) is None
    now[0] += 12 * 3600
    assert guard.session(cookie) is None


def test_the_console_will_not_start_without_a_token(broker_url: str) -> None:
    with pytest.raises(ConfigError, match="CICB_CONSOLE_TOKEN"):
        create_app(Settings(broker_url=broker_url, broker_configured=True))


@pytest.mark.parametrize("given", [None, "", "0" * 64, "other-session"])
@pytest.mark.parametrize(
    "path", ["/dead-letters/purge", "/dead-letters/replay", "/routes", "/signout"]
)
def test_a_form_without_its_sessions_csrf_token_is_refused_and_changes_nothing(
    client: TestClient,
    settings: Settings,
    dead: DeadLetterQueue,
    lines: Lines,
    path: str,
    given: str | None,
) -> None:
    dead.put(letter())
    if given == "other-session":
        with TestClient(create_app(settings, workers_online=list)) as other:
            other.post("/signin", data={"token": CONSOLE_TOKEN})
            given = csrf_of(other)
    fields = {"all": "1", "body": "<x/>"} | ({"csrf": given} if given is not None else {})
    answer = client.post(path, data=fields)
    assert answer.status_code == 403
    assert "CSRF" in answer.text
    assert len(dead.entries()) == 1
    assert client.get("/").status_code == 200  # still signed in
    assert [e["status"] for e in lines.named("console.refused")] == [403]


def test_pages_forbid_scripts_and_framing(client: TestClient) -> None:
    headers = client.get("/").headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"


# -- pages ------------------------------------------------------------------------------------


def test_the_overview_shows_depths_recent_outcomes_workers_and_reconcile_passes(
    client: TestClient, archive: Archive, dead: DeadLetterQueue, broker_url: str
) -> None:
    dead.put(letter())
    record(archive, b"<a/>", request_id="r1", events=[job_event("j1")])
    record(archive, b"<a/>", request_id="r2", events=[job_event("j2", outcome="duplicate")])
    record(
        archive,
        b"<a/>",
        request_id="r3",
        events=[job_event("j3")],
        received_at=datetime.now(UTC) - timedelta(hours=2),
    )
    store = ReconcileStore(redis.Redis.from_url(broker_url), retention_s=60)
    summary = {"target": "queue|b|ap-x|q1", "listed": 7, "pending": 0, "found": 2, "busy": False}
    store.record_pass("queue|b|ap-x|q1", {**summary, "error": None}, at=datetime.now(UTC))
    page = client.get("/").text
    text = words(page)
    assert re.search(r"dead_letter \s*1 ", text)
    assert re.search(r"dispatched \s*1 ", text) and re.search(r"duplicate \s*1 ", text)
    assert "celery@w1" in page
    assert re.search(r"queue\|b\|ap-x\|q1 .* 7 \s*2 ", text)
    assert 'href="http://127.0.0.1:5555/"' in page


def test_callbacks_are_paged_newest_first_and_filtered(
    client: TestClient, archive: Archive
) -> None:
    ids = [
        record(archive, b"<a/>", request_id=f"r{i}", events=[job_event(f"job{i}")])
        for i in range(60)
    ]
    first = client.get("/callbacks").text
    shown = re.findall(r'href="/callbacks/(\d+-\d+)"', first)
    assert shown == ids[::-1][:40]  # the scan limit (40) read, the page size is 50
    older = re.search(r'href="/callbacks\?before=([^"]+)"', first)
    assert older is not None
    second = client.get(f"/callbacks?before={older.group(1)}").text
    assert re.findall(r'href="/callbacks/(\d+-\d+)"', second) == ids[::-1][40:]
    assert "Older" not in second

    filtered = client.get("/callbacks", params={"job_id": "job7"}).text
    assert re.findall(r'href="/callbacks/(\d+-\d+)"', filtered) == []  # beyond the scan limit
    assert "Older" in filtered
    near = client.get("/callbacks", params={"job_id": "job55"}).text
    assert re.findall(r'href="/callbacks/(\d+-\d+)"', near) == [ids[55]]


def test_a_bad_filter_is_a_400_saying_why(client: TestClient) -> None:
    answer = client.get("/callbacks", params={"since": "yesterday-ish"})
    assert answer.status_code == 400
    assert "since: not a duration nor an ISO 8601 time" in answer.text
    assert client.get("/callbacks", params={"before": "nope"}).status_code == 400


def test_the_search_box_finds_any_id(
    client: TestClient, archive: Archive, dead: DeadLetterQueue
) -> None:
    entry_id = record(archive, b"<a/>", request_id="req-42", events=[job_event("jfound")])
    gone = letter()
    dead.put(gone)
    assert client.get(f"/search?q={entry_id}").headers["location"] == f"/callbacks/{entry_id}"
    assert client.get(f"/search?q={gone.id}").headers["location"] == f"/dead-letters/{gone.id}"
    for q in ("jfound", "req-42"):
        location = client.get(f"/search?q={q}").headers["location"]
        assert location == f"/callbacks?q={q}"
        assert f'href="/callbacks/{entry_id}"' in client.get(location).text
    assert 'href="/jobs/jfound"' in client.get("/callbacks?q=jfound").text


def test_one_callback_shows_its_body_escaped_its_event_route_and_a_byte_exact_download(
    client: TestClient, archive: Archive
) -> None:
    body = (SAMPLES / "tts_success.xml").read_bytes().replace(b"</Response>", b"</Response>")
    hostile = body.replace(b"<Tag>Tts</Tag>", b"<Tag>Tts</Tag><!-- <script>x()</script> -->")
    entry_id = record(archive, hostile, request_id="r1", events=[job_event(TTS_JOB)])
    page = client.get(f"/callbacks/{entry_id}").text
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert f'href="/jobs/{TTS_JOB}"' in page and "job-succeeded" in page
    assert f'"job_id": "{TTS_JOB}"' in html.unescape(page)  # the normalized event
    assert "cicb.notify: no dead letter" in words(page)
    download = client.get(f"/callbacks/{entry_id}/body")
    assert download.content == hostile
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"] == (
        f'attachment; filename="callback-{entry_id}.xml"'
    )
    assert client.get("/callbacks/1-0").status_code == 404


def test_a_failed_step_links_its_dead_letter_and_the_steps_after_it_did_not_run(
    client: TestClient, archive: Archive, dead: DeadLetterQueue, broker_url: str
) -> None:
    settings = Settings(
        broker_url=broker_url,
        broker_configured=True,
        console_token=CONSOLE_TOKEN,
        copy_dest="s3://b/",
    )
    with TestClient(create_app(settings, workers_online=list), follow_redirects=False) as c:
        c.post("/signin", data={"token": CONSOLE_TOKEN})
        failed = DeadLetter(
            task="cicb.notify",
            queue="actions",
            args=[{"job_id": "jstep"}],
            kwargs={},
            error="TargetsRejected",
            reason="HTTP 404",
            attempts=1,
        )
        dead.put(failed)
        entry_id = record(archive, b"<a/>", request_id="r1", events=[job_event("jstep")])
        text = words(c.get(f"/callbacks/{entry_id}").text)
    assert "cicb.notify: dead-lettered (TargetsRejected)" in text
    assert "cicb.copy_output: not run" in text


def test_each_step_says_what_its_records_say_until_it_is_done(
    archive: Archive, broker_url: str
) -> None:
    settings = Settings(
        broker_url=broker_url,
        broker_configured=True,
        console_token=CONSOLE_TOKEN,
        copy_dest="s3://b/",
    )
    key = "TaskFinish:jheld:Success"
    [route] = [r for r in table_for(settings).routes if r.name == "job-succeeded"]
    notify_id, copy_id = route.step_ids(key)
    redis_client = redis.Redis.from_url(broker_url)
    entry_id = record(archive, b"<a/>", request_id="r1", events=[job_event("jheld", key=key)])
    with TestClient(create_app(settings, workers_online=list), follow_redirects=False) as c:
        c.post("/signin", data={"token": CONSOLE_TOKEN})

        def steps() -> str:
            return words(c.get(f"/callbacks/{entry_id}").text)

        assert "cicb.notify: not started" in steps()
        # Published: its message waits, or a worker holds it.
        Inflight(redis_client).publish("actions", [(notify_id, b"{}", "tag-1")])
        assert "cicb.notify: in flight" in steps()
        # Its worker lost it (Redis went away): held by nobody, it is being published again.
        redis_client.hset("cicb:inflight:lost", notify_id, 0)
        assert "cicb.notify: lost" in steps()
        redis_client.set(f"cicb:lease:{notify_id}", "w/1")
        assert "cicb.notify: running" in steps()
        redis_client.set(f"cicb:done:{notify_id}", 1)
        text = steps()
        assert "cicb.notify: done" in text and "cicb.copy_output: not started" in text
    assert copy_id != notify_id


def test_a_jobs_timeline_is_in_time_order_with_how_late_and_the_job_a_resubmission_made(
    client: TestClient, archive: Archive, broker_url: str
) -> None:
    failed = (SAMPLES / "tts_failed.xml").read_bytes()
    [event] = parse(failed)
    assert isinstance(event, JobEvent) and event.ended_at is not None
    job_id, ended = event.job_id, event.ended_at
    record(
        archive,
        failed,
        request_id="r1",
        received_at=ended + timedelta(seconds=3),
        events=[job_event(job_id, state="Failed", route="job-failed")],
    )
    record(
        archive,
        failed,
        request_id="reconcile-x",
        source="reconcile",
        received_at=ended + timedelta(seconds=900),
        events=[job_event(job_id, state="Failed", route="job-failed", outcome="duplicate")],
    )
    attempts = AttemptStore(redis.Redis.from_url(broker_url))
    attempts.record("jnew", 2, 60, resubmitted_from=job_id)
    attempts.record("jnewer", 3, 60, resubmitted_from="jnew")
    text = words(client.get(f"/jobs/{job_id}").text)
    first, second = text.index(" callback "), text.index(" reconcile ")
    assert first < second
    assert "3 s after it ended" in text and "15 min after it ended" in text
    assert "Resubmitted as jnew, then jnewer." in text
    assert 'href="/jobs/jnewer"' in client.get(f"/jobs/{job_id}").text
    assert "Run 3 of this job (a resubmission)." in words(client.get("/jobs/jnewer").text)


def test_dead_letters_are_grouped_and_each_shows_its_bytes_with_a_download(
    client: TestClient, dead: DeadLetterQueue
) -> None:
    garbage = letter()
    dead.put(garbage)
    dead.put(letter())
    dead.put(letter(task="cicb.notify", queue="actions", args=[{}], error="TargetsRejected"))
    text = words(client.get("/dead-letters").text)
    assert re.search(r"cicb.ingest ParseError not well-formed 2 ", text)
    assert re.search(r"cicb.notify TargetsRejected not well-formed 1 ", text)
    page = client.get(f"/dead-letters/{garbage.id}").text
    assert "&lt;garbage" in page and "rq-1" in page
    download = client.get(f"/dead-letters/{garbage.id}/body")
    assert download.content == b"<garbage"
    assert download.headers["content-type"] == "application/octet-stream"
    assert "attachment" in download.headers["content-disposition"]
    assert client.get(f"/dead-letters/{'0' * 32}").status_code == 404


def test_replaying_a_group_asks_first_with_the_count_then_sends_only_that_group(
    client: TestClient, dead: DeadLetterQueue, broker_url: str
) -> None:
    kept = letter(task="cicb.notify", queue="actions", args=[{}], error="TargetsRejected")
    for one in (letter(), kept, letter()):
        dead.put(one)
    group = {"task": "cicb.ingest", "error": "ParseError", "reason": "not well-formed"}
    confirm = client.get("/dead-letters/replay", params=group).text
    assert re.search(r'class="count">2<', confirm)
    assert len(dead.entries()) == 3  # asking changes nothing
    answer = client.post("/dead-letters/replay", data={**group, "csrf": csrf_of(client)})
    assert (answer.status_code, answer.headers["location"]) == (303, "/dead-letters?replayed=2")
    assert [d.id for d in dead.entries()] == [kept.id]
    assert redis.Redis.from_url(broker_url).llen("ingest") == 2
    assert "Replayed 2 dead letter(s)." in client.get(answer.headers["location"]).text


def test_replaying_a_dead_letter_that_is_gone_is_a_404(client: TestClient) -> None:
    answer = client.post("/dead-letters/replay", data={"id": "f" * 32, "csrf": csrf_of(client)})
    assert answer.status_code == 404
    assert "no dead letter with id" in answer.text


def test_purging_asks_first_with_the_count_then_deletes_every_dead_letter(
    client: TestClient, dead: DeadLetterQueue
) -> None:
    for _ in range(3):
        dead.put(letter())
    assert re.search(r'class="count">3<', client.get("/dead-letters/purge").text)
    assert len(dead.entries()) == 3
    answer = client.post("/dead-letters/purge", data={"csrf": csrf_of(client)})
    assert answer.headers["location"] == "/dead-letters?purged=3"
    assert dead.entries() == []


def test_the_routes_page_lists_the_table_and_explains_a_pasted_body_as_the_cli_does(
    client: TestClient,
) -> None:
    text = words(client.get("/routes").text)
    assert re.search(r"1 job-succeeded TaskFinish \* Success cicb.notify", text)
    body = (SAMPLES / "tts_success.xml").read_text()
    answer = client.post("/routes", data={"body": body, "csrf": csrf_of(client)})
    explained = words(answer.text.split("answers")[-1])
    assert f"TaskFinish {TTS_JOB} Tts Success job-succeeded cicb.notify" in explained
    garbage = client.post("/routes", data={"body": "<Response><Even", "csrf": csrf_of(client)})
    assert garbage.status_code == 400
    assert "Not a callback:" in garbage.text and "line 1" in garbage.text


def test_without_redis_the_overview_says_so_and_other_pages_are_a_503(lines: Lines) -> None:
    down = f"redis://127.0.0.1:{free_port()}/0"
    settings = Settings(broker_url=down, broker_configured=True, console_token=CONSOLE_TOKEN)
    with TestClient(create_app(settings, workers_online=list), follow_redirects=False) as c:
        c.post("/signin", data={"token": CONSOLE_TOKEN})
        overview = c.get("/")
        assert overview.status_code == 200
        assert "Redis did not answer" in overview.text
        assert "Broker unreachable" in overview.text
        for path in ("/callbacks", f"/jobs/{TTS_JOB}"):
            answer = c.get(path)
            assert answer.status_code == 503
            assert "Redis or the broker did not answer" in answer.text
    assert len(lines.named("console.unreachable")) == 2


def test_a_sign_in_form_too_large_to_hold_a_token_is_refused_unread(
    anonymous: TestClient, lines: Lines
) -> None:
    answer = anonymous.post("/signin", data={"token": "x" * 70_000})
    assert answer.status_code == 413
    assert [(e["status"], e["reason"]) for e in lines.named("console.refused")] == [
        (413, "form too large")
    ]
