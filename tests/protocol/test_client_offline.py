"""Client and AsyncClient against tiny scripted nodes that speak the real protocol.

`FakeNode` is a threaded TCP server on 127.0.0.1 using cluster.protocol's own
framing. Each test scripts per-op replies (results, wire errors, silence,
dropped connections, deferred out-of-order answers) and checks what the
client did: where it went, what it re-sent, how long it waited, what it raised.
No real raftq node is involved; the integration tests cover that.
"""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from cluster.client import AsyncClient, Client
from cluster.errors import (
    BadRequest,
    Conflict,
    LeaseLost,
    NoLeader,
    NotFound,
    Overloaded,
    Timeout,
    Unauthorized,
    Unavailable,
)
from cluster.protocol import FrameDecoder, encode_frame, parse_request


@dataclass
class Err:
    code: str
    message: str = ""
    extra: Any = None


CLOSE = object()  # drop the connection without answering
SILENT = object()  # never answer
DEFER = object()  # hold the answer; see FakeNode.flush_at
TOKEN = "ab" * 16  # a lease token as a node hands it out

Handler = Callable[[str, dict[str, Any], int], Any]  # (op, args, nth call of this op) -> reply


class FakeNode:
    def __init__(self, ops: dict[str, Handler] | None = None, *, token: str = "dev", node_id: int = 1) -> None:
        self.ops = dict(ops or {})
        self.token = token
        self.node_id = node_id
        self.status: dict[str, Any] = {"leader": None, "self": node_id, "nodes": []}
        self.flush_at = 0  # when this many answers are deferred, send them all in reverse order
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.hellos: list[dict[str, Any]] = []
        self.connections = 0
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def count(self, op: str) -> int:
        with self._lock:
            return sum(1 for o, _ in self.requests if o == op)

    def args_of(self, op: str) -> list[dict[str, Any]]:
        with self._lock:
            return [a for o, a in self.requests if o == op]

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        dec = FrameDecoder()
        deferred: list[tuple[int, Any]] = []
        authed = False
        try:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                for msg in dec.feed(data):
                    req = parse_request(msg)
                    if not authed:
                        self.hellos.append(req.args)
                        if req.op != "hello" or req.args.get("token") != self.token:
                            conn.sendall(encode_frame({"id": req.id, "err": ["UNAUTHORIZED", "bad token", None]}))
                            return
                        authed = True
                        conn.sendall(encode_frame({"id": req.id, "ok": {"node_id": self.node_id, "protocol": 1}}))
                        continue
                    with self._lock:
                        self.requests.append((req.op, req.args))
                        n = self._counts.get(req.op, 0)
                        self._counts[req.op] = n + 1
                    reply = self._reply(req.op, req.args, n)
                    if reply is CLOSE:
                        return
                    if reply is SILENT:
                        continue
                    if reply is DEFER:
                        deferred.append((req.id, {"id": req.id}))
                        if len(deferred) >= self.flush_at:
                            # answer newest first: out of order on purpose
                            for rid, _ in reversed(deferred):
                                conn.sendall(encode_frame({"id": rid, "ok": {"echo": rid}}))
                            deferred.clear()
                        continue
                    conn.sendall(encode_frame(self._frame(req.id, reply)))
        except OSError:
            return
        finally:
            conn.close()

    def _reply(self, op: str, args: dict[str, Any], n: int) -> Any:
        if op in self.ops:
            return self.ops[op](op, args, n)
        if op == "cluster_status":
            return self.status
        return Err("INTERNAL", f"fake node has no script for {op}")

    @staticmethod
    def _frame(rid: int, reply: Any) -> dict[str, Any]:
        if isinstance(reply, Err):
            return {"id": rid, "err": [reply.code, reply.message or reply.code, reply.extra]}
        return {"id": rid, "ok": reply}

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for t in self._threads:
            t.join(timeout=2)


@pytest.fixture
def nodes() -> Any:
    made: list[FakeNode] = []

    def make(ops: dict[str, Handler] | None = None, **kw: Any) -> FakeNode:
        node = FakeNode(ops, **kw)
        made.append(node)
        return node

    yield make
    for node in made:
        node.close()


