"""What the node server needs of a replica of the job machine.

A `Replica` is one member's copy of the replicated `JobMachine`: it orders
proposed entries into a log, applies each committed entry to the machine, and
says who leads. cluster/server.py's `Node` and cluster/commit.py's
`GroupCommitter` use nothing else, so the server runs on either of:

- `replication.raft.RaftNode`: the real thing (pysyncobj, a journal, peers);
- `replication.local.LocalReplica`: one in-process member, no sockets and no
  threads, for tests of the server and its client connections.

Contract every implementation keeps (docs/contracts.md section 2):
- `propose(entry, callback)`: `entry` is an encoded entry (contracts section 1);
  `callback(results, None)` once it committed and was applied (one result per
  command), or `callback(None, code)` with code NOT_LEADER, NO_LEADER,
  OVERLOADED, TIMEOUT or INTERNAL; called exactly once, on the loop thread
  (a live replica calls back on a later loop iteration, a stopped one may
  answer NO_LEADER at once).
- `on_applied()` (given at construction) runs on the loop thread after every
  applied entry and after a restored snapshot.
- `on_fatal(reason)` (given at construction) runs once if the replica can no
  longer keep its promises (storage failed); the process must stop.
- the machine is read only inside `reading()`.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import msgpack

from replication.codes import INTERNAL
from replication.events import Distribution
from replication.machine import JobMachine

log = logging.getLogger("raftq.replica")

ProposeCallback = Callable[[list | None, str | None], None]


class Machine(Protocol):
    """What a replica needs of `replication.machine.JobMachine`."""

    def apply_entry(self, entry: dict) -> list[dict]: ...
    def to_snapshot(self) -> dict: ...
    def restore(self, snapshot: dict) -> None: ...


@dataclass
class ReplicationFigures:
    """A replica's figures for metrics, read on the loop thread."""

    leader_changes: int                # leaders this member has seen since it started
    last_index: int                    # the last index in its log
    follower_match: dict[str, int]     # on a leader: peer Raft address -> highest index known on it
    fsync_seconds: Distribution | None  # its journal's fdatasyncs (None: it has no journal)


class Replica(Protocol):
    def propose(self, entry: bytes, callback: ProposeCallback) -> None: ...

    def is_leader(self) -> bool: ...

    def leader(self) -> str | None:
        """The leader's Raft address, or None while there is none."""

    def status(self) -> dict[str, Any]:
        """At least role ("leader", "follower" or "candidate"), term,
        commit_index, last_applied and leader; with peers, `peers_connected`
        (the Raft addresses of the peers it has a link to)."""

    def figures(self) -> ReplicationFigures:
        """What the node's metrics report of the replication itself."""

    def reading(self) -> contextlib.AbstractContextManager[Any]:
        """Hold off applies while the caller reads the machine."""

    def destroy(self) -> None:
        """Stop; proposals not yet resolved get TIMEOUT."""


class ReplicaFactory(Protocol):
    """Builds the replica of `machine` a node serves (called on the running loop)."""

    def __call__(self, machine: JobMachine, *, on_applied: Callable[[], None],
                 on_fatal: Callable[[str], None]) -> Replica: ...


def apply_encoded(machine: Machine, data: bytes) -> list[dict]:
    """Apply one encoded entry to `machine`; never raises. An entry that cannot
    be decoded, or whose apply raised (a bug), gets INTERNAL results, so one
    bad entry cannot stop a replica (pysyncobj would re-apply a raising entry
    forever). Both replicas apply every entry through here (RaftNode's
    `_Replica.apply` under its lock, LocalReplica on its loop)."""
    try:
        entry = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        log.error("undecodable entry (%d bytes): %s", len(data), exc)
        return [{"error": INTERNAL, "message": "undecodable entry"}]
    try:
        return machine.apply_entry(entry)
    except Exception:
        log.exception("BUG: apply_entry raised")
        cmds = entry.get("cmds") if isinstance(entry, dict) else None
        n = len(cmds) if isinstance(cmds, list) and cmds else 1
        return [{"error": INTERNAL, "message": "internal error applying command"}] * n
