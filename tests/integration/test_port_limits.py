"""Port limits on real node processes: each attack from issue 10 pushed past
its limit on loopback, asserting behaviour (refusals, bounded memory, no
election, everything answered). Latency figures are printed, not asserted.

Floods come from other 127.0.0.x source addresses than the legitimate client
(127.0.0.1), so the per-source cap is what they hit."""
from __future__ import annotations

import asyncio
import selectors
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from cluster import protocol
from cluster.client import AsyncClient
from tests.integration.conftest import clusters
from tests.integration.harness import TOKEN, LocalCluster, WorkerProcess, wait_until

LIMITS = """
hello_timeout_s = 1.0
idle_timeout_s = 1.5
max_connections_per_source = 40
conn_write_buffer_bytes = 65536
max_heavy_reads = 2
max_heavy_reads_per_connection = 1
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for make in clusters(tmp_path_factory.mktemp("limits")):
        yield make(extra_config=LIMITS)


# ---- helpers -----------------------------------------------------------------

def _addr(addr: str) -> tuple[str, int]:
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def raw(addr: str, source: str = "127.0.0.1", hello: bool = True) -> socket.socket:
    sock = socket.create_connection(_addr(addr), timeout=5, source_address=(source, 0))
    if hello:
        sock.sendall(protocol.encode_frame(protocol.request(1, "hello", protocol.hello_args(TOKEN))))
        [reply] = read_frames(sock, 1)
        assert "ok" in reply, reply
    return sock


def read_frames(sock: socket.socket, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Read n frames (fewer if the node closes the connection first)."""
    decoder = protocol.FrameDecoder()
    frames: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(frames) < n:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            break
        if not data:
            break
        frames += decoder.feed(data)
    return frames


