"""Each shim of tests/fault/buggy_node.py really has its bug, shown on a node
over a LocalReplica (no namespaces, always run), so the checker's scenarios in
test_checker.py cannot pass for want of a bug."""
from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

from cluster.config import ClusterConfig, NodeSpec
from cluster.server import Node
from replication.local import LocalReplica
from tests.fault.buggy_node import buggy_node

SPEC = NodeSpec(1, "127.0.0.1:7101", "127.0.0.1:7201")
CFG = ClusterConfig(secret="s" * 16, token="tok", data_dir=Path("/nonexistent"), durability="none", nodes=(SPEC,))


def on_node(bug: str, test: Any) -> None:
    async def go() -> None:
        node = buggy_node(bug, CFG, 1, functools.partial(LocalReplica, address=SPEC.raft))
        try:
            await test(node, node.raft)
        finally:
            node.raft.destroy()
    asyncio.run(go())


def test_ack_before_commit_answers_a_submit_its_replica_has_not_applied() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        answer = await node.handle("submit", {"job": {"id": "a", "type": "t"}})
        assert answer == {"id": "a", "created": True, "state": "queued"}
        assert replica.log == [] and node.machine.get("a") is None  # not even proposed yet
        for _ in range(10):
            await asyncio.sleep(0)
        assert node.machine.get("a") is not None  # it still goes to the log, later
    on_node("ack_before_commit", test)


def test_skip_fencing_accepts_a_stale_attempt_and_a_foreign_token() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        await node.handle("submit", {"job": {"id": "a", "type": "t"}})
        [leased] = (await node.handle("lease", {"worker": "w1", "wait_s": 0}))["jobs"]
        foreign = "0" * 32
        assert leased["lease_token"] != foreign
        answer = await node.handle("complete", {"id": "a", "attempt": 7, "lease_token": foreign})
        assert answer["state"] == "succeeded"
    on_node("skip_fencing", test)


def test_lease_without_log_grants_a_job_no_entry_records() -> None:
    async def test(node: Node, replica: LocalReplica) -> None:
        await node.handle("submit", {"job": {"id": "a", "type": "t"}})
        [granted] = (await node.handle("lease", {"worker": "w1", "wait_s": 0}))["jobs"]
        assert granted["id"] == "a" and node.machine.get("a")["state"] == "running"
        assert len(replica.log) == 1  # the submit only
    on_node("lease_without_log", test)

