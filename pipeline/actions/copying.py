"""The ``copy_output`` action: server-side copy of a job's outputs to a templated S3 location.

Any S3 API (COS, AWS, MinIO) through boto3. Every copy is checked (size, and CI's MD5 where an
ETag can show it) and idempotent: a destination that already holds this very source object is
skipped, so a re-run after a crash neither duplicates nor corrupts. A multipart copy killed
midway leaves an upload no reader sees; a lifecycle rule (AbortIncompleteMultipartUpload)
reclaims it.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from posixpath import basename
from string import Formatter
from typing import Any, Final, Literal
from urllib.parse import parse_qs, urlsplit

from botocore import exceptions as boto

from pipeline.actions.s3 import S3Client
from pipeline.errors import ConfigError, PermanentError, PipelineError, TransientError
from pipeline.parsing.events import Event, JobEvent, WorkflowEvent
from pipeline.parsing.values import OutputObject

MIB: Final = 1024 * 1024
MAX_SINGLE_COPY_BYTES: Final = 5 * 1024 * MIB  # CopyObject's limit, on S3 and COS alike
MIN_PART_SIZE_BYTES: Final = 5 * MIB
MAX_PARTS: Final = 10_000
DEFAULT_MULTIPART_THRESHOLD_BYTES: Final = MAX_SINGLE_COPY_BYTES
DEFAULT_PART_SIZE_BYTES: Final = 256 * MIB
META_SOURCE_ETAG: Final = "cicb-source-etag"  # written as x-amz-meta-cicb-source-etag
META_SOURCE_MD5: Final = "cicb-source-md5"

PLACEHOLDERS: Final = frozenset(
    {"event", "tag", "job_id", "run_id", "state", "region", "bucket", "key", "basename", "date"}
)
Status = Literal["copied", "already copied"]
COPIED: Final = "copied"
ALREADY_COPIED: Final = "already copied"

# Codes and statuses that say "later", not "never": throttling, server trouble, a source
# that changed during the copy (412), an upload the store dropped.
_TRANSIENT_CODES: Final = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
     "RequestTimeout", "InternalError", "ServiceUnavailable", "PreconditionFailed",
     "NoSuchUpload", "OperationAborted"}
)  # fmt: skip
_MISSING_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_MD5 = re.compile(r"[0-9a-f]{32}")
_KMS = frozenset({"aws:kms", "aws:kms:dsse", "cos/kms"})  # their ETags are not MD5s
_CARRIED = ("ContentType", "ContentEncoding", "ContentDisposition", "ContentLanguage",
            "CacheControl")  # fmt: skip


class _ObjectError(PipelineError):
    """An error about one object; ``bucket``, ``key`` and ``reason`` say which and why."""

    def __init__(self, bucket: str, key: str, reason: str) -> None:
        self.bucket, self.key, self.reason = bucket, key, reason
        super().__init__(f"s3://{bucket}/{key}: {reason}")


class SourceMissing(_ObjectError, PermanentError):
    """The output CI reported is not in the store (deleted, or never written)."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(bucket, key, "source object does not exist")


class CopyRejected(_ObjectError, PermanentError):
    """The store refused (AccessDenied, NoSuchBucket...) or the event cannot be copied."""


class ChecksumMismatch(_ObjectError, PermanentError):
    """An object is not what CI reported, or a copy is not what it copied."""


class CopyFailed(_ObjectError, TransientError):
    """The store is unreachable, slow or busy for now; retry the copy."""


class TemplateValueMissing(PermanentError):
    """The destination template names a field this event does not have (``{run_id}``...)."""

    def __init__(self, placeholder: str, template: str) -> None:
        self.placeholder, self.template = placeholder, template
        super().__init__(f"{template}: the event has no value for {{{placeholder}}}")


