"""A cluster of test hosts for each scenario, removed afterwards whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.netns import available, network
from tests.cluster.stack import Cluster
from tests.support import require

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    why = available()
    require(why is None, f"the cluster tests cannot run here: {why}")
    with network() as net:
        built = Cluster.build(net, tmp_path)
        try:
            yield built
        finally:
            built.stop()
