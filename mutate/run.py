"""``make mutate``: mutmut over the modules that keep the delivery promises.

Runs ``mutmut`` (configured in pyproject.toml's ``[tool.mutmut]``) with two changes. First,
it also mutates decorated functions. Out of the box mutmut 3 leaves every decorated function alone
(only ``@staticmethod``/``@classmethod`` are mutated), which here would skip the Celery tasks
in ``workers/actions.py`` (``@app.task``), ``DeadLetterQueue._held`` (``@contextmanager``), the
``replay_kwargs`` property of ``pipeline/actions/notify.py`` and the
``@functools.cache`` helpers. mutmut skips them because it copies a function once per mutant
and the copies would keep the decorator: every copy of ``@app.task(name="cicb.notify")``
would register itself as ``cicb.notify``. So here the decorators stay on the trampoline only
(the function the module exports, which picks the active mutant at each call) and the copies
are plain functions. The decorators themselves are still never mutated. Second, the functions
in ``AT_WORKER_START`` are tested by the whole worker tier (see there).

Usage: ``python mutate/run.py [mutmut arguments]``, from the project root (``make mutate``
runs ``run --max-children 2``); ``python mutate/run.py report`` lists the survivors
(``mutate/report.py``).
"""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path

import libcst as cst
import libcst.matchers as m

# Functions that run once when the worker starts, connecting signal handlers, starting a
# consumer step or building what every task uses, whose work shows in every later test.
# mutmut maps a function to the tests that called it, so these would get only the one test
# whose fixture started the session's worker: their mutants run the whole worker tier instead.
AT_WORKER_START = (
    "workers.resources.xǁResourcesǁbuild",
    "workers.sweeper.x_forget_finished",
    "workers.sweeper.xǁSweeperǁ*",
    # Built once per process (functools.cache), with Resources.build above.
    "workers.resources.x_resources",
)
WORKER_TIER = "tests/workers/"
MUTMUT_VERSION = "3.8.1"  # the patch below reads mutmut's internals: keep in step with the pin
KEPT_ON_COPIES = m.Decorator(decorator=m.Name("staticmethod") | m.Name("classmethod"))


def patch_mutmut() -> None:
    from libcst.metadata import PositionProvider
    from mutmut.mutation import file_mutation as fm

    if version("mutmut") != MUTMUT_VERSION:
        sys.exit(
            f"mutate/run.py patches mutmut {MUTMUT_VERSION}, found {version('mutmut')}: "
            "check mutmut.mutation.file_mutation and update the patch and the pin together"
        )

    skip = fm.MutationVisitor._skip_node_and_children
    arrange = fm.function_trampoline_arrangement

    def skip_node_and_children(self: fm.MutationVisitor, node: cst.CSTNode) -> bool:
        if not (isinstance(node, cst.FunctionDef) and node.decorators):
            return skip(self, node)
        # What mutmut checks before it gives up on decorated functions, minus that check.
        position = self.get_metadata(PositionProvider, node, None)
        if position and position.start.line in self._ignored_node_lines:
            return skip(self, node)  # `# pragma: no mutate` on the function
        never = fm.NEVER_MUTATE_FUNCTION_NAMES
        return node in self._enum_creation_hooks or node.name.value in never

    def function_trampoline_arrangement(
        function: cst.FunctionDef, mutants: object, class_name: str | None
    ) -> tuple[object, list[cst.FunctionDef], object, object]:
        declarations, nodes, assignments, names = arrange(function, mutants, class_name)
        # nodes: the trampoline (keeps the decorators), the original's copy, the mutants.
        kept = [d for d in function.decorators if m.matches(d, KEPT_ON_COPIES)]
        copies = [node.with_changes(decorators=kept) for node in nodes[1:]]
        return declarations, [nodes[0], *copies], assignments, names

    fm.MutationVisitor._skip_node_and_children = skip_node_and_children  # type: ignore[method-assign]
    fm.function_trampoline_arrangement = function_trampoline_arrangement  # type: ignore[assignment]


def widen_worker_start_tests() -> None:
    import fnmatch

    import mutmut.__main__ as mutmut_main
    from mutmut.state import state

    collect = mutmut_main.collect_or_load_stats

    def collect_or_load_stats(*args: object, **kwargs: object) -> None:
        collect(*args, **kwargs)
        tests = state().tests_by_mangled_function_name
        tier = {name for name in state().duration_by_test if name.startswith(WORKER_TIER)}
        for function in list(tests):
            if any(fnmatch.fnmatchcase(function, pattern) for pattern in AT_WORKER_START):
                tests[function] |= tier

    mutmut_main.collect_or_load_stats = collect_or_load_stats


def link_shared_samples() -> None:
    """mutmut runs the tests from ``mutants/``, one folder down, and tests find the project's
    shared samples at ``../shared`` from the project root, so ``mutants/../shared`` must be
    there: a link (git-ignored) in the project root."""
    link, shared = Path("shared"), Path("..", "shared")
    if not link.exists() and not link.is_symlink() and shared.is_dir():
        link.symlink_to(shared, target_is_directory=True)


def main() -> None:
    if sys.argv[1:2] == ["report"]:
        sys.path.insert(0, str(Path(__file__).parent))
        import report

        report.main(sys.argv[2:])
        return
    patch_mutmut()
    widen_worker_start_tests()
    link_shared_samples()
    from mutmut.__main__ import cli

    cli(prog_name="mutmut")


if __name__ == "__main__":
    main()
