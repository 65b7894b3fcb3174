"""What the ``cicb`` commands share: settings, failing with a message, printing JSON."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from pipeline.errors import PipelineError
from pipeline.parsing import parse
from pipeline.parsing.events import Event
from pipeline.parsing.reader import FormatOption
from pipeline.settings import Settings, get_settings


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except PipelineError as exc:
        fail(str(exc), code=2)


def fail(message: str, *, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def read_events(path: Path, fmt: FormatOption = "auto") -> list[Event]:
    try:
        return parse(path.read_bytes(), fmt=fmt)
    except PipelineError as exc:
        fail(f"{path}: {exc}")


def json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def one_or_many(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else items


def guarded(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except PipelineError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"broker unreachable: {exc}")


DURATION_UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``1h``, ``2d``, ``1w`` (also ``1h30m``); raises ``ValueError``."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r} (write 90s, 15m, 1h, 2d)")
    return timedelta(seconds=sum(float(n) * DURATION_UNITS_S[u] for n, u in parts))


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """A duration ago, or an ISO 8601 time (local time when it names no offset)."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"not a duration nor an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.astimezone()


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Click callback: an option's text as a time (see ``parse_time``)."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
