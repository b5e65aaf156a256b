"""Fixtures that start real raftq nodes on loopback (see harness.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.harness import LocalCluster

pytestmark = pytest.mark.integration


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    clusters: list[LocalCluster] = []

    def make(**kwargs: object) -> LocalCluster:
        c = LocalCluster(tmp_path / f"cluster{len(clusters)}", **kwargs)  # type: ignore[arg-type]
        clusters.append(c)
        c.start()
        try:
            c.leader_id(timeout=30)
        except AssertionError:
            for i in range(1, c.n + 1):
                print(f"--- node {i} log ---\n{c.log_tail(i)}")
            raise
        return c

    yield make
    for c in clusters:
        c.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster()