@dataclass(frozen=True, slots=True)
class CopyResult:
    """One output copied (``status`` "copied") or found already there ("already copied")."""

    source_bucket: str
    source_key: str
    dest_bucket: str
    dest_key: str
    size_bytes: int
    status: Status
    multipart: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CopyTarget:
    """Where outputs go: ``s3://bucket/prefix/{tag}/{job_id}/``, optionally ``?region=...``.

    Placeholders (in the bucket or the key) are filled from the event: ``event``, ``tag``,
    ``job_id``, ``run_id`` (a workflow run's, or the run of the workflow that started the
    job), ``state``, ``date`` (YYYY-MM-DD of ``ended_at``, else ``created_at``, in the
    event's own timezone), and from each output: ``region``, ``bucket``, ``key`` (the source
    key), ``basename``.

    A template ending in ``/`` is a prefix: the destination key is the filled prefix plus the
    source key's basename (the prefix already says which job; write ``{key}`` for the full
    source path). Any other template is the whole key and should name ``{basename}`` or
    ``{key}`` when a job has several outputs; two outputs landing on one key is an error.
    The destination region is ``region`` when given, else the source's.
    """

    template: str
    bucket: str
    key: str
    region: str | None = None

    @classmethod
    def parse(cls, template: str) -> CopyTarget:
        """Raises ``ConfigError`` on anything but ``s3://bucket[/key]`` with known placeholders."""
        parts = urlsplit(template)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"copy destination {template!r}: expected s3://bucket/prefix/")
        query = parse_qs(parts.query)
        if set(query) - {"region"} or len(query.get("region", ())) > 1:
            raise ConfigError(f"copy destination {template!r}: only ?region=... is understood")
        try:
            fields = [f for part in (parts.netloc, parts.path) for f in Formatter().parse(part)]
        except ValueError as exc:
            raise ConfigError(f"copy destination {template!r}: {exc}") from exc
        for _, name, spec, conversion in fields:
            if name is not None and (name not in PLACEHOLDERS or spec or conversion):
                known = ", ".join(sorted(PLACEHOLDERS))
                raise ConfigError(f"copy destination {template!r}: unknown {{{name}}} ({known})")
        region = query["region"][0] if "region" in query else None
        return cls(template, bucket=parts.netloc, key=parts.path.lstrip("/"), region=region)

    def destination(self, event: Event, output: OutputObject) -> tuple[str, str]:
        """The (bucket, key) ``output`` of ``event`` is copied to."""
        values = _values(event, output)
        bucket = self._fill(self.bucket, values)
        key = self._fill(self.key, values)
        if not self.key or self.key.endswith("/"):
            key += values["basename"] or ""
        key = key.lstrip("/")
        if not bucket or "/" in bucket or not key:
            raise CopyRejected(bucket, key, f"{self.template} gives no valid destination")
        return bucket, key

    def _fill(self, part: str, values: Mapping[str, str | None]) -> str:
        filled: list[str] = []
        for literal, name, _, _ in Formatter().parse(part):
            filled.append(literal)
            if name is not None:
                value = values.get(name)
                if not value:
                    raise TemplateValueMissing(name, self.template)
                filled.append(value)
        return "".join(filled)


def _values(event: Event, output: OutputObject) -> dict[str, str | None]:
    run_id = when = None
    if isinstance(event, JobEvent):
        run_id = event.workflow.run_id if event.workflow else None
        when = event.ended_at or event.created_at
    elif isinstance(event, WorkflowEvent):
        run_id, when = event.run_id, event.created_at
    return {
        "event": event.event,
        "tag": event.tag,
        "job_id": event.job_id,
        "state": event.state,
        "run_id": run_id,
        "date": when.date().isoformat() if when else None,
        "region": output.region,
        "bucket": output.bucket,
        "key": output.key.lstrip("/"),
        "basename": basename(output.key) or None,
    }