def closed_by_node(sock: socket.socket, timeout: float) -> bool:
    """True once the node closed `sock` (EOF or reset) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            if not sock.recv(1 << 16):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def client_connections(c: LocalCluster, node_id: int) -> int:
    """The node's open client connections, from its /metrics."""
    with socket.create_connection(_addr(c.http_addrs[node_id - 1]), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    for line in out.decode().splitlines():
        if line.startswith("raftq_client_connections "):
            return int(float(line.split()[1]))
    raise AssertionError("no raftq_client_connections in /metrics")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def leader_pid_and_term(c: LocalCluster) -> tuple[int, int, int]:
    lid = c.leader_id()
    with c.node_client(lid) as cl:
        term = cl.cluster_status()["term"]
    return lid, c.procs[lid].pid, term


def submit_latencies(c: LocalCluster, n: int, queue: str = "default") -> list[float]:
    out = []
    with c.client() as cl:
        for _ in range(n):
            t0 = time.perf_counter()
            cl.submit("util.noop", queue=queue)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def collect_leases(socks: list[socket.socket], until: int | None, timeout: float) -> int:
    """Jobs granted in lease replies arriving on `socks` within `timeout` (stop at `until`)."""
    sel = selectors.DefaultSelector()
    decoders = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        decoders[s] = protocol.FrameDecoder()
    granted = 0
    deadline = time.monotonic() + timeout
    try:
        while (until is None or granted < until) and time.monotonic() < deadline:
            for key, _ in sel.select(max(deadline - time.monotonic(), 0.0)):
                data = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                for f in decoders[key.fileobj].feed(data):  # type: ignore[index]
                    assert "ok" in f, f"a parked lease poll was answered {f}"
                    granted += len(f["ok"]["jobs"])
    finally:
        sel.close()
    return granted


def _p50(xs: list[float]) -> float:
    return statistics.median(xs)


# ---- before hello ----------------------------------------------------------------

def test_pre_hello_frames_are_tiny_and_memory_stays_flat(limited: LocalCluster) -> None:
    lid, pid, _ = leader_pid_and_term(limited)
    addr = limited.client_addrs[lid - 1]
    one = raw(addr, "127.0.0.10", hello=False)
    one.sendall((8 * 1024 * 1024).to_bytes(4, "big"))
    [frame] = read_frames(one, 1)
    assert frame["err"][0] == "TOO_LARGE" and "before hello" in frame["err"][1]
    assert closed_by_node(one, 2)
    one.close()
    before = rss_kb(pid)
    socks = []
    for i in range(60):  # each pushes 1 MiB before hello: an 8 MiB frame, or junk after a 4000-byte one
        s = raw(addr, f"127.0.0.{11 + i // 30}", hello=False)
        header = (8 * 1024 * 1024 if i % 2 else 4000).to_bytes(4, "big")
        try:
            s.sendall(header + b"\xc1" * (1 << 20))
        except OSError:
            pass  # the node refused and closed already
        socks.append(s)
    for s in socks:
        assert closed_by_node(s, 5)
        s.close()
    grown = (rss_kb(pid) - before) / 1024
    print(f"\npre-hello 60 x 1 MiB: leader RSS +{grown:.1f} MiB")
    assert grown < 16


def test_hello_deadline_closes_silent_and_partial_connections(limited: LocalCluster) -> None:
    addr = limited.client_addrs[limited.leader_id() - 1]
    silent = raw(addr, "127.0.0.20", hello=False)
    partial = raw(addr, "127.0.0.20", hello=False)
    partial.sendall(b"\x00\x00\x00\x40" + b"\x81")  # a hello that never completes
    for s in (silent, partial):
        frames = read_frames(s, 1, timeout=5)
        assert frames and frames[0]["err"][0] == "TIMEOUT" and "hello" in frames[0]["err"][1]
        assert closed_by_node(s, 2)
        s.close()


# ---- idle close ------------------------------------------------------------------

def test_idle_connections_close_and_clients_and_workers_reconnect(limited: LocalCluster) -> None:
    addr = limited.client_addrs[limited.leader_id() - 1]
    probe = raw(addr, "127.0.0.21")
    worker = WorkerProcess(limited, "idle")
    try:
        with limited.client() as cl:
            cl.submit("util.noop")
            first = cl._conn
            aclient = AsyncClient(limited.client_addrs, token=TOKEN)

            async def async_round() -> int:
                await aclient.submit("util.noop")
                return aclient.connections_opened

            loop = asyncio.new_event_loop()
            try:
                opened = loop.run_until_complete(async_round())
                last_use = time.monotonic()
                # Nothing in flight on the probe: the node closes it after idle_timeout_s.
                frames = read_frames(probe, 1, timeout=6)
                assert frames and frames[0]["err"][0] == "TIMEOUT" and "idle" in frames[0]["err"][1]
                assert closed_by_node(probe, 2)
                # The clients' connections are idle too: let their timeout pass (plus two sweeps).
                time.sleep(max(0.0, last_use + 1.5 + 0.6 - time.monotonic()))
                job = cl.submit("util.noop")  # transparently on a new connection
                assert cl._conn is not first
                assert loop.run_until_complete(async_round()) == opened + 1
                loop.run_until_complete(aclient.close())
            finally:
                loop.close()
            # The worker's lease long poll is never idle: it keeps serving.
            assert cl.result(job, timeout=15)["state"] == "succeeded"
    finally:
        worker.stop()
        probe.close()


# ---- connection caps ---------------------------------------------------------------

def test_per_source_cap_refuses_with_overloaded_other_sources_still_served(limited: LocalCluster) -> None:
    addr = limited.client_addrs[limited.leader_id() - 1]
    held = [raw(addr, "127.0.0.30") for _ in range(40)]
    try:
        extra = raw(addr, "127.0.0.30", hello=False)
        frames = read_frames(extra, 1)
        assert frames[0]["err"][0] == "OVERLOADED" and "127.0.0.30" in frames[0]["err"][1]
        assert closed_by_node(extra, 2)
        extra.close()
        raw(addr, "127.0.0.31").close()  # another source is not affected
        with limited.client() as cl:
            assert cl.get(cl.submit("util.noop"))["state"] == "queued"
    finally:
        for s in held:
            s.close()


# ---- backpressure and fairness -------------------------------------------------------

def test_a_client_that_does_not_read_holds_bounded_memory(limited: LocalCluster) -> None:
    with limited.client() as cl:
        for _ in range(4):
            cl.submit_many([{"type": "util.noop", "args": {"pad": "x" * 1000}, "queue": "fat"}
                            for _ in range(500)])
    # After the set-up: half-MiB entries may move leadership on a loaded box (not this test's subject).
    lid, pid, term = leader_pid_and_term(limited)
    sock = raw(limited.client_addrs[lid - 1], "127.0.0.40")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = rss_kb(pid)
    reqs = b"".join(protocol.encode_frame(protocol.request(i, "list", {"queue": "fat", "limit": 1000}))
                    for i in range(2, 302))  # 300 replies of ~1 MiB each, never read
    sock.sendall(reqs)
    samples = []
    for _ in range(10):  # 3 s of RSS samples while the node is stuck on our socket
        time.sleep(0.3)
        samples.append(rss_kb(pid))
    lat = submit_latencies(limited, 50)
    grown = (max(samples) - before) / 1024
    print(f"\nnon-reading client, 300 x list(1000): leader RSS +{grown:.1f} MiB; legit submit p50 "
          f"{_p50(lat):.1f} ms max {max(lat):.1f} ms")
    assert grown < 64
    # Requests in flight but replies unread: idle all the same, closed after idle_timeout_s.
    # (The kernel still holds the unread bytes: the peer sees no FIN before them.)
    assert wait_until(lambda: client_connections(limited, lid) == 0, 10, "the node dropping a peer that never reads")
    sock.close()
    assert leader_pid_and_term(limited)[2] == term


def test_pipelined_heavy_reads_do_not_cost_the_leadership(limited: LocalCluster) -> None:
    with limited.client() as cl:
        for _ in range(2):
            cl.submit_many([{"type": "util.noop", "queue": "small"} for _ in range(500)])
    lid, _, term = leader_pid_and_term(limited)
    addr = limited.client_addrs[lid - 1]
    socks = [raw(addr, "127.0.0.50") for _ in range(2)]
    for s in socks:
        s.sendall(b"".join(protocol.encode_frame(protocol.request(i, "list", {"queue": "small", "limit": 1000}))
                           for i in range(2, 102)))
    # Read both replies streams as they come (a peer that leaves replies unread
    # for idle_timeout_s is dropped), while a legitimate client writes.
    with ThreadPoolExecutor(len(socks)) as pool:
        readers = [pool.submit(read_frames, s, 100, 60) for s in socks]
        lat = submit_latencies(limited, 100)
        answered = [r.result() for r in readers]
    for s in socks:
        s.close()
    print(f"\n2 x 100 pipelined list(1000): legit submit p50 {_p50(lat):.1f} ms max {max(lat):.1f} ms")
    assert [len(a) for a in answered] == [100, 100]
    assert all(len(f["ok"]["jobs"]) == 1000 for a in answered for f in a)
    assert leader_pid_and_term(limited)[:1] == (lid,) and leader_pid_and_term(limited)[2] == term


def test_idle_lease_polls_wake_only_for_their_queue(limited: LocalCluster) -> None:
    lid, _, term = leader_pid_and_term(limited)
    addr = limited.client_addrs[lid - 1]
    base = submit_latencies(limited, 100)
    socks = [raw(addr, f"127.0.0.{60 + i // 40}") for i in range(20)]
    for n, s in enumerate(socks):  # 20 x 100 = 2000 parked lease polls on queue "idle"
        s.sendall(b"".join(protocol.encode_frame(protocol.request(
            i, "lease", {"worker": f"w{n}", "queues": ["idle"], "wait_s": 30})) for i in range(2, 102)))
    time.sleep(1.0)  # let every poll park
    loaded = submit_latencies(limited, 100)
    print(f"\n2000 idle lease polls: legit submit p50 {_p50(base):.1f} -> {_p50(loaded):.1f} ms, "
          f"max {max(base):.1f} -> {max(loaded):.1f} ms")
    with limited.client() as cl:  # 5 ready jobs: exactly 5 polls get one each
        for _ in range(5):
            cl.submit("util.noop", queue="idle")
    granted = collect_leases(socks, until=5, timeout=5.0)
    granted += collect_leases(socks, until=None, timeout=0.5)  # and no other poll got anything
    for s in socks:
        s.close()
    assert granted == 5
    assert leader_pid_and_term(limited)[2] == term


# ---- HTTP port ----------------------------------------------------------------------

def test_http_port_caps_connections_and_request_size(limited: LocalCluster) -> None:
    from cluster.http import HTTP_MAX_CONNECTIONS
    haddr = _addr(limited.http_addrs[0])
    idle = [socket.create_connection(haddr, timeout=5) for _ in range(HTTP_MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        extra = socket.create_connection(haddr, timeout=5)
        assert closed_by_node(extra, 3)
        extra.close()
    finally:
        for s in idle:
            s.close()

    def get(path: str, pad: int = 0) -> bytes:
        with socket.create_connection(haddr, timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nX-Pad: {'a' * pad}\r\n\r\n".encode())
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    assert wait_until(lambda: get("/health").startswith(b"HTTP/1.1 200"), 10, "/health after the flood")
    assert get("/health", pad=20_000).startswith(b"HTTP/1.1 400")
    metrics = get("/metrics")
    assert b"raftq_client_connection_cap " in metrics and b"raftq_long_polls " in metrics


# ---- file descriptors ------------------------------------------------------------------

def test_a_connection_flood_never_starves_the_leaders_files(tmp_path: Path) -> None:
    c = LocalCluster(tmp_path, durability="fsync", nofile=256,
                     extra_config="hello_timeout_s = 60.0\nmax_connections_per_source = 30\n")
    c.start()
    flood: list[socket.socket] = []
    try:
        lid, _, term = leader_pid_and_term(c)
        addr = c.client_addrs[lid - 1]
        assert "client connections capped at 76 " in c.log_tail(lid, 200)  # 256 - 64 - 100 - 16
        legit = c.client()
        legit.submit("util.noop")

        def flood_from(source: str, n: int) -> int:
            refused = 0
            for _ in range(n):
                s = raw(addr, source, hello=False)
                s.settimeout(0.2)
                try:
                    data = s.recv(1 << 16)
                except TimeoutError:
                    flood.append(s)  # admitted: it holds its slot, silent
                    continue
                assert b"OVERLOADED" in data
                refused += 1
                s.close()
            return refused

        assert flood_from("127.0.0.2", 100) == 70  # one source: its cap of 30
        newcomer = c.client()  # another source (127.0.0.1) still gets in
        newcomer.submit("util.noop")
        newcomer.close()
        refused = sum(flood_from(f"127.0.0.{k}", 30) for k in range(3, 6))
        assert refused > 0 and len(flood) <= 76
        t0 = time.perf_counter()
        ids = [legit.submit("util.noop") for _ in range(50)]  # connected before: keeps committing
        print(f"\nfd flood ({len(flood)} held, {refused + 70} refused): 50 fsync'd submits in "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        assert all(legit.get(i)["state"] == "queued" for i in ids)
        status = legit.cluster_status()  # over the legit connection: new ones are refused now
        assert status["term"] == term and status["leader"] == addr
        legit.close()
    finally:
        for s in flood:
            s.close()
        c.stop()
