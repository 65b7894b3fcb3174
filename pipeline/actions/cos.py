"""The COS SDK client (cos-python-sdk-v5) that cicb calls CI's API with, and what CI's
error answers mean.

Errors, read from CI's ``<Error>`` body (the SDK's own digest needs a ``Resource`` node CI's
errors lack): a 4xx that a retry cannot fix (bad keys, no such queue or bucket) is
``CiRefused``; 5xx, 408, 429, throttling codes, timeouts, connection errors and unreadable
answers are ``CiUnavailable``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Final
from urllib.parse import urlsplit

import requests
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from pipeline.errors import ConfigError, ParseError, PermanentError, TransientError
from pipeline.parsing.load import load
from pipeline.settings import Settings

DEFAULT_TIMEOUT_S: Final = 30
# The SDK retries 5xx and network errors itself, sleeping in the worker; creating a job is
# not idempotent (a lost answer plus a blind retry makes two jobs), so retries are Celery's.
DEFAULT_SDK_RETRIES: Final = 0

# Answers that say "later", not "never": timeouts, throttling, a clock CI finds skewed.
RETRYABLE_STATUSES: Final = frozenset({408, 429})
THROTTLING_CODES: Final = frozenset(
    {"SlowDown", "RequestTimeout", "RequestLimitExceeded", "RequestTimeTooSkewed"}
)
# CI's own time zone, as its examples and answers write times.
CI_TZ: Final = timezone(timedelta(hours=8))


def ci_time(moment: datetime) -> str:
    """``moment`` (timezone-aware) as CI's list APIs take it: ``2001-01-01T08:00:00+0800``."""
    return moment.astimezone(CI_TZ).strftime("%Y-%m-%dT%H:%M:%S%z")


def as_list(node: Any) -> list[dict[str, Any]]:
    """A node the SDK gives as one dict or a list of them, as a list of the dicts."""
    items = node if isinstance(node, list) else [node]
    return [item for item in items if isinstance(item, dict)]


def cos_client(
    *,
    secret_id: str,
    secret_key: str,
    region: str,
    endpoint: str | None = None,
    scheme: str = "https",
    timeout_s: float = DEFAULT_TIMEOUT_S,
    sdk_retries: int = DEFAULT_SDK_RETRIES,
    session: requests.Session | None = None,
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
    return CosS3Client(config, retry=sdk_retries, session=session)


def ci_clients(settings: Settings, *, purpose: str) -> Callable[[str], CosS3Client]:
    """An SDK client per region (made once each) with ``CICB_COS_SECRET_ID``/``KEY``, at
    ``CICB_CI_ENDPOINT`` if set. Raises ``ConfigError`` naming ``purpose`` without the keys,
    or with a bad endpoint."""
    secret_id, secret_key = settings.cos_secret_id, settings.cos_secret_key
    if not (secret_id and secret_key):
        raise ConfigError(f"{purpose}: set CICB_COS_SECRET_ID and CICB_COS_SECRET_KEY")
    netloc, scheme = settings.ci_endpoint_parts or (None, "https")

    @functools.cache
    def client_for(region: str) -> CosS3Client:
        return cos_client(
            secret_id=secret_id,
            secret_key=secret_key,
            region=region,
            endpoint=netloc,
            scheme=scheme,
        )

    return client_for


class CiRefused(PermanentError):
    """CI refused the request (a 4xx: bad keys, no such queue, bucket or workflow)."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"CI answered HTTP {status} {code}: {message[:300]}")


class CiUnavailable(TransientError):
    """CI or the network failed for now (5xx, throttling, timeout, connection, bad answer)."""

    def __init__(self, reason: str, *, status: int | None = None, code: str | None = None) -> None:
        self.reason = reason
        self.status = status
        self.code = code
        super().__init__(reason)


def ci_call(request: Callable[[], Any]) -> Any:
    """``request()``'s answer; raises ``CiRefused`` or ``CiUnavailable`` for its errors."""
    try:
        return request()
    except CosServiceError as exc:
        raise service_error(exc) from exc
    except CosClientError as exc:
        raise CiUnavailable(f"CI not reached: {exc}") from exc
    except SyntaxError as exc:  # ET.ParseError: the request can be made again
        raise CiUnavailable(f"CI's answer is unreadable: {exc}") from exc


def service_error(exc: CosServiceError) -> CiRefused | CiUnavailable:
    """The error a CI answer means: refused for good, or unavailable for now."""
    status = int(exc.get_status_code())
    code, message = error_fields(exc)
    if is_transient(status, code):
        return CiUnavailable(f"CI answered HTTP {status} {code}", status=status, code=code)
    return CiRefused(status, code, message)


def is_transient(status: int, code: str | None) -> bool:
    """Whether CI's error answer is worth trying again (5xx, timeouts, throttling)."""
    return status >= 500 or status in RETRYABLE_STATUSES or code in THROTTLING_CODES


def error_fields(exc: CosServiceError) -> tuple[str | None, str]:
    """Code and Message of CI's ``<Error>`` body. The SDK's own digest needs a ``Resource``
    node that CI's errors do not have (it says ``Unknown``), so the raw body is read here,
    through the parser's safe XML reader."""
    digest = exc.get_digest_msg()
    if isinstance(digest, Mapping) and digest.get("code") not in (None, "", "Unknown"):
        return str(digest["code"]), str(digest.get("message") or "")
    raw = exc.get_origin_msg()
    body = raw.encode() if isinstance(raw, str) else raw
    try:
        error = load(body, "xml", xml_root="Error") if isinstance(body, bytes) and body else None
    except ParseError:
        error = None
    if error is None:
        return None, str(raw or "")[:1000]
    code, message = error.get("Code"), error.get("Message")
    return (code if isinstance(code, str) else None), (message if isinstance(message, str) else "")