def copy_outputs(
    event: Event,
    *,
    target: CopyTarget,
    client_for: Callable[[str | None], S3Client],
    multipart_threshold_bytes: int = DEFAULT_MULTIPART_THRESHOLD_BYTES,
    part_size_bytes: int = DEFAULT_PART_SIZE_BYTES,
) -> list[CopyResult]:
    """Copy every object in the job's ``outputs`` to ``target``, server side, in order.

    ``client_for(region)`` gives the client for a region (``pipeline.actions.s3``). Objects
    larger than ``multipart_threshold_bytes`` are copied in parts of at least
    ``part_size_bytes``.
    Stops at the first failure: ``SourceMissing``, ``CopyRejected``, ``ChecksumMismatch``,
    ``TemplateValueMissing`` (permanent) or ``CopyFailed`` (transient); a retry skips what
    is already copied. Raises ``ConfigError`` on sizes S3 cannot honour. Only a
    ``JobEvent`` has outputs: any other event (``WorkflowFinish`` keeps bucketless ones
    under ``tasks``) copies nothing.
    """
    if not 0 <= multipart_threshold_bytes <= MAX_SINGLE_COPY_BYTES:
        raise ConfigError(f"multipart threshold must be 0..{MAX_SINGLE_COPY_BYTES} bytes")
    if part_size_bytes < MIN_PART_SIZE_BYTES:
        raise ConfigError(f"part size must be at least {MIN_PART_SIZE_BYTES} bytes")
    client = functools.cache(client_for)  # one client per region for this event
    plan: list[tuple[OutputObject, tuple[str, str], tuple[str, str]]] = []
    for output in event.outputs if isinstance(event, JobEvent) else ():
        src_bucket, src_key = output.bucket, output.key.lstrip("/")
        if not src_bucket or not src_key:
            raise CopyRejected(src_bucket or "?", src_key, "output has no bucket or key")
        dest = target.destination(event, output)
        if any(dest == planned for _, _, planned in plan):
            raise CopyRejected(*dest, f"two outputs map to this key; see {target.template}")
        plan.append((output, (src_bucket, src_key), dest))
    results: list[CopyResult] = []
    for output, source, dest in plan:
        copier = _Copier(
            src=client(output.region),
            dest=client(target.region or output.region),
            source=source,
            target=dest,
            md5=(output.md5 or "").lower() or None,
        )
        results.append(copier.run(multipart_threshold_bytes, part_size_bytes))
    return results


