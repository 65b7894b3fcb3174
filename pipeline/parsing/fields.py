"""Typed reads of one field of a normalized document; each ParseError names the field's path.

Any node of objects may come as one object or a list of them, in either format: ``maps``
reads it as a list, ``one_map`` as its first object. A string field must be one string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from pipeline.errors import ParseError
from pipeline.parsing.load import Node, join, kind
from pipeline.parsing.values import InputObject


def opt_str(node: Mapping[str, Any], key: str, path: str) -> str | None:
    value = node.get(key)
    if value is not None and not isinstance(value, str):
        raise ParseError(f"expected a string, got {kind(value)}", path=join(path, key))
    return value


def req_str(node: Mapping[str, Any], key: str, path: str) -> str:
    value = opt_str(node, key, path)
    if value is None:
        raise ParseError("missing", path=join(path, key))
    return value


def strs(node: Mapping[str, Any], key: str, path: str) -> list[str]:
    """A one-or-many string field, as a list (a lone string is a list of one)."""
    values = node.get(key)
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    if not isinstance(values, list):
        raise ParseError(f"expected a list, got {kind(values)}", path=join(path, key))
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ParseError(
                f"expected a string, got {kind(value)}", path=f"{join(path, key)}[{i}]"
            )
    return list(values)


def one_map(node: Mapping[str, Any], key: str, path: str) -> Node | None:
    """A node that means one object (``Operation``, ``Input``, ``Output``...): the object, or
    the first of a list of them; None when absent."""
    values = maps(node, key, path)
    return values[0] if values else None


def maps(node: Mapping[str, Any], key: str, path: str) -> list[Node]:
    """A one-or-many node of objects, as a list (a lone object is a list of one)."""
    values = node.get(key)
    if values is None:
        return []
    if isinstance(values, dict):
        return [values]
    if not isinstance(values, list):
        raise ParseError(
            f"expected an object or a list of them, got {kind(values)}", path=join(path, key)
        )
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise ParseError(
                f"expected an object, got {kind(value)}", path=f"{join(path, key)}[{i}]"
            )
    return values


_COS_URL_RE: Final = re.compile(
    r"^https?://(?P<bucket>[a-z0-9-]+-\d+)\.cos\.(?P<region>[a-z0-9-]+)\.myqcloud\.com/(?P<key>[^?#]+)"
)

UNSET_TIME: Final = "-"
"""What CI writes for a time that has not happened yet (``EndTime`` of a running job)."""


def time(node: Mapping[str, Any], key: str, path: str) -> datetime | None:
    """A timezone-aware time in any of Tencent's forms: ``2022-06-30T19:33:18+0800`` (jobs),
    ``2022-08-09 14:54:17+0800`` (workflows), ``2022-08-09T14:54:17+08:00`` (queries,
    moderation); None when absent, empty or ``-``. A time without an offset is refused."""
    value = opt_str(node, key, path)
    if value is None or value == UNSET_TIME:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ParseError(f"bad time {value!r}", path=join(path, key)) from exc
    if parsed.tzinfo is None:
        raise ParseError(f"time {value!r} has no UTC offset", path=join(path, key))
    return parsed


def cos_headers(node: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    """COS headers sent as ``[{Key, Value}, ...]`` (jobs, workflows) or as one mapping of
    header name to value (moderation callbacks)."""
    headers: dict[str, str] = {}
    for i, header in enumerate(maps(node, key, path)):
        hpath = f"{join(path, key)}[{i}]"
        if "Key" in header:
            headers[req_str(header, "Key", hpath)] = opt_str(header, "Value", hpath) or ""
            continue
        for name in header:
            headers[name] = opt_str(header, name, hpath) or ""
    return headers


def input_of(*sources: tuple[Node | None, str]) -> InputObject | None:
    """Merge input nodes (``BucketId`` or ``Bucket``, ``Region``, ``Object``, ``CosHeaders``);
    earlier sources win. None when none of them says anything."""
    bucket = region = obj = None
    headers: dict[str, str] = {}
    for node, path in reversed(sources):
        if node is None:
            continue
        bucket = opt_str(node, "BucketId", path) or opt_str(node, "Bucket", path) or bucket
        region = opt_str(node, "Region", path) or region
        obj = opt_str(node, "Object", path) or obj
        headers.update(cos_headers(node, "CosHeaders", path))
    if bucket is None and region is None and obj is None and not headers:
        return None
    return InputObject(bucket=bucket, region=region, key=obj, cos_headers=headers)


def input_from_url(url: str | None) -> InputObject | None:
    """Bucket, region and key of a COS URL (``https://b-125.cos.ap-x.myqcloud.com/k``)."""
    match = _COS_URL_RE.match(url or "")
    if match is None:
        return None
    return InputObject(match["bucket"], match["region"], match["key"], {})
