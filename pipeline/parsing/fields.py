"""Typed reads of one field of a normalized document; each ParseError names the field's path."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pipeline.errors import ParseError
from pipeline.parsing.load import Node, join, kind


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


def opt_map(node: Mapping[str, Any], key: str, path: str) -> Node | None:
    value = node.get(key)
    if value is not None and not isinstance(value, dict):
        raise ParseError(f"expected an object, got {kind(value)}", path=join(path, key))
    return value


def maps(node: Mapping[str, Any], key: str, path: str) -> list[Node]:
    """A one-or-many node of objects, as a list (a lone object is a list of one)."""
    values = node.get(key)
    if values is None:
        return []
    if isinstance(values, dict):
        return [values]
    if not isinstance(values, list):
        raise ParseError(f"expected a list, got {kind(values)}", path=join(path, key))
    for i, value in enumerate(values):
        if not isinstance(value, dict):
            raise ParseError(
                f"expected an object, got {kind(value)}", path=f"{join(path, key)}[{i}]"
            )
    return values


def time(node: Mapping[str, Any], key: str, path: str) -> datetime | None:
    """A timezone-aware time in either of Tencent's formats (``2022-06-30T19:33:18+0800``
    for jobs, ``2022-08-09 14:54:17+0800`` for workflows)."""
    value = opt_str(node, key, path)
    if value is None:
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
