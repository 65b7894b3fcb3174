"""Routing: an ordered table, first match wins, custom routes loaded explicitly."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.parsing.events import JobEvent, WorkflowEvent
from pipeline.parsing.reader import parse
from pipeline.routing import DEFAULT_ROUTES, Route, RouteTable, load_routes, route
from tests.support import SAMPLES


def sample_event(name: str) -> JobEvent | WorkflowEvent:
    events = parse((SAMPLES / name).read_bytes())
    assert len(events) == 1
    return events[0]


def tts_job(**changes: Any) -> JobEvent:
    event = sample_event("tts_success.xml")
    assert isinstance(event, JobEvent)
    return replace(event, **changes)


@dataclass(frozen=True)
class Callback:
    """The three fields routing reads, for cases the samples do not cover."""

    event: str
    tag: str | None
    state: str


# -- matching ---------------------------------------------------------------------------


def test_the_first_matching_route_wins() -> None:
    specific = Route("tts-done", ["store"], tag="Tts", state="Success")
    broad = Route("anything", ["log"])
    table = RouteTable((specific, broad))
    assert table.resolve(tts_job()) is specific
    assert table.resolve(tts_job(tag="Transcode")) is broad
    assert RouteTable((broad, specific)).resolve(tts_job()) is broad


def test_a_route_matches_a_value_a_list_or_any() -> None:
    by_value = Route("v", ["a"], tag="Tts")
    by_list = Route("l", ["a"], tag=["Transcode", "Tts"], state=("Success", "Failed"))
    by_any = Route("any", ["a"], event="*", tag="*", state="*")
    assert by_value.tag == ("Tts",)
    assert by_list.tag == ("Transcode", "Tts")

    job = tts_job()
    assert by_value.matches(job)
    assert by_list.matches(job)
    assert by_any.matches(job)

    other = tts_job(tag="Snapshot", state="Cancel")
    assert not by_value.matches(other)
    assert not by_list.matches(other)
    assert by_any.matches(other)
    assert not by_list.matches(tts_job(state="Cancel"))
    assert not Route("e", ["a"], event="WorkflowFinish").matches(job)


def test_an_event_without_a_tag_matches_only_any_tag() -> None:
    workflow = sample_event("workflowfinish_success.xml")
    assert isinstance(workflow, WorkflowEvent)
    assert workflow.tag is None
    assert not Route("v", ["a"], tag="Tts").matches(workflow)
    assert not Route("l", ["a"], tag=["Tts", "Transcode"]).matches(workflow)
    assert Route("any", ["a"], tag="*").matches(workflow)
    assert Route("default", ["a"], event="WorkflowFinish").matches(workflow)
    untagged = Callback(event="TaskFinish", tag=None, state="Success")
    assert not Route("v", ["a"], tag="None").matches(untagged)
    assert Route("l", ["a"], tag=["Tts", "*"]).matches(untagged)


@pytest.mark.parametrize("pattern", ["", [], ["Tts", ""], [5]])
def test_an_empty_or_non_text_pattern_is_a_config_error(pattern: object) -> None:
    with pytest.raises(ConfigError):
        Route("bad", ["a"], tag=pattern)  # type: ignore[arg-type]


def test_a_none_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        Route("bad", ["a"], tag=None)  # type: ignore[arg-type]


# -- the default table --------------------------------------------------------------------


def test_default_table_notifies_on_success_failure_and_workflow_finish() -> None:
    table = RouteTable()
    assert table.routes == DEFAULT_ROUTES

    succeeded = table.resolve(tts_job())
    assert succeeded is not None
    assert succeeded.name == "job-succeeded"
    assert succeeded.chain == ("cicb.notify",)

    failed = table.resolve(tts_job(state="Failed"))
    assert failed is not None
    assert failed.name == "job-failed"
    assert failed.chain == ("cicb.notify",)

    finished = table.resolve(sample_event("workflowfinish_success.xml"))
    assert finished is not None
    assert finished.name == "workflow-finished"
    assert finished.chain == ("cicb.notify",)
    assert table.task_names() == {"cicb.notify"}


@pytest.mark.parametrize("state", ["Cancel", "Pause", "Submitted", "Running"])
def test_default_table_leaves_other_job_states_unrouted(state: str) -> None:
    assert RouteTable().resolve(tts_job(state=state)) is None


def test_an_unknown_tag_is_routed_by_the_catch_all() -> None:
    resolved = RouteTable().resolve(tts_job(tag="FutureTag"))
    assert resolved is not None
    assert resolved.name == "job-succeeded"
    failed = RouteTable().resolve(Callback(event="TaskFinish", tag="FutureTag", state="Failed"))
    assert failed is not None
    assert failed.name == "job-failed"


def test_notify_alias_becomes_the_builtin_task_name() -> None:
    r = Route("r", ["notify", "myapp.copy", "notify"])
    assert r.chain == ("cicb.notify", "myapp.copy", "cicb.notify")
    assert r.to_json() == {
        "name": "r",
        "event": ["*"],
        "tag": ["*"],
        "state": ["*"],
        "chain": ["cicb.notify", "myapp.copy", "cicb.notify"],
    }


def test_an_empty_chain_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'empty'"):
        Route("empty", [])


def test_a_chain_given_as_one_string_is_a_chain_of_one_task() -> None:
    # Not split into characters ("m", "y", ...), and not refused: Route takes a name or a list.
    assert Route("r", "myapp.copy").chain == ("myapp.copy",)
    assert Route("r", "notify").chain == ("cicb.notify",)


# -- custom routes ------------------------------------------------------------------------


@pytest.fixture
def routes_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], str]]:
    """Write a module into tmp_path under a fresh name; return the name to import."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"cicb_test_routes_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


