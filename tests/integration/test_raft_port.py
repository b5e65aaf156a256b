"""The Raft port's limits on real node processes (replication/link.py and the
transport in replication/raft.py): a stranger's huge length prefix costs the
node no memory and the cluster keeps committing; silent connections are
closed by the handshake deadline; a source address that is not a peer's host
is refused at once, while peers bound on their own hosts keep working; and
(in process) an authentic connection that only trickles bytes is reaped after
idle_timeout_s.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.localcluster import free_ports
from replication.link import LinkKey, Receiver, Sender, max_frame_bytes
from replication.machine import JobMachine
from replication.raft import RaftConfig, RaftConfigError, RaftNode
from tests.integration.conftest import clusters
from tests.integration.harness import LocalCluster, wait_until

pytestmark = pytest.mark.integration

PASSWORD = "raft-port-test-password"
HANDSHAKE_TIMEOUT_S = 2.0  # RaftConfig.handshake_timeout_s default
REAP_SLACK_S = 3.0  # the reaper's period (0.5 s) and a loaded 2-core box


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def _addr(raft: str) -> tuple[str, int]:
    host, port = raft.rsplit(":", 1)
    return host, int(port)


def _closed_by_peer(s: socket.socket) -> bool:
    """True once the node closed `s` (EOF or reset); False while it is open."""
    s.setblocking(False)
    try:
        return s.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for make in clusters(tmp_path_factory.mktemp("raftport")):
        yield make()


def test_a_strangers_huge_length_prefix_costs_no_memory_and_commits_go_on(cluster: LocalCluster) -> None:
    leader = cluster.leader_id()
    pid = cluster.procs[leader].pid
    before = _rss_kib(pid)
    garbage = b"\xa5" * 65536
    attacks, peak = 0, before
    with cluster.client() as client:
        deadline = time.monotonic() + 4.0  # bounded: 4 s of attack
        while time.monotonic() < deadline:
            with socket.create_connection(_addr(cluster.raft_addrs[leader - 1]), timeout=2) as s:
                attacks += 1
                with contextlib.suppress(OSError):  # the node hangs up mid-stream
                    s.sendall((60 * 1024 * 1024).to_bytes(4, "little"))
                    for _ in range(800):  # up to 50 MiB of garbage per connection
                        s.sendall(garbage)
                peak = max(peak, _rss_kib(pid))  # before closing: whatever it buffered is still held
            client.submit("util.noop", {"during": attacks})
        grown = peak - before
        assert grown < 30 * 1024, f"leader RSS grew by {grown} KiB under {attacks} attacks"
        assert cluster.leader_id() == leader
        client.submit("util.noop", {"after": True})


def test_silent_connections_are_closed_by_the_handshake_deadline(cluster: LocalCluster) -> None:
    node = 1
    socks: list[socket.socket] = []
    closed_at: dict[int, float] = {}
    try:
        for _ in range(200):
            socks.append(socket.create_connection(_addr(cluster.raft_addrs[node - 1]), timeout=5))
        connected = time.monotonic()  # every connect returned (the node accepted them)
        time.sleep(0.5)
        assert not any(_closed_by_peer(s) for s in socks)  # open until the deadline...

        def all_closed() -> bool:
            for i, s in enumerate(socks):
                if i not in closed_at and _closed_by_peer(s):
                    closed_at[i] = time.monotonic()
            return len(closed_at) == len(socks)
        wait_until(all_closed, HANDSHAKE_TIMEOUT_S + REAP_SLACK_S, "all 200 silent connections closed", 0.02)
        assert min(closed_at.values()) - connected >= HANDSHAKE_TIMEOUT_S - 1.0  # ...and closed after it
    finally:
        for s in socks:
            s.close()
    with cluster.client() as client:
        client.submit("util.noop", {"after": "silent"})


def test_a_non_peer_source_address_is_refused_at_once(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path)
    # Raft ports on distinct loopback hosts 127.0.0.2-4 (client ports stay on .1).
    for i, addr in enumerate(list(c.raft_addrs)):
        c.raft_addrs[i] = addr.replace("127.0.0.1:", f"127.0.0.{i + 2}:")
    text = c.config_path.read_text()
    for i, port in enumerate(a.rsplit(":", 1)[1] for a in c.raft_addrs):
        text = text.replace(f'raft = "127.0.0.1:{port}"', f'raft = "{c.raft_addrs[i]}"')
    c.config_path.write_text(text)
    c.start()
    try:
        c.leader_id(timeout=30)  # peers connect from their own hosts: accepted
        with c.client() as client:
            client.submit("util.noop", {"distinct": "hosts"})
        target = _addr(c.raft_addrs[0])
        stranger = socket.socket()
        peer_host = socket.socket()
        try:
            stranger.bind(("127.0.0.9", 0))
            peer_host.bind(("127.0.0.3", 0))  # node 2's host: let through to the handshake
            stranger.connect(target)
            peer_host.connect(target)
            wait_until(lambda: _closed_by_peer(stranger), 1.0, "the stranger's connection closed")
            assert not _closed_by_peer(peer_host)
        finally:
            stranger.close()
            peer_host.close()
        assert "refused a connection from 127.0.0.9" in (c.root / "logs" / "node-1.log").read_text()
    finally:
        c.stop()


# ---- in-process: the idle reaper and the settings ---------------------------

def _handshake_as_peer(addr: tuple[str, int], peer_addr: str) -> socket.socket:
    """pysyncobj's handshake, as a peer holding the password would do it."""
    s = socket.create_connection(addr, timeout=5)
    sender, receiver = Sender(LinkKey(PASSWORD)), Receiver(LinkKey(PASSWORD))
    my_key = os.urandom(32)
    s.sendall(sender.seal(my_key))
    buf = bytearray()
    while (frame := receiver.next_frame(buf, max_frame_bytes(1024))) is None:
        buf += s.recv(4096)
    echoed, node_key = receiver.open(frame)
    assert echoed == my_key
    s.sendall(sender.seal((node_key, peer_addr)))
    return s


