"""The real node server on a `LocalReplica`: no Raft, no sockets.

A `Node` serves a `JobMachine` through replication/local.py's one-member
replica, and each client connection is a `ClientConnection` over a fake
transport: the test feeds bytes to `data_received` and decodes what the node
wrote (the way uvicorn tests its protocols). Everything runs on one loop and
the replica applies with `call_soon`, so each reply arrives within a bounded
number of loop iterations (`Conn.reply`), never after a timer.
"""
from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgpack
import pytest

from cluster import protocol
from cluster.config import ClusterConfig, NodeSpec
from cluster.server import ClientConnection, Node
from replication.local import LocalReplica
from replication.machine import JobMachine

TOKEN = "tok"
NODE_1 = NodeSpec(1, "127.0.0.1:7101", "127.0.0.1:7201")
NODE_2 = NodeSpec(2, "127.0.0.1:7102", "127.0.0.1:7202")
MAX_ITERATIONS = 100  # loop iterations a reply may take (a commit takes about five)


def _cfg(**kw: Any) -> ClusterConfig:
    return ClusterConfig(secret="s" * 16, token=TOKEN, data_dir=Path("/nonexistent"), durability="none",
                         nodes=(NODE_1, NODE_2), **kw)


class FakeTransport:
    """What ClientConnection uses of an asyncio transport; keeps what it wrote."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False
        self.reading = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

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


class Conn:
    """One client connection to `node`: send requests, read the frames written back."""

    def __init__(self, node: Node) -> None:
        self.conn = ClientConnection(node)
        self.transport = FakeTransport()
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.decoder = protocol.FrameDecoder()
        self.frames: list[dict[str, Any]] = []
        self.next_id = 1

    def frame(self, op: str, args: dict[str, Any] | None = None) -> tuple[int, bytes]:
        rid, self.next_id = self.next_id, self.next_id + 1
        return rid, protocol.encode_frame(protocol.request(rid, op, args or {}))

    def send(self, op: str, args: dict[str, Any] | None = None) -> int:
        rid, data = self.frame(op, args)
        self.conn.data_received(data)
        return rid

    def read(self) -> list[dict[str, Any]]:
        """Frames written since the last read."""
        new = self.decoder.feed(bytes(self.transport.out))
        self.transport.out.clear()
        self.frames += new
        return new

    async def reply(self, rid: int) -> dict[str, Any]:
        for _ in range(MAX_ITERATIONS):
            self.read()
            for frame in self.frames:
                if frame.get("id") == rid:
                    self.frames.remove(frame)
                    return frame
            await asyncio.sleep(0)
        raise AssertionError(f"no reply to request {rid} within {MAX_ITERATIONS} loop iterations")

    async def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """The result of one request; AssertionError naming the error if it failed."""
        frame = await self.reply(self.send(op, args))
        assert "ok" in frame, frame
        return frame["ok"]

    async def error(self, op: str, args: dict[str, Any] | None = None) -> tuple[str, str, Any]:
        frame = await self.reply(self.send(op, args))
        assert "err" in frame, frame
        code, message, details = frame["err"]
        return code, message, details

    async def hello(self) -> None:
        await self.call("hello", protocol.hello_args(TOKEN))


def served(test: Callable[[Node, LocalReplica], Awaitable[None]], **cfg: Any) -> None:
    """Run `test(node, replica)` on a fresh loop against node 1 of a two-node
    config, its replica leading."""
    async def go() -> None:
        node = Node(_cfg(**cfg), 1, JobMachine(), functools.partial(LocalReplica, address=NODE_1.raft))
        try:
            await test(node, node.raft)  # type: ignore[arg-type]
        finally:
            node.raft.destroy()
    asyncio.run(go())


def job(job_id: str, **spec: Any) -> dict[str, Any]:
    return {"job": {"id": job_id, "type": "t", **spec}}


# ---- hello -----------------------------------------------------------------------

def test_hello_names_the_node_and_protocol() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        assert await c.call("hello", protocol.hello_args(TOKEN)) == {"node_id": 1,
                                                                     "protocol": protocol.PROTOCOL_VERSION}
        assert c.conn.authenticated and not c.transport.closed
    served(test)


@pytest.mark.parametrize("op, args, code", [
    ("hello", protocol.hello_args("wrong"), "UNAUTHORIZED"),
    ("get", {"id": "x"}, "UNAUTHORIZED"),
    ("hello", {**protocol.hello_args(TOKEN), "version": 99}, "BAD_REQUEST"),
])
def test_a_bad_hello_is_refused_and_closes(op: str, args: dict[str, Any], code: str) -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        assert (await c.error(op, args))[0] == code
        assert c.transport.closed and not c.conn.authenticated
    served(test)


# ---- framing -----------------------------------------------------------------------

def test_pre_hello_frame_over_its_small_limit_is_refused_at_the_header() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        c.conn.data_received((protocol.HELLO_MAX_FRAME_BYTES + 1).to_bytes(4, "big"))
        [frame] = c.read()
        assert frame["err"][0] == "TOO_LARGE" and "before hello" in frame["err"][1]
        assert c.transport.closed
    served(test)


def test_frame_over_max_frame_bytes_closes_the_connection() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        c.conn.data_received((node.cfg.max_frame_bytes + 1).to_bytes(4, "big"))
        [frame] = c.read()
        assert frame["id"] == 0 and frame["err"][0] == "TOO_LARGE"
        assert c.transport.closed and replica.log == []
    served(test)


def test_undecodable_frame_closes_but_a_bad_request_is_answered() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        # A well-framed request for an op that does not exist: answered, connection kept.
        assert (await c.error("drop_tables"))[0] == "BAD_REQUEST"
        assert not c.transport.closed
        body = b"\xc1"  # never valid msgpack
        c.conn.data_received(len(body).to_bytes(4, "big") + body)
        [frame] = c.read()
        assert frame["err"][0] == "BAD_REQUEST" and c.transport.closed
    served(test)


def test_a_request_split_across_reads_is_reassembled() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        rid, data = c.frame("submit", job("a"))
        for i in range(len(data)):
            c.conn.data_received(data[i:i + 1])
        assert (await c.reply(rid))["ok"]["state"] == "queued"
    served(test)


# ---- a job's round trip ------------------------------------------------------------

def test_submit_lease_complete_round_trip() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        assert await c.call("submit", job("a", args={"n": 1})) == {"id": "a", "created": True, "state": "queued"}
        leased = await c.call("lease", {"worker": "w1", "queues": ["default"], "wait_s": 0})
        [granted] = leased["jobs"]
        assert (granted["id"], granted["attempt"], granted["args"]) == ("a", 1, {"n": 1})
        done = {"id": "a", "attempt": 1, "lease_token": granted["lease_token"], "result": "done"}
        assert await c.call("complete", done) == {"state": "succeeded"}
        view = await c.call("get", {"id": "a"})
        assert (view["state"], view["result"], view["attempts"]) == ("succeeded", "done", 1)
        # Every write went through the replica's log and nothing else.
        assert [[cmd["op"] for cmd in msgpack.unpackb(e)["cmds"]] for e in replica.log] == \
            [["submit"], ["lease"], ["complete"]]
        assert replica.status()["last_applied"] == 3
    served(test)


def test_submitting_the_same_id_twice_is_idempotent() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        assert (await c.call("submit", job("a")))["created"] is True
        assert (await c.call("submit", job("a")))["created"] is False
    served(test)


def test_wait_answers_when_the_job_finishes() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        await c.call("submit", job("a"))
        waiting = c.send("wait", {"id": "a", "timeout_s": 60})
        [leased] = (await c.call("lease", {"worker": "w1", "wait_s": 0}))["jobs"]
        assert not [f for f in c.read() if f.get("id") == waiting]  # still queued/running
        await c.call("complete", {"id": "a", "attempt": 1, "lease_token": leased["lease_token"]})
        assert (await c.reply(waiting))["ok"]["state"] == "succeeded"  # woken by on_applied
    served(test)


# ---- error codes -------------------------------------------------------------------

def test_error_codes() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        assert (await c.error("get", {"id": "nope"}))[0] == "NOT_FOUND"
        assert (await c.error("get", {"id": ""}))[0] == "BAD_REQUEST"
        assert (await c.error("submit", {"job": {"id": "x"}}))[0] == "BAD_REQUEST"  # no type
        assert (await c.error("submit", job("big", args="x" * (node.cfg.max_args_bytes + 1))))[0] == "TOO_LARGE"
        await c.call("submit", job("a"))
        [leased] = (await c.call("lease", {"worker": "w1", "wait_s": 0}))["jobs"]
        code, _, _ = await c.error("complete", {"id": "a", "attempt": 2, "lease_token": leased["lease_token"]})
        assert code == "LEASE_LOST"
        assert node.errors["NOT_FOUND"] == 1 and node.errors["LEASE_LOST"] == 1
    served(test)


def test_submits_past_max_live_jobs_are_overloaded() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        await c.call("submit", job("a"))
        await c.call("submit", job("b"))
        code, message, _ = await c.error("submit", job("c"))
        assert code == "OVERLOADED" and "max_live_jobs" in message
    served(test, max_live_jobs=2)


# ---- pipelining --------------------------------------------------------------------

def test_pipelined_writes_are_answered_in_full_and_share_one_entry() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        frames = [c.frame("hello", protocol.hello_args(TOKEN))]
        frames += [c.frame("submit", job(f"j{i}")) for i in range(20)]
        frames.append(c.frame("get", {"id": "missing"}))
        c.conn.data_received(b"".join(data for _, data in frames))  # one read: hello and all
        replies = [await c.reply(rid) for rid, _ in frames]
        assert all("ok" in r for r in replies[:-1]) and replies[-1]["err"][0] == "NOT_FOUND"
        assert [r["ok"]["id"] for r in replies[1:-1]] == [f"j{i}" for i in range(20)]
        assert len(replica.log) == 1  # group commit: one entry for the twenty submits
    served(test)


def test_a_lost_connection_drops_writes_not_yet_proposed() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        c.send("submit", job("a"))
        c.conn.connection_lost(None)  # before the committer's flush
        for _ in range(10):
            await asyncio.sleep(0)
        assert replica.log == [] and node.connections == 0
    served(test)


# ---- leadership ----------------------------------------------------------------------

def test_a_follower_redirects_to_the_leaders_client_address() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        await c.call("submit", job("a"))
        replica.follow(NODE_2.raft)
        code, _, details = await c.error("submit", job("b"))
        assert (code, details) == ("NOT_LEADER", {"leader": NODE_2.client})
        assert (await c.error("get", {"id": "a"}))[0] == "NOT_LEADER"
        assert (await c.call("get", {"id": "a", "stale_ok": True}))["state"] == "queued"
        replica.follow(None)
        assert (await c.error("submit", job("b")))[0] == "NO_LEADER"
        replica.lead()
        assert (await c.call("submit", job("b")))["created"] is True
        status = await c.call("cluster_status")
        assert status["leader"] == NODE_1.client and status["term"] == 2
    served(test)


def test_leadership_lost_after_the_check_answers_not_leader() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        c = Conn(node)
        await c.hello()
        rid = c.send("submit", job("a"))  # leader now: queued in the committer
        replica.follow(NODE_2.raft)  # steps down before the committer proposes it
        frame = await c.reply(rid)
        assert frame["err"][0] == "NOT_LEADER" and frame["err"][2] == {"leader": NODE_2.client}
        assert replica.log == []
    served(test)
