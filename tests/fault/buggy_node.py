"""A raftq node with one known bug: `python -m tests.fault.buggy_node BUG node --config FILE --id N`.

The fault checker is tested against real clusters running one of these bugs
(tests/fault/test_checker.py); each must show up as a violation. The bugs live
here, in shims over the production classes, so no production module carries a
switch for them:

- ack_before_commit: a submit is answered "queued" as soon as it is handed to
  the log, before it commits (`EarlyAckCommitter`); a leader cut off from its
  peers then acknowledges jobs that never exist, which the checker calls lost.
- skip_fencing: the machine takes any attempt number and lease token as the lease's
  (`FencelessMachine`); a paused worker's late completion is accepted after a
  newer attempt started, a fencing violation.
- lease_without_log: the leader grants leases from its own machine instead of
  committing them (`LogBypassingCommitter`); replicas then disagree.

After BUG come the usual `raftq` arguments (`node --config ... --id ...`),
parsed by the real CLI; only the node it runs is swapped for a buggy one.
"""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, Callable

import cluster.server
from cluster.commit import GroupCommitter
from cluster.config import ClusterConfig
from cluster.errors import BadRequest
from cluster.server import Node, raft_replica, run_until_stopped
from replication.machine import JobMachine, validate_command
from replication.replica import ReplicaFactory

log = logging.getLogger("raftq.node")

BUGS = ("ack_before_commit", "skip_fencing", "lease_without_log")


class FencelessMachine(JobMachine):
    """skip_fencing: every attempt number and lease token holds the lease."""

    def _holds_lease(self, job: Any, attempt: Any, worker: str | None = None,
                     lease_token: str | None = None) -> bool:
        return True


class EarlyAckCommitter(GroupCommitter):
    """ack_before_commit: a submit's answer does not wait for its entry."""

    def enqueue(self, cmd: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        if cmd.get("op") != "submit":
            return super().enqueue(cmd)
        problem = validate_command(cmd)  # the answer names the job: it must have one
        if problem is not None:
            raise BadRequest(problem)
        committed = super().enqueue(cmd)
        committed.add_done_callback(lambda f: f.cancelled() or f.exception())  # fire and forget
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        answer.set_result({"id": cmd["job"]["id"], "created": True, "state": "queued"})
        return answer


class LogBypassingCommitter(GroupCommitter):
    """lease_without_log: a lease is applied to this replica's machine alone."""

    def enqueue(self, cmd: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        if cmd.get("op") != "lease":
            return super().enqueue(cmd)
        entry = {"v": 1, "now_ms": int(time.time() * 1000), "cmds": [cmd]}
        with self._replica.reading() as machine:
            result = machine.apply_entry(entry)[0]
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        answer.set_result(result)
        return answer


def buggy_node(bug: str, cfg: ClusterConfig, node_id: int, make_replica: ReplicaFactory,
               on_fatal: Callable[[str], None] | None = None) -> Node:
    """The node `run_node` builds, with `bug` in it."""
    log.warning("TEST ONLY: node %d runs with the known bug %r (tests/fault/buggy_node.py)", node_id, bug)
    machine = FencelessMachine() if bug == "skip_fencing" else JobMachine()
    node = Node(cfg, node_id, machine, make_replica, on_fatal=on_fatal)
    committer = {"ack_before_commit": EarlyAckCommitter, "lease_without_log": LogBypassingCommitter}.get(bug)
    if committer is not None:  # built as Node builds its own
        node.committer = committer(node.raft, max_batch_bytes=cfg.max_entry_bytes, check=node._check_sizes)
    return node


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BUGS:
        sys.exit(f"usage: python -m tests.fault.buggy_node {{{','.join(BUGS)}}} node --config FILE --id N")
    bug = sys.argv[1]

    def run_buggy_node(cfg: ClusterConfig, node_id: int, rejoin: bool = False) -> int:
        return run_until_stopped(node_id, lambda on_fatal: buggy_node(
            bug, cfg, node_id, raft_replica(cfg, node_id, rejoin), on_fatal))

    # `raftq node` looks run_node up when it runs: it starts the buggy node instead.
    cluster.server.run_node = run_buggy_node  # type: ignore[assignment]
    from cli.main import main as raftq_main
    sys.argv = ["raftq", *sys.argv[2:]]
    raftq_main()


if __name__ == "__main__":
    main()
