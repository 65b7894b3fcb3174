"""Every sample callback in tests/samples, XML and JSON, through one table.

Samples are named ``<tag>_<variant>.<xml|json>``: ``success`` (a job submitted through the
API), ``failed``, and ``workflow`` (a job a workflow started: COS headers and a Workflow
node). The XML and the JSON file of one stem are the same callback and must give equal
events. ``workflowfinish_success`` is a WorkflowFinish callback.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.parsing.decoding import event_from_dict
from pipeline.parsing.events import JobEvent, SubFailure, WorkflowEvent
from pipeline.parsing.reader import parse

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
FILES = sorted(SAMPLES.glob("*.*"))
STEMS = sorted({p.stem for p in FILES})

TAGS = {
    t.lower(): t
    for t in (
        *("Transcode", "Snapshot", "Animation", "Concat", "SmartCover", "VoiceSeparate"),
        *("VideoMontage", "Segment", "Tts", "SpeechRecognition", "NoiseReduction"),
        *("DigitalWatermark", "ExtractDigitalWatermark", "VideoTag", "SDRtoHDR"),
        *("SuperResolution", "PicProcess", "StreamExtract"),
    )
}
STATES = {"success": "Success", "failed": "Failed", "workflow": "Success"}
BUCKET = "examplebucket-1250000000"

# Output keys (with MD5 where Tencent gives one) of the kinds that have several or odd ones.
EXPECTED_OUTPUTS: dict[str, list[tuple[str, str | None]]] = {
    "transcode_success": [("output/out.mp4", "9b3e15e9c5d2b2e1e4b8a2b7bb1f2ad0")],
    "snapshot_success": [
        ("output/snapshot-0.jpg", f"{1:032x}"),
        ("output/snapshot-1.jpg", f"{2:032x}"),
        ("output/snapshot-2.jpg", f"{3:032x}"),
        ("output/sprite-0.jpg", f"{4:032x}"),
    ],
    "smartcover_success": [
        ("output/cover-0.jpg", f"{7:032x}"),
        ("output/cover-1.jpg", f"{8:032x}"),
        ("output/cover-2.jpg", f"{9:032x}"),
    ],
    "segment_success": [
        ("output/segment-0.mp4", f"{11:032x}"),
        ("output/segment-1.mp4", f"{12:032x}"),
        ("output/segment-2.mp4", f"{13:032x}"),
    ],
    "voiceseparate_success": [("output/background.mp3", None), ("output/audio.mp3", None)],
    # MediaResult names only the background: what CI reports it wrote; Output's AuObject is
    # what it was asked to write, read only when no result names anything.
    "voiceseparate_workflow": [("output/background.mp3", f"{16:032x}")],
    "streamextract_success": [("output/video.mp4", None), ("output/audio.m4a", None)],
    "speechrecognition_success": [("output/asr.txt", None), ("output/asr-detail.json", None)],
    "picprocess_success": [("output/out.jpg", None)],
    "tts_success": [("output/hello.mp3", "5b2ca33cd7357abb1e0ea29f57544df9")],
    "noisereduction_success": [("output/nr.wav", None)],
    "superresolution_success": [
        ("output/super_resolution.mp4", "852883012a6ba726e6ed8d9b984edfdf")
    ],
    "extractdigitalwatermark_success": [],
    "videotag_success": [],
}


def test_every_tag_has_a_success_sample_in_both_formats() -> None:
    for tag in TAGS:
        assert {f"{tag}_success.xml", f"{tag}_success.json"} <= {p.name for p in FILES}, tag
    assert {p.suffix for p in FILES} == {".xml", ".json"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_sample_parses_to_its_tag_and_state_and_round_trips(path: Path) -> None:
    events = parse(path.read_bytes())
    assert len(events) == 1
    event = events[0]
    kind, variant = path.stem.split("_")
    wire = json.loads(json.dumps(event.to_dict()))
    assert event_from_dict(wire) == event
    if kind == "workflowfinish":
        assert isinstance(event, WorkflowEvent)
        return
    assert isinstance(event, JobEvent)
    assert event.tag == TAGS[kind]
    assert event.state == STATES[variant]
    assert event.created_at is not None and event.created_at.tzinfo is not None
    if variant == "failed":
        assert event.code and event.message
        assert event.outputs == ()
    else:
        assert event.message is None
        assert all(o.bucket == BUCKET and not o.key.startswith("/") for o in event.outputs)
    if variant == "workflow":
        assert event.workflow is not None and event.workflow.run_id
        assert event.input is not None and event.input.cos_headers["Size"] == "1424687"
    else:
        assert event.workflow is None


@pytest.mark.parametrize("stem", STEMS)
def test_xml_and_json_of_a_sample_give_equal_events(stem: str) -> None:
    from_xml = parse((SAMPLES / f"{stem}.xml").read_bytes())
    from_json = parse((SAMPLES / f"{stem}.json").read_bytes())
    assert from_xml == from_json
    assert [e.to_dict() for e in from_xml] == [e.to_dict() for e in from_json]


@pytest.mark.parametrize(("stem", "expected"), EXPECTED_OUTPUTS.items())
@pytest.mark.parametrize("suffix", [".xml", ".json"])
def test_outputs_of_each_job_kind(
    stem: str, expected: list[tuple[str, str | None]], suffix: str
) -> None:
    (event,) = parse((SAMPLES / f"{stem}{suffix}").read_bytes())
    assert isinstance(event, JobEvent)
    assert [(o.key, o.md5) for o in event.outputs] == expected


def test_sub_failure_inside_a_successful_workflow_job() -> None:
    (event,) = parse((SAMPLES / "superresolution_workflow.xml").read_bytes())
    assert isinstance(event, JobEvent)
    assert event.state == "Success"
    # The DigitalWatermark node's Message is the embedded text, not an error message.
    assert event.sub_failures == (SubFailure("DigitalWatermark", None, None),)
    assert event.to_dict()["sub_failures"] == [
        {"name": "DigitalWatermark", "code": None, "message": None}
    ]
    (ok,) = parse((SAMPLES / "digitalwatermark_success.xml").read_bytes())
    assert isinstance(ok, JobEvent) and ok.sub_failures == ()


def test_workflow_finish_lists_each_task_with_its_result_objects() -> None:
    (event,) = parse((SAMPLES / "workflowfinish_success.json").read_bytes())
    assert isinstance(event, WorkflowEvent)
    assert event.workflow_name == "workflow-test"
    assert event.input is not None and event.input.bucket == BUCKET
    assert [(t.type, t.state, t.template_name) for t in event.tasks] == [
        ("Transcode", "Success", "HLS-FHD"),
        ("Snapshot", "Success", "snapshot-interval"),
    ]
    assert [o.key for o in event.tasks[0].outputs] == ["output/demo.m3u8"]
    assert [o.key for o in event.tasks[1].outputs] == [
        "output/snapshot-0.jpg",
        "output/snapshot-1.jpg",
        "output/sprite-0.jpg",
    ]
    assert event.tasks[1].ended_at is not None and event.tasks[1].ended_at.utcoffset()