@dataclass(frozen=True, slots=True)
class _Copier:
    src: S3Client
    dest: S3Client
    source: tuple[str, str]
    target: tuple[str, str]
    md5: str | None

    def run(self, threshold_bytes: int, part_size_bytes: int) -> CopyResult:
        head = self._head(self.src, *self.source)
        if head is None:
            raise SourceMissing(*self.source)
        size, etag = int(head["ContentLength"]), _etag(head)
        # An MD5 ETag that differs from CI's: the source changed after the job; don't copy it.
        if self.md5 and _is_md5(head) and etag != self.md5:
            raise ChecksumMismatch(*self.source, f"CI reported MD5 {self.md5}, ETag is {etag}")
        existing = self._head(self.dest, *self.target)
        if existing is not None and int(existing["ContentLength"]) == size:
            recorded = (existing.get("Metadata") or {}).get(META_SOURCE_ETAG)
            if etag and etag in (recorded, _etag(existing)):
                return self._result(size, ALREADY_COPIED, multipart="-" in _etag(existing))
        args = {field: head[field] for field in _CARRIED if head.get(field)}
        args["Metadata"] = {**(head.get("Metadata") or {}), META_SOURCE_ETAG: etag}
        if self.md5:
            args["Metadata"][META_SOURCE_MD5] = self.md5
        multipart = size > threshold_bytes
        if multipart:
            part = max(part_size_bytes, math.ceil(size / MAX_PARTS))
            self._multipart(etag, size, part, args)
        else:
            with _translated(*self.target, self.source):
                self.dest.copy_object(
                    Bucket=self.target[0], Key=self.target[1], CopySource=_source(*self.source),
                    CopySourceIfMatch=f'"{etag}"', MetadataDirective="REPLACE", **args,
                )  # fmt: skip
        self._verify(size, None if multipart else (self.md5 or (etag if _is_md5(head) else None)))
        return self._result(size, COPIED, multipart=multipart)

    def _head(self, client: S3Client, bucket: str, key: str) -> dict[str, Any] | None:
        try:
            with _translated(bucket, key):
                return dict(client.head_object(Bucket=bucket, Key=key))
        except SourceMissing:
            return None

    def _multipart(self, etag: str, size: int, part: int, args: dict[str, Any]) -> None:
        bucket, key = self.target
        with _translated(bucket, key, self.source):
            created = self.dest.create_multipart_upload(Bucket=bucket, Key=key, **args)
        upload_id = created["UploadId"]
        try:
            with _translated(bucket, key, self.source):
                parts = []
                for number, start in enumerate(range(0, size, part), start=1):
                    copied = self.dest.upload_part_copy(
                        Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                        CopySource=_source(*self.source), CopySourceIfMatch=f'"{etag}"',
                        CopySourceRange=f"bytes={start}-{min(start + part, size) - 1}",
                    )  # fmt: skip
                    parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
                self.dest.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            # Best effort: parts left behind cost storage until a lifecycle rule removes them.
            with suppress(boto.ClientError, boto.BotoCoreError):
                self.dest.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    def _verify(self, size: int, md5: str | None) -> None:
        head = self._head(self.dest, *self.target)
        if head is None:
            raise CopyFailed(*self.target, "copy reported success but is not there yet")
        actual_size = int(head["ContentLength"])
        if actual_size != size:
            failure = ChecksumMismatch(*self.target, f"{actual_size} bytes, source has {size}")
        elif md5 and _is_md5(head) and _etag(head) != md5:
            failure = ChecksumMismatch(*self.target, f"ETag {_etag(head)}, expected MD5 {md5}")
        else:
            return
        with suppress(boto.ClientError, boto.BotoCoreError):  # leave no bad copy to trust
            self.dest.delete_object(Bucket=self.target[0], Key=self.target[1])
        raise failure

    def _result(self, size: int, status: Status, *, multipart: bool) -> CopyResult:
        return CopyResult(*self.source, *self.target, size, status, multipart)


def _source(bucket: str, key: str) -> dict[str, str]:
    return {"Bucket": bucket, "Key": key}


def _etag(head: Mapping[str, Any]) -> str:
    return str(head.get("ETag") or "").strip('"').lower()


def _is_md5(head: Mapping[str, Any]) -> bool:
    return bool(_MD5.fullmatch(_etag(head))) and head.get("ServerSideEncryption") not in _KMS


@contextmanager
def _translated(bucket: str, key: str, source: tuple[str, str] | None = None) -> Iterator[None]:
    """Turn boto errors about ``bucket/key`` (copied from ``source``) into cicb's errors."""
    try:
        yield
    except boto.ClientError as exc:
        raise classify(exc, bucket, key, source) from exc
    except (boto.NoCredentialsError, boto.PartialCredentialsError) as exc:
        raise ConfigError(f"no usable S3 credentials: {exc}") from exc
    except (boto.ConnectionError, boto.HTTPClientError) as exc:
        raise CopyFailed(bucket, key, f"connection failed: {exc}") from exc
    except boto.BotoCoreError as exc:
        raise CopyRejected(bucket, key, str(exc)) from exc


def classify(
    exc: boto.ClientError, bucket: str, key: str, source: tuple[str, str] | None = None
) -> PipelineError:
    """The cicb error for an S3 error response about ``bucket/key`` (copied from ``source``)."""
    error = exc.response.get("Error") or {}
    code = str(error.get("Code") or "")
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    reason = f"{code or status}: {error.get('Message') or exc}"
    if code in _TRANSIENT_CODES or status in (408, 429) or status >= 500:
        return CopyFailed(bucket, key, reason)
    if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
        return SourceMissing(*(source or (bucket, key)))
    if source is not None:
        reason += f" (copying from s3://{source[0]}/{source[1]})"
    return CopyRejected(bucket, key, reason)
