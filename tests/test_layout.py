"""The layout keeps its promises: dependencies go one way, and no module imports itself back.

Read from the source (module-level imports), so a change that breaks the direction fails
here, whether or not anything runs the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "workers")

# What each part may import of the project, besides itself (prefixes).
ALLOWED = {
    "pipeline.parsing": ("pipeline.errors", "pipeline.logs", "pipeline.settings"),
    "pipeline.brokers": (
        "pipeline.errors",
        "pipeline.logs",
        "pipeline.settings",
        "pipeline.endpoints",
        # Lua scripts on a pipeline in its one round trip: a leaf, beside the endpoints.
        "pipeline.scripts",
    ),
    "pipeline.actions": (
        "pipeline.errors",
        "pipeline.logs",
        "pipeline.settings",
        "pipeline.parsing",
    ),
    # Reconcile lists jobs through CI's API and hands them on as envelopes, as the receiver
    # would: it never runs routes itself.
    "pipeline.reconcile": (
        "pipeline.errors",
        "pipeline.logs",
        "pipeline.settings",
        "pipeline.parsing",
        "pipeline.brokers.envelope",
        "pipeline.actions.cos",
        "pipeline.guard",
        # The queues of CICB_CI_BUCKETS, to reconcile them.
        "pipeline.ci",
    ),
    # CI's queues and workflows, through the same SDK clients and error answers as the job
    # lists; reconcile and the CLI read them, nothing in the callback path does.
    "pipeline.ci": (
        "pipeline.errors",
        "pipeline.logs",
        "pipeline.settings",
        "pipeline.actions.cos",
    ),
    # The console reads what the other parts keep and acts on dead letters as the CLI does;
    # nothing imports it back.
    "pipeline.console": (
        "pipeline.errors",
        "pipeline.logs",
        "pipeline.settings",
        "pipeline.parsing",
        "pipeline.routing",
        "pipeline.archive",
        "pipeline.attempts",
        "pipeline.brokers",
        "pipeline.reconcile.store",
        "pipeline.actions.resubmit",
        "pipeline.runs",
        "pipeline.endpoints",
        "pipeline.logguard",
        "pipeline.times",
    ),
    "pipeline.receiver": (
        "pipeline.errors",
        "pipeline.logs",
        "pipeline.settings",
        "pipeline.brokers",
        "pipeline.metrics",
        "pipeline.logguard",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The project modules ``path`` imports at module level (not inside functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            # ``from pipeline import logs`` depends on pipeline.logs; ``resolve`` falls back
            # to the module itself when the name is not a module.
            names = [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.add(name)
    return found


MODULES = {
    module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
}


def resolve(name: str) -> str | None:
    """The project module ``name`` refers to (``pipeline.logs`` for ``pipeline.logs.x``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def graph() -> dict[str, set[str]]:
    return {
        module: {m for n in project_imports(path) if (m := resolve(n)) and m != module}
        for module, path in MODULES.items()
    }


def test_no_module_imports_itself_back() -> None:
    edges = graph()
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        for target in sorted(edges[module]):
            if target in trail:
                cycles.append([*trail[trail.index(target) :], target])
            elif len(trail) < len(edges):
                visit(target, [*trail, target])

    for module in edges:
        visit(module, [module])
    # A package's __init__ re-exporting its own modules is not a cycle through other code.
    real = [c for c in cycles if len({m.split(".")[1] if "." in m else m for m in c}) > 1]
    assert real == []


def test_the_library_never_imports_the_celery_side() -> None:
    offenders = {
        module: sorted(t for t in targets if t.startswith("workers"))
        for module, targets in graph().items()
        if module.startswith("pipeline")
    }
    assert {m: t for m, t in offenders.items() if t} == {}


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_stage_imports_only_what_it_may(part: str) -> None:
    allowed = (part, *ALLOWED[part])
    wrong = {
        module: sorted(t for t in targets if not t.startswith(allowed))
        for module, targets in graph().items()
        if module == part or module.startswith(part + ".")
    }
    assert {m: t for m, t in wrong.items() if t} == {}
