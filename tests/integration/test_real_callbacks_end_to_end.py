"""Every body of ``../shared/real-callbacks`` through the running system: receiver -> Valkey ->
Celery worker -> notify target, with a route that sends every event to notify.

Each event reaches the target once: a body that repeats an event already routed (the same
EventName, job or run, and state: the XML and JSON forms of one callback, a query answer
for a run whose callback came) is a duplicate. The bodies cicb cannot read are
dead-lettered with their bytes. Skipped without ``../shared`` (failed under ``CI=true``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.parsing.reader import parse
from tests.real_callbacks import EXPECTED, Reads, body, real_callbacks
from tests.support import (
    CICB,
    Stack,
    Target,
    cicb_env,
    free_port,
    run_cli,
    user_routes,
    wait_until,
)

pytestmark = pytest.mark.integration

DISPATCHED, DUPLICATE, DEAD = "dispatched", "duplicate", "dead_lettered"

# What each body comes to, in the order they are sent (main folder, then extra/).
# A duplicate names the body whose event it repeats.
OUTCOMES: dict[str, str] = {
    "01_go_transcode_taskfinish_2021.xml": DISPATCHED,
    "02_go_transcode_md5_progress_noeventname.xml": DISPATCHED,
    "03_go_superresolution_dwm_failed_workflow.xml": DISPATCHED,
    "04_go_workflowfinish.xml": DISPATCHED,
    "05_java_docprocess_taskfinish.xml": DISPATCHED,
    "06_java_reviewimage_detail.json": DISPATCHED,
    "07_doc_transcode_workflow.xml": DISPATCHED,
    "08_doc_transcode_workflow.json": DUPLICATE,  # 07 in JSON
    "09_doc_animation.xml": DISPATCHED,
    "10_doc_concat.xml": DISPATCHED,
    "11_doc_snapshot.xml": DISPATCHED,
    "12_doc_smartcover_workflow.xml": DISPATCHED,
    "13_doc_voiceseparate.xml": DISPATCHED,
    "14_doc_videomontage_workflow.json": DISPATCHED,
    "15_doc_sdrtohdr.xml": DISPATCHED,
    "16_doc_videoprocess_workflow.xml": DISPATCHED,
    "17_doc_superresolution_dwm_failed_workflow.json": DUPLICATE,  # 03's job
    "18_doc_picprocess_workflow.xml": DISPATCHED,
    "19_doc_picprocess_workflow_jobsdetail_object.json": DUPLICATE,  # 18's job
    "20_doc_speechrecognition.xml": DISPATCHED,
    "21_doc_tts.xml": DISPATCHED,
    "22_doc_tts_workflow_input_in_operation.json": DUPLICATE,  # 21's job
    "23_doc_segment.xml": DISPATCHED,
    "24_doc_digitalwatermark_jobsdetail_object.json": DISPATCHED,
    "25_doc_extractdigitalwatermark.xml": DISPATCHED,
    "26_doc_streamextract.xml": DISPATCHED,
    "27_doc_streamextract_multi_output.json": DUPLICATE,  # 26 in JSON
    "28_doc_videotag_zh.json": DISPATCHED,
    "29_doc_qualityestimate.xml": DISPATCHED,
    "30_doc_noisereduction_jobsdetail_object.json": DISPATCHED,
    "31_doc_mediainfo.xml": DISPATCHED,
    "32_doc_translation_trailing_comma_INVALID.json": DEAD,
    "33_doc_wordsgeneralize_no_state.xml": DISPATCHED,
    "34_doc_workflowfinish.xml": DISPATCHED,
    "35_doc_workflowfinish.json": DUPLICATE,  # 34 in JSON
    "36_doc_reviewimage_simple.json": DISPATCHED,
    "37_doc_reviewtext_detail.json": DISPATCHED,
    "38_doc_reviewdocument.json": DISPATCHED,  # JobId xxxxxx as 37, another event
    "39_doc_reviewhtml_trailing_comma_INVALID.json": DEAD,
    "40_doc_reviewaudio_simple_test_noevent.json": DISPATCHED,
    "41_doc_reviewvideo_live_detail.json": DISPATCHED,
    "42_doc_reviewaudio_detail.json": DISPATCHED,
    "43_proj_picprocess_native_result_array.json": DISPATCHED,
    "44_query_java_transcode_submitted.xml": DISPATCHED,
    "45_query_go_image_auditing.xml": DISPATCHED,
    "46_query_go_describe_workflowexecution.xml": DUPLICATE,  # 34's run, queried
    "47_query_doc_describemediajobs_list_stray_close_tag_INVALID.xml": DEAD,
    "48_query_doc_describepicjob_submitted.xml": DISPATCHED,  # 18's job, still Submitted
    "49_query_doc_batchjob_running.xml": DISPATCHED,
    "50_query_doc_workflowexecution_failed_task.xml": DISPATCHED,
    "E01_doc_snapshot_workflow.json": DUPLICATE,  # 11's job
    "E02_doc_speechrecognition_workflow.json": DUPLICATE,  # 20's job
    "E03_doc_transcode_tsc_hd.xml": DUPLICATE,  # 07's JobId and state
    "E04_doc_reviewimage_detail.json": DISPATCHED,
    "E05_doc_reviewvideo_detail.json": DUPLICATE,  # 41's event, JobId and state
    "E06_query_doc_describemediajob_success_stray_close_tag_INVALID.xml": DEAD,
    "E07_proj_picprocess_single_object.json": DUPLICATE,  # 43's job-1
    "E08_query_cpp_docprocess_synthetic.xml": DEAD,  # CreationTime "1"
}


def settle(stack: Stack, request_id: str) -> str:
    """What the worker did with the body the receiver gave ``request_id``: the outcome it
    logged for its event, or ``dead_lettered``."""

    def logged() -> str | None:
        for line in stack.worker.log().splitlines():
            if request_id not in line:
                continue
            record = json.loads(line)
            if record.get("event") == "callback":
                return str(record["outcome"])
            if record.get("event") == DEAD:
                return DEAD
        return None

    return str(wait_until(logged, what=f"the outcome of {request_id}"))


def test_every_real_callback_reaches_the_notify_target_once_and_the_unreadable_are_dead_lettered(
    make_stack: object, target: Target, tmp_path: Path
) -> None:
    real_callbacks()
    assert sorted(OUTCOMES) == sorted(EXPECTED)
    routes = user_routes(tmp_path, "everything", "routes = [Route('everything', ['notify'])]\n")
    stack: Stack = make_stack(CICB_NOTIFY_URLS=target.url, **routes)  # type: ignore[operator]

    outcomes, request_ids = {}, {}
    for name in OUTCOMES:
        response = stack.post(body(name))
        assert response.status_code == 200, response.text
        request_ids[name] = response.json()["request_id"]
        outcomes[name] = settle(stack, request_ids[name])
    assert outcomes == OUTCOMES

    # Each dispatched body's event, as parse makes it, reached the target, and nothing else.
    dispatched = [name for name, outcome in OUTCOMES.items() if outcome == DISPATCHED]
    sent = [json.loads(json.dumps(e.to_dict())) for n in dispatched for e in parse(body(n))]
    received = target.wait_for(len(sent))
    assert len(target.received) == len(sent)
    assert sorted(received, key=json.dumps) == sorted(sent, key=json.dumps)
    # ... and says what the bodies say (tests/pipeline/test_real_callbacks.py's table).
    identities = sorted(
        (r["event"], r["job_id"] or r["run_id"], r["state"], r["source"]) for r in received
    )
    expected = [EXPECTED[n] for n in dispatched]
    assert identities == sorted(
        (e.event, e.id, e.state, e.source) for e in expected if isinstance(e, Reads)
    )

    # The unreadable bodies are dead-lettered, each with its bytes and its reason.
    letters = {d["request_id"]: d for d in stack.dead_letters()}
    refused = [name for name, outcome in OUTCOMES.items() if outcome == DEAD]
    assert sorted(letters) == sorted(request_ids[n] for n in refused)
    for name in refused:
        letter = letters[request_ids[name]]
        assert (letter["task"], letter["error"], letter["attempts"]) == (
            "cicb.ingest",
            "ParseError",
            1,
        )
        shown = subprocess.run(
            [CICB, "dlq", "show", str(letter["id"]), "--body"],
            env=stack.env,
            capture_output=True,
            check=True,
        ).stdout
        assert shown == body(name)
    assert "line 27, column 9" in letters[request_ids[refused[0]]]["reason"]


def test_cicb_parse_reads_callbacks_and_query_answers() -> None:
    folder = real_callbacks()
    env = cicb_env(f"redis://127.0.0.1:{free_port()}/0")  # parse needs no broker
    answer = folder / "44_query_java_transcode_submitted.xml"
    parsed = json.loads(run_cli("parse", str(answer), env=env).stdout)
    assert (parsed["job_id"], parsed["state"], parsed["source"]) == (
        "j8d121820f5e411ec926ef19d53ba9c6f",
        "Submitted",
        "query",
    )
    # The State it infers is logged on stderr; stdout stays the JSON event.
    done = run_cli("parse", str(folder / "33_doc_wordsgeneralize_no_state.xml"), env=env)
    assert json.loads(done.stdout)["state"] == "Success"
    assert "parse_state_inferred" in done.stderr
    malformed = folder / "47_query_doc_describemediajobs_list_stray_close_tag_INVALID.xml"
    refused = run_cli("parse", str(malformed), env=env, check=False)
    assert refused.returncode == 1
    assert "invalid XML at line 4, column 11: mismatched tag" in refused.stderr
