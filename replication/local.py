"""`LocalReplica`: a one-member replica in memory, for tests of the node server.

It keeps the `Replica` contract (replication/replica.py) without Raft: no
sockets, no threads, no disk. A proposed entry is appended to an in-memory log
(committed at once: a member of one is its own majority) and applied to the
machine on the next loop iteration with `call_soon`, then `on_applied` and the
proposer's callback run, in that order, like RaftNode's. Entries apply in the
order they were proposed, so a test that drives it is deterministic.

It leads unless told otherwise: `follow(leader)` makes it a follower of
another member's Raft address (or of none: an election), and `lead()` makes it
lead again in a new term, so tests can see NOT_LEADER and NO_LEADER answers.
Entries already in its log still apply after it steps down, as a committed
entry would in Raft.

Threads: the loop's only; build it on the running loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any, Callable, Iterator

from replication.codes import NO_LEADER, NOT_LEADER, TIMEOUT
from replication.machine import JobMachine
from replication.replica import ProposeCallback, ReplicationFigures, apply_encoded

log = logging.getLogger("raftq.local")


class LocalReplica:
    def __init__(self, machine: JobMachine, *, address: str, on_applied: Callable[[], None] | None = None,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        """`address`: this member's Raft address, the one `leader()` names while
        it leads (a node maps it to its client address). `on_fatal` is never
        called: nothing here can fail the way storage does."""
        self.machine = machine
        self.address = address
        self.log: list[bytes] = []  # every entry appended, in order
        self.term = 1
        self.last_applied = 0
        self._leader: str | None = address
        self._on_applied = on_applied
        self._loop = asyncio.get_running_loop()
        # Appended, not yet applied: (its callback, the scheduled apply).
        self._unapplied: deque[tuple[ProposeCallback, asyncio.Handle]] = deque()
        self._destroyed = False

    # ---- the Replica protocol ------------------------------------------------

    def propose(self, entry: bytes, callback: ProposeCallback) -> None:
        if self._destroyed or self._leader != self.address:
            code = NOT_LEADER if self._leader is not None and not self._destroyed else NO_LEADER
            self._loop.call_soon(callback, None, code)
            return
        self.log.append(bytes(entry))
        self._unapplied.append((callback, self._loop.call_soon(self._apply_next)))

    def is_leader(self) -> bool:
        return not self._destroyed and self._leader == self.address

    def leader(self) -> str | None:
        return None if self._destroyed else self._leader

    def status(self) -> dict[str, Any]:
        return {"role": "leader" if self.is_leader() else "follower", "term": self.term,
                "commit_index": len(self.log), "last_applied": self.last_applied, "leader": self.leader()}

    def figures(self) -> ReplicationFigures:
        # A member of one: each term it led is a leader change; nothing to sync or lag.
        return ReplicationFigures(leader_changes=self.term, last_index=len(self.log), follower_match={},
                                  fsync_seconds=None)

    @contextlib.contextmanager
    def reading(self) -> Iterator[JobMachine]:
        # One thread: an apply never runs while the caller reads.
        yield self.machine

    def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        while self._unapplied:
            callback, handle = self._unapplied.popleft()
            handle.cancel()
            callback(None, TIMEOUT)

    # ---- test controls -------------------------------------------------------

    def follow(self, leader: str | None) -> None:
        """Step down: `leader` (another member's Raft address) leads now, or no
        one does (an election in progress)."""
        self._leader = leader

    def lead(self) -> None:
        """Win an election: lead again, in a new term."""
        self.term += 1
        self._leader = self.address

    # ---- applying --------------------------------------------------------------

    def _apply_next(self) -> None:
        callback, _ = self._unapplied.popleft()
        results = apply_encoded(self.machine, self.log[self.last_applied])
        self.last_applied += 1
        if self._on_applied is not None:
            try:
                self._on_applied()
            except Exception:  # the proposer must hear back all the same, as from RaftNode
                log.exception("on_applied hook failed")
        callback(results, None)
