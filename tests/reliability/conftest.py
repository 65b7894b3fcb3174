"""A broker each reliability scenario owns, so it can stop and start it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import Broker
from tests.support import free_port


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    data = tmp_path / "broker"
    data.mkdir()
    b = Broker(port=free_port(), data=data)
    b.start()
    yield b
    if b.proc and b.proc.poll() is None:
        b.stop()
