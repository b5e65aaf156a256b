"""Fixtures that start real raftq nodes on loopback (see harness.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.integration.harness import LocalCluster

pytestmark = pytest.mark.integration


def clusters(root: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Yields `make(**LocalCluster kwargs)`, which starts a cluster under `root`
    and waits for its leader; every cluster made is stopped afterwards. For a
    module-scoped fixture: `for make in clusters(dir): yield make(...)`."""
    started: list[LocalCluster] = []

    def make(**kwargs: object) -> LocalCluster:
        c = LocalCluster(root / f"cluster{len(started)}", **kwargs)  # type: ignore[arg-type]
        started.append(c)
        c.start()
        try:
            c.leader_id(timeout=30)
        except AssertionError:
            for i in range(1, c.n + 1):
                print(f"--- node {i} log ---\n{c.log_tail(i)}")
            raise
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    yield from clusters(tmp_path)


@pytest.fixture(scope="module")
def module_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster shared by a module's tests that only need a healthy cluster
    and leave it healthy (bad-input checks): saves a start-up per test."""
    for make in clusters(tmp_path_factory.mktemp("shared")):
        yield make()


@pytest.fixture
def cluster(make_cluster: Callable[..., LocalCluster]) -> LocalCluster:
    return make_cluster()
