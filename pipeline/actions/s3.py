"""S3 API clients (COS speaks it) for ``copy_output``: boto3, SigV4, timeouts, retries."""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import boto3
from botocore.config import Config

from pipeline.errors import ConfigError

DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
DEFAULT_READ_TIMEOUT_S: Final = 300.0  # a server-side copy of one part answers only when done
DEFAULT_MAX_ATTEMPTS: Final = 3  # botocore's own retries, before the task's backoff

# boto3 builds its clients at runtime; without mypy-boto3-s3 they are Any to mypy too.
S3Client: TypeAlias = Any


def s3_client(
    region: str | None,
    *,
    endpoint_url: str | None = None,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> S3Client:
    """A boto3 S3 client for ``region``, with the default credential chain and SigV4.

    Without ``endpoint_url`` it talks to COS (``https://cos.{region}.myqcloud.com``,
    virtual-hosted buckets); with one (MinIO, moto, a proxy) it uses path-style addressing.
    Checksums are only sent where required, which S3-compatible stores expect.
    """
    if endpoint_url is None:
        if not region:
            raise ConfigError("no region for the COS endpoint; set CICB_S3_ENDPOINT_URL")
        endpoint_url = f"https://cos.{region}.myqcloud.com"
        addressing = "virtual"
    else:
        addressing = "path"
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": addressing},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
        retries={"mode": "standard", "max_attempts": max_attempts},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client("s3", region_name=region, endpoint_url=endpoint_url, config=config)
