"""Signatures the notification targets check: Standard Webhooks, DingTalk, Feishu/Lark."""

from __future__ import annotations

import base64
import hashlib
import hmac

from pipeline.errors import ConfigError

WEBHOOK_SECRET_PREFIX = "whsec_"


def webhook_secret_bytes(secret: str) -> bytes:
    """The key of a ``whsec_...`` secret; ``ConfigError`` if it is not one."""
    if not secret.startswith(WEBHOOK_SECRET_PREFIX):
        raise ConfigError("CICB_NOTIFY_SECRET must look like whsec_<base64>")
    try:
        return base64.b64decode(secret.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except ValueError as exc:
        raise ConfigError("CICB_NOTIFY_SECRET is not valid base64 after whsec_") from exc


def standard_webhook_headers(
    key: bytes | None, *, msg_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and, with a key, ``webhook-signature`` (v1)."""
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(timestamp_s)}
    if key is not None:
        signed = b"%s.%d.%s" % (msg_id.encode(), timestamp_s, body)
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode()
    return headers


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk robot ``sign``: base64 HMAC-SHA256 of "timestamp\\nsecret" keyed by the secret."""
    message = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu/Lark bot ``sign``: base64 HMAC-SHA256 keyed by "timestamp\\nsecret" of nothing."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
