"""ClientConnection's state machine and the port limits, with no sockets: a
fake transport records what the node writes (the uvicorn way), the node is a
stand-in holding the real config, limits and waiters."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest

from cluster import protocol
from cluster.config import ClusterConfig, ConfigError, NodeSpec
from cluster.hello_throttle import HelloThrottle
from cluster.limits import LISTEN_BACKLOG, ConnectionLimits, connection_cap
from cluster.roles import Credentials
from cluster.http import HTTP_MAX_CONNECTIONS
from cluster.server import ClientConnection, Node
from cluster.waiters import Waiters

TOKEN = "tok"


def _cfg(**kw: Any) -> ClusterConfig:
    return ClusterConfig(secret="s" * 16, token=TOKEN, data_dir=Path("/tmp/x"), durability="none",
                         nodes=(NodeSpec(1, "127.0.0.1:1", "127.0.0.1:2"),), **kw)


class FakeTransport:
    def __init__(self, peer: str = "127.0.0.1") -> None:
        self.peer = peer
        self.out = bytearray()
        self.closed = False
        self.reading = True
        self.limits: tuple[int, int] | None = None

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 5555) if name == "peername" else None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def write(self, data: bytes) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def frames(self) -> list[dict[str, Any]]:
        return protocol.FrameDecoder().feed(bytes(self.out))


class StandInNode:
    """What ClientConnection uses of a Node; `handle` answers after `gate` opens."""

    def __init__(self, cfg: ClusterConfig) -> None:
        self.cfg = cfg
        self.node_id = 1
        self.errors: dict[str, int] = {}
        self.refusals: dict[str, int] = {}
        self.connections = 0
        self.conn_limits = ConnectionLimits(cfg, cfg.max_connections)
        self.client_conns: set[ClientConnection] = set()
        self.heavy_reads = asyncio.Semaphore(cfg.max_heavy_reads)
        self.pollers = 0
        self.credentials = Credentials(cfg.all_credentials())
        self.hello_throttle = HelloThrottle()
        self.gate = asyncio.Event()
        self.started: list[str] = []

    count_refusal = Node.count_refusal

    def start_write(self, op: str, args: dict[str, Any]) -> None:
        return None

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        self.started.append(op)
        await self.gate.wait()
        return {"op": op}


def _open(node: StandInNode, peer: str = "127.0.0.1") -> tuple[ClientConnection, FakeTransport]:
    conn = ClientConnection(node)  # type: ignore[arg-type]
    transport = FakeTransport(peer)
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport


def _hello(rid: int = 1, token: str = TOKEN) -> bytes:
    return protocol.encode_frame(protocol.request(rid, "hello", protocol.hello_args(token)))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ---- before hello ------------------------------------------------------------

def test_pre_hello_frame_over_the_small_limit_is_refused_at_its_header() -> None:
    async def go() -> None:
        conn, t = _open(StandInNode(_cfg()))
        conn.data_received((protocol.HELLO_MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"\x00" * 100)
        [frame] = t.frames()
        assert frame["err"][0] == "TOO_LARGE" and "before hello" in frame["err"][1]
        assert t.closed and conn.decoder.buffered <= protocol.HELLO_MAX_FRAME_BYTES + 4 + 100
    run(go())


def test_pre_hello_buffer_is_bounded_by_the_small_frame() -> None:
    async def go() -> None:
        conn, t = _open(StandInNode(_cfg()))
        conn.data_received(protocol.HELLO_MAX_FRAME_BYTES.to_bytes(4, "big"))
        for _ in range(protocol.HELLO_MAX_FRAME_BYTES // 1000):
            conn.data_received(b"\x00" * 1000)
        assert not t.closed and conn.decoder.buffered <= protocol.HELLO_MAX_FRAME_BYTES + 4
    run(go())


def test_hello_then_a_large_request_in_the_same_read_is_served() -> None:
    async def go() -> None:
        node = StandInNode(_cfg())
        node.gate.set()
        conn, t = _open(node)
        big = protocol.encode_frame(protocol.request(2, "get", {"id": "x" * 100_000}))
        conn.data_received(_hello() + big)
        await asyncio.sleep(0.01)
        frames = t.frames()
        assert [f["id"] for f in frames] == [1, 2] and "ok" in frames[1] and not t.closed
        assert conn.decoder.max_frame_bytes == node.cfg.max_frame_bytes
    run(go())


@pytest.mark.parametrize("first, code", [
    (protocol.encode_frame(protocol.request(1, "stats", {})), "UNAUTHORIZED"),
    (_hello(token="wrong"), "UNAUTHORIZED"),
    (b"\x00\x00\x00\x03abc", "BAD_REQUEST"),
])
def test_anything_but_a_valid_hello_closes(first: bytes, code: str) -> None:
    async def go() -> None:
        conn, t = _open(StandInNode(_cfg()))
        conn.data_received(first + _hello(2))
        frames = t.frames()
        assert len(frames) == 1 and frames[0]["err"][0] == code and t.closed and not conn.authenticated
    run(go())


# ---- connection caps -----------------------------------------------------------

def test_per_source_and_node_caps_refuse_with_overloaded_and_release_on_close() -> None:
    async def go() -> None:
        node = StandInNode(_cfg(max_connections=3, max_connections_per_source=2))
        a1, _ = _open(node, "127.0.0.2")
        _a2, _ = _open(node, "127.0.0.2")
        _, refused = _open(node, "127.0.0.2")
        [frame] = refused.frames()
        assert frame["err"][0] == "OVERLOADED" and "127.0.0.2" in frame["err"][1] and refused.closed
        _b1, t = _open(node, "127.0.0.3")
        assert not t.closed and node.connections == 3
        _, full = _open(node, "127.0.0.4")
        assert full.frames()[0]["err"][0] == "OVERLOADED" and "connection limit" in full.frames()[0]["err"][1]
        a1.connection_lost(None)
        _, again = _open(node, "127.0.0.2")
        assert not again.closed and node.conn_limits.per_source == {"127.0.0.2": 2, "127.0.0.3": 1}
        assert node.refusals == {"source_limit": 1, "node_limit": 1}  # for /metrics, by reason
    run(go())


def test_the_connection_cap_leaves_the_fd_reserve() -> None:
    cfg = _cfg(fd_reserve=64, max_connections=10_000)
    assert connection_cap(cfg, 256) == 256 - 64 - LISTEN_BACKLOG - HTTP_MAX_CONNECTIONS
    assert connection_cap(cfg, 1 << 20) == 10_000
    assert connection_cap(cfg, 100) == 1


# ---- backpressure and fairness ---------------------------------------------------

def test_a_full_write_buffer_stops_reading_and_queued_reads_until_it_drains() -> None:
    async def go() -> None:
        node = StandInNode(_cfg(conn_write_buffer_bytes=65536))
        node.gate.set()
        conn, t = _open(node)
        assert t.limits == (65536, 16384)
        conn.data_received(_hello())
        conn.pause_writing()
        assert not t.reading
        conn.data_received(protocol.encode_frame(protocol.request(2, "list", {})))
        await asyncio.sleep(0.01)
        assert node.started == [] and len(t.frames()) == 1
        conn.resume_writing()
        await asyncio.sleep(0.01)
        assert node.started == ["list"] and t.reading and [f["id"] for f in t.frames()] == [1, 2]
    run(go())


def test_heavy_reads_are_bounded_per_connection_and_run_in_order() -> None:
    async def go() -> None:
        node = StandInNode(_cfg(max_heavy_reads_per_connection=2, max_heavy_reads=3))
        conn, t = _open(node)
        conn.data_received(_hello() + b"".join(
            protocol.encode_frame(protocol.request(i, "stats", {"n": i})) for i in range(2, 12)))
        await asyncio.sleep(0.01)
        assert len(node.started) == 2
        other, _ = _open(node, "127.0.0.9")
        other.data_received(_hello() + b"".join(
            protocol.encode_frame(protocol.request(i, "list", {})) for i in range(2, 5)))
        await asyncio.sleep(0.01)
        assert len(node.started) == 3  # the node-wide bound
        node.gate.set()
        await asyncio.sleep(0.05)
        ids = [f["id"] for f in t.frames()]
        assert ids == list(range(1, 12))
    run(go())


def test_long_polls_over_the_per_connection_cap_get_overloaded() -> None:
    async def go() -> None:
        node = StandInNode(_cfg(max_pollers_per_connection=2, max_pollers=3))
        conn, t = _open(node)
        conn.data_received(_hello() + b"".join(
            protocol.encode_frame(protocol.request(i, "wait", {"id": "j"})) for i in range(2, 5)))
        await asyncio.sleep(0.01)
        [refused] = [f for f in t.frames() if "err" in f]
        assert refused["id"] == 4 and refused["err"][0] == "OVERLOADED" and not t.closed
        other, t2 = _open(node, "127.0.0.9")
        other.data_received(_hello() + b"".join(
            protocol.encode_frame(protocol.request(i, "lease", {})) for i in range(2, 4)))
        await asyncio.sleep(0.01)
        assert [f["err"][0] for f in t2.frames() if "err" in f] == ["OVERLOADED"]  # node-wide: 3
        node.gate.set()
        await asyncio.sleep(0.01)
        assert node.pollers == 0 and conn.pollers == 0
    run(go())


# ---- waiters ---------------------------------------------------------------------

def test_an_entry_wakes_only_as_many_lease_pollers_as_it_made_jobs_ready() -> None:
    async def go() -> None:
        w = Waiters()
        polls = [asyncio.ensure_future(w.lease(["a", "b"], 5)) for _ in range(5)]
        other = asyncio.ensure_future(w.lease(["c"], 5))
        waits = [asyncio.ensure_future(w.job("j1", 5)), asyncio.ensure_future(w.job("j2", 5))]
        await asyncio.sleep(0)
        assert w.count == 8
        w.wake({"a": 2, "zzz": 9}, {"j1"})
        await asyncio.sleep(0)
        assert [p.done() for p in polls] == [True, True, False, False, False]
        assert not other.done() and waits[0].done() and not waits[1].done()
        w.wake({"b": 1}, ())
        await asyncio.sleep(0)
        assert [p.done() for p in polls] == [True, True, True, False, False]
        for f in polls + waits + [other]:
            f.cancel()
        await asyncio.gather(*polls, *waits, other, return_exceptions=True)
        assert w.count == 0 and w._by_queue == {} and w._by_job == {}
    run(go())


def test_a_parked_poller_wakes_at_its_timeout() -> None:
    async def go() -> None:
        w = Waiters()
        await asyncio.wait_for(w.lease(["q"], 0.01), 1.0)
        await asyncio.wait_for(w.job("j", 0.01), 1.0)
        assert w.count == 0
    run(go())


# ---- framing and settings ----------------------------------------------------------

def test_feed_max_messages_keeps_the_rest_buffered() -> None:
    d = protocol.FrameDecoder()
    frames = b"".join(protocol.encode_frame({"id": i}) for i in range(3))
    assert d.feed(frames, max_messages=1) == [{"id": 0}]
    assert d.feed(b"") == [{"id": 1}, {"id": 2}]


def test_connection_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="idle_timeout_s"):
        _cfg(idle_timeout_s=0)
    with pytest.raises(ConfigError, match="max_connections_per_source"):
        _cfg(max_connections_per_source=0)
    with pytest.raises(ConfigError, match="token"):
        ClusterConfig(secret="s" * 16, token="t" * 2000, data_dir=Path("/tmp/x"), durability="none",
                      nodes=(NodeSpec(1, "127.0.0.1:1", "127.0.0.1:2"),))
    # the longest token allowed still fits the pre-hello frame
    hello = protocol.encode_frame(protocol.request(2**63 - 1, "hello", protocol.hello_args("t" * 1024, "worker")))
    assert len(hello) - 4 <= protocol.HELLO_MAX_FRAME_BYTES
    assert msgpack.unpackb(hello[4:])["args"]["role"] == "worker"


def test_a_page_encoded_in_slices_decodes_like_the_plain_reply() -> None:
    items = [{"id": f"j{i}", "args": {"b": b"\x00" * i, "s": "é" * i}} for i in range(250)]
    page = protocol.PageEncoder("jobs")
    for i in range(0, 250, 100):
        page.add(items[i:i + 100])
    frame = protocol.encode_frame(protocol.response_ok(7, page.finish(cursor=None)))
    assert frame == protocol.encode_frame({"id": 7, "ok": {"jobs": items, "cursor": None}})
    empty = protocol.PageEncoder("jobs")
    empty.add([])
    assert protocol.FrameDecoder().feed(protocol.encode_frame(protocol.response_ok(1, empty.finish(cursor=3)))) == \
        [{"id": 1, "ok": {"jobs": [], "cursor": 3}}]


def test_a_pipelined_burst_starts_at_most_max_batch_requests_per_loop_iteration() -> None:
    from cluster.server import MAX_BATCH

    async def go() -> None:
        node = StandInNode(_cfg(max_pollers_per_connection=1000))
        conn, t = _open(node)
        conn.data_received(_hello() + b"".join(
            protocol.encode_frame(protocol.request(i, "get", {"id": "x"})) for i in range(2, 2 + 3 * MAX_BATCH)))
        assert conn.in_flight == MAX_BATCH and not t.reading
        for _ in range(5):
            await asyncio.sleep(0)
        assert conn.in_flight == 3 * MAX_BATCH and t.reading and not conn.backlog
        node.gate.set()
        await asyncio.sleep(0.01)
        assert [f["id"] for f in t.frames()] == list(range(1, 2 + 3 * MAX_BATCH))
    run(go())
