"""One check's finding, and how it is shown."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

Status = Literal["pass", "warn", "fail"]
PASS: Final = "pass"
WARN: Final = "warn"
FAIL: Final = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """``name`` found ``found``; ``fix`` says what to do when ``status`` is not a pass."""

    name: str
    status: Status
    found: str
    fix: str | None = None

    def line(self, *, width: int = 12) -> str:
        text = f"{self.status:<4}  {self.name:<{width}}  {self.found}"
        return text + (f"  -> {self.fix}" if self.fix else "")

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status, "found": self.found, "fix": self.fix}


def passed(name: str, found: str) -> Check:
    return Check(name, PASS, found)


def warned(name: str, found: str, fix: str) -> Check:
    return Check(name, WARN, found, fix)


def failing(name: str, found: str, fix: str) -> Check:
    return Check(name, FAIL, found, fix)


FIX_AND_AGAIN: Final = "fix that, then run cicb doctor again"


def guarded(name: str, step: Callable[[], list[Check]], fix: str = FIX_AND_AGAIN) -> list[Check]:
    """``step()``, or one failure named ``name`` saying what it raised (and ``fix``): one
    check that breaks never stops the others."""
    try:
        return step()
    except Exception as exc:  # a doctor reports what broke, whatever it is
        return [failing(name, f"{type(exc).__name__}: {exc}"[:300], fix)]


def failed(checks: Iterable[Check]) -> bool:
    return any(c.status == FAIL for c in checks)
