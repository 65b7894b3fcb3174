"""Routes: which chain of tasks a callback runs, by EventName, Tag and State.

The table is ordered and the first matching route wins: the routes from the modules in
``CICB_ROUTES`` come first (in the order the modules are named, then in their own order),
then the built-in defaults. A route that should still notify lists ``notify`` in its chain.

Registration is explicit: ``load_routes`` imports the named modules and reads their
``routes`` list and the tasks marked with ``@route``; importing a module registers nothing.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pipeline.errors import ConfigError
from pipeline.settings import Settings

ANY = "*"

# Built-in actions by the short name routes use; any other name is a full Celery task name.
ACTION_ALIASES = {
    "notify": "cicb.notify",
    "copy_output": "cicb.copy_output",
    "retry_job": "cicb.retry_job",
}

ROUTE_ATTRIBUTE = "__cicb_route__"


class Routable(Protocol):
    """What routing reads of an event."""

    @property
    def event(self) -> str: ...
    @property
    def tag(self) -> str | None: ...
    @property
    def state(self) -> str: ...


class Explainable(Routable, Protocol):
    """An event whose route can be explained: its ids come from its JSON form."""

    def to_dict(self) -> dict[str, Any]: ...


STEP_NAMESPACE = uuid.UUID("0b7a6c1e-4f1d-5c2a-9e57-1c1b0f6d2a11")


def _names(value: object, what: str) -> tuple[str, ...]:
    """One string or a list of strings, as a tuple; anything else is a ``ConfigError``."""
    values = (value,) if isinstance(value, str) else value
    if (
        not isinstance(values, list | tuple)
        or not values
        or not all(isinstance(v, str) and v for v in values)
    ):
        raise ConfigError(f"{what} must be a name or a non-empty list of names, not {value!r}")
    return tuple(values)


def _matches(pattern: tuple[str, ...], value: str | None) -> bool:
    return ANY in pattern or value in pattern


@dataclass(frozen=True, slots=True)
class Route:
    """Run ``chain`` (task names, in order) for callbacks matching event, tag and state.

    Each of ``event``, ``tag`` and ``state`` is a value, a list of values, or ``"*"``.
    Every task in the chain receives the normalized event (a dict) as its one argument.
    """

    name: str
    chain: tuple[str, ...]
    event: tuple[str, ...] = (ANY,)
    tag: tuple[str, ...] = (ANY,)
    state: tuple[str, ...] = (ANY,)

    def __init__(
        self,
        name: str,
        chain: str | Sequence[str],
        *,
        event: str | Iterable[str] = ANY,
        tag: str | Iterable[str] = ANY,
        state: str | Iterable[str] = ANY,
    ) -> None:
        tasks = _names(chain, f"route {name!r}: chain")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "chain", tuple(ACTION_ALIASES.get(t, t) for t in tasks))
        object.__setattr__(self, "event", _names(event, f"route {name!r}: event"))
        object.__setattr__(self, "tag", _names(tag, f"route {name!r}: tag"))
        object.__setattr__(self, "state", _names(state, f"route {name!r}: state"))

    def matches(self, event: Routable) -> bool:
        return (
            _matches(self.event, event.event)
            and _matches(self.tag, event.tag)
            and _matches(self.state, event.state)
        )

    def step_ids(self, key: str) -> list[str]:
        """The task id of each step of the chain for the callback whose deduplication key is
        ``key``: derived from both, so a chain dispatched twice names its steps the same, and
        a step's records (lease, completion, message in flight) can be found from the key."""
        return [
            str(uuid.uuid5(STEP_NAMESPACE, f"{key}|{self.name}|{i}|{task}"))
            for i, task in enumerate(self.chain)
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "event": list(self.event),
            "tag": list(self.tag),
            "state": list(self.state),
            "chain": list(self.chain),
        }


def default_routes(*, copy_output: bool = False, retry_job: bool = False) -> tuple[Route, ...]:
    """The built-in routes; ``copy_output`` and ``retry_job`` join them once configured."""
    on_success = ["notify", *(["copy_output"] if copy_output else [])]
    on_failure = ["notify", *(["retry_job"] if retry_job else [])]
    return (
        Route("job-succeeded", on_success, event="TaskFinish", state="Success"),
        Route("job-failed", on_failure, event="TaskFinish", state="Failed"),
        Route("workflow-finished", ["notify"], event="WorkflowFinish"),
    )


DEFAULT_ROUTES = default_routes()


@dataclass(frozen=True, slots=True)
class RouteTable:
    routes: tuple[Route, ...] = field(default=DEFAULT_ROUTES)

    def resolve(self, event: Routable) -> Route | None:
        """The first route matching ``event``, or None: the callback is unrouted."""
        return next((r for r in self.routes if r.matches(event)), None)

    def task_names(self) -> set[str]:
        return {name for r in self.routes for name in r.chain}

    def explain(self, event: Explainable) -> dict[str, Any]:
        """Which route and chain ``event`` takes (``cicb routes explain``, the console)."""
        route = self.resolve(event)
        data = event.to_dict()
        return {
            "event": event.event,
            "job_id": data.get("job_id"),
            "run_id": data.get("run_id"),
            "tag": event.tag,
            "state": event.state,
            "route": route.name if route else None,
            "chain": list(route.chain) if route else [],
        }


T = TypeVar("T")


def route(
    *,
    name: str | None = None,
    event: str | Iterable[str] = ANY,
    tag: str | Iterable[str] = ANY,
    state: str | Iterable[str] = ANY,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
) -> Callable[[T], T]:
    """Mark a Celery task as the action of a route (put it above ``@app.task``).

    The chain is ``before``, then the task, then ``after``. The mark takes effect when
    the task's module is named in ``CICB_ROUTES``.
    """

    def mark(task: T) -> T:
        task_name = getattr(task, "name", None)
        if not isinstance(task_name, str):
            raise ConfigError("@route goes above @app.task: it needs the Celery task's name")
        chain = [*before, task_name, *after]
        marked = Route(name or task_name, chain, event=event, tag=tag, state=state)
        setattr(task, ROUTE_ATTRIBUTE, marked)
        return task

    return mark


def load_routes(
    modules: Sequence[str], *, defaults: tuple[Route, ...] = DEFAULT_ROUTES
) -> RouteTable:
    """The effective table: routes from ``modules`` first, then ``defaults``.

    Raises ``ConfigError`` if a module cannot be imported or its ``routes`` are not routes.
    """
    custom: list[Route] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a user's module can fail in any way while importing
            raise ConfigError(f"CICB_ROUTES: cannot import {module_name!r}: {exc!r}") from exc
        table = getattr(module, "routes", ())
        if not isinstance(table, list | tuple) or not all(isinstance(r, Route) for r in table):
            raise ConfigError(f"{module_name}.routes must be a list of pipeline.routing.Route")
        custom.extend(table)
        custom.extend(
            marked
            for value in vars(module).values()
            if isinstance(marked := getattr(value, ROUTE_ATTRIBUTE, None), Route)
        )
    return RouteTable((*custom, *defaults))


def table_for(settings: Settings) -> RouteTable:
    """The table a worker runs with: ``CICB_ROUTES`` modules, then the configured defaults."""
    defaults = default_routes(
        copy_output=settings.copy_dest is not None, retry_job=settings.cos_configured
    )
    return load_routes(settings.routes_modules, defaults=defaults)
