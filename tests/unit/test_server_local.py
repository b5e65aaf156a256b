"""`LocalReplica` on its own, and a real `Node` on one serving the client
library over loopback: the node the worker's tests can run against instead of
a Raft cluster."""
from __future__ import annotations

import asyncio
import functools
import socket
from pathlib import Path
from typing import Any

import msgpack

from cluster.client import AsyncClient
from cluster.config import ClusterConfig, NodeSpec
from cluster.server import Node
from replication.local import LocalReplica
from replication.machine import JobMachine

TOKEN = "tok"


def _entry(*cmds: dict[str, Any]) -> bytes:
    return msgpack.packb({"v": 1, "now_ms": 1_000, "cmds": list(cmds)})


def _submit(job_id: str) -> dict[str, Any]:
    return {"op": "submit", "job": {"id": job_id, "type": "t"}}


def _settle() -> Any:
    async def iterations() -> None:
        for _ in range(10):
            await asyncio.sleep(0)
    return iterations()


def test_entries_apply_in_order_on_a_later_iteration_then_call_back() -> None:
    async def go() -> None:
        seen: list[Any] = []
        replica = LocalReplica(JobMachine(), address="a:1", on_applied=lambda: seen.append("applied"))
        replica.propose(_entry(_submit("x")), lambda results, code: seen.append((results, code)))
        replica.propose(_entry(_submit("x"), _submit("y")), lambda results, code: seen.append((results, code)))
        assert seen == [] and replica.status()["commit_index"] == 2  # never called back from inside propose
        await _settle()
        assert seen == ["applied", ([{"id": "x", "created": True, "state": "queued"}], None),
                        "applied", ([{"id": "x", "created": False, "state": "queued"},
                                     {"id": "y", "created": True, "state": "queued"}], None)]
        assert replica.status() == {"role": "leader", "term": 1, "commit_index": 2, "last_applied": 2,
                                    "leader": "a:1"}
    asyncio.run(go())


def test_a_bad_entry_gets_internal_results_and_the_next_one_applies() -> None:
    async def go() -> None:
        results: list[Any] = []
        replica = LocalReplica(JobMachine(), address="a:1")
        replica.propose(b"\xc1", lambda r, code: results.append(r))
        replica.propose(_entry(_submit("x")), lambda r, code: results.append(r))
        await _settle()
        assert results[0][0]["error"] == "INTERNAL" and results[1][0]["created"] is True
    asyncio.run(go())


def test_not_leader_no_leader_and_destroy_answer_proposals() -> None:
    async def go() -> None:
        codes: list[str | None] = []
        replica = LocalReplica(JobMachine(), address="a:1")
        replica.follow("b:1")
        replica.propose(_entry(_submit("x")), lambda r, code: codes.append(code))
        replica.follow(None)
        replica.propose(_entry(_submit("x")), lambda r, code: codes.append(code))
        await _settle()
        replica.lead()
        replica.propose(_entry(_submit("x")), lambda r, code: codes.append(code))
        replica.destroy()  # before it applied: TIMEOUT, as RaftNode answers what it never resolved
        replica.propose(_entry(_submit("y")), lambda r, code: codes.append(code))
        await _settle()
        assert codes == ["NOT_LEADER", "NO_LEADER", "TIMEOUT", "NO_LEADER"]
        with replica.reading() as machine:
            assert machine.get("x") is None
    asyncio.run(go())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_node_on_a_local_replica_serves_the_client_library_on_loopback() -> None:
    async def go() -> None:
        spec = NodeSpec(1, f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}")
        cfg = ClusterConfig(secret="s" * 16, token=TOKEN, data_dir=Path("/nonexistent"), durability="none",
                            nodes=(spec,))
        node = Node(cfg, 1, JobMachine(), functools.partial(LocalReplica, address=spec.raft))
        stop = asyncio.Event()
        serving = asyncio.create_task(node.serve(stop))
        try:
            async with AsyncClient([spec.client], token=TOKEN) as client:
                job_id = await client.submit("t", {"n": 1})
                [leased] = await client.lease("w1", ["default"], wait_s=0)
                assert (leased["id"], leased["args"]) == (job_id, {"n": 1})
                assert await client.complete(job_id, leased["attempt"], "ok",
                                             lease_token=leased["lease_token"]) == "succeeded"
                assert (await client.get(job_id))["result"] == "ok"
                assert (await client.cluster_status())["leader"] == spec.client
        finally:
            stop.set()
            await serving
    asyncio.run(go())