def dead_address() -> str:
    """A loopback port with nothing listening (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def accept_submit(op: str, args: dict[str, Any], n: int) -> Any:
    return {"id": args["job"]["id"], "created": True, "state": "queued"}


def not_leader_to(addr: str | None) -> Handler:
    return lambda op, args, n: Err("NOT_LEADER", "not the leader", {"leader": addr})


# --------------------------------------------------------------------- blocking client


def test_submit_sends_hello_and_spec(nodes: Any) -> None:
    node = nodes({"submit": accept_submit})
    with Client(node.addr, token="dev") as c:
        job_id = c.submit("text.wordcount", {"text": "a b"}, queue="q", priority=3, timeout=2.5, delay=1)
    assert len(job_id) == 32
    assert node.hellos == [{"version": 1, "role": "client", "token": "dev"}]
    (args,) = node.args_of("submit")
    assert args["job"] == {
        "id": job_id, "type": "text.wordcount", "args": {"text": "a b"}, "queue": "q",
        "priority": 3, "max_attempts": 3, "timeout_ms": 2500, "delay_ms": 1000,
    }
    assert node.count("cluster_status") == 1  # learned the cluster once


def test_worker_role_and_calls(nodes: Any) -> None:
    node = nodes({
        "lease": lambda op, a, n: {"jobs": [{"id": "j", "attempt": 1, "lease_token": TOKEN}]},
        "heartbeat": lambda op, a, n: {"lost": [], "cancel": ["j"]},
        "complete": lambda op, a, n: {"state": "succeeded"},
        "fail": lambda op, a, n: {"state": "scheduled"},
    })
    with Client([node.addr], role="worker") as c:
        assert c.lease("w1", "a,b", max=2, wait_s=0.1) == [{"id": "j", "attempt": 1, "lease_token": TOKEN}]
        assert c.heartbeat("w1", [{"id": "j", "attempt": 1, "lease_token": TOKEN, "progress": [0.5, "half"]}]) \
            == {"lost": [], "cancel": ["j"]}
        assert c.complete("j", 1, {"words": 2}, lease_token=TOKEN) == "succeeded"
        assert c.fail("j", 1, "boom", retryable=False, lease_token=TOKEN) == "scheduled"
    assert node.hellos[0]["role"] == "worker"
    assert node.args_of("lease") == [{"worker": "w1", "queues": ["a", "b"], "max": 2, "wait_s": 0.1}]
    assert node.args_of("complete") == [{"id": "j", "attempt": 1, "lease_token": TOKEN, "result": {"words": 2}}]
    assert node.args_of("fail") == [{"id": "j", "attempt": 1, "lease_token": TOKEN, "error": "boom",
                                     "retryable": False}]


def test_not_leader_redirects_to_the_leader_with_the_same_job_id(nodes: Any) -> None:
    leader = nodes({"submit": accept_submit}, node_id=2)
    follower = nodes({"submit": not_leader_to(leader.addr)})
    with Client(follower.addr) as c:
        job_id = c.submit("t", {}, id="job-1")
        assert job_id == "job-1"
        assert c.nodes == [follower.addr, leader.addr]
        c.submit("t", {}, id="job-2")  # stays on the leader's connection
    assert [a["job"]["id"] for a in follower.args_of("submit")] == ["job-1"]
    assert [a["job"]["id"] for a in leader.args_of("submit")] == ["job-1", "job-2"]
    assert leader.connections == 1


def test_no_leader_backs_off_then_succeeds(nodes: Any) -> None:
    node = nodes({"submit": lambda op, a, n: Err("NO_LEADER", "election running") if n < 3 else accept_submit(op, a, n)})
    with Client(node.addr) as c:
        t0 = time.monotonic()
        assert c.submit("t", id="same") == "same"
        elapsed = time.monotonic() - t0
    assert [a["job"]["id"] for a in node.args_of("submit")] == ["same"] * 4
    assert elapsed >= 0.02 + 0.04 + 0.08  # the backoff schedule, not a spin
    assert node.connections == 4  # each NO_LEADER moves on (here: back to the only node)


def test_server_timeout_on_a_write_is_retried(nodes: Any) -> None:
    node = nodes({"complete": lambda op, a, n: Err("TIMEOUT", "leader changed") if n == 0 else {"state": "succeeded"}})
    with Client(node.addr) as c:
        assert c.complete("j", 2, "r", lease_token=TOKEN) == "succeeded"
    assert node.args_of("complete") == [{"id": "j", "attempt": 2, "lease_token": TOKEN, "result": "r"}] * 2


def test_refused_first_seed_then_second_works(nodes: Any) -> None:
    node = nodes({"stats": lambda op, a, n: {"jobs": {}, "role": "leader"}})
    with Client(f"{dead_address()},{node.addr}") as c:
        assert c.stats()["role"] == "leader"


def test_one_seed_suffices_after_learning(nodes: Any) -> None:
    b = nodes({"get": lambda op, a, n: {"id": a["id"], "state": "queued"}}, node_id=2)
    a = nodes({"get": lambda op, a_, n: {"id": a_["id"], "state": "queued"}})
    a.status = {"leader": a.addr, "self": 1, "nodes": [
        {"id": 1, "client": a.addr, "raft": "x:1", "role": "leader"},
        {"id": 2, "client": b.addr, "raft": "x:2", "role": "follower"},
        {"id": 3, "client": "0.0.0.0:1", "raft": "x:3", "role": "follower"},  # unusable: skipped
    ]}
    with Client(a.addr) as c:
        assert c.get("j")["state"] == "queued"
        assert c.nodes == [a.addr, b.addr]
        a.close()  # the only seed dies
        c._drop()  # and our connection with it
        assert c.get("j2")["id"] == "j2"
    assert b.count("get") == 1


def test_unavailable_when_nothing_listens() -> None:
    dead = [dead_address(), dead_address()]
    c = Client(dead, timeout_s=0.4)
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as ei:
        c.stats()
    elapsed = time.monotonic() - t0
    assert 0.2 <= elapsed < 2.0
    assert ei.value.message.startswith("no raftq node reachable at ")
    assert dead[0] in ei.value.message and dead[1] in ei.value.message
    assert "refused" in ei.value.message.lower()


def test_no_leader_until_timeout_raises_no_leader(nodes: Any) -> None:
    node = nodes({"stats": lambda op, a, n: Err("NO_LEADER", "election running")})
    with Client(node.addr, timeout_s=0.3) as c, pytest.raises(NoLeader, match="election running"):
        c.stats()
    assert node.count("stats") >= 3


def test_hung_node_fails_over_within_the_budget(nodes: Any) -> None:
    good = nodes({"submit": accept_submit}, node_id=2)
    hung = nodes({"submit": lambda op, a, n: SILENT})
    with Client([hung.addr, good.addr], timeout_s=1.0) as c:
        t0 = time.monotonic()
        assert c.submit("t", id="x") == "x"
        assert time.monotonic() - t0 < 1.0
    assert hung.count("submit") == 1 and good.count("submit") == 1


def test_dropped_connection_mid_request_is_retried(nodes: Any) -> None:
    node = nodes({"cancel": lambda op, a, n: CLOSE if n == 0 else {"state": "cancelled"}})
    with Client(node.addr) as c:
        assert c.cancel("j") == "cancelled"
    assert node.count("cancel") == 2


@pytest.mark.parametrize(
    "code,cls",
    [("NOT_FOUND", NotFound), ("LEASE_LOST", LeaseLost), ("CONFLICT", Conflict),
     ("OVERLOADED", Overloaded), ("BAD_REQUEST", BadRequest)],
)
def test_server_errors_raise_their_class_without_retry(nodes: Any, code: str, cls: type) -> None:
    node = nodes({"retry": lambda op, a, n: Err(code, f"server says {code}")})
    with Client(node.addr) as c, pytest.raises(cls) as ei:
        c.retry("j")
    assert ei.value.message == f"server says {code}"
    assert node.count("retry") == 1


def test_bad_token_is_unauthorized_at_once(nodes: Any) -> None:
    node = nodes(token="secret")
    with Client(node.addr, token="wrong", timeout_s=5) as c:
        t0 = time.monotonic()
        with pytest.raises(Unauthorized):
            c.stats()
        assert time.monotonic() - t0 < 1.0


def test_long_poll_deadline_extends_by_wait_time(nodes: Any) -> None:
    def slow_lease(op: str, a: dict[str, Any], n: int) -> Any:
        time.sleep(0.6)  # the server long-polls longer than the client's timeout_s
        return {"jobs": []}

    node = nodes({"lease": slow_lease})
    with Client(node.addr, timeout_s=0.3) as c:
        assert c.lease("w", ["q"], wait_s=1.0) == []
    assert node.count("lease") == 1


def test_result_polls_wait_until_final(nodes: Any) -> None:
    node = nodes({"wait": lambda op, a, n: {"id": a["id"], "state": "succeeded" if n == 2 else "running"}})
    with Client(node.addr) as c:
        assert c.result("j", timeout=30)["state"] == "succeeded"
    calls = node.args_of("wait")
    assert len(calls) == 3 and all(0 < a["timeout_s"] <= 5.0 for a in calls)


def test_result_times_out_when_never_final(nodes: Any) -> None:
    def wait(op: str, a: dict[str, Any], n: int) -> Any:
        time.sleep(a["timeout_s"])  # like a real long poll
        return {"id": a["id"], "state": "running"}

    node = nodes({"wait": wait})
    with Client(node.addr) as c, pytest.raises(Timeout, match="not finished after 0.3s"):
        c.result("j", timeout=0.3)


def test_bad_arguments_are_bad_request_before_any_io() -> None:
    with pytest.raises(BadRequest, match="bad node address"):
        Client("localhost")
    with pytest.raises(BadRequest, match="role"):
        Client("h:1", role="admin")
    c = Client(dead_address())
    for call, match in [
        (lambda: c.submit("t", priority="high"), "priority must be an integer"),
        (lambda: c.submit("t", {1, 2}), "cannot encode"),
        (lambda: c.get(""), "job id"),
        (lambda: c.lease("w", []), "queues"),
        (lambda: c.submit_many([{"type": "t", "prio": 1}]), r"jobs\[0\]: unknown option"),
        (lambda: c.result("j", timeout=-1), "timeout"),
    ]:
        with pytest.raises(BadRequest, match=match):
            call()
    assert c.submit_many([]) == []


def test_submit_many_returns_ids(nodes: Any) -> None:
    node = nodes({"submit_many": lambda op, a, n: {"results": [
        {"id": j["id"], "created": True, "state": "queued"} for j in a["jobs"]]}})
    with Client(node.addr) as c:
        ids = c.submit_many([{"type": "t", "id": "a"}, {"type": "t", "args": [1], "priority": 2}])
    assert ids[0] == "a" and len(ids[1]) == 32
    assert node.args_of("submit_many")[0]["jobs"][1]["priority"] == 2


# ----------------------------------------------------------------------- async client


@pytest.mark.timeout(30)  # a client that does not pipeline would wait forever here
def test_async_pipelines_100_calls_on_one_connection_out_of_order(nodes: Any) -> None:
    node = nodes({"get": lambda op, a, n: DEFER})
    node.flush_at = 100

    async def main() -> list[Any]:
        async with AsyncClient(node.addr) as c:
            results = await asyncio.gather(*(c.get(f"job-{i}") for i in range(100)))
            assert c.connections_opened == 1
            return results

    results = asyncio.run(main())
    assert node.connections == 1
    # each caller got the answer to ITS request, although they came back reversed
    sent_ids = [a["id"] for a in node.args_of("get")]
    assert sorted(sent_ids) == sorted(f"job-{i}" for i in range(100))
    echoes = [r["echo"] for r in results]
    assert len(set(echoes)) == 100
    assert echoes == sorted(echoes)  # request ids follow call order; replies were reversed


def test_async_redirect_and_no_leader(nodes: Any) -> None:
    leader = nodes({"submit": lambda op, a, n: Err("NO_LEADER", "x") if n == 0 else accept_submit(op, a, n)}, node_id=2)
    follower = nodes({"submit": not_leader_to(leader.addr)})

    async def main() -> list[str]:
        async with AsyncClient(follower.addr) as c:
            return await asyncio.gather(*(c.submit("t", id=f"j{i}") for i in range(20)))

    assert asyncio.run(main()) == [f"j{i}" for i in range(20)]
    assert {a["job"]["id"] for a in leader.args_of("submit")} == {f"j{i}" for i in range(20)}


def test_async_connection_loss_retries_in_flight_calls(nodes: Any) -> None:
    # first connection: swallow 10 requests then drop; later connections answer
    state = {"dropped": False}

    def get(op: str, a: dict[str, Any], n: int) -> Any:
        if n < 9:
            return SILENT
        if n == 9:
            state["dropped"] = True
            return CLOSE
        return {"id": a["id"], "state": "queued"}

    node = nodes({"get": get})

    async def main() -> tuple[list[Any], int]:
        async with AsyncClient(node.addr) as c:
            res = await asyncio.gather(*(c.get(f"j{i}") for i in range(10)))
            return res, c.connections_opened

    res, opened = asyncio.run(main())
    assert [r["id"] for r in res] == [f"j{i}" for i in range(10)]
    assert state["dropped"] and opened == 2
    assert node.count("get") == 20


def test_async_unavailable_and_errors(nodes: Any) -> None:
    node = nodes({"get": lambda op, a, n: Err("NOT_FOUND", f"no job {a['id']}")})

    async def main() -> None:
        c = AsyncClient([dead_address()], timeout_s=0.3)
        with pytest.raises(Unavailable, match="no raftq node reachable at"):
            await c.stats()
        await c.close()
        async with AsyncClient(node.addr) as c2:
            with pytest.raises(NotFound, match="no job zz"):
                await c2.get("zz")
            with pytest.raises(BadRequest, match="priority"):
                await c2.submit("t", priority=None)

    asyncio.run(main())


def test_async_result_and_long_poll(nodes: Any) -> None:
    def wait(op: str, a: dict[str, Any], n: int) -> Any:
        time.sleep(0.4)
        return {"id": a["id"], "state": "failed" if n else "running"}

    node = nodes({"wait": wait})

    async def main() -> dict[str, Any]:
        async with AsyncClient(node.addr, timeout_s=0.2) as c:
            return await c.result("j", timeout=10)

    assert asyncio.run(main())["state"] == "failed"


def test_async_bad_token_and_closed_client(nodes: Any) -> None:
    node = nodes(token="secret")

    async def main() -> None:
        c = AsyncClient(node.addr, token="wrong", timeout_s=5)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(Unauthorized):
            await c.stats()
        assert asyncio.get_running_loop().time() - t0 < 1.0
        await c.close()
        with pytest.raises(Unavailable, match="closed"):
            await c.stats()

    asyncio.run(main())


def test_closed_client_raises(nodes: Any) -> None:
    node = nodes({"stats": lambda op, a, n: {"jobs": {}}})
    c = Client(node.addr)
    assert c.stats() == {"jobs": {}}
    c.close()
    with pytest.raises(Unavailable, match="closed"):
        c.stats()


def test_async_refused_seed_and_hung_node_fail_over(nodes: Any) -> None:
    good = nodes({"submit": accept_submit}, node_id=3)
    hung = nodes({"submit": lambda op, a, n: SILENT}, node_id=2)

    async def main() -> list[str]:
        async with AsyncClient([dead_address(), hung.addr, good.addr], timeout_s=1.0) as c:
            t0 = asyncio.get_running_loop().time()
            ids = await asyncio.gather(*(c.submit("t", id=f"h{i}") for i in range(5)))
            assert asyncio.get_running_loop().time() - t0 < 1.0
            return ids

    assert asyncio.run(main()) == [f"h{i}" for i in range(5)]
    assert hung.count("submit") == 5  # all sent there, none answered
    assert sorted(a["job"]["id"] for a in good.args_of("submit")) == [f"h{i}" for i in range(5)]
