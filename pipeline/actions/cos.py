"""The COS SDK client (cos-python-sdk-v5) that cicb calls CI's API with."""

from __future__ import annotations

from typing import Any, Final
from urllib.parse import urlsplit

from qcloud_cos import CosConfig, CosS3Client

from pipeline.errors import ConfigError

DEFAULT_TIMEOUT_S: Final = 30
# The SDK retries 5xx and network errors itself, sleeping in the worker; creating a job is
# not idempotent (a lost answer plus a blind retry makes two jobs), so retries are Celery's.
DEFAULT_SDK_RETRIES: Final = 0


def cos_client(
    *,
    secret_id: str,
    secret_key: str,
    region: str,
    endpoint: str | None = None,
    scheme: str = "https",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    sdk_retries: int = DEFAULT_SDK_RETRIES,
) -> CosS3Client:
    """An SDK client for CI in ``region``.

    With ``endpoint`` (``host:port``) every request goes to that host instead, through the
    SDK's ``IP``/``Port`` settings; the Host header (which the request is signed with) stays
    the real CI one, ``<bucket>.ci.<region>.myqcloud.com``, as a proxy or a test server
    expects. A client built this way serves CI calls only.
    """
    options: dict[str, Any] = {}
    if endpoint is not None:
        parts = urlsplit(f"//{endpoint}")
        if not parts.hostname:
            raise ConfigError(f"CICB_CI_ENDPOINT must be a URL with a host, got {endpoint!r}")
        # With IP set the SDK sends Host: <bucket>.<Endpoint>; make that CI's host name.
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        options = {"IP": host, "Port": parts.port, "Endpoint": f"ci.{region}.myqcloud.com"}
    config = CosConfig(
        Region=region,
        SecretId=secret_id,
        SecretKey=secret_key,
        Scheme=scheme,
        Timeout=timeout_s,
        **options,
    )
    return CosS3Client(config, retry=sdk_retries)
