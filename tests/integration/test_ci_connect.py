"""`cicb ci queues` and `cicb ci connect` with real processes: a receiver and a worker on
Valkey, and the CI stand-in serving the queue and workflow APIs of each kind through the
real SDK.

One bucket holds a queue of each kind in a different state, and two workflows: one that
carries its own callback, elsewhere, and one that leaves it to its queue. `queues` judges
each; `connect --dry-run` changes nothing; `connect --yes` sets exactly the queues that are
not connected and leaves the ones pointing elsewhere; a job that then ends on a queue it
connected calls back to the receiver and is routed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.ci_queues import BUCKET, REGION, ci_env, ci_queue, ci_workflow, read_request
from tests.peers import CiServer, ci_error, ci_job, serve_ci
from tests.support import CICB, ROOT, TOKEN, Stack, Target

pytestmark = pytest.mark.integration

ELSEWHERE_URL = "https://hooks.example.com/ci?key=theirs"


@pytest.fixture
def ci() -> Iterator[CiServer]:
    with serve_ci() as server:
        yield server


def fill(ci: CiServer, receiver: str) -> None:
    """A queue of each kind, each in another state, and two workflows."""
    ours = f"{receiver}?token={TOKEN}"
    ci.queues[(BUCKET, "media")] = [
        ci_queue("pmediaoff00000000000000000000001", url=None),
        ci_queue("pmediaok000000000000000000000002", url=ours, result_format="XML"),
    ]
    ci.queues[(BUCKET, "pic")] = [ci_queue("ppicelsewhere00000000000000000003", url=ELSEWHERE_URL)]
    ci.queues[(BUCKET, "doc")] = [
        ci_queue(
            "pdocwrongtoken000000000000000004", url=f"{receiver}?token=typo", events="TaskFinish"
        )
    ]
    ci.queues[(BUCKET, "asr")] = [
        ci_queue("pasrconnected000000000000000005", url=ours, events="TaskFinish", state="Paused")
    ]
    ci.queues[(BUCKET, "ai")] = [
        ci_queue("paimissingevents00000000000000006", url=ours, events="TaskFinish")
    ]
    ci.workflows[BUCKET] = [
        ci_workflow(
            "wownelsewhere000000000000000007",
            queue_id="pmediaok000000000000000000000002",
            url=ELSEWHERE_URL,
        ),
        ci_workflow(
            "wqueuescallback0000000000000008", queue_id="pmediaoff00000000000000000000001", url=None
        ),
    ]


def env_for(stack: Stack, ci: CiServer) -> dict[str, str]:
    return {**stack.env, **ci_env(ci.endpoint, public_url=f"{stack.url}/callbacks")}


def cli(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CICB, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, input=stdin
    )


def verdicts(env: dict[str, str]) -> dict[str, str]:
    done = cli(env, "ci", "queues", "--json")
    assert done.returncode == 0, done.stderr
    return {q["queue_id"]: q["verdict"] for q in json.loads(done.stdout)}


def notify_of(ci: CiServer, queue_id: str) -> dict[str, Any]:
    with ci.lock:
        for queues in ci.queues.values():
            for queue in queues:
                if queue["QueueId"] == queue_id:
                    return dict(queue["NotifyConfig"])
    raise KeyError(queue_id)


def test_queues_connect_and_a_job_on_a_newly_connected_queue_is_routed(
    make_stack: Callable[..., Stack], ci: CiServer, target: Target
) -> None:
    stack = make_stack(CICB_NOTIFY_URLS=target.url)
    fill(ci, f"{stack.url}/callbacks")
    env = env_for(stack, ci)

    before = verdicts(env)
    assert before == {
        "pmediaoff00000000000000000000001": "off",
        "pmediaok000000000000000000000002": "connected",
        "ppicelsewhere00000000000000000003": "elsewhere",
        "pdocwrongtoken000000000000000004": "wrong token",
        "pasrconnected000000000000000005": "connected",
        "paimissingevents00000000000000006": "missing events",
        "wownelsewhere000000000000000007": "elsewhere",
    }
    text = cli(env, "ci", "queues")
    assert text.stdout.startswith("7 queue(s), 2 connected")
    assert TOKEN not in text.stdout + text.stderr and "token=***" in text.stdout

    dry = cli(env, "ci", "connect", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "3 to change" in dry.stdout and ci.updates() == []
    assert "kept: points elsewhere (--replace to change it)" in dry.stdout

    said_no = cli(env, "ci", "connect", stdin="n\n")
    assert said_no.returncode != 0 and ci.updates() == []

    done = cli(env, "ci", "connect", "--yes")
    assert done.returncode == 0, done.stderr
    assert "changed 3 queue(s)" in done.stdout
    changed = sorted(r["path"].rsplit("/", 1)[1] for r in ci.updates())
    assert changed == sorted(
        [
            "pmediaoff00000000000000000000001",
            "pdocwrongtoken000000000000000004",
            "paimissingevents00000000000000006",
        ]
    )
    sent = {r["path"]: read_request(r["body"]) for r in ci.updates()}
    assert sent["/docqueue/pdocwrongtoken000000000000000004"]["NotifyConfig"] == {
        "State": "On",
        "Type": "Url",
        "Url": f"{stack.url}/callbacks?token={TOKEN}",
        "Event": "TaskFinish",
        "ResultFormat": "XML",
    }
    assert (
        notify_of(ci, "paimissingevents00000000000000006")["Event"] == "TaskFinish,WorkflowFinish"
    )
    assert notify_of(ci, "ppicelsewhere00000000000000000003")["Url"] == ELSEWHERE_URL
    after = verdicts(env)
    assert after["ppicelsewhere00000000000000000003"] == "elsewhere"
    assert after["wownelsewhere000000000000000007"] == "elsewhere"
    assert {v for q, v in after.items() if "elsewhere" not in q} == {"connected"}

    # A job ends on the queue that was off: CI calls back, the receiver routes it.
    now = datetime.now(UTC)
    job = ci_job(
        "jnewlyconnected0000000000000000001",
        bucket=BUCKET,
        region=REGION,
        queue_id="pmediaoff00000000000000000000001",
        tag="Transcode",
        state="Success",
        created=now - timedelta(minutes=2),
        ended=now,
    )
    assert ci.finish(BUCKET, job) == 200
    (event,) = target.wait_for(1, timeout_s=60)
    assert (event["job_id"], event["state"], event["tag"]) == (job["JobId"], "Success", "Transcode")

    # --replace takes the queue that pointed elsewhere, and only the one named.
    replaced = cli(
        env,
        "ci",
        "connect",
        "--queue",
        "ppicelsewhere00000000000000000003",
        "--replace",
        "--yes",
        "--format",
        "json",
    )
    assert replaced.returncode == 0, replaced.stderr
    assert notify_of(ci, "ppicelsewhere00000000000000000003")["ResultFormat"] == "JSON"
    assert verdicts(env)["ppicelsewhere00000000000000000003"] == "connected"
    assert len(ci.updates()) == 4


def test_a_workflow_with_its_own_callback_is_connected_in_its_start_node(
    make_stack: Callable[..., Stack], ci: CiServer
) -> None:
    stack = make_stack()
    fill(ci, f"{stack.url}/callbacks")
    env = env_for(stack, ci)
    done = cli(
        env, "ci", "connect", "--queue", "wownelsewhere000000000000000007", "--replace", "--yes"
    )
    assert done.returncode == 0, done.stderr
    (update,) = ci.updates()
    assert update["path"] == "/workflow/wownelsewhere000000000000000007"
    workflow = read_request(update["body"])["MediaWorkflow"]
    start = workflow["Topology"]["Nodes"]["Start"]
    assert start["Input"]["NotifyConfig"]["Url"] == f"{stack.url}/callbacks?token={TOKEN}"
    assert start["Input"]["QueueId"] == "pmediaok000000000000000000000002"
    assert workflow["Topology"]["Nodes"]["Transcode_1581665960536"]["Type"] == "Transcode"
    assert verdicts(env)["wownelsewhere000000000000000007"] == "connected"


def test_bad_buckets_and_refused_keys_say_what_to_do(
    make_stack: Callable[..., Stack], ci: CiServer
) -> None:
    stack = make_stack()
    env = env_for(stack, ci)
    for command in (("ci", "queues"), ("receiver",), ("beat",), ("console",)):
        bad = cli({**env, "CICB_CI_BUCKETS": "media:guangzhou"}, *command)
        assert bad.returncode == 2
        assert bad.stderr.splitlines() == [
            "error: CICB_CI_BUCKETS: 'media:guangzhou' is not BUCKET-APPID:REGION "
            "(examplebucket-1250000000:ap-guangzhou)"
        ]
    unset = cli({**env, "CICB_CI_BUCKETS": ""}, "ci", "queues")
    assert unset.returncode == 2 and "set CICB_CI_BUCKETS" in unset.stderr
    ci.refusals[BUCKET] = ci_error(403, "AccessDenied", "Access Denied.")
    refused = cli(env, "ci", "queues")
    assert refused.returncode == 1 and "HTTP 403 AccessDenied" in refused.stderr
