"""Storage integrity on real node processes (docs/storage.md).

A follower whose files are damaged (a byte flipped mid-journal, raft.meta
deleted, a dump whose checksum fails) refuses to start with one clear line and a non-zero exit while the
other two keep serving; wiped, it rejoins and catches up. A follower whose
journal writes fail for real (RLIMIT_FSIZE makes the kernel refuse them with
EFBIG) stops with a CRITICAL line and exit code 1, and nothing acknowledged
is lost.
"""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from replication.snapshot import encode_dump
from tests.integration.harness import REPO, LocalCluster, wait_until

JOURNAL_LIMIT_BYTES = 192 * 1024  # the follower's file size limit in the write-failure test


def _submit(c, prefix: str, n: int, pad: int = 0) -> list[str]:
    return [c.submit("util.noop", {"n": i, "pad": "x" * pad}, id=f"{prefix}-{i}") for i in range(n)]


def _data_dir(cluster: LocalCluster, node_id: int) -> Path:
    return cluster.root / "data" / f"node-{node_id}"


def _start_refused(cluster: LocalCluster, node_id: int) -> str:
    """Start a node that must refuse: it exits non-zero; return what it logged."""
    log_path = cluster.root / "logs" / f"node-{node_id}.log"
    before = log_path.stat().st_size if log_path.exists() else 0
    cluster.start(node_id)
    code = cluster.procs[node_id].wait(timeout=30)
    out = log_path.read_bytes()[before:].decode(errors="replace")
    assert code != 0, out
    assert "Traceback" not in out, out
    return out


def _wait_caught_up(cluster: LocalCluster, ids: list[str], node_id: int) -> None:
    """Same digest at the same applied index on every node, and every id on `node_id`."""
    def same() -> bool:
        d = cluster.digests([1, 2, 3])
        return len(set(d.values())) == 1
    wait_until(same, 30, "equal digests at the same applied index", interval=0.2)
    with cluster.node_client(node_id) as c:
        for job_id in ids:
            assert c.get(job_id, stale_ok=True)["id"] == job_id


def test_damaged_follower_refuses_to_start_then_rejoins_wiped(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(durability="fsync")
    leader = cluster.leader_id()
    f = next(i for i in (3, 2, 1) if i != leader)
    with cluster.client() as c:
        acked = _submit(c, "a", 60)
    cluster.wait_replicas_equal([1, 2, 3])
    cluster.kill(f, signal.SIGTERM)
    data = _data_dir(cluster, f)

    # 1. raft.meta deleted next to a non-empty journal.
    meta = (data / "raft.meta").read_bytes()
    (data / "raft.meta").unlink()
    out = _start_refused(cluster, f)
    assert "raft.meta: missing although the journal ends at index" in out, out
    (data / "raft.meta").write_bytes(meta)

    # 2. One byte flipped in the middle of the journal (valid records after it).
    journal = data / "raft.journal"
    raw = bytearray(journal.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    journal.write_bytes(bytes(raw))
    out = _start_refused(cluster, f)
    lines = [ln for ln in out.splitlines() if "refuses to start" in ln]
    assert len(lines) == 1 and "raft.journal: corrupt record at offset" in lines[0], out
    assert "docs/storage.md" in lines[0]
    assert journal.read_bytes() == bytes(raw)  # nothing was cut

    # 3. A damaged dump (its checksum does not match), checked before the journal.
    blob = bytearray(encode_dump({"format": 1}, (b"c", 5, 1), (b"c", 4, 1), cluster.raft_addrs))
    blob[-1] ^= 0xFF
    (data / "raft.dump").write_bytes(bytes(blob))
    out = _start_refused(cluster, f)
    assert "raft.dump: dump checksum mismatch; this node's snapshot is damaged" in out, out

    # The other two keep serving.
    with cluster.client([i for i in (1, 2, 3) if i != f]) as c:
        acked += _submit(c, "b", 40)

    # 4. The way back: wipe the data dir, start with --rejoin, catch up from the leader.
    shutil.rmtree(data)
    _start_node(cluster, f, "--rejoin")
    with cluster.client([i for i in (1, 2, 3) if i != f]) as c:
        acked += _submit(c, "c", 40)
    _wait_caught_up(cluster, acked, f)


def _start_node(cluster: LocalCluster, node_id: int, *extra: str, file_limit: int | None = None) -> None:
    """`LocalCluster.start` with extra `raftq node` options and, with
    `file_limit`, RLIMIT_FSIZE set in the node process: the kernel then fails
    any write past that many bytes (EFBIG; Python ignores SIGXFSZ)."""
    def limit_files() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    log = open(cluster.root / "logs" / f"node-{node_id}.log", "ab")
    cluster.procs[node_id] = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "node", "--config", str(cluster.config_path), "--id", str(node_id),
         *extra],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=limit_files)
    log.close()


