"""A broker each reliability scenario owns, so it can stop and start it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    data = tmp_path / "broker"
    data.mkdir()
    b = Broker(data)
    b.start()
    yield b
    b.stop()
