"""Task messages as kombu's Redis transport keeps them in its lists."""

from __future__ import annotations

import base64
from typing import Any

import orjson


def body_of(raw: bytes) -> Any:
    """The decoded body of a task message (protocol 2: ``[args, kwargs, embed]``). Raises
    ``ValueError`` (``binascii.Error``, ``orjson.JSONDecodeError``), ``LookupError`` or
    ``TypeError`` for what is not one."""
    message = orjson.loads(raw)
    body = message["body"]
    if message.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return orjson.loads(body)
