"""The console in a real browser (Debian's headless Chromium, driven by Playwright) against a
running stack: Valkey, a worker, the receiver and ``cicb console``.

Each page's screenshot is saved in the test's folder, and in ``CICB_SCREENSHOTS`` when it is
set (``CICB_SCREENSHOTS=docs/console`` makes the README's)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import (
    CICB,
    SAMPLES,
    Process,
    Stack,
    Target,
    free_port,
    require,
    started,
    wait_until,
)

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CONSOLE_TOKEN = "console-browser-token-0123456789"
JOB_ID = "j707f4864f86811ecb90d0b03267ce0e5"  # tts_success.xml's
GARBAGE = b"<Response><EventName>TaskFinish</EventName><JobsDetail><JobId>j1</Jobs"

if True:  # imported only where it is installed: the test requires it below
    try:
        from playwright.sync_api import Browser, Page, expect, sync_playwright
    except ImportError:  # pragma: no cover
        sync_playwright = None  # type: ignore[assignment]


@pytest.fixture
def browser() -> Iterator[Browser]:
    require(sync_playwright is not None, "playwright not installed (pip install -e '.[test]')")
    require(CHROMIUM.exists(), f"{CHROMIUM} missing (apt-get install chromium, as .ci/run does)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


@pytest.fixture
def console(
    make_stack: Callable[..., Stack], target: Target, tmp_path: Path
) -> Iterator[tuple[Stack, str]]:
    stack = make_stack(CICB_NOTIFY_URLS=target.url)
    port = free_port()
    env = {**stack.env, "CICB_CONSOLE_PORT": str(port), "CICB_CONSOLE_TOKEN": CONSOLE_TOKEN}
    process = Process([CICB, "console"], env, tmp_path / "console.log").start()
    url = f"http://127.0.0.1:{port}"
    started(process, lambda: httpx.get(f"{url}/healthz").status_code == 200, what="console up")
    yield stack, url
    process.stop()
    assert CONSOLE_TOKEN not in process.log()


@pytest.fixture
def shoot(tmp_path: Path) -> Callable[[Page, str], None]:
    folders = [tmp_path / "screenshots"]
    if os.environ.get("CICB_SCREENSHOTS"):
        folders.append(Path(os.environ["CICB_SCREENSHOTS"]))
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)

    def shoot(page: Page, name: str) -> None:
        image = page.screenshot(full_page=True)
        for folder in folders:
            (folder / f"{name}.png").write_bytes(image)

    return shoot


def archived(stack: Stack) -> int:
    listed = json.loads(stack.cli("archive", "list", "--json").stdout)
    return int(listed["count"])


def test_find_a_job_see_its_route_replay_and_purge_a_dead_letter(
    browser: Browser, console: tuple[Stack, str], shoot: Callable[[Page, str], None]
) -> None:
    stack, url = console
    page = browser.new_page(viewport={"width": 1280, "height": 800})

    # Signing in: nothing but the sign-in page without a session; a wrong token is refused.
    page.goto(f"{url}/dead-letters")
    expect(page).to_have_url(f"{url}/signin")
    page.fill("#token", "not-the-token")
    page.click("button:has-text('Sign in')")
    expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    shoot(page, "signin")
    page.fill("#token", CONSOLE_TOKEN)
    page.click("button:has-text('Sign in')")
    expect(page).to_have_url(f"{url}/")

    # Callbacks as CI sends them, and one garbage body.
    for body in (
        (SAMPLES / "tts_success.xml").read_bytes(),
        (SAMPLES / "transcode_failed.xml").read_bytes(),
        GARBAGE,
    ):
        assert stack.post(body).status_code == 200
    wait_until(lambda: archived(stack) == 3, timeout_s=60, what="3 archived callbacks")
    # The archive keeps a failed body just before it is dead-lettered.
    wait_until(lambda: len(stack.dead_letters()) == 1, timeout_s=30, what="the dead letter")
    page.reload()
    expect(page.locator("text=dead_lettered")).to_be_visible()
    expect(page.get_by_text("Workers online")).to_be_visible()
    expect(page.locator(".card li")).not_to_have_count(0)
    shoot(page, "overview")
    page.click("nav >> text=Callbacks")
    expect(page.locator("table.list tr")).to_have_count(4)
    shoot(page, "callbacks")

    # Find the job by its id: its event and the route it took.
    page.fill("header input[name=q]", JOB_ID)
    page.press("header input[name=q]", "Enter")
    expect(page.locator("table.list tr")).to_have_count(2)
    page.click(f"text=Timeline of job {JOB_ID}")
    row = page.locator("table.list tr").nth(1)
    expect(row).to_contain_text("TaskFinish")
    expect(row).to_contain_text("job-succeeded")
    expect(row).to_contain_text("callback")
    shoot(page, "timeline")
    row.locator("a").last.click()
    events = page.locator("table.list").first
    expect(events).to_contain_text("job-succeeded")
    expect(events).to_contain_text("dispatched")
    expect(page.locator("pre.body").first).to_contain_text("<JobId>" + JOB_ID + "</JobId>")
    shoot(page, "callback")

    # The garbage's dead letter, with its bytes.
    page.click("nav >> text=Dead letters")
    groups = page.locator("table.list").first
    expect(groups).to_contain_text("cicb.ingest")
    expect(groups).to_contain_text("ParseError")
    shoot(page, "dead-letters")
    page.locator("table.list").nth(1).locator("tr").nth(1).locator("a").click()
    expect(page.locator("pre.body")).to_have_text(GARBAGE.decode())
    shoot(page, "dead-letter")

    # Fix nothing and replay it: it comes back.
    page.click("text=Replay…")
    expect(page.locator("strong.count")).to_have_text("1")
    shoot(page, "confirm-replay")
    page.click("button:has-text('Replay 1')")
    expect(page.get_by_role("status")).to_have_text("Replayed 1 dead letter(s).")

    def back() -> bool:
        page.goto(f"{url}/dead-letters")
        return bool(re.search(r"Dead letters \(1\)", page.inner_text("h1")))

    wait_until(back, timeout_s=60, what="the replayed garbage dead-lettered again")
    expect(page.locator("table.list").first).to_contain_text("ParseError")

    # A form without its CSRF token changes nothing.
    page.click("text=Purge…")
    page.evaluate("document.querySelector('main input[name=csrf]').remove()")
    page.click("button:has-text('Purge 1')")
    expect(page.get_by_role("alert")).to_contain_text("CSRF token is missing or wrong")
    page.goto(f"{url}/dead-letters")
    expect(page.locator("h1")).to_have_text("Dead letters (1)")

    # Purge, after the confirmation says how many.
    page.click("text=Purge…")
    expect(page.locator("strong.count")).to_have_text("1")
    page.click("button:has-text('Purge 1')")
    expect(page.get_by_role("status")).to_have_text("Purged 1 dead letter(s).")
    expect(page.locator("h1")).to_have_text("Dead letters (0)")

    # Routes: the table, and a pasted body's route and chain.
    page.click("nav >> text=Routes")
    page.fill("#body", (SAMPLES / "tts_success.xml").read_text())
    page.click("button:has-text('Explain')")
    answer = page.locator("table.answers tr").nth(1)
    expect(answer).to_contain_text(JOB_ID)
    expect(answer).to_contain_text("job-succeeded")
    expect(answer).to_contain_text("cicb.notify")
    shoot(page, "routes")

    # Another browser, with no session, sees nothing but the sign-in page.
    stranger = browser.new_page()
    for path in ("/", f"/jobs/{JOB_ID}", "/routes"):
        stranger.goto(f"{url}{path}")
        expect(stranger).to_have_url(f"{url}/signin")


SNAPSHOT_JOB = "j8a8e3b2af86c11ec8c5d0b03267ce0e5"  # snapshot_success.xml's


def attempts_of(stack: Stack, job_id: str) -> list[dict[str, object]]:
    shown = json.loads(stack.cli("attempts", job_id, "--json").stdout)
    return [step for job in shown["jobs"] for step in job["steps"]]


@pytest.fixture
def patient_console(
    make_stack: Callable[..., Stack], target: Target, tmp_path: Path
) -> Iterator[tuple[Stack, str]]:
    """A stack whose retries may wait 10 minutes (a target's Retry-After), and its console."""
    stack = make_stack(CICB_NOTIFY_URLS=target.url, CICB_RETRY_BACKOFF_MAX_S="900")
    port = free_port()
    env = {**stack.env, "CICB_CONSOLE_PORT": str(port), "CICB_CONSOLE_TOKEN": CONSOLE_TOKEN}
    process = Process([CICB, "console"], env, tmp_path / "console.log").start()
    url = f"http://127.0.0.1:{port}"
    started(process, lambda: httpx.get(f"{url}/healthz").status_code == 200, what="console up")
    yield stack, url
    process.stop()


def test_a_callbacks_attempts_with_their_answers_and_retry_now_on_a_waiting_step(
    browser: Browser,
    patient_console: tuple[Stack, str],
    target: Target,
    shoot: Callable[[Page, str], None],
) -> None:
    stack, url = patient_console
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{url}/signin")
    page.fill("#token", CONSOLE_TOKEN)
    page.click("button:has-text('Sign in')")
    expect(page).to_have_url(f"{url}/")

    # Refused once with 503, then accepted: two attempts, newest first, each answer a click away.
    target.replies.append((503, b"busy: try again in a moment", {}))
    target.replies.append((200, b'{"received": true}', {}))
    assert stack.post((SAMPLES / "tts_success.xml").read_bytes()).status_code == 200
    target.wait_for(1)
    wait_until(
        lambda: [s["state"] for s in attempts_of(stack, JOB_ID)] == ["done"],
        timeout_s=30,
        what="the notification done",
    )
    page.goto(f"{url}/jobs/{JOB_ID}")
    expect(page.locator("table.list tr").nth(1)).to_contain_text("cicb.notify: done after 2 tries")
    page.locator("table.list tr").nth(1).locator("a").last.click()
    rows = page.locator("table.attempts tr.attempt")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator(".status")).to_have_text("200")
    expect(rows.nth(1).locator(".status")).to_have_text("503")
    expect(rows.nth(1)).to_contain_text("retried")
    answer = rows.nth(1).locator("pre.answer")
    expect(answer).to_be_hidden()
    rows.nth(1).locator("summary").click()
    expect(answer).to_have_text("busy: try again in a moment")
    shoot(page, "callback-attempts")

    # A target that asks for 10 minutes: the step waits, and "retry now" sends it at once.
    target.replies.append((503, b"maintenance", {"Retry-After": "600"}))
    assert stack.post((SAMPLES / "snapshot_success.xml").read_bytes()).status_code == 200
    wait_until(
        lambda: any(s["waiting_until"] for s in attempts_of(stack, SNAPSHOT_JOB)),
        timeout_s=30,
        what="the notification waiting for its retry",
    )
    tried = len(target.received)
    page.goto(f"{url}/")
    expect(page.locator(".waiting-retries")).to_have_text("1 step(s) waiting for a retry.")
    page.goto(f"{url}/jobs/{SNAPSHOT_JOB}")
    expect(page.locator("table.list tr").nth(1)).to_contain_text("waiting for its retry")
    page.locator("table.list tr").nth(1).locator("a").last.click()
    expect(page.locator(".waiting")).to_contain_text("waiting for its retry")
    shoot(page, "callback-waiting")
    page.click("text=Retry now…")
    expect(page.locator("strong.count")).to_have_text("2")
    shoot(page, "confirm-retry-now")
    asked = time.time()
    page.click("button:has-text('Retry now')")
    expect(page.get_by_role("status")).to_have_text("Sent cicb.notify now.")
    wait_until(lambda: len(target.received) > tried, timeout_s=5, what="the retry, sent now")
    assert target.received[-1]["at"] - asked < 5
    assert SNAPSHOT_JOB in target.received[-1]["body"].decode()
    wait_until(
        lambda: [s["state"] for s in attempts_of(stack, SNAPSHOT_JOB)] == ["done"],
        timeout_s=10,
        what="the step done",
    )
    page.reload()
    expect(page.locator("table.list tr").nth(1)).to_contain_text("cicb.notify: done after 2 tries")