CUSTOM_MODULE = """
    from celery import Celery

    from pipeline.routing import Route, route

    app = Celery("t", set_as_current=False)

    routes = [
        Route("tts-archive", ["myapp.archive", "notify"], tag="Tts", state="Success"),
        Route("anything-failed", ["myapp.page"], state="Failed"),
    ]

    @route(name="snapshot-thumbs", tag="Snapshot", state="Success", after=["notify"])
    @app.task(name="m.t")
    def thumbs(event):
        return event

    @app.task(name="m.unmarked")
    def unmarked(event):
        return event
"""


def test_load_routes_puts_custom_routes_before_the_defaults(
    routes_module: Callable[[str], str],
) -> None:
    name = routes_module(CUSTOM_MODULE)
    assert name not in sys.modules
    table = load_routes([name])

    assert [r.name for r in table.routes] == [
        "tts-archive",
        "anything-failed",
        "snapshot-thumbs",
        *(r.name for r in DEFAULT_ROUTES),
    ]
    assert table.routes[len(table.routes) - len(DEFAULT_ROUTES) :] == DEFAULT_ROUTES

    archive = table.resolve(tts_job())
    assert archive is not None
    assert archive.name == "tts-archive"
    assert archive.chain == ("myapp.archive", "cicb.notify")

    failed = table.resolve(tts_job(state="Failed"))
    assert failed is not None
    assert failed.name == "anything-failed"

    thumbs = table.resolve(tts_job(tag="Snapshot"))
    assert thumbs is not None
    assert thumbs.name == "snapshot-thumbs"
    assert thumbs.chain == ("m.t", "cicb.notify")

    # Not matched by any custom route: the defaults still apply.
    transcode = table.resolve(tts_job(tag="Transcode"))
    assert transcode is not None
    assert transcode.name == "job-succeeded"
    assert table.resolve(tts_job(state="Cancel")) is None
    assert "m.unmarked" not in table.task_names()
    assert {"myapp.archive", "myapp.page", "m.t", "cicb.notify"} == table.task_names()


def test_modules_are_read_in_the_order_they_are_named(
    routes_module: Callable[[str], str],
) -> None:
    first = routes_module(
        """
        from pipeline.routing import Route
        routes = [Route("first", ["a.first"], tag="Tts")]
        """
    )
    second = routes_module(
        """
        from pipeline.routing import Route
        routes = [Route("second", ["a.second"], tag="Tts")]
        """
    )
    resolved = load_routes([second, first]).resolve(tts_job())
    assert resolved is not None
    assert resolved.name == "second"
    resolved = load_routes([first, second]).resolve(tts_job())
    assert resolved is not None
    assert resolved.name == "first"


def test_the_route_decorator_names_the_chain_after_the_task() -> None:
    class Task:
        name = "myapp.transcoded"

    task = route(tag="Transcode", before=["notify"])(Task())
    loaded = task.__cicb_route__  # type: ignore[attr-defined]
    assert isinstance(loaded, Route)
    assert loaded.name == "myapp.transcoded"
    assert loaded.chain == ("cicb.notify", "myapp.transcoded")
    assert loaded.tag == ("Transcode",)


def test_no_modules_gives_the_default_table() -> None:
    assert load_routes([]).routes == DEFAULT_ROUTES


def test_a_missing_module_is_a_config_error() -> None:
    missing = f"cicb_no_such_module_{uuid.uuid4().hex}"
    with pytest.raises(ConfigError, match=missing) as raised:
        load_routes([missing])
    assert isinstance(raised.value.__cause__, ImportError)


def test_routes_that_are_not_routes_are_a_config_error(
    routes_module: Callable[[str], str],
) -> None:
    name = routes_module("routes = [1]\n")
    with pytest.raises(ConfigError, match=f"{name}.routes"):
        load_routes([name])


def test_route_on_a_plain_function_is_a_config_error() -> None:
    def plain(event: object) -> None:
        pass

    with pytest.raises(ConfigError, match=r"@app\.task"):
        route(tag="Tts")(plain)
    assert not hasattr(plain, "__cicb_route__")


def test_route_on_a_plain_function_in_a_module_is_a_config_error_at_load(
    routes_module: Callable[[str], str],
) -> None:
    name = routes_module(
        """
        from pipeline.routing import route

        @route(tag="Tts")
        def plain(event):
            return event
        """
    )
    with pytest.raises(ConfigError, match=r"@app\.task"):
        load_routes([name])


def test_routes_that_are_not_a_list_are_a_config_error(
    routes_module: Callable[[str], str],
) -> None:
    name = routes_module("routes = None\n")
    with pytest.raises(ConfigError, match=f"{name}.routes"):
        load_routes([name])


def test_a_module_that_fails_to_import_is_a_config_error(
    routes_module: Callable[[str], str],
) -> None:
    name = routes_module("routes = [undefined_name]\n")
    with pytest.raises(ConfigError, match=name):
        load_routes([name])
