"""Large entries keep their leader (replication/raft.py: bounded sends per
follower, writes drained on WRITE events, pre-vote), on a real 3-node fsync
cluster: 30 sequential 1 MB submits and one ~4 MB submit_many commit with no
leader change. A behaviour assert (term and leader), not a timing one. And in
process: a follower whose loop stalls is sent no more than the bound, and
does not depose the leader when it wakes up far behind (pre-vote).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from loadtest.localcluster import free_ports
from replication.link import max_frame_bytes
from replication.machine import JobMachine
from replication.raft import RaftConfig, RaftNode
from tests.integration.conftest import clusters
from tests.integration.harness import LocalCluster, wait_until

pytestmark = pytest.mark.integration

ARG_BYTES = 1_000_000  # under the 1 MiB job-args cap


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for make in clusters(tmp_path_factory.mktemp("large")):
        yield make(durability="fsync")


def _term_and_leader(cluster: LocalCluster) -> tuple[int, str]:
    """As the leader itself says (a follower not yet reached by it after the
    cluster started may still answer term 0 and no leader)."""
    with cluster.node_client(cluster.leader_id()) as c:
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


# ---- in-process: the bytes-in-flight bound itself ----------------------------

def _propose(node: RaftNode, data: bytes) -> str | None:
    done, out = threading.Event(), []

    def cb(results: list | None, code: str | None) -> None:
        out.append(code)
        done.set()
    node.propose(data, cb)
    assert done.wait(30), "propose callback never called"
    return out[0]


def _entry(job_id: str, blob: str) -> bytes:
    cmd = {"op": "submit", "job": {"id": job_id, "type": "util.noop", "args": {"blob": blob}}}
    return msgpack.packb({"v": 1, "now_ms": int(time.time() * 1000), "cmds": [cmd]}, use_bin_type=True)


def test_a_stalled_follower_is_sent_at_most_the_in_flight_bound(tmp_path: Path) -> None:
    in_flight = 1024 * 1024
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [RaftNode(RaftConfig(self_addr=a, peers=[b for b in addrs if b != a], data_dir=tmp_path / str(i),
                                 password="pw", durability="none", max_in_flight_bytes=in_flight), JobMachine())
             for i, a in enumerate(addrs)]
    try:
        leader = wait_until(lambda: next((n for n in nodes if n.is_leader()), None), 10, "a leader")
        slow = next(n for n in nodes if n is not leader)
        _propose(leader, _entry("warm", ""))

        def unsent_to_slow() -> int:
            t = leader._transport
            assert t is not None
            return max((c.unsent_bytes for node, c in t._connections.items()
                        if node.address == slow.config.self_addr), default=0)
        term = leader.status()["term"]
        stalled = threading.Event()

        def stall() -> None:  # its loop stops reading its sockets
            stalled.set()
            time.sleep(8.0)
        slow._loop.call_soon_threadsafe(stall)
        assert stalled.wait(10), "the follower's loop never ran the stall"
        # Kernel socket buffers take the first megabytes unseen (how many
        # depends on the machine's tcp_wmem/tcp_rmem), so propose until the
        # leader's own buffer for `slow` reaches the bound, then a few more to
        # show it stays there. Without the bound all of it would queue up.
        blob, peak, at_bound = "z" * 900_000, 0, 0
        for i in range(48):  # at most ~43 MB
            assert _propose(leader, _entry(f"big-{i}", blob)) is None
            peak = max(peak, leader._call_on_loop(unsent_to_slow))
            at_bound += peak >= in_flight
            if at_bound > 4:
                break
        assert in_flight <= peak <= in_flight + max_frame_bytes(leader.config.append_entries_batch_bytes), (
            f"peak unsent {peak} after {i + 1} proposals (kernel buffers absorbed the rest?)")
        last = leader.status()["last_applied"]
        wait_until(lambda: slow.status()["last_applied"] >= last, 20, "the stalled follower to catch up")
        time.sleep(1.0)  # its election timer ran out long ago: pre-vote, not an election
        assert leader.is_leader() and leader.status()["term"] == term
    finally:
        for n in nodes:
            n.destroy()


def test_an_entry_larger_than_the_batch_goes_in_transmission_chunks(tmp_path: Path) -> None:
    batch = 64 * 1024  # so a 300 KB entry is cut into five 'transmission' chunks
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes = [RaftNode(RaftConfig(self_addr=a, peers=[b for b in addrs if b != a], data_dir=tmp_path / str(i),
                                 password="pw", durability="none", append_entries_batch_bytes=batch), JobMachine())
             for i, a in enumerate(addrs)]
    try:
        leader = wait_until(lambda: next((n for n in nodes if n.is_leader()), None), 10, "a leader")
        term = leader.status()["term"]
        for i in range(3):
            assert _propose(leader, _entry(f"chunked-{i}", "c" * 300_000)) is None
        last = leader.status()["last_applied"]
        wait_until(lambda: all(n.status()["last_applied"] >= last for n in nodes), 20, "every replica applied")
        digests = set()
        for n in nodes:
            with n.reading() as m:
                digests.add(m.digest())
        assert len(digests) == 1 and leader.status()["term"] == term
    finally:
        for n in nodes:
            n.destroy()