def test_failed_journal_write_stops_the_node(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(durability="fsync")
    leader = cluster.leader_id()
    f = next(i for i in (3, 2, 1) if i != leader)
    cluster.kill(f, signal.SIGTERM)
    (cluster.root / "logs" / f"node-{f}.log").unlink()  # the limit applies to its log too
    _start_node(cluster, f, file_limit=JOURNAL_LIMIT_BYTES)
    acked: list[str] = []
    with cluster.client([i for i in (1, 2, 3) if i != f]) as c:
        for batch in range(40):  # 40 x 20 x 1 KiB: about 4x the limit
            if cluster.procs[f].poll() is not None:
                break
            acked += _submit(c, f"w{batch}", 20, pad=1024)
    code = cluster.procs[f].wait(timeout=30)
    out = cluster.log_tail(f, 400)
    assert code == 1, out
    critical = [ln for ln in out.splitlines() if "CRITICAL" in ln]
    assert len(critical) == 1 and "storage failed" in critical[0] and "raft.journal" in critical[0], out
    assert "Traceback" not in out, out
    # Nothing acknowledged is lost; the other two agree.
    with cluster.client([i for i in (1, 2, 3) if i != f]) as c:
        acked += _submit(c, "after", 10)
        for job_id in acked:
            assert c.get(job_id)["id"] == job_id
    cluster.wait_replicas_equal([i for i in (1, 2, 3) if i != f])


def test_leader_fdatasync_failure_fails_proposals_and_reports_once(tmp_path: Path) -> None:
    """The leader's fdatasync (on its helper thread) fails for real: the journal's
    descriptor is pointed at /dev/null, where write and lseek work and fdatasync
    fails with EINVAL. No proposal succeeds after it, none is retried, and
    on_fatal is called once with the reason."""
    import threading

    import msgpack

    from replication.machine import JobMachine
    from replication.raft import NO_LEADER, TIMEOUT, RaftConfig, RaftNode
    from tests.integration.harness import free_ports

    fatal: list[str] = []
    node = RaftNode(RaftConfig(self_addr=f"127.0.0.1:{free_ports(1)[0]}", peers=[], data_dir=tmp_path,
                               password="storage-test"), JobMachine(), on_fatal=fatal.append)
    try:
        def propose(job_id: str) -> tuple[list | None, str | None]:
            done = threading.Event()
            out: list = []

            def cb(results: list | None, code: str | None) -> None:
                out.extend([results, code])
                done.set()
            entry = msgpack.packb({"v": 1, "now_ms": 1, "cmds": [
                {"op": "submit", "job": {"id": job_id, "type": "t", "args": {}}}]}, use_bin_type=True)
            node.propose(entry, cb)
            assert done.wait(20), "propose callback never called"
            return out[0], out[1]

        wait_until(node.is_leader, 10, "a single-node leader")
        assert propose("before")[1] is None
        devnull = os.open(os.devnull, os.O_WRONLY)
        node._call_on_loop(lambda: os.dup2(devnull, node.journal._fd))
        os.close(devnull)
        assert propose("during") == (None, TIMEOUT)  # outcome unknown, never success
        assert len(fatal) == 1 and "fdatasync failed" in fatal[0], fatal
        assert node.fatal == fatal[0] and node.journal.failed and node.journal.dirty
        assert not node.is_leader()
        assert propose("after") == (None, NO_LEADER)
        assert len(fatal) == 1
    finally:
        node.destroy()


def test_rejoining_wiped_node_votes_only_after_hearing_a_leader(make_cluster) -> None:
    """With --rejoin, a wiped node grants no vote until a leader has contacted
    it: alone with one other node (no leader possible without its vote), no
    leader is elected; once a third node is back, a leader is, and the wiped
    node catches up. (Without --rejoin it would vote, and elect a leader.)"""
    cluster: LocalCluster = make_cluster(durability="fsync")
    leader = cluster.leader_id()
    others = [i for i in (1, 2, 3) if i != leader]
    wiped, back_later = others
    with cluster.client() as c:
        acked = _submit(c, "r", 30)
    cluster.kill(wiped, signal.SIGTERM)
    cluster.kill(back_later, signal.SIGTERM)

    def no_leader() -> bool:
        with cluster.node_client(leader) as c:
            return c.cluster_status().get("leader") is None
    wait_until(no_leader, 20, f"node {leader} to step down without a majority")
    shutil.rmtree(_data_dir(cluster, wiped))
    _start_node(cluster, wiped, "--rejoin")
    wait_until(lambda: cluster.digests([wiped]), 20, "the wiped node to serve")
    for _ in range(10):  # 2 s: at least two election rounds (timeout <= 1 s); none may win
        assert no_leader(), "a leader was elected with the vote of a node that forgot its votes"
        time.sleep(0.2)
    cluster.start(back_later)
    cluster.leader_id(timeout=30)
    with cluster.client() as c:
        acked += _submit(c, "s", 20)
    _wait_caught_up(cluster, acked, wiped)
    assert "rejoin: heard from the leader" in cluster.log_tail(wiped, 400)


def test_rejoin_mode_applies_only_to_a_node_that_never_learnt_a_term(tmp_path: Path) -> None:
    from replication.machine import JobMachine
    from replication.raft import RaftConfig, RaftNode
    from tests.integration.harness import free_ports

    def start(rejoin: bool) -> RaftNode:
        return RaftNode(RaftConfig(self_addr=f"127.0.0.1:{free_ports(1)[0]}", peers=[], data_dir=tmp_path,
                                   password="storage-test"), JobMachine(), rejoin=rejoin)

    node = start(rejoin=True)  # wiped (here: new) data dir: waits for a leader, never stands
    try:
        assert node._sync.rejoining
        time.sleep(1.5)  # past the longest election timeout: a lone node would have elected itself
        assert not node.is_leader() and node.status()["term"] == 0
    finally:
        node.destroy()
    node = start(rejoin=False)
    try:
        wait_until(node.is_leader, 10, "a single-node leader")
    finally:
        node.destroy()
    node = start(rejoin=True)  # it has a term now: the flag does nothing
    try:
        assert not node._sync.rejoining
        wait_until(node.is_leader, 10, "a single-node leader")
    finally:
        node.destroy()
