"""The corpus of real CI bodies (``../shared/real-callbacks``, with its ``extra/``), read in
place, and what each body says, written from reading the bodies and SOURCES.md (not from
the parser): its job (or run) id, event, tag, state, source, output keys and sub-failures
(a workflow run's failed tasks), or its refusal.

The folder is not part of the project: ``real_callbacks()`` skips the calling test without
it, and fails it under ``CI=true``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT, require

REAL_CALLBACKS = ROOT.parent / "shared" / "real-callbacks"


def real_callbacks() -> Path:
    """The corpus folder (``../shared/real-callbacks``); the test skips without it, or fails
    under ``CI=true``."""
    __tracebackhide__ = True
    require(
        REAL_CALLBACKS.is_dir(),
        f"{REAL_CALLBACKS} not found: the real callbacks are not part of the project",
    )
    return REAL_CALLBACKS


def body(name: str) -> bytes:
    """One file of the corpus, by its name (``extra/`` files by theirs)."""
    __tracebackhide__ = True
    folder = real_callbacks()
    path = folder / name if (folder / name).exists() else folder / "extra" / name
    return path.read_bytes()


@dataclass(frozen=True)
class Reads:
    """One event the body gives. ``id`` is the job id, or the run id of a workflow run.
    ``failures`` are a job's sub-failures (Operation nodes in State Failed) or a run's
    failed tasks."""

    id: str
    event: str
    tag: str | None
    state: str
    outputs: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()
    source: str = "callback"


@dataclass(frozen=True)
class Refused:
    """The body is refused: a ParseError whose reason matches, at ``path``."""

    reason: str
    path: str = ""


def job(
    id: str,
    tag: str | None,
    *outputs: str,
    state: str = "Success",
    failures: tuple[str, ...] = (),
    source: str = "callback",
) -> Reads:
    return Reads(id, "TaskFinish", tag, state, outputs, failures, source)


def review(event: str, id: str, *, source: str = "callback") -> Reads:
    return Reads(id, event, None, "Success", source=source)


def run(id: str, *, failures: tuple[str, ...] = (), source: str = "callback") -> Reads:
    return Reads(id, "WorkflowFinish", None, "Success", failures=failures, source=source)


SNAPSHOTS = (*(f"output/snapshot-{i}.jpg" for i in range(6)), "output/sprite-0.jpg")
PIC_42 = "materials/11/22/images/202610/42/v1/derived/display.png"
SUPER_RES = job(
    "j06668dc0f86811ecb90d0b03267ce0e5",
    "SuperResolution",
    "output/super_resolution.mp4",
    failures=("DigitalWatermark",),
)

EXPECTED: dict[str, Reads | Refused] = {
    # Bucket empty in the body: the key alone, from MediaResult.
    "01_go_transcode_taskfinish_2021.xml": job(
        "j7123e78c152611ec9e8c1ba6632b91a8", "Transcode", "f89f22f7a8be4f478434da58eb11d7da.mp4"
    ),
    # No EventName, a finished job and nothing only answers carry: an old-style callback.
    "02_go_transcode_md5_progress_noeventname.xml": job(
        "jf6717076895711ecafdd594be6cca70c", "Transcode", "output/go_117374C.mp4"
    ),
    "03_go_superresolution_dwm_failed_workflow.xml": SUPER_RES,
    "04_go_workflowfinish.xml": run("i70ae991a152911ecb184525400a8700f"),
    # The pages: Output.Object is the template test1/${Page}.jpg.
    "05_java_docprocess_taskfinish.xml": job(
        "d89c4cf4a728311ebb1229f23e6c9963b", "DocProcess", "test1/1.jpg"
    ),
    "06_java_reviewimage_detail.json": review("ReviewImage", "ia70a9f88b131911eda2d7525400000000d"),
    "07_doc_transcode_workflow.xml": job(
        "j68427030f84611ecb8546d80f2baf56f", "Transcode", "output/transcode.mp4"
    ),
    "08_doc_transcode_workflow.json": job(
        "j68427030f84611ecb8546d80f2baf56f", "Transcode", "output/transcode.mp4"
    ),
    "09_doc_animation.xml": job(
        "j682b9662f84611ecb8546d80f2baf56f", "Animation", "output/animation.gif"
    ),
    "10_doc_concat.xml": job("j07f6263af86011ecbdf419856486c0ab", "Concat", "output/concat.mp4"),
    "11_doc_snapshot.xml": job("j4e431ba0f86711ecb8546d80f2baf56f", "Snapshot", *SNAPSHOTS),
    "12_doc_smartcover_workflow.xml": job(
        "j6842765cf84611ecb8546d80f2baf56f",
        "SmartCover",
        *(f"output/smartcover-{i}.jpg" for i in range(5)),
    ),
    "13_doc_voiceseparate.xml": job(
        "j40644e92f8e311ecb90d0b03267ce0e5",
        "VoiceSeparate",
        "output/audio.mp3",
        "output/backgroud.mp3",  # sic
    ),
    "14_doc_videomontage_workflow.json": job(
        "j7b0dfbe2f86b11ec995acf5cffaf6664", "VideoMontage", "output/videoMontage.mp4"
    ),
    "15_doc_sdrtohdr.xml": job(
        "jafa709a2f86611ec9452c1c27f56a659", "SDRtoHDR", "output/sdr2hdr.mp4"
    ),
    "16_doc_videoprocess_workflow.xml": job(
        "j7d0eafdaf86c11ecbdf419856486c0ab", "VideoProcess", "output/video-process.mp4"
    ),
    "17_doc_superresolution_dwm_failed_workflow.json": SUPER_RES,
    "18_doc_picprocess_workflow.xml": job(
        "c93984788066911ed89ed352d4d9d2084", "PicProcess", "output/out.jpg"
    ),
    "19_doc_picprocess_workflow_jobsdetail_object.json": job(
        "c93984788066911ed89ed352d4d9d2084", "PicProcess", "output/out.jpg"
    ),
    # ObjectName /example.txt and DetailObjectName /example.txt.detail, leading / stripped.
    "20_doc_speechrecognition.xml": job(
        "s886c0a7c2a6611ed847a618901112dcf",
        "SpeechRecognition",
        "example.txt",
        "example.txt.detail",
    ),
    "21_doc_tts.xml": job("j707f4864f86811ecb90d0b03267ce0e5", "Tts", "output/aixiaonan.mp3"),
    "22_doc_tts_workflow_input_in_operation.json": job(
        "j707f4864f86811ecb90d0b03267ce0e5", "Tts", "output/aixiaonan.mp3"
    ),
    # ObjectName 0..8 after the ObjectPrefix output/segment-.
    "23_doc_segment.xml": job(
        "jd0c0da74f86511ec8a5a87e016101404",
        "Segment",
        *(f"output/segment-{i}" for i in range(9)),
    ),
    # DigitalWatermark has no State of its own here: no sub-failure.
    "24_doc_digitalwatermark_jobsdetail_object.json": job(
        "ja8de3b46f86011ec9452c1c27f56a659", "DigitalWatermark", "output/digital.mp4"
    ),
    "25_doc_extractdigitalwatermark.xml": job(
        "j515a494af86111ecb8546d80f2baf56f", "ExtractDigitalWatermark"
    ),
    # Output asks for streams 0, 1 and 2; MediaResult reports out0 and out1 written.
    "26_doc_streamextract.xml": job(
        "ja66d6204f86711ec9ca1073b78d316d3", "StreamExtract", "output/out0.mp4", "output/out1.mp4"
    ),
    "27_doc_streamextract_multi_output.json": job(
        "ja66d6204f86711ec9ca1073b78d316d3", "StreamExtract", "output/out0.mp4", "output/out1.mp4"
    ),
    "28_doc_videotag_zh.json": job("j535b10a4f8e211ec9452c1c27f56a659", "VideoTag"),
    "29_doc_qualityestimate.xml": job("jb01fe2f2f86411ec9ca1073b78d316d3", "QualityEstimate"),
    "30_doc_noisereduction_jobsdetail_object.json": job(
        "j035aca66f86211ec8a5a87e016101404", "NoiseReduction", "output/nr.wav"
    ),
    "31_doc_mediainfo.xml": job("jb976c9e0f86111ec9452c1c27f56a659", "MediaInfo"),
    # "JobLevel": 0, then "}" on line 27 at column 9.
    "32_doc_translation_trailing_comma_INVALID.json": Refused(
        r"^invalid JSON at line 27, column 9: Expecting property name"
    ),
    # No State; Code Success.
    "33_doc_wordsgeneralize_no_state.xml": job(
        "ac34be3aa0bf411ed9ce39d7cc972e427", "WordsGeneralize"
    ),
    "34_doc_workflowfinish.xml": run("i166ee19017b011eda8a5525400c540df"),
    "35_doc_workflowfinish.json": run("i166ee19017b011eda8a5525400c540df"),
    "36_doc_reviewimage_simple.json": review("ReviewImage", "ixzt90jl2dfscxxxxxxxxxxxxxxxxx"),
    "37_doc_reviewtext_detail.json": review("ReviewText", "xxxxxx"),
    "38_doc_reviewdocument.json": review("ReviewDocument", "xxxxxx"),
    # "SubLabel": "", then "}" on line 32 at column 9.
    "39_doc_reviewhtml_trailing_comma_INVALID.json": Refused(
        r"^invalid JSON at line 32, column 9: Expecting property name"
    ),
    # CI's test request: no event; its trace_id is test_trace_id.
    "40_doc_reviewaudio_simple_test_noevent.json": review("Review", "test_trace_id"),
    "41_doc_reviewvideo_live_detail.json": review("ReviewVideo", "xxxxxx"),
    "42_doc_reviewaudio_detail.json": review("ReviewAudio", "xxxxxx"),
    # PicProcessResult is a list of one, its ObjectName with a leading /.
    "43_proj_picprocess_native_result_array.json": job("job-1", "PicProcess", PIC_42),
    # Query answers. Output.Object is output/out.${ext}, and nothing is written yet.
    "44_query_java_transcode_submitted.xml": job(
        "j8d121820f5e411ec926ef19d53ba9c6f", "Transcode", state="Submitted", source="query"
    ),
    # A verdict (Result 1, Label Politics), no Tag, no Operation: an image auditing job.
    "45_query_go_image_auditing.xml": review(
        "ReviewImage", "si8e6586b0a6e411edb8db525400a28986", source="query"
    ),
    "46_query_go_describe_workflowexecution.xml": run(
        "i166ee19017b011eda8a5525400c540df", source="query"
    ),
    # A </Message> with no <Message> on line 4: 8 spaces, "</", the name at column 11.
    "47_query_doc_describemediajobs_list_stray_close_tag_INVALID.xml": Refused(
        r"^invalid XML at line 4, column 11: mismatched tag"
    ),
    "48_query_doc_describepicjob_submitted.xml": job(
        "c93984788066911ed89ed352d4d9d2084", "PicProcess", state="Submitted", source="query"
    ),
    # A batch job: no Tag, and no result node to name one.
    "49_query_doc_batchjob_running.xml": job(
        "b3deffea2f84911ec9cb15254008618d9", None, state="Running", source="query"
    ),
    "50_query_doc_workflowexecution_failed_task.xml": run(
        "37145b2919714156bd97f91dc03fa2b4",
        failures=("Animation_1581665960538",),
        source="query",
    ),
    "E01_doc_snapshot_workflow.json": job(
        "j4e431ba0f86711ecb8546d80f2baf56f", "Snapshot", *SNAPSHOTS
    ),
    "E02_doc_speechrecognition_workflow.json": job(
        "s886c0a7c2a6611ed847a618901112dcf",
        "SpeechRecognition",
        "example.txt",
        "example.txt.detail",
    ),
    "E03_doc_transcode_tsc_hd.xml": job(
        "j68427030f84611ecb8546d80f2baf56f", "Transcode", "output/high_speed.mp4"
    ),
    "E04_doc_reviewimage_detail.json": review("ReviewImage", "xxxx"),
    "E05_doc_reviewvideo_detail.json": review("ReviewVideo", "xxxxxx"),
    "E06_query_doc_describemediajob_success_stray_close_tag_INVALID.xml": Refused(
        r"^invalid XML at line 4, column 11: mismatched tag"
    ),
    # No Tag: the PicProcessResult names it; the output is Output.Object (no bucket given).
    "E07_proj_picprocess_single_object.json": job("job-1", "PicProcess", PIC_42),
    # Placeholder values: CreationTime "1" is no time.
    "E08_query_cpp_docprocess_synthetic.xml": Refused(
        r"^bad time '1'$", path="JobsDetail[0].CreationTime"
    ),
}
