"""copy_output against a real S3 server (moto in server mode) on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from pipeline.actions.copying import (
    ALREADY_COPIED,
    COPIED,
    ChecksumMismatch,
    CopyFailed,
    CopyRejected,
    CopyTarget,
    SourceMissing,
    TemplateValueMissing,
    classify,
    copy_outputs,
)
from pipeline.actions.s3 import s3_client
from pipeline.errors import ConfigError, PermanentError, TransientError
from pipeline.parsing.events import JobEvent
from pipeline.parsing.reader import parse
from pipeline.parsing.values import OutputObject, WorkflowRef
from tests.support import SAMPLES, free_port

MIB = 1024 * 1024
REGION = "ap-chongqing"


@pytest.fixture
def s3(s3_url: str) -> Any:
    return s3_client(REGION, endpoint_url=s3_url)


@pytest.fixture
def client_for(s3_url: str) -> Callable[[str | None], Any]:
    return lambda region: s3_client(region, endpoint_url=s3_url)


@pytest.fixture
def buckets(s3: Any) -> tuple[str, str]:
    """A fresh source bucket and a fresh, versioned, destination bucket."""
    suffix = uuid.uuid4().hex[:12]
    src, dst = f"ci-out-{suffix}", f"archive-{suffix}"
    for name in (src, dst):
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_versioning(Bucket=dst, VersioningConfiguration={"Status": "Enabled"})
    return src, dst


def tts_event(bucket: str, *, md5: str | None) -> JobEvent:
    """The TTS sample, with its output in ``bucket``."""
    (event,) = parse((SAMPLES / "tts_success.xml").read_bytes())
    assert isinstance(event, JobEvent)
    output = OutputObject(bucket=bucket, region=REGION, key="output/hello.mp3", md5=md5)
    return dataclasses.replace(event, outputs=(output,))


def put(s3: Any, bucket: str, key: str, body: bytes, **kwargs: Any) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=body, **kwargs)
    return hashlib.md5(body).hexdigest()


def read(s3: Any, bucket: str, key: str) -> bytes:
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def versions(s3: Any, bucket: str) -> list[str]:
    listed = s3.list_object_versions(Bucket=bucket).get("Versions", [])
    return [v["Key"] for v in listed]


def test_tts_output_is_copied_to_the_templated_destination(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    body = os.urandom(4096)
    md5 = put(
        s3,
        src,
        "output/hello.mp3",
        body,
        ContentType="audio/mpeg",
        Metadata={"voice": "aixiaonan"},
    )
    event = tts_event(src, md5=md5)
    target = CopyTarget.parse(f"s3://{dst}/tts/{{tag}}/{{job_id}}/")

    (result,) = copy_outputs(event, target=target, client_for=client_for)

    key = "tts/Tts/j707f4864f86811ecb90d0b03267ce0e5/hello.mp3"
    assert (result.dest_bucket, result.dest_key) == (dst, key)
    assert (result.source_bucket, result.source_key) == (src, "output/hello.mp3")
    assert (result.status, result.size_bytes, result.multipart) == (COPIED, 4096, False)
    assert read(s3, dst, key) == body
    head = s3.head_object(Bucket=dst, Key=key)
    assert head["ETag"].strip('"') == md5
    assert head["ContentType"] == "audio/mpeg"
    assert head["Metadata"] == {
        "voice": "aixiaonan",
        "cicb-source-etag": md5,
        "cicb-source-md5": md5,
    }
    assert result.to_dict()["status"] == "copied"


def test_every_snapshot_output_is_copied(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    bodies = {f"output/snap/snapshot-{i}.jpg": os.urandom(1000 + i) for i in range(3)}
    outputs = tuple(
        OutputObject(
            bucket=src,
            region=REGION,
            key=f"/{key}",
            md5=md5 if i else None,  # CI gives no MD5 for some outputs
        )
        for i, (key, md5) in enumerate((k, put(s3, src, k, b)) for k, b in bodies.items())
    )
    event = dataclasses.replace(
        tts_event(src, md5=None), tag="Snapshot", job_id="jsnap", outputs=outputs
    )

    results = copy_outputs(
        event, target=CopyTarget.parse(f"s3://{dst}/{{tag}}/{{job_id}}/"), client_for=client_for
    )

    assert [r.status for r in results] == [COPIED] * 3
    for key, body in bodies.items():
        assert read(s3, dst, f"Snapshot/jsnap/{key.rsplit('/', 1)[1]}") == body


def test_large_objects_are_copied_in_parts(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    body = os.urandom(11 * MIB + 123)
    md5 = put(s3, src, "output/hello.mp3", body)
    event = tts_event(src, md5=md5)
    target = CopyTarget.parse(f"s3://{dst}/{{job_id}}/")
    options = {"multipart_threshold_bytes": 5 * MIB, "part_size_bytes": 5 * MIB}

    (first,) = copy_outputs(event, target=target, client_for=client_for, **options)
    (again,) = copy_outputs(event, target=target, client_for=client_for, **options)

    assert (first.status, first.multipart, first.size_bytes) == (COPIED, True, len(body))
    assert read(s3, dst, first.dest_key) == body
    assert s3.head_object(Bucket=dst, Key=first.dest_key)["ETag"].strip('"').endswith("-3")
    assert (again.status, again.multipart) == (ALREADY_COPIED, True)
    assert versions(s3, dst) == [first.dest_key]
    assert s3.list_multipart_uploads(Bucket=dst).get("Uploads", []) == []


class Faulty:
    """A real client with one call replaced, to break a copy midway."""

    def __init__(self, client: Any, **replaced: Callable[..., Any]) -> None:
        self.client, self.replaced = client, replaced

    def __getattr__(self, name: str) -> Any:
        return self.replaced.get(name) or getattr(self.client, name)


def test_a_multipart_copy_that_fails_midway_is_aborted_and_redone(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    body = os.urandom(11 * MIB)
    event = tts_event(src, md5=put(s3, src, "output/hello.mp3", body))
    target = CopyTarget.parse(f"s3://{dst}/")
    options = {"multipart_threshold_bytes": 5 * MIB, "part_size_bytes": 5 * MIB}
    calls: list[int] = []

    def second_part_drops(**kwargs: Any) -> Any:
        calls.append(kwargs["PartNumber"])
        if kwargs["PartNumber"] == 2:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1")
        return s3.upload_part_copy(**kwargs)

    broken = Faulty(s3, upload_part_copy=second_part_drops)
    with pytest.raises(CopyFailed):
        copy_outputs(event, target=target, client_for=lambda r: broken, **options)
    assert calls == [1, 2]
    assert s3.list_multipart_uploads(Bucket=dst).get("Uploads", []) == []
    assert versions(s3, dst) == []

    (result,) = copy_outputs(event, target=target, client_for=client_for, **options)
    assert (result.status, result.multipart) == (COPIED, True)
    assert read(s3, dst, "hello.mp3") == body


def test_a_copy_that_does_not_match_its_source_is_removed(
    s3: Any, buckets: tuple[str, str]
) -> None:
    src, dst = buckets
    event = tts_event(src, md5=put(s3, src, "output/hello.mp3", b"voice"))

    def copies_garbage(**kwargs: Any) -> Any:
        return s3.put_object(Bucket=kwargs["Bucket"], Key=kwargs["Key"], Body=b"garbage!")

    broken = Faulty(s3, copy_object=copies_garbage)
    with pytest.raises(ChecksumMismatch, match="8 bytes, source has 5") as caught:
        copy_outputs(event, target=CopyTarget.parse(f"s3://{dst}/"), client_for=lambda r: broken)
    assert (caught.value.bucket, caught.value.key) == (dst, "hello.mp3")
    with pytest.raises(ClientError, match="404"):
        s3.head_object(Bucket=dst, Key="hello.mp3")


def test_a_rerun_skips_what_is_already_copied(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    event = tts_event(src, md5=put(s3, src, "output/hello.mp3", b"voice"))
    target = CopyTarget.parse(f"s3://{dst}/{{date}}/")

    (first,) = copy_outputs(event, target=target, client_for=client_for)
    (second,) = copy_outputs(event, target=target, client_for=client_for)

    assert first.dest_key == "2022-06-30/hello.mp3"
    assert (first.status, second.status) == (COPIED, ALREADY_COPIED)
    assert versions(s3, dst) == ["2022-06-30/hello.mp3"]


def test_a_different_object_at_the_destination_is_replaced(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    event = tts_event(src, md5=put(s3, src, "output/hello.mp3", b"new voice"))
    put(s3, dst, "hello.mp3", b"old voice")

    (result,) = copy_outputs(event, target=CopyTarget.parse(f"s3://{dst}/"), client_for=client_for)

    assert result.status == COPIED
    assert read(s3, dst, "hello.mp3") == b"new voice"


def test_a_missing_source_is_a_permanent_error_naming_it(
    buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    with pytest.raises(SourceMissing) as caught:
        copy_outputs(
            tts_event(src, md5=None), target=CopyTarget.parse(f"s3://{dst}/"), client_for=client_for
        )
    assert isinstance(caught.value, PermanentError)
    assert f"s3://{src}/output/hello.mp3" in str(caught.value)
    assert (caught.value.bucket, caught.value.key) == (src, "output/hello.mp3")


def test_an_md5_that_differs_from_what_ci_reported_is_permanent(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    put(s3, src, "output/hello.mp3", b"not what CI wrote")
    event = tts_event(src, md5="5b2ca33cd7357abb1e0ea29f57544df9")

    with pytest.raises(ChecksumMismatch, match="5b2ca33cd7357abb1e0ea29f57544df9") as caught:
        copy_outputs(event, target=CopyTarget.parse(f"s3://{dst}/"), client_for=client_for)

    assert isinstance(caught.value, PermanentError)
    assert caught.value.key == "output/hello.mp3"
    assert versions(s3, dst) == []


def test_a_missing_destination_bucket_is_permanent(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, _ = buckets
    event = tts_event(src, md5=put(s3, src, "output/hello.mp3", b"voice"))
    with pytest.raises(CopyRejected, match="NoSuchBucket") as caught:
        copy_outputs(
            event, target=CopyTarget.parse("s3://no-such-bucket-cicb/"), client_for=client_for
        )
    assert isinstance(caught.value, PermanentError)
    assert isinstance(caught.value.__cause__, ClientError)


def test_outputs_that_would_overwrite_each_other_are_refused_before_copying(
    s3: Any, buckets: tuple[str, str], client_for: Any
) -> None:
    src, dst = buckets
    outputs = tuple(OutputObject(src, REGION, f"output/{d}/cover.jpg", None) for d in "ab")
    for output in outputs:
        put(s3, src, output.key, b"cover")
    event = dataclasses.replace(tts_event(src, md5=None), outputs=outputs)
    with pytest.raises(CopyRejected, match="two outputs"):
        copy_outputs(event, target=CopyTarget.parse(f"s3://{dst}/"), client_for=client_for)
    assert versions(s3, dst) == []
    copied = copy_outputs(
        event, target=CopyTarget.parse(f"s3://{dst}/{{key}}"), client_for=client_for
    )
    assert [r.dest_key for r in copied] == ["output/a/cover.jpg", "output/b/cover.jpg"]


def test_an_unreachable_store_is_transient(s3_url: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CopyFailed) as caught:
        copy_outputs(
            tts_event("ci-out", md5=None),
            target=CopyTarget.parse("s3://archive/"),
            client_for=lambda region: s3_client(region, endpoint_url=closed, max_attempts=1),
        )
    assert isinstance(caught.value, TransientError)
    assert isinstance(caught.value.__cause__, EndpointConnectionError)


def no_client(region: str | None) -> Any:
    raise AssertionError("no client needed")


def test_an_event_without_outputs_copies_nothing() -> None:
    event = dataclasses.replace(tts_event("ci-out", md5=None), outputs=())
    assert copy_outputs(event, target=CopyTarget.parse("s3://archive/"), client_for=no_client) == []


@pytest.mark.parametrize(
    "body",
    [
        (SAMPLES / "workflowfinish_success.xml").read_bytes(),  # outputs under tasks, no bucket
        b'{"code": 0, "data": {"event": "ReviewImage", "trace_id": "t1", "url": "u"}}',
        b"<Response><EventName>TaskStart</EventName></Response>",
    ],
    ids=["workflow", "moderation", "generic"],
)
def test_only_a_job_has_outputs_to_copy(body: bytes) -> None:
    (event,) = parse(body)
    assert not isinstance(event, JobEvent)
    assert copy_outputs(event, target=CopyTarget.parse("s3://archive/"), client_for=no_client) == []


def test_part_sizes_s3_cannot_honour_are_config_errors() -> None:
    target = CopyTarget.parse("s3://archive/")
    event = tts_event("ci-out", md5=None)
    with pytest.raises(ConfigError):
        copy_outputs(event, target=target, client_for=lambda r: None, part_size_bytes=MIB)
    with pytest.raises(ConfigError):
        copy_outputs(
            event,
            target=target,
            client_for=lambda r: None,
            multipart_threshold_bytes=6 * 1024 * MIB,
        )


# --- templates -------------------------------------------------------------------------

EVENT = dataclasses.replace(
    tts_event("out-125", md5=None),
    tag="Transcode",
    job_id="j1",
    state="Success",
    created_at=datetime.fromisoformat("2022-06-30T23:59:00+08:00"),
    ended_at=datetime.fromisoformat("2022-07-01T00:00:10+08:00"),
    workflow=WorkflowRef(run_id="run9", workflow_id=None, workflow_name=None, name=None),
)
OUTPUT = OutputObject(bucket="out-125", region="ap-guangzhou", key="/media/x/clip.mp4", md5=None)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("s3://archive/{tag}/{job_id}/", ("archive", "Transcode/j1/clip.mp4")),
        ("s3://archive/", ("archive", "clip.mp4")),
        ("s3://archive", ("archive", "clip.mp4")),
        ("s3://archive/{date}/{run_id}/", ("archive", "2022-07-01/run9/clip.mp4")),
        ("s3://archive/{state}/{key}", ("archive", "Success/media/x/clip.mp4")),
        (
            "s3://archive/{region}/{bucket}/{basename}.bak",
            ("archive", "ap-guangzhou/out-125/clip.mp4.bak"),
        ),
        ("s3://{bucket}/copies/{event}/", ("out-125", "copies/TaskFinish/clip.mp4")),
    ],
)
def test_destinations_are_filled_from_the_event_and_output(
    template: str, expected: tuple[str, str]
) -> None:
    assert CopyTarget.parse(template).destination(EVENT, OUTPUT) == expected


def test_date_falls_back_to_created_at() -> None:
    event = dataclasses.replace(EVENT, ended_at=None)
    assert CopyTarget.parse("s3://a/{date}/").destination(event, OUTPUT) == (
        "a",
        "2022-06-30/clip.mp4",
    )


def test_a_workflow_run_fills_run_id_and_date_from_its_own_fields() -> None:
    (run,) = parse((SAMPLES / "workflowfinish_success.xml").read_bytes())
    assert CopyTarget.parse("s3://a/{run_id}/{date}/{event}/").destination(run, OUTPUT) == (
        "a",
        "i70ae991a152911ecb184525400a8700f/2022-08-09/WorkflowFinish/clip.mp4",
    )


def test_a_region_can_be_given_for_the_destination() -> None:
    target = CopyTarget.parse("s3://archive/{tag}/?region=ap-beijing")
    assert (target.bucket, target.key, target.region) == ("archive", "{tag}/", "ap-beijing")
    assert CopyTarget.parse("s3://archive/").region is None


@pytest.mark.parametrize(
    "template",
    [
        "s3://archive/{nope}/",
        "s3://{owner}/x/",
        "s3://archive/{date:%Y}/",
        "s3://archive/{tag!r}/",
        "s3://archive/{}/",
        "s3://archive/{tag/",
        "https://archive/x/",
        "archive/x/",
        "s3:///x/",
        "s3://archive/?acl=private",
    ],
)
def test_bad_templates_are_config_errors(template: str) -> None:
    with pytest.raises(ConfigError):
        CopyTarget.parse(template)


def test_unknown_placeholders_are_named() -> None:
    with pytest.raises(ConfigError, match=r"\{nope\}"):
        CopyTarget.parse("s3://archive/{nope}/")


def test_a_placeholder_the_event_cannot_fill_is_permanent() -> None:
    event = dataclasses.replace(EVENT, workflow=None)
    with pytest.raises(TemplateValueMissing, match=r"\{run_id\}") as caught:
        CopyTarget.parse("s3://archive/{run_id}/").destination(event, OUTPUT)
    assert isinstance(caught.value, PermanentError)


# --- clients and error classes ---------------------------------------------------------


def test_clients_talk_to_cos_unless_an_endpoint_is_given(s3_url: str) -> None:
    cos = s3_client("ap-chongqing")
    assert cos.meta.endpoint_url == "https://cos.ap-chongqing.myqcloud.com"
    assert cos.meta.config.s3 == {"addressing_style": "virtual"}
    assert cos.meta.config.signature_version == "s3v4"
    local = s3_client(None, endpoint_url=s3_url)
    assert local.meta.endpoint_url == s3_url
    assert local.meta.config.s3 == {"addressing_style": "path"}
    with pytest.raises(ConfigError):
        s3_client(None)


def error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "CopyObject",
    )


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("SlowDown", 503, CopyFailed),
        ("ServiceUnavailable", 503, CopyFailed),
        ("InternalError", 500, CopyFailed),
        ("", 502, CopyFailed),
        ("RequestTimeout", 400, CopyFailed),
        ("TooManyRequests", 429, CopyFailed),
        ("PreconditionFailed", 412, CopyFailed),
        ("AccessDenied", 403, CopyRejected),
        ("InvalidBucketName", 400, CopyRejected),
        ("NoSuchBucket", 404, CopyRejected),
        ("NoSuchKey", 404, SourceMissing),
        ("404", 404, SourceMissing),
    ],
)
def test_s3_errors_are_classified(code: str, status: int, kind: type[Exception]) -> None:
    classified = classify(error(code, status), "dst", "k", ("src", "s"))
    assert type(classified) is kind
    if kind is SourceMissing:
        assert str(classified) == "s3://src/s: source object does not exist"


def test_timeouts_are_transient() -> None:
    class SlowClient:
        def head_object(self, **kwargs: Any) -> Any:
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:1")

    with pytest.raises(CopyFailed, match="connection failed"):
        copy_outputs(
            tts_event("ci-out", md5=None),
            target=CopyTarget.parse("s3://archive/"),
            client_for=lambda r: SlowClient(),
        )
