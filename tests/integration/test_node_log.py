"""What a node's log says about Raft (replication/raft_events.py): elections,
leader changes, peers, snapshots; one line each, never one per heartbeat.
Read from real node processes' logs after a leader kill, and from RaftNodes
that compact and install a snapshot."""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest

from tests.integration.harness import LocalCluster, wait_until
from tests.integration import test_raft_adapter
from tests.integration.test_raft_adapter import Cluster, entry, propose, submit

pytestmark = test_raft_adapter.pytestmark  # the same tolerated pysyncobj ResourceWarning

RAFT_LINE = re.compile(r" raftq\.raft INFO (.*)$")
# A node's Raft lines from start to the end of this test: a few per event, a
# bounded number of events. A line per heartbeat (20 a second) would pass it at once.
MOST_LINES = 25


def raft_lines(cluster: LocalCluster, node_id: int) -> list[str]:
    text = (cluster.root / "logs" / f"node-{node_id}.log").read_text(errors="replace")
    return [m.group(1) for line in text.splitlines() if (m := RAFT_LINE.search(line))]


def name(cluster: LocalCluster, node_id: int) -> str:
    return f"node {node_id} ({cluster.raft_addrs[node_id - 1]})"


def test_a_leader_kill_as_the_survivors_and_the_returning_node_log_it(
        make_cluster: type[LocalCluster]) -> None:
    cluster = make_cluster()
    old = cluster.leader_id()
    # Every node saw its peers connect and knows the first leader.
    for i in range(1, 4):
        wait_until(lambda: all(f"peer connected: {name(cluster, j)}" in raft_lines(cluster, i)
                               for j in range(1, 4) if j != i), 30, f"node {i} to log its peers")
    assert any(line.startswith(f"election won: {name(cluster, old)} is leader of term ")
               for line in raft_lines(cluster, old))

    cluster.kill(old)
    new = cluster.leader_id(among=[i for i in range(1, 4) if i != old])
    other = next(i for i in range(1, 4) if i not in (old, new))
    won = wait_until(lambda: [line for line in raft_lines(cluster, new)
                              if line.startswith(f"election won: {name(cluster, new)} is leader of term ")],
                     30, "the new leader to log its win")
    term = int(won[-1].rsplit(" ", 1)[1])
    new_lines = raft_lines(cluster, new)
    assert f"election started: {name(cluster, new)} stands for term {term}" in new_lines
    assert f"peer disconnected: {name(cluster, old)}" in new_lines
    change = f"leader change: {name(cluster, new)} is leader of term {term}"
    wait_until(lambda: change in raft_lines(cluster, other), 30, "the other survivor to log the new leader")
    assert f"peer disconnected: {name(cluster, old)}" in raft_lines(cluster, other)

    cluster.start(old)  # it comes back as a follower of the new leader
    wait_until(lambda: change in raft_lines(cluster, old), 30, "the returning node to log the leader")
    wait_until(lambda: f"peer connected: {name(cluster, old)}" in raft_lines(cluster, new)[len(new_lines):],
               30, "the leader to log the returning peer")
    for i in range(1, 4):
        lines = raft_lines(cluster, i)
        assert len(lines) <= MOST_LINES, lines


def test_snapshots_written_restored_and_installed_are_logged(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="raftq.raft")
    c = Cluster(tmp_path)
    try:
        leader = c.leader()
        behind = next(a for a, n in c.nodes.items() if n is not leader)
        c.stop(behind)
        for i in range(20):
            assert propose(leader, entry(submit(f"job-{i}")))[1] is None
        leader.force_compaction()
        wait_until(lambda: leader.dumps_written == 1, 20, "the leader's dump")
        written = wait_until(lambda: [r.getMessage() for r in caplog.records
                                      if r.getMessage().startswith("snapshot written: ")], 10, "the snapshot line")
        index = int(written[0].split("up to index ")[1].split(" ")[0])
        assert index >= 20
        assert re.fullmatch(r"snapshot written: the state up to index \d+ \(\d+ bytes\); journal compacted, "
                            r"\d+ entries kept", written[0])

        # The stopped node comes back wiped: only the leader's dump can catch it up.
        shutil.rmtree(c.config(behind).data_dir)
        c.start(behind)
        c.converged(20)
        installed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("snapshot installed: ")]
        assert installed and int(installed[0].rsplit(" ", 1)[1]) >= index
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("snapshot sending: ")] == [
            f"snapshot sending: {behind} is behind the compacted journal; it gets this node's dump"]

        # A restart reads its own dump back.
        leader_addr = next(a for a, n in c.nodes.items() if n is leader)
        c.stop(leader_addr)
        caplog.clear()
        c.start(leader_addr)
        restored = wait_until(lambda: [r.getMessage() for r in caplog.records
                                       if r.getMessage().startswith("snapshot restored: ")], 10, "the restore line")
        assert len(restored) == 1
        found = re.fullmatch(r"snapshot restored: the state up to index (\d+), from this node's dump", restored[0])
        assert found and int(found.group(1)) >= index  # (the dump the follower got may be a newer one)
    finally:
        c.destroy()