def test_an_authentic_connection_that_only_trickles_bytes_is_reaped(tmp_path: Path) -> None:
    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    idle = 1.5
    node = RaftNode(RaftConfig(self_addr=addrs[0], peers=addrs[1:], data_dir=tmp_path, password=PASSWORD,
                               durability="none", connection_timeout_s=1.0, idle_timeout_s=idle), JobMachine())
    try:
        s = _handshake_as_peer(_addr(addrs[0]), addrs[1])
        authenticated = time.monotonic()
        with s:
            s.sendall((1000).to_bytes(4, "little"))  # a frame that never completes...
            closed = False
            while not closed and time.monotonic() - authenticated < idle + REAP_SLACK_S:
                with contextlib.suppress(OSError):
                    s.sendall(b"\0")  # ...trickled: pysyncobj's own read timeout never fires
                time.sleep(0.1)
                closed = _closed_by_peer(s)
                s.setblocking(True)
            gone = time.monotonic() - authenticated
        assert closed, "the connection was not reaped"
        assert gone >= idle - 0.2
        assert node.status()["port_reaped"] >= 1
    finally:
        node.destroy()


def test_raft_config_refuses_bad_port_settings(tmp_path: Path) -> None:
    base = dict(self_addr="127.0.0.1:7800", peers=["127.0.0.1:7801"], data_dir=tmp_path, password="pw")
    for bad, match in [({"max_in_flight_bytes": 0}, "max_in_flight_bytes"),
                       ({"handshake_timeout_s": 0}, "handshake_timeout_s"),
                       ({"idle_timeout_s": 1.5}, "idle_timeout_s")]:  # not above connection_timeout_s
        with pytest.raises(RaftConfigError, match=match):
            RaftConfig(**{**base, **bad})
