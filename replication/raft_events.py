"""What an operator reads in a node's log about Raft: one INFO line per event.

Elections (started, won, lost), leader changes (node N is leader of term T),
leadership lost, peers connected and disconnected, snapshots written,
restored and installed, and the journal compaction after a snapshot. Never a
line per heartbeat, per message or per failed reconnect: `RaftEvents` keeps
the last role, term, leader and peer states and logs only their changes; a
snapshot sent to a follower is one line however many chunks it takes.

Fed by replication/raft.py on its loop thread: `observe` at the end of every
tick (a few comparisons when nothing changed), `peer` from the transport's
(dis)connection callbacks and its sends, the snapshot methods where dumps are
written and read.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("raftq.raft")


class RaftEvents:
    """Loop thread only. `names`: Raft address -> how the log names that node
    ("node 2"); `me`: this node's Raft address."""

    def __init__(self, me: str, names: Mapping[str, str]) -> None:
        self._me = me
        self._names = dict(names)
        self._role: str | None = None  # None until the first tick
        self._term = 0
        self._leader: Any = None  # the leader's node object, compared by identity
        self._connected: set[str] = set()

    def name(self, addr: str | None) -> str:
        if addr is None:
            return "?"
        named = self._names.get(addr)
        return f"{named} ({addr})" if named else addr

    def observe(self, role: str, term: int, leader: Any) -> None:
        """The state at the end of a tick; `leader` is pysyncobj's node object
        (an `address` attribute) or None."""
        if role == self._role and term == self._term and leader is self._leader:
            return
        was_role, was_term, was_leader = self._role, self._term, self._leader
        self._role, self._term, self._leader = role, term, leader
        if was_role is None:
            return  # the start: nothing changed yet
        if was_role == "leader" and role != "leader":
            why = f"term {term} began elsewhere" if term > was_term else "no majority answered in time"
            log.info("leadership lost: %s is no longer leader of term %d (%s)", self.name(self._me), was_term, why)
        if role == "candidate" and (was_role != "candidate" or term != was_term):
            log.info("election started: %s stands for term %d", self.name(self._me), term)
        elif role == "leader" and was_role != "leader":
            log.info("election won: %s is leader of term %d", self.name(self._me), term)
            return
        if was_role == "candidate" and role == "follower":
            log.info("election for term %d lost", was_term)
        if leader is not was_leader and role == "follower":
            if leader is not None:
                log.info("leader change: %s is leader of term %d", self.name(getattr(leader, "address", None)), term)
            elif was_leader is not None:
                log.info("no leader: term %d began, %s led term %d", term,
                         self.name(getattr(was_leader, "address", None)), was_term)

    def peer(self, addr: str, connected: bool) -> None:
        """A Raft connection to a peer came up or went down (pysyncobj also
        reports each failed reconnect as a disconnection: only changes count)."""
        if connected and addr not in self._connected:
            self._connected.add(addr)
            log.info("peer connected: %s", self.name(addr))
        elif not connected and addr in self._connected:
            self._connected.discard(addr)
            log.info("peer disconnected: %s", self.name(addr))

    def snapshot_written(self, index: int, size: int, kept: int) -> None:
        log.info("snapshot written: the state up to index %d (%d bytes); journal compacted, %d entries kept",
                 index, size, kept)

    def snapshot_sending(self, addr: str) -> None:
        log.info("snapshot sending: %s is behind the compacted journal; it gets this node's dump", self.name(addr))

    def snapshot_loaded(self, index: int, from_leader: bool) -> None:
        if from_leader:
            log.info("snapshot installed: the leader sent the state up to index %d", index)
        else:
            log.info("snapshot restored: the state up to index %d, from this node's dump", index)
