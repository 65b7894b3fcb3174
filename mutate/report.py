"""The survivors of the last ``make mutate``, by module, each as ``file:line: old -> new``.

``python mutate/run.py report`` (from the project root, after a run): counts and score per
module, then every surviving mutant with its line in the real source and the mutant's name
(``python mutate/run.py show NAME`` prints its diff). Mutants of functions that no fast-tier
test calls ("no tests") are listed by function; ``--all`` lists each of them too.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from mutmut.configuration import config
from mutmut.mutation.diff_apply import (
    get_diff_for_mutant,
    read_functions_from_index,
    read_mutants_module,
    read_original_function,
)
from mutmut.mutation.file_mutation import compute_function_hashes
from mutmut.stats import status_by_exit_code
from mutmut.utils.format_utils import (
    mangled_name_from_mutant_name,
    orig_function_and_class_names_from_key,
)

DETECTED = {"killed", "timeout", "caught by type check", "segfault"}
# Not listed: left from an interrupted or partial run (`make mutate` runs them next time).
UNLISTED = DETECTED | {"not checked", "skipped"}
HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+\d+(?:,\d+)? @@")


@dataclass
class Mutant:
    name: str
    path: str
    status: str
    function: str
    line: int = 0
    old: tuple[str, ...] = ()
    new: tuple[str, ...] = ()
    stale: bool = False

    @property
    def change(self) -> str:
        old = " / ".join(self.old) or "(nothing)"
        new = " / ".join(self.new) or "(removed)"
        return f"{old}  ->  {new}"


def def_lines(source: str) -> dict[str, int]:
    """``func`` and ``Class.method`` -> the line of their ``def`` (nested classes included)."""
    lines: dict[str, int] = {}

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines[prefix + node.name] = node.lineno
            elif isinstance(node, ast.ClassDef):
                visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(source).body, "")
    return lines


def locate(mutant: Mutant, def_line: int) -> None:
    """Fill in the mutant's line in the real source and what it changed there."""
    # The diff is of the function alone. Its old side is the function's unmutated copy, which
    # starts with the comments above the function (and a @classmethod or @staticmethod, the
    # only decorators the copies keep): anchor it at the copy's ``def``.
    functions = read_functions_from_index(mutant.name, mutant.path)
    if functions is None:
        functions = (read_original_function(read_mutants_module(mutant.path), mutant.name), None)
    copy = cst.Module(body=[functions[0]]).code.strip().split("\n")
    def_index = next(
        (i for i, text in enumerate(copy) if text.lstrip().startswith(("def ", "async def "))), 0
    )
    changes: list[tuple[int, str, str]] = []  # (index on the old side, sign, text)
    index = 0
    for line in get_diff_for_mutant(mutant.name, path=mutant.path).splitlines()[2:]:
        if match := HUNK.match(line):
            index = int(match.group(1)) - 1
            continue
        sign, text = line[:1], line[1:]
        if sign in ("-", "+"):
            changes.append((index, sign, text.strip()))
        if sign in (" ", "-"):
            index += 1
    first = min((i for i, _, _ in changes), default=def_index)
    mutant.line = def_line + first - def_index
    mutant.old = tuple(t for _, s, t in changes if s == "-")
    mutant.new = tuple(t for _, s, t in changes if s == "+")


def load(paths: list[str]) -> list[Mutant]:
    mutants = []
    for path in paths:
        meta = Path("mutants", path + ".meta")
        if not meta.exists():
            continue
        data = json.loads(meta.read_text())
        # Functions changed since the run: their mutants' lines may have moved.
        now = compute_function_hashes(Path(path).read_text())
        changed = {k for k, h in data["hash_by_function_name"].items() if now.get(k) != h}
        for name, code in data["exit_code_by_key"].items():
            function, class_name = orig_function_and_class_names_from_key(name)
            function = function.rpartition(".")[-1]
            qualified = f"{class_name}.{function}" if class_name else function
            status = status_by_exit_code[code]
            mutant = Mutant(name, path, status, qualified)
            mutant.stale = mangled_name_from_mutant_name(name.rpartition(".")[-1]) in changed
            mutants.append(mutant)
    return mutants


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mutate/run.py report")
    parser.add_argument("--all", action="store_true", help="list each 'no tests' mutant too")
    args = parser.parse_args(argv)
    paths = config().only_mutate
    mutants = load(paths)
    if not mutants:
        raise SystemExit("no results under mutants/: run `make mutate` first")

    total: Counter[str] = Counter()
    print("module                     mutants  killed  survived  no tests  other  score")
    for path in paths:
        own = [x for x in mutants if x.path == path]
        counts = Counter(x.status for x in own)
        total.update(counts)
        print(_row(path, len(own), counts))
    print(_row("all", len(mutants), total))
    print(
        "score = detected / mutants (detected: killed, timed out); 'no tests': no fast-tier"
        " test calls the function; other: not checked yet (partial run), suspicious, skipped"
    )

    for path in paths:
        source = Path(path).read_text()
        defs = def_lines(source)
        own = [x for x in mutants if x.path == path and x.status not in UNLISTED]
        if not own:
            continue
        print(f"\n## {path}")
        for mutant in own:
            locate(mutant, defs.get(mutant.function, 0))
        for mutant in sorted(own, key=lambda x: (x.line, x.name)):
            if mutant.status == "no tests" and not args.all:
                continue
            tag = "" if mutant.status == "survived" else f" [{mutant.status}]"
            tag += " [function changed since the run]" if mutant.stale else ""
            print(f"{path}:{mutant.line}: {mutant.change}{tag}    ({mutant.name})")
        untested = Counter(x.function for x in own if x.status == "no tests")
        if untested and not args.all:
            print("no fast-tier test calls (mutants by function):")
            for function, count in sorted(untested.items(), key=lambda kv: defs.get(kv[0], 0)):
                print(f"  {path}:{defs.get(function, '?')}: {function}: {count} mutants")


def _row(name: str, count: int, counts: Counter[str]) -> str:
    detected = sum(counts[s] for s in DETECTED)
    other = count - detected - counts["survived"] - counts["no tests"]
    score = f"{100 * detected / count:5.1f}%" if count else "    -"
    return (
        f"{name:<26} {count:>7} {detected:>7} {counts['survived']:>9} {counts['no tests']:>9}"
        f" {other:>6}  {score}"
    )
