"""RaftNode over real pysyncobj on loopback, with the real JobMachine.

Three nodes run in this process (each has its own tick thread, sockets and
data dir), which keeps the suite to seconds. Covered: replication and
convergence (equal digests), NOT_LEADER on followers, leader loss and
re-election, restart from the journal and from a dump, a wiped node catching
up through the leader's dump, the sync-before-ack durability trace, and the
password-protected Raft port.
"""
from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from replication.machine import JobMachine
from replication.journal import DurableJournal
from replication.link import LinkKey, Sender
from replication.raft import RaftConfig, RaftConfigError, RaftNode, RaftStartError

pytestmark = [
    pytest.mark.integration,
    # pysyncobj 0.3.17's Serializer drops (without closing) the file it streams a
    # dump from once the transfer ends; CPython closes it at once on that last
    # reference, with a ResourceWarning. Only that exact warning is tolerated.
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. <_io.FileIO name='[^']*raft\.dump' mode='rb'"
        r":pytest.PytestUnraisableExceptionWarning"),
]

PASSWORD = "test-cluster-secret"


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_until(pred: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def entry(*cmds: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": 1, "now_ms": int(time.time() * 1000), "cmds": list(cmds)}, use_bin_type=True)


def submit(job_id: str) -> dict[str, Any]:
    return {"op": "submit", "job": {"id": job_id, "type": "test.echo", "args": {"n": job_id}}}


class Cluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(size)]
        self.nodes: dict[str, RaftNode] = {}
        for addr in self.addrs:
            self.start(addr)

    def config(self, addr: str) -> RaftConfig:
        name = addr.replace(":", "_")
        return RaftConfig(self_addr=addr, peers=[a for a in self.addrs if a != addr],
                          data_dir=self.root / name, password=PASSWORD, durability="fsync",
                          trace_path=self.root / f"{name}.trace")

    def start(self, addr: str) -> RaftNode:
        node = RaftNode(self.config(addr), JobMachine())
        self.nodes[addr] = node
        return node

    def stop(self, addr: str) -> None:
        self.nodes.pop(addr).destroy()

    def leader(self, timeout_s: float = 10.0) -> RaftNode:
        def one_leader() -> RaftNode | None:
            leaders = [n for n in self.nodes.values() if n.is_leader()]
            return leaders[0] if len(leaders) == 1 else None
        return wait_until(one_leader, timeout_s, "a single leader")

    def followers(self) -> list[RaftNode]:
        return [n for n in self.nodes.values() if not n.is_leader()]

    def converged(self, timeout_s: float = 10.0) -> str:
        """Wait until every live replica applied the same index; return the digest."""
        def same() -> str | None:
            applied = {n.status()["last_applied"] for n in self.nodes.values()}
            commits = {n.status()["commit_index"] for n in self.nodes.values()}
            if len(applied) != 1 or applied != commits:
                return None
            digests = set()
            for n in self.nodes.values():
                with n.reading() as m:
                    digests.add(m.digest())
            return digests.pop() if len(digests) == 1 else None
        return wait_until(same, timeout_s, "replicas to converge")

    def destroy(self) -> None:
        for addr in list(self.nodes):
            self.stop(addr)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.destroy()


def propose(node: RaftNode, data: bytes, timeout_s: float = 10.0) -> tuple[list | None, str | None, str]:
    """Propose and block for the callback; also return the callback's thread name."""
    done = threading.Event()
    out: list[Any] = []

    def cb(results: list | None, code: str | None) -> None:
        out.extend([results, code, threading.current_thread().name])
        done.set()

    node.propose(data, cb)
    assert done.wait(timeout_s), "propose callback never called"
    return out[0], out[1], out[2]


def submit_ok(c: Cluster, job_ids: list[str]) -> None:
    """Submit through whichever node leads, retrying across a leader change."""
    for job_id in job_ids:
        deadline = time.monotonic() + 15
        while True:
            results, code, _ = propose(c.leader(), entry(submit(job_id)))
            if code is None:
                assert results is not None and results[0]["id"] == job_id
                break
            assert code in ("NOT_LEADER", "NO_LEADER", "TIMEOUT"), code
            assert time.monotonic() < deadline, f"could not submit {job_id}: {code}"


def job_state(node: RaftNode, job_id: str) -> str | None:
    with node.reading() as m:
        view = m.get(job_id)
    return None if view is None else view["state"]


# ---- tests -----------------------------------------------------------------


def test_replicates_and_all_replicas_converge(cluster: Cluster) -> None:
    leader = cluster.leader()
    results, code, thread = propose(leader, entry(submit("a"), submit("b"), {"op": "nope"}))
    assert code is None
    assert [r.get("id") for r in results[:2]] == ["a", "b"]
    assert results[2]["error"] == "BAD_REQUEST"  # one result per command, in order
    assert thread != threading.current_thread().name  # resolved on the tick thread
    again, code, _ = propose(leader, entry(submit("a")))
    assert code is None and again[0]["created"] is False
    submit_ok(cluster, [f"job-{i}" for i in range(30)])
    digest = cluster.converged()
    assert len(digest) == 64
    for node in cluster.nodes.values():
        assert job_state(node, "job-29") == "queued"
        st = node.status()
        assert st["leader"] == leader.config.self_addr
        assert st["role"] == ("leader" if node is leader else "follower")
        assert st["term"] >= 1


def test_follower_propose_gets_not_leader(cluster: Cluster) -> None:
    leader = cluster.leader()
    for follower in cluster.followers():
        wait_until(lambda: follower.leader() == leader.config.self_addr, what="follower to learn the leader")
        results, code, thread = propose(follower, entry(submit("never")))
        assert (results, code) == (None, "NOT_LEADER")
        assert thread != threading.current_thread().name
    cluster.converged()
    assert all(job_state(n, "never") is None for n in cluster.nodes.values())  # not forwarded


def test_malformed_entry_does_not_stall_the_log(cluster: Cluster) -> None:
    leader = cluster.leader()
    results, code, _ = propose(leader, b"\xc1 not msgpack")
    assert code is None and results[0]["error"] == "INTERNAL"
    results, code, _ = propose(leader, entry(submit("after")))
    assert code is None and results[0]["created"] is True
    cluster.converged()


def test_leader_loss_elects_new_leader_and_restart_recovers_from_journal(cluster: Cluster) -> None:
    submit_ok(cluster, [f"before-{i}" for i in range(10)])
    old = cluster.leader()
    old_addr = old.config.self_addr
    cluster.stop(old_addr)
    new = cluster.leader(timeout_s=10)
    assert new.config.self_addr != old_addr
    submit_ok(cluster, [f"after-{i}" for i in range(10)])
    # the old leader restarts from its data dir: journal replay + catch-up
    restarted = cluster.start(old_addr)
    digest = cluster.converged(timeout_s=15)
    with restarted.reading() as m:
        assert m.digest() == digest
        assert m.get("before-0") is not None and m.get("after-9") is not None


def test_whole_cluster_restart_from_dump_and_journal(cluster: Cluster) -> None:
    submit_ok(cluster, [f"old-{i}" for i in range(20)])
    cluster.converged()
    for node in cluster.nodes.values():
        node.force_compaction()
    for node in cluster.nodes.values():
        wait_until(lambda: node.dumps_written >= 1, what="a dump to be written")
        wait_until(lambda: len(node.journal) < 10, what="the journal to be compacted")
    submit_ok(cluster, [f"new-{i}" for i in range(5)])  # these live only in the journals
    digest = cluster.converged()
    for addr in list(cluster.nodes):
        cluster.stop(addr)
        assert (cluster.root / addr.replace(":", "_") / "raft.dump").exists()
    for addr in cluster.addrs:
        cluster.start(addr)
    cluster.leader()
    assert cluster.converged(timeout_s=15) == digest
    for node in cluster.nodes.values():
        assert job_state(node, "old-0") == "queued" and job_state(node, "new-4") == "queued"
    submit_ok(cluster, ["post-restart"])
    cluster.converged()


def test_wiped_node_catches_up_from_the_leaders_dump(cluster: Cluster) -> None:
    submit_ok(cluster, [f"j-{i}" for i in range(20)])
    cluster.converged()
    for node in cluster.nodes.values():
        node.force_compaction()
    for node in cluster.nodes.values():
        wait_until(lambda: len(node.journal) < 10, what="the journal to be compacted")
    victim = cluster.followers()[0].config.self_addr
    cluster.stop(victim)
    data_dir = cluster.root / victim.replace(":", "_")
    for f in data_dir.iterdir():
        f.unlink()
    fresh = cluster.start(victim)  # its log starts at 1, the leader's at ~20: needs the dump
    digest = cluster.converged(timeout_s=15)
    with fresh.reading() as m:
        assert m.digest() == digest and m.get("j-0") is not None
    assert (data_dir / "raft.dump").exists()


def parse_trace(path: Path) -> list[tuple[str, ...]]:
    return [tuple(line.split()) for line in path.read_text().splitlines()]


def check_sync_before_ack(lines: list[tuple[str, ...]]) -> dict[str, int]:
    """Every message acknowledging index k follows a sync covering k (a tail
    truncation lowers what counts as synced): a follower's next_node_idx ack,
    and a leader's commit_ack (the leader counts itself towards k only after
    its own sync covered k). A leader's append_entries may run ahead of its
    sync (its fdatasync overlaps the followers'). Returns the highest index
    each kind of event reached (how far the trace proves the property), and
    `early_send`: the highest index a leader sent before its sync covered it."""
    synced = 0
    reached = {"sync": 0, "append_entries": 0, "early_send": 0, "next_node_idx": 0, "commit_ack": 0}
    for ev in lines:
        if ev[0] == "sync":
            synced = max(synced, int(ev[1]))
            reached["sync"] = max(reached["sync"], int(ev[1]))
        elif ev[0] == "truncate":
            synced = min(synced, int(ev[1]))
        elif ev[:2] == ("send", "append_entries"):
            reached["append_entries"] = max(reached["append_entries"], int(ev[2]))
            if int(ev[2]) > synced:
                reached["early_send"] = max(reached["early_send"], int(ev[2]))
        elif ev[:2] == ("send", "next_node_idx"):
            if ev[3] == "success=True":
                acked = int(ev[2]) - 1
                assert acked <= synced, f"follower acked {acked} with only {synced} synced"
                reached["next_node_idx"] = max(reached["next_node_idx"], acked)
        elif ev[0] == "commit_ack":
            assert int(ev[1]) <= synced, f"leader acked {ev[1]} with only {synced} synced"
            reached["commit_ack"] = max(reached["commit_ack"], int(ev[1]))
    return reached


def propose_burst(node: RaftNode, datas: list[bytes], timeout_s: float = 15.0) -> list[tuple[Any, Any]]:
    """Propose everything at once (many entries in flight), then wait for all."""
    results: list[tuple[Any, Any]] = []
    lock = threading.Lock()
    done = threading.Event()

    def cb(res: list | None, code: str | None) -> None:
        with lock:
            results.append((res, code))
            if len(results) == len(datas):
                done.set()

    for d in datas:
        node.propose(d, cb)
    assert done.wait(timeout_s), f"only {len(results)} of {len(datas)} callbacks"
    return results


def test_durability_trace_proves_sync_before_ack(cluster: Cluster) -> None:
    leader = cluster.leader()
    submit_ok(cluster, [f"t-{i}" for i in range(25)])
    # many entries in flight: pysyncobj's leader then retransmits from a stale
    # nextIndex, which (unguarded) makes followers cut acknowledged entries
    burst = propose_burst(leader, [entry(submit(f"b-{i}")) for i in range(300)])
    assert all(code is None for _, code in burst)
    cluster.converged()
    leader_addr = leader.config.self_addr
    last = leader.status()["commit_index"]  # the last proposal's index (or a later no-op's)
    cluster.destroy()  # closes the trace files
    # The property is checked on every event; what follows only makes sure the
    # trace covers the proposals. Nothing counts messages: how many there are
    # depends on batching, and batching on the load of the box.
    for addr in cluster.addrs:
        lines = parse_trace(cluster.root / f"{addr.replace(':', '_')}.trace")
        reached = check_sync_before_ack(lines)
        if addr == leader_addr:
            acks = [int(ev[1]) for ev in lines if ev[0] == "commit_ack"]
            assert len(set(acks)) == len(acks) == 325 and max(acks) == last, "one commit_ack per proposal"
            assert reached["append_entries"] == last, "the leader sent every entry"
            # the leader's fdatasync overlaps replication: entries leave before its sync
            assert reached["early_send"] >= 1
        else:
            assert reached["next_node_idx"] == last, f"{addr}: acks reached {reached['next_node_idx']}, not {last}"
            assert not [ev for ev in lines if ev[0] == "truncate"], "a follower cut its log"
    # the checker itself can fail: an ack ahead of the last sync is caught
    with pytest.raises(AssertionError, match="acked 7 with only 6"):
        check_sync_before_ack([("sync", "6"), ("send", "next_node_idx", "8", "success=True")])
    with pytest.raises(AssertionError, match="leader acked 5"):
        check_sync_before_ack([("sync", "5"), ("truncate", "4"), ("commit_ack", "5")])


def _frame(payload: Any) -> bytes:
    data = zlib.compress(pickle.dumps(payload, 2), 3)  # pysyncobj's frame: native int length
    return struct.pack("i", len(data)) + data


class _Touch:
    """A pickle that would run `touch <marker>` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _reply_or_close(sock: socket.socket, timeout_s: float) -> bytes:
    """Read until the peer closes; return what arrived (b'' = nothing)."""
    sock.settimeout(timeout_s)
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return got
            got += chunk
    except socket.timeout:
        raise AssertionError(f"connection not closed within {timeout_s}s (got {got!r})") from None
    except ConnectionResetError:
        return got


def test_raft_port_ignores_peers_without_the_password(cluster: Cluster, tmp_path: Path) -> None:
    leader = cluster.leader()
    host, port = leader.config.self_addr.rsplit(":", 1)
    marker = tmp_path / "pwned"
    stranger = Sender(LinkKey("not-the-cluster-password"))
    frames = [_frame(p) for p in (["status"], _Touch(marker), [_Touch(marker)])]  # pysyncobj's own format
    frames += [stranger.seal(_Touch(marker)), Sender(LinkKey(PASSWORD)).seal(b"x")[:40] + b"\0" * 60]
    for frame in frames:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(frame)
            assert _reply_or_close(s, 5.0) == b""  # dropped, no status reply
    assert not marker.exists()
    # a valid pickle of the payload would have run: the check above is meaningful
    pickle.loads(pickle.dumps(_Touch(marker), 2))
    assert marker.exists()
    results, code, _ = propose(leader, entry(submit("still-fine")))
    assert code is None and results[0]["created"] is True


def test_config_refuses_bad_values(tmp_path: Path) -> None:
    base = dict(self_addr="127.0.0.1:7800", peers=["127.0.0.1:7801"], data_dir=tmp_path, password="pw")
    assert RaftConfig(**base).peers == ("127.0.0.1:7801",)
    for bad, match in [
        ({"password": ""}, "password"),
        ({"self_addr": "localhost"}, "self_addr"),
        ({"peers": ["127.0.0.1:7800"]}, "peers"),
        ({"peers": "127.0.0.1:7801"}, "peers"),
        ({"durability": "maybe"}, "durability"),
        ({"election_timeout_max_s": 0.1}, "election_timeout_max_s"),
    ]:
        with pytest.raises(RaftConfigError, match=match):
            RaftConfig(**{**base, **bad})


def test_crash_between_dump_and_journal_compaction_loses_nothing(tmp_path: Path) -> None:
    """A crash after a dump is renamed into place but before the journal is
    compacted leaves a journal that starts before the dump. pysyncobj alone
    would clear that journal and lose the entries after the dump."""
    addr = f"127.0.0.1:{free_ports(1)[0]}"
    cfg = RaftConfig(self_addr=addr, peers=[], data_dir=tmp_path / "solo", password=PASSWORD)
    node = RaftNode(cfg, JobMachine())
    try:
        wait_until(node.is_leader, what="the single node to lead")
        for i in range(10):
            assert propose(node, entry(submit(f"early-{i}")))[1] is None
        wait_until(lambda: not node.journal.dirty, what="a journal sync")
        full_before = list(node.journal[:])
        node.force_compaction()
        wait_until(lambda: node.dumps_written == 1 and len(node.journal) < 5, what="compaction")
        for i in range(5):
            assert propose(node, entry(submit(f"late-{i}")))[1] is None
        tail = list(node.journal[:])
        with node.reading() as m:
            digest = m.digest()
    finally:
        node.destroy()
    # rebuild the journal as it was on disk in the crash window: never compacted
    journal_path = tmp_path / "solo" / "raft.journal"
    journal_path.unlink()
    # (its own meta: the node's, with commit index 17, refuses a journal that is still empty)
    crashed = DurableJournal(journal_path, tmp_path / "rebuild.meta")
    first_kept = tail[0][1]
    for e in full_before + tail:
        if e[1] < first_kept or e in tail:
            if not len(crashed) or e[1] == crashed[-1][1] + 1:
                crashed.add(*e)
    assert crashed[0][1] == 1 and crashed[-1] == tail[-1]
    crashed._destroy()
    node = RaftNode(cfg, JobMachine())
    try:
        def restored() -> bool:
            with node.reading() as m:
                return m.get("late-4") is not None
        wait_until(restored, what="the entries after the dump to be replayed")
        with node.reading() as m:
            assert m.digest() == digest and m.get("early-0") is not None
    finally:
        node.destroy()


def test_taken_raft_port_is_a_clear_start_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        addr = f"127.0.0.1:{s.getsockname()[1]}"
        cfg = RaftConfig(self_addr=addr, peers=[], data_dir=tmp_path / "n", password=PASSWORD)
        with pytest.raises(RaftStartError, match="address in use"):
            RaftNode(cfg, JobMachine())
