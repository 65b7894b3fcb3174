"""What the ``cicb`` commands share: settings, failing with a message, printing JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx

from pipeline.errors import PipelineError
from pipeline.parsing import parse
from pipeline.parsing.events import Event
from pipeline.parsing.reader import FormatOption
from pipeline.settings import Settings, get_settings
from pipeline.times import parse_time


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


def time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Click callback: an option's text as a time (see ``parse_time``)."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
