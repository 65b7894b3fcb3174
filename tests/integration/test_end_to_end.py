"""The whole path with real processes: receiver -> Valkey -> Celery worker -> notify target."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tests.support import (
    CICB,
    SAMPLES,
    SHARED_SAMPLE_NAMES,
    TOKEN,
    Stack,
    Target,
    cicb_env,
    free_port,
    metric,
    run_cli,
    shared_samples,
    start_receiver,
    user_routes,
    wait_until,
)

pytestmark = pytest.mark.integration

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

TTS = SAMPLES / "tts_success.xml"
TTS_JOB_ID = "j707f4864f86811ecb90d0b03267ce0e5"

CANCELLED_JOB = b"""<Response><EventName>TaskFinish</EventName><JobsDetail>
<Code>Success</Code><JobId>jcancelled0000000000000000000001</JobId><State>Cancel</State>
<Tag>Transcode</Tag><CreationTime>2022-06-30T19:33:18+0800</CreationTime>
</JobsDetail></Response>"""


def callback_outcome(stack: Stack, request_id: str) -> str:
    """The outcome the worker logged for the callback the receiver gave ``request_id``."""

    def logged() -> str | None:
        for line in stack.worker.log().splitlines():
            if request_id in line and '"event": "callback"' in line:
                return str(json.loads(line)["outcome"])
        return None

    return str(wait_until(logged, what=f"callback {request_id}"))


def test_each_shared_sample_reaches_the_notify_target_as_the_normalized_event(
    make_stack: object, target: Target
) -> None:
    folder = shared_samples()
    stack = make_stack(CICB_NOTIFY_URLS=target.url)  # type: ignore[operator]
    expected, outcomes = [], {}
    for sample in (folder / name for name in SHARED_SAMPLE_NAMES):
        response = stack.post(sample.read_bytes())
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
        outcomes[sample.name] = callback_outcome(stack, response.json()["request_id"])
        if outcomes[sample.name] == "dispatched":
            expected.append(json.loads(stack.cli("parse", str(sample)).stdout))

    # The three TTS samples are one job (same JobId and State): routed once, then skipped.
    assert outcomes == {
        "superresolution_workflow.xml": "dispatched",
        "tts_api.xml": "dispatched",
        "tts_workflow.json": "duplicate",
        "tts_workflow.xml": "duplicate",
        "workflow_finish.xml": "dispatched",
    }
    received = target.wait_for(len(expected))
    assert sorted(received, key=json.dumps) == sorted(expected, key=json.dumps)
    # What the samples hold, written out: not only what `cicb parse` makes of them.
    identities = [(e["event"], e["job_id"] or e["run_id"], e["tag"], e["state"]) for e in received]
    assert sorted(identities, key=str) == [
        ("TaskFinish", "j06668dc0f86811ecb90d0b03267ce0e5", "SuperResolution", "Success"),
        ("TaskFinish", TTS_JOB_ID, "Tts", "Success"),
        ("WorkflowFinish", "i70ae991a152911ecb184525400a8700f", None, "Success"),
    ]
    assert all(r["headers"]["Content-Type"] == "application/json" for r in target.received)
    assert stack.dead_letters() == []
    log = stack.worker.log()
    assert '"outcome": "dispatched"' in log and '"route": "job-succeeded"' in log


def test_garbage_is_dead_lettered_byte_for_byte_and_replay_puts_it_back(
    make_stack: object, target: Target
) -> None:
    stack = make_stack(CICB_NOTIFY_URLS=target.url)  # type: ignore[operator]
    garbage = b"\x00\xffnot a callback\r\n\x89PNG" + bytes(range(256))
    assert stack.post(garbage, headers={"Content-Type": "application/xml"}).status_code == 200

    letters = wait_until(stack.dead_letters, what="a dead letter")
    assert len(letters) == 1
    letter = letters[0]
    assert letter["task"] == "cicb.ingest"
    assert letter["queue"] == "ingest"
    assert letter["error"] == "ParseError"
    assert letter["attempts"] == 1
    shown = subprocess_bytes(stack, "dlq", "show", str(letter["id"]), "--body")
    assert shown == garbage
    record = json.loads(stack.cli("dlq", "show", str(letter["id"])).stdout)
    assert record["received_at"] and record["failed_at"] and "UTF-8" in record["reason"]

    assert "replayed 1" in stack.cli("dlq", "replay", str(letter["id"])).stdout
    # Back through ingest, which fails it again: a new dead letter with the same body.
    again = wait_until(
        lambda: [d for d in stack.dead_letters() if d["id"] != letter["id"]], what="replayed"
    )
    assert [d["id"] for d in stack.dead_letters()] == [again[0]["id"]]
    assert subprocess_bytes(stack, "dlq", "show", str(again[0]["id"]), "--body") == garbage
    assert target.received == []

    assert "purged 1" in stack.cli("dlq", "purge", "--yes").stdout
    assert stack.dead_letters() == []


def subprocess_bytes(stack: Stack, *args: str) -> bytes:
    import subprocess

    return subprocess.run([CICB, *args], env=stack.env, capture_output=True, check=True).stdout


def test_notify_retries_then_dead_letters_and_replay_delivers(
    make_stack: object, target: Target
) -> None:
    stack = make_stack(CICB_NOTIFY_URLS=target.url, CICB_MAX_RETRIES="1")  # type: ignore[operator]
    target.default_status = 503
    assert stack.post(TTS.read_bytes()).status_code == 200

    letters = wait_until(stack.dead_letters, timeout_s=30, what="notify dead letter")
    assert letters[0]["task"] == "cicb.notify"
    assert letters[0]["queue"] == "actions"
    assert letters[0]["attempts"] == 2  # the first try and one retry
    assert "HTTP 503" in str(letters[0]["reason"])
    assert len(target.received) == 2

    target.default_status = 200
    assert "replayed 1" in stack.cli("dlq", "replay", "--all").stdout
    [event] = target.wait_for(1)
    assert event["job_id"] == TTS_JOB_ID
    assert stack.dead_letters() == []


def test_a_refusing_target_is_dead_lettered_at_once(make_stack: object, target: Target) -> None:
    stack = make_stack(CICB_NOTIFY_URLS=target.url)  # type: ignore[operator]
    target.default_status = 404
    assert stack.post((SAMPLES / "workflowfinish_success.xml").read_bytes()).status_code == 200
    [letter] = wait_until(stack.dead_letters, what="dead letter")
    assert letter["task"] == "cicb.notify"
    assert letter["attempts"] == 1
    assert "HTTP 404" in str(letter["reason"])
    assert len(target.received) == 1


def test_unrouted_callback_is_logged_not_dead_lettered(make_stack: object, target: Target) -> None:
    stack = make_stack(CICB_NOTIFY_URLS=target.url)  # type: ignore[operator]
    assert stack.post(CANCELLED_JOB).status_code == 200
    wait_until(lambda: '"outcome": "unrouted"' in stack.worker.log(), what="unrouted log line")
    line = next(x for x in stack.worker.log().splitlines() if '"outcome": "unrouted"' in x)
    assert json.loads(line)["job_id"] == "jcancelled0000000000000000000001"
    assert json.loads(line)["state"] == "Cancel"
    assert stack.dead_letters() == []
    assert target.received == []
    assert metric(stack.worker_metrics(), "cicb_callbacks_total", outcome="unrouted") == 1
    assert metric(stack.receiver_metrics(), "cicb_receiver_responses_total", status="200") == 1


def test_custom_routes_from_a_user_module(
    make_stack: object, target: Target, tmp_path: Path
) -> None:
    routes = user_routes(
        tmp_path,
        "myroutes",
        "import httpx\n"
        "routes = [Route('transcodes', ['notify'], tag='Transcode')]\n"
        "@route(tag='Tts', state='Success', after=['notify'])\n"
        "@app.task(base=PipelineTask, name='myroutes.mark')\n"
        "def mark(event):\n"
        f"    httpx.post('{target.url}/mark', json={{'marked': event['job_id']}})\n",
    )
    stack = make_stack(CICB_NOTIFY_URLS=target.url, **routes)  # type: ignore[operator]
    table = json.loads(stack.cli("routes", "--json").stdout)
    assert [r["name"] for r in table][:2] == ["transcodes", "myroutes.mark"]
    assert table[1]["chain"] == ["myroutes.mark", "cicb.notify"]

    assert stack.post(TTS.read_bytes()).status_code == 200
    received = wait_until(lambda: len(target.received) >= 2 and target.received, what="chain")
    assert received[0]["path"] == "/hook/mark"  # the chain runs in order
    assert json.loads(received[0]["body"]) == {"marked": TTS_JOB_ID}
    assert json.loads(received[1]["body"])["tag"] == "Tts"
    explained = json.loads(stack.cli("routes", "explain", str(TTS), "--json").stdout)
    assert explained["route"] == "myroutes.mark"


def test_receiver_answers_503_when_the_broker_is_down(tmp_path: Path) -> None:
    env = cicb_env(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    receiver, url = start_receiver(env, tmp_path / "receiver.log")
    try:
        body = TTS.read_bytes()
        response = httpx.post(f"{url}/callbacks?token={TOKEN}", content=body, timeout=30)
        assert response.status_code == 503
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 503
        assert httpx.get(f"{url}/healthz").status_code == 200
        sent = run_cli(
            "send",
            str(TTS),
            "--url",
            f"{url}/callbacks",
            env=env,
            check=False,
        )
        assert sent.returncode == 1 and "503" in sent.stdout
    finally:
        receiver.stop()
    assert TOKEN not in receiver.log()


def test_replay_of_a_failed_chain_step_runs_the_rest_of_the_chain(
    make_stack: object, target: Target, tmp_path: Path
) -> None:
    marker = tmp_path / "fixed"
    routes = user_routes(
        tmp_path,
        "flakyroutes",
        "from pathlib import Path\n"
        "from pipeline.errors import PermanentError\n"
        "@route(tag='Tts', after=['notify'])\n"
        "@app.task(base=PipelineTask, name='flakyroutes.check')\n"
        "def check(event):\n"
        f"    if not Path({str(marker)!r}).exists():\n"
        "        raise PermanentError('not fixed yet')\n",
    )
    stack = make_stack(CICB_NOTIFY_URLS=target.url, **routes)  # type: ignore[operator]
    assert stack.post(TTS.read_bytes()).status_code == 200
    [letter] = wait_until(stack.dead_letters, what="dead letter")
    assert letter["task"] == "flakyroutes.check"
    assert letter["reason"] == "not fixed yet"
    assert target.received == []  # the chain stopped at the failed step

    marker.touch()
    stack.cli("dlq", "replay", str(letter["id"]))
    [event] = target.wait_for(1)  # the step ran, then the rest of its chain
    assert event["job_id"] == TTS_JOB_ID
    assert stack.dead_letters() == []


def test_a_users_action_is_retried_with_backoff_then_its_chain_goes_on(
    make_stack: object, target: Target, tmp_path: Path
) -> None:
    tries = tmp_path / "tries"
    routes = user_routes(
        tmp_path,
        "useractions",
        "from pathlib import Path\n"
        "from pipeline.errors import TransientError\n"
        "@route(tag='Tts', after=['notify'])\n"
        "@app.task(base=PipelineTask, name='useractions.index')\n"
        "def index(event):\n"
        f"    tries = Path({str(tries)!r})\n"
        "    with tries.open('a') as f:\n"
        "        f.write('x')\n"
        "    if len(tries.read_text()) < 3:\n"
        "        raise TransientError('index busy')\n",
    )
    stack = make_stack(  # type: ignore[operator]
        CICB_NOTIFY_URLS=target.url,
        CICB_NOTIFY_SECRET=WEBHOOK_SECRET,
        **routes,
    )
    assert stack.post(TTS.read_bytes()).status_code == 200
    [event] = target.wait_for(1, timeout_s=60)
    assert tries.read_text() == "xxx"  # two transient failures, then success
    assert stack.dead_letters() == []
    [request] = target.received
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert Webhook(WEBHOOK_SECRET).verify(request["body"], headers) == event
