"""What the console reads from query strings and forms: the callbacks page's filters and
which dead letters an action touches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.archive import Filters
from pipeline.brokers.deadletters import DeadLetter
from pipeline.times import parse_time


class BadInput(Exception):
    """A filter, id or form field the console cannot use: a 400 page saying why."""


def filters_of(params: dict[str, str]) -> Filters:
    """The callbacks page's filters from its query string; raises ``BadInput``."""
    values: dict[str, Any] = {}
    for name in ("event", "tag", "state", "job_id", "outcome", "source"):
        if params.get(name, "").strip():
            values[name] = params[name].strip()
    if params.get("q", "").strip():
        values["any_id"] = params["q"].strip()
    for name in ("since", "until"):
        if params.get(name, "").strip():
            try:
                values[name] = parse_time(params[name])
            except ValueError as exc:
                raise BadInput(f"{name}: {exc}") from exc
    return Filters(**values)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters an action touches: one by id, one group, or all."""

    id: str | None = None
    group: tuple[str, str, str] | None = None
    everything: bool = False

    @classmethod
    def of(cls, fields: dict[str, str]) -> Selection:
        if fields.get("id"):
            return cls(id=fields["id"])
        if all(k in fields for k in ("task", "error", "reason")):
            return cls(group=(fields["task"], fields["error"], fields["reason"]))
        if fields.get("all") == "1":
            return cls(everything=True)
        raise BadInput("say which dead letters: an id, a group (task, error, reason) or all")

    def __call__(self, letter: DeadLetter) -> bool:
        if self.id is not None:
            return letter.id == self.id
        if self.group is not None:
            return (letter.task, letter.error, letter.reason) == self.group
        return self.everything

    def fields(self) -> dict[str, str]:
        if self.id is not None:
            return {"id": self.id}
        if self.group is not None:
            return dict(zip(("task", "error", "reason"), self.group, strict=True))
        return {"all": "1"}

    def describe(self) -> str:
        if self.id is not None:
            return f"dead letter {self.id}"
        if self.group is not None:
            return "the group {} / {} / {}".format(*self.group)
        return "every dead letter"
