"""Large entries keep their leader (replication/raft.py: bounded sends per
follower, writes drained on WRITE events, pre-vote), on a real 3-node fsync
cluster: 30 sequential 1 MB submits and one ~4 MB submit_many commit with no
leader change. A behaviour assert (term and leader), not a timing one.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.harness import LocalCluster

pytestmark = pytest.mark.integration

ARG_BYTES = 1_000_000  # under the 1 MiB job-args cap


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("large"), durability="fsync")
    c.start()
    try:
        c.leader_id(timeout=30)
        yield c
    finally:
        c.stop()


def _term_and_leader(cluster: LocalCluster) -> tuple[int, str]:
    with cluster.client() as c:
        st = c.cluster_status()
    return st["term"], st["leader"]


def test_sequential_one_mb_submits_keep_the_leader(cluster: LocalCluster) -> None:
    term, leader = _term_and_leader(cluster)
    blob = "x" * ARG_BYTES
    with cluster.client(timeout_s=30) as c:
        ids = [c.submit("util.noop", {"blob": blob, "i": i}, queue="large") for i in range(30)]
    after_term, after_leader = _term_and_leader(cluster)
    assert len(set(ids)) == 30
    assert after_term <= term + 1 and after_leader == leader, (term, after_term, leader, after_leader)
    cluster.wait_replicas_equal([1, 2, 3])


def test_a_four_mb_submit_many_commits_without_a_leader_change(cluster: LocalCluster) -> None:
    term, leader = _term_and_leader(cluster)
    blob = "y" * ARG_BYTES
    with cluster.client(timeout_s=30) as c:
        ids = c.submit_many([{"type": "util.noop", "args": {"blob": blob, "i": i}, "queue": "large"}
                             for i in range(4)])
    after_term, after_leader = _term_and_leader(cluster)
    assert len(ids) == 4
    assert after_term <= term + 1 and after_leader == leader, (term, after_term, leader, after_leader)
    cluster.wait_replicas_equal([1, 2, 3])
