"""Errors keep their type and data through pickling, as Celery does with a failing task's."""

from __future__ import annotations

import pickle

from pipeline.actions.notify import TargetsRejected
from pipeline.actions.resubmit import GaveUp
from pipeline.errors import DeliveryRejected, ParseError


def test_errors_with_keyword_only_data_survive_pickling() -> None:
    for error in (
        GaveUp("j1", attempts=2, code="InternalError", reason="used up"),
        ParseError("missing", path="JobsDetail[0].JobId"),
        TargetsRejected(["abc"], [DeliveryRejected("wecom:host#abc", 404, "gone")]),
    ):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error)
        assert str(again) == str(error)
        assert again.__dict__.keys() == error.__dict__.keys()
