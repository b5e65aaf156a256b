"""The one adapter that owns pysyncobj: Raft replication of a `JobMachine`.

`RaftNode` wraps pysyncobj 0.3.17 and adds what it lacks for raftq. Every
reliance on pysyncobj's internals (the seam's patches P1-P9, the private
state read or changed, the behaviours relied on) is in
replication/pysyncobj_seam.py, pinned by tests/unit/test_pysyncobj_assumptions.py;
this module uses the seam's named accessors and hooks.

* Durability. Our `DurableJournal` replaces pysyncobj's unflushed mmap journal
  (seam P2). With durability="fsync":
    - a follower or candidate syncs the journal before ANY Raft message leaves
      it (`_SyncingTransport.send`), so a next_node_idx ack or a vote never
      describes log state that is not on disk;
    - a leader sends append_entries WITHOUT syncing first, so its fdatasync
      runs in parallel with the followers' (not in series before them). Raft
      only needs the leader's own copy of k durable before the leader counts
      itself towards committing k. pysyncobj computes the commit index at the
      START of a tick, and the journal sync starts at the END of every tick
      (an on-tick callback, after `_checkCommandsToApply` appended the new
      proposals); it runs on a helper thread while the loop goes on reading
      requests and acks, and no tick runs until it returned
      (`RaftNode._sync_journal`). So every entry a leader appends in a tick
      is on its disk before the next commit calculation. The one entry
      appended elsewhere is the no-op a new leader adds while handling a vote
      (`__onBecomeLeader`) and sends at once: the first send after becoming
      leader syncs first (`_SyncingTransport.leader_synced`);
    - the commit index on disk never runs ahead of the journal (the meta
      write syncs the journal first);
    - term and vote are written with fsync before `setCurrentTerm` returns;
    - a failed write, fdatasync or meta write is never retried: the journal
      enters its failed state (replication/journal.py), after which it
      refuses every sync, so no message (no ack, no vote) leaves the node;
      the adapter stops ticking, fails every proposal and calls `on_fatal`
      with the reason: the owner must end the process (it can't know what
      the kernel dropped; a restart re-reads and re-checks the files).
  A leader only commits index k after a follower acknowledged k (the follower
  synced k before acking) and after its own sync covered k. So an
  acknowledged entry is on disk on a majority. (A leader that crashes before
  its sync loses an entry that was never committed: a follower holding it is
  just a partially replicated entry, which Raft allows.) The adapter's own
  messages change none of this: pre_vote and its answers go through the same
  syncing send and grant nothing (no term or vote is recorded for them); a
  keepalive carries no log state at all; a deferred send (bytes-in-flight
  bound, below) only delays an append_entries, and every ack still follows
  the follower's sync.
* Replication that survives large entries (seam P5, P6, P9, `_PreVote`). pysyncobj
  flushed a connection's write buffer only on its next send (a 1 MiB entry
  crept out one socket buffer per 50 ms heartbeat, heartbeats queued behind
  it), queued everything from nextIndex at once, and moved nextIndex back on
  every ack, resending entries already on the way; a follower that missed
  heartbeats meanwhile started an election it could not win and still made
  the leader step down (1 MiB x 200 sequential submits: term 1 -> 74, p50
  222 ms). Now a partial send drains on WRITE events (seam P9), a
  leader queues new entries to a follower only while fewer than
  max_in_flight_bytes wait unsent to it (the heartbeat always goes), acks
  never move nextIndex back, and a follower asks for a pre-vote before it
  starts an election (none while bytes from its leader are still arriving).
* The Raft port's limits (`_SyncingTransport`, the seam's `SealedConnection`): frames
  capped by the append batch size (a few KiB before the handshake), a
  handshake deadline, idle connections reaped (peers keep quiet links alive),
  and only the configured peers' hosts served.
* A rejoin start mode (`rejoin=True`, `raftq node --rejoin`): a node whose
  data dir was wiped forgot its votes, so until a leader contacts it, it
  neither votes nor stands (`_SyncObj`, docs/storage.md).
* Snapshots without pickle: pysyncobj's custom serializer hooks write our own
  msgpack dump from a forked child (replication/snapshot.py).
* One replicated method. State lives in `_Replica`, a `SyncObjConsumer` with
  exactly one `@replicated` method, so pysyncobj's method numbering (sorted
  names) can never shift under entries already in a journal. It applies each
  entry under `lock` through `replica.apply_encoded`, the rule LocalReplica
  follows too (decode the msgpack entry of contracts section 1, apply, never
  raise): an exception in a replicated call would make pysyncobj re-apply the
  entry forever.
* Error codes. pysyncobj FAIL_REASONs map to wire codes (replication/codes.py:
  NOT_LEADER, NO_LEADER, OVERLOADED, TIMEOUT, INTERNAL); a proposal not resolved within
  `propose_timeout_s` resolves with TIMEOUT (outcome unknown; the caller
  retries with the same ids, which is safe because every command is idempotent).

Threads: none of pysyncobj's own. pysyncobj runs with autoTick off and its
poller replaced by `_LoopPoller` (seam P1, P4), so its sockets are watched by
an asyncio event loop (the node server's, or a private one on a thread of its
own when none is given) and every tick runs on that loop: a proposal is
appended and sent in the same loop iteration it arrives in, and a commit
resolves its futures without a thread hop. (With a tick thread, each commit crossed
threads twice and the two threads fought over the GIL: ~0.4 ms of a
sequential submit on a 2-core box.) Apply, `on_applied`, propose callbacks,
the journal, the dump writer and the transport all run on the loop thread.
`propose`, `is_leader`, `leader`, `status`, `reading` and `destroy` may be
called from any thread. The connection reaper (`_reap`) is a loop timer too.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from replication.codes import INTERNAL, NO_LEADER, NOT_LEADER, OVERLOADED, TIMEOUT
from replication.journal import DurableJournal, Entry, JournalError, JournalFailed
from replication.raft_events import RaftEvents
from replication.link import DUMP_CHUNK_BYTES, LinkKey, max_frame_bytes
from replication.pysyncobj_seam import (CANDIDATE, CONNECTION_STATE, FAIL_REASON, FOLLOWER, LEADER,
                                        POLL_EVENT_TYPE, RaftCore, SealedConnection, SeamTransport,
                                        SyncObjConf, SyncObjConsumer, SyncObjException, journal_injected,
                                        monotonic, replicated)
from replication.replica import Machine, ProposeCallback, ReplicationFigures, apply_encoded
from replication.snapshot import Dump, DumpError, DumpWriter, read_dump

# RaftNode() raises RaftStartError (port taken), JournalError (damaged journal
# or meta) or DumpError (damaged dump): each means "do not start this node".
__all__ = ["RaftConfig", "RaftConfigError", "RaftNode", "RaftStartError", "JournalError", "DumpError"]

log = logging.getLogger("raftq.raft")

JOURNAL_FILE = "raft.journal"
META_FILE = "raft.meta"
DUMP_FILE = "raft.dump"

_FAIL_CODES: dict[int, str] = {
    FAIL_REASON.MISSING_LEADER: NO_LEADER,
    FAIL_REASON.NOT_LEADER: NOT_LEADER,
    FAIL_REASON.QUEUE_FULL: OVERLOADED,
    FAIL_REASON.DISCARDED: TIMEOUT,
    FAIL_REASON.LEADER_CHANGED: TIMEOUT,
    FAIL_REASON.UNKNOWN_OUTCOME: TIMEOUT,
    FAIL_REASON.REQUEST_DENIED: INTERNAL,
}

_ROLES = {FOLLOWER: "follower", CANDIDATE: "candidate", LEADER: "leader"}

class RaftConfigError(ValueError):
    """A RaftConfig field is invalid; the message names the field."""


class RaftStartError(RuntimeError):
    """The node could not start (e.g. its Raft port is taken)."""


def _check_addr(name: str, addr: str) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RaftConfigError(f"{name}: expected host:port, got {addr!r}")


@dataclass(frozen=True)
class RaftConfig:
    """Configuration of one Raft replica. Timing defaults aim at single-digit-ms
    commits on an idle LAN cluster and a ~1-2 s failover."""

    self_addr: str  # this node's Raft host:port (also the bind address)
    peers: Sequence[str]  # the other nodes' Raft host:port
    data_dir: Path
    password: str  # encrypts and authenticates the Raft port; never empty
    durability: Literal["fsync", "none"] = "fsync"
    tick_period_s: float = 0.005  # a tick at least this often (timers), besides socket events
    append_entries_period_s: float = 0.05  # leader heartbeat
    election_timeout_min_s: float = 0.4
    election_timeout_max_s: float = 1.0
    # A leader that hears from no majority for this long steps down. pysyncobj's
    # default (30 s) would let a cut-off leader serve stale reads for 30 s.
    leader_fallback_timeout_s: float = 2.0
    connection_timeout_s: float = 1.5
    connection_retry_s: float = 0.5
    propose_timeout_s: float = 10.0  # unresolved proposals then fail with TIMEOUT
    max_queued_proposals: int = 10_000  # beyond: OVERLOADED
    # One append_entries message carries up to this many bytes of entries. An
    # entry at least this big is cut into 'transmission' chunks, one message
    # (one sealed frame each, replication/link.py): the 64 KiB default split every
    # loaded group-commit batch (a few hundred jobs) that way.
    append_entries_batch_bytes: int = 4 * 1024 * 1024
    # A leader queues new entries (or dump chunks) to a follower only while
    # fewer than this many bytes wait unsent in its connection, so at most this
    # plus one message is queued per follower and a heartbeat waits behind at
    # most that (a few ms on loopback or a LAN). One 4 MiB entry at a time keeps
    # a link busy; more only adds memory.
    max_in_flight_bytes: int = 4 * 1024 * 1024
    # An incoming Raft connection closes unless it completes pysyncobj's
    # handshake with an authentic frame (one carrying this node's fresh random
    # key) within this long; ~100x what a peer needs on a LAN.
    handshake_timeout_s: float = 2.0
    # A connection closes after this long without an authentic frame: a few
    # election timeouts. Peers never get there: a quiet link carries a
    # keepalive every connection_timeout_s / 3.
    idle_timeout_s: float = 3.0
    compaction_min_entries: int = 50_000  # dump + drop the journal past this many entries
    compaction_min_time_s: float = 600.0  # ...or this long after the last dump (if changed)
    trace_path: Path | None = None  # test hook: durability event trace (see _Trace)
    # Raft address -> the node's name in log lines ("node 2"); unnamed ones go by address.
    names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.self_addr, str):
            raise RaftConfigError("self_addr: expected a host:port string")
        _check_addr("self_addr", self.self_addr)
        if isinstance(self.peers, str):
            raise RaftConfigError("peers: expected a list of host:port strings, not one string")
        peers = tuple(self.peers)
        for p in peers:
            if not isinstance(p, str):
                raise RaftConfigError(f"peers: expected host:port strings, got {p!r}")
            _check_addr("peers", p)
        if self.self_addr in peers:
            raise RaftConfigError("peers: must not contain self_addr")
        if len(set(peers)) != len(peers):
            raise RaftConfigError("peers: duplicate address")
        object.__setattr__(self, "peers", peers)
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.trace_path is not None:
            object.__setattr__(self, "trace_path", Path(self.trace_path))
        if not isinstance(self.names, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.names.items()):
            raise RaftConfigError("names: expected a mapping of Raft address -> name")
        object.__setattr__(self, "names", dict(self.names))
        if not isinstance(self.password, str) or not self.password:
            # Without a password pysyncobj unpickles whatever reaches its port.
            raise RaftConfigError("password: required (the Raft port runs pickle without it)")
        if self.durability not in ("fsync", "none"):
            raise RaftConfigError(f"durability: expected 'fsync' or 'none', got {self.durability!r}")
        if self.append_entries_batch_bytes < 1024:
            raise RaftConfigError("append_entries_batch_bytes: must be >= 1024")
        if self.max_in_flight_bytes < 1:
            raise RaftConfigError("max_in_flight_bytes: must be >= 1")
        if self.handshake_timeout_s <= 0:
            raise RaftConfigError("handshake_timeout_s: must be > 0")
        if self.tick_period_s <= 0:
            raise RaftConfigError("tick_period_s: must be > 0")
        if self.append_entries_period_s <= 0:
            raise RaftConfigError("append_entries_period_s: must be > 0")
        if self.election_timeout_min_s <= 3 * self.append_entries_period_s:
            raise RaftConfigError("election_timeout_min_s: must exceed 3 x append_entries_period_s")
        if self.election_timeout_max_s <= self.election_timeout_min_s:
            raise RaftConfigError("election_timeout_max_s: must exceed election_timeout_min_s")
        if self.leader_fallback_timeout_s <= self.append_entries_period_s:
            raise RaftConfigError("leader_fallback_timeout_s: must exceed append_entries_period_s")
        if self.connection_timeout_s < self.election_timeout_max_s:
            raise RaftConfigError("connection_timeout_s: must be >= election_timeout_max_s")
        if self.idle_timeout_s <= self.connection_timeout_s:
            raise RaftConfigError("idle_timeout_s: must exceed connection_timeout_s (keepalive period x 3)")
        if self.connection_retry_s < 0:
            raise RaftConfigError("connection_retry_s: must be >= 0")
        if self.propose_timeout_s <= 0:
            raise RaftConfigError("propose_timeout_s: must be > 0")
        if self.max_queued_proposals < 1:
            raise RaftConfigError("max_queued_proposals: must be >= 1")
        if self.compaction_min_entries < 2:
            raise RaftConfigError("compaction_min_entries: must be >= 2")
        if self.compaction_min_time_s <= 0:
            raise RaftConfigError("compaction_min_time_s: must be > 0")


class _Trace:
    """Test hook: one line per durability-relevant event, flushed at once.

    `sync <last index>` after each real fdatasync; `send append_entries <last
    index in the message>` and `send next_node_idx <n> success=<bool>` just
    before such a message is sent (after the pre-send sync); `commit_ack <idx>`
    when a local proposal resolves as success; `truncate <new last index>` when
    a conflicting tail is cut (entries past it must be synced again). Every
    ack of index k must follow a `sync` covering k since the last truncate
    below k.
    """

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._f = open(path, "a", encoding="ascii")

    def line(self, text: str) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.write(text + "\n")
                self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


class _StaleAppendGuard:
    """Keeps a follower from truncating entries its leader already counted.

    pysyncobj 0.3.17 deletes every follower entry after `prevLogIdx` whenever
    an append_entries arrives, even if the entries it carries all match (Raft
    deletes only on a conflict). Its leader also moves `nextIndex` back when a
    late ack arrives, so under load followers routinely receive stale
    retransmissions and cut (then re-add) entries they had acknowledged: for a
    moment an acknowledged entry is on fewer disks than the leader believes.

    Before pysyncobj sees an append_entries, this rewrites it: entries the
    journal already holds (same index and term) are skipped, so pysyncobj cuts
    only at a real conflict. If every entry matches, it becomes a heartbeat at
    Q = max(last index in the message, min(last journal index, confirmed)),
    where `confirmed` is the highest index this leader's term has verified on
    this follower (everything up to it equals the leader's log, by Log
    Matching). Acks only ever cover verified indexes, so whatever pysyncobj
    still cuts past Q was never acknowledged to this leader.
    Runs on the loop thread.
    """

    def __init__(self, journal: DurableJournal) -> None:
        self._journal = journal
        self._term = -1
        self._confirmed = 0

    def rewrite(self, message: dict[str, Any], current_term: int) -> dict[str, Any]:
        if (message.get("type") != "append_entries" or "prevLogIdx" not in message
                or "transmission" in message or message.get("term", -1) < current_term):
            return message
        term = message["term"]
        if term != self._term:
            self._term, self._confirmed = term, 0
        j = self._journal
        if not len(j):
            return message
        first, last = j[0][1], j[-1][1]
        prev_idx, prev_term = message["prevLogIdx"], message["prevLogTerm"]
        if prev_idx is None or not first <= prev_idx <= last or j[prev_idx - first][2] != prev_term:
            return message  # pysyncobj rejects it and asks the leader to back up
        entries = message.get("entries") or []
        k = 0
        while k < len(entries) and entries[k][1] <= last and j[entries[k][1] - first][2] == entries[k][2]:
            k += 1
        out = dict(message)
        if k < len(entries):
            if k:
                out["prevLogIdx"], out["prevLogTerm"] = entries[k - 1][1], entries[k - 1][2]
                out["entries"] = entries[k:]
            self._confirmed = max(self._confirmed, entries[-1][1])
            return out if k else message
        end = entries[-1][1] if entries else prev_idx
        q = max(end, min(last, self._confirmed))
        self._confirmed = max(self._confirmed, end)
        if q == prev_idx and not entries:
            return message
        out["prevLogIdx"], out["prevLogTerm"], out["entries"] = q, j[q - first][2], []
        return out


class _SyncingTransport(SeamTransport):
    """pysyncobj's TCP transport, but a follower's or candidate's every send is
    preceded by a journal sync (a leader's is not: see the module docstring),
    and append_entries pass through `_StaleAppendGuard` on the way in.

    It also guards the Raft port (replication/link.py caps the frames):
    * an incoming connection whose source host is not a configured peer's is
      closed at once. Peers bind their outgoing connections to their own Raft
      host, so with peers on distinct hosts only they get through; when all
      peers share one host (127.0.0.1 in tests, or one machine), the check is
      by host only and the seal, the handshake deadline and the frame caps do
      the rest;
    * `reap` (on a timer) closes connections that did not complete the
      handshake within handshake_timeout_s and those without an authentic
      frame for idle_timeout_s, and sends a keepalive on every authentic
      connection that sent nothing since the last round (two followers
      exchange no Raft messages at all between elections);
    * `pre_vote`, `pre_vote_response` and `keepalive` messages go to
      `_PreVote` or nowhere, never to pysyncobj;
    * in the rejoin mode, request_vote never reaches pysyncobj (`_SyncObj`).
    Loop thread only.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *,  # noqa: N803
                 journal: DurableJournal, trace: _Trace | None, config: RaftConfig,
                 poller: _LoopPoller, events: RaftEvents) -> None:
        self._journal = journal
        self._events = events
        self._trace = trace
        self._guard = _StaleAppendGuard(journal)
        self._peer_hosts = _resolve_hosts(config.peers)
        self._handshake_timeout = config.handshake_timeout_s
        self._idle_timeout = config.idle_timeout_s
        self._refused_hosts: set[str] = set()
        self.refused = 0  # incoming connections closed for their source address
        self.reaped = 0  # connections closed by `reap`
        self.prevote: _PreVote | None = None  # set by _SyncObj once constructed
        # False until the first send after this node became leader: that send
        # carries the no-op appended inside the poll, which no end-of-tick
        # sync covered yet. Set by RaftNode._on_state_changed (loop thread).
        self.leader_synced = False
        self.is_leader = False
        super().__init__(syncObj, selfNode, otherNodes, poller=poller,
                         max_frame=max_frame_bytes(config.append_entries_batch_bytes),
                         bind_host=_source_host(config.self_addr), listen_backlog=LISTEN_BACKLOG)

    def admit(self, conn: SealedConnection) -> bool:
        host = conn.peer_host()
        if host in self._peer_hosts:
            return True
        self.refused += 1
        if host not in self._refused_hosts and len(self._refused_hosts) < 100:
            self._refused_hosts.add(host or "?")
            log.warning("Raft port: refused a connection from %s (not a configured peer host; "
                        "further ones from it are closed silently)", host)
        return False

    def partial_frame_at(self, node: Any) -> float:
        """When bytes of a frame still incomplete last arrived from `node` (0:
        none buffered). Whole frames do not count: a node that lost leadership
        still sends keepalives, which must not pass for a live leader."""
        conn = self.connection(node)
        if conn is None or not conn.unparsed_bytes:
            return 0.0
        return conn.last_read_at

    def reap(self, now: float) -> None:
        for conn in self.unidentified_connections():
            if now - conn.opened_at > self._handshake_timeout:
                self.reaped += 1
                conn.disconnect()  # pysyncobj's _onDisconnected drops it from the set
        for conn in self.peer_connections():
            if not isinstance(conn, SealedConnection) or conn.state == CONNECTION_STATE.DISCONNECTED:
                continue
            if not conn.authentic:
                if now - conn.opened_at > self._handshake_timeout:
                    self.reaped += 1
                    conn.disconnect()
            elif now - conn.last_frame_at > self._idle_timeout:
                self.reaped += 1
                conn.disconnect()
            elif conn.state == CONNECTION_STATE.CONNECTED and conn.frames_sent == conn.keepalive_mark:
                conn.send(_KEEPALIVE)  # carries no log state: no journal sync needed
            if conn.state == CONNECTION_STATE.CONNECTED:
                conn.keepalive_mark = conn.frames_sent

    def set_leader(self, leader: bool) -> None:
        self.is_leader = leader
        self.leader_synced = False

    def peer_changed(self, node: Any, connected: bool) -> None:
        self._events.peer(str(getattr(node, "address", node)), connected)

    def _onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802 - Transport's dispatch
        if isinstance(message, dict):
            kind = message.get("type")
            if kind == "append_entries":
                core = self.core
                message = self._guard.rewrite(message, core.raftCurrentTerm)
                if self.prevote is not None:
                    self.prevote.heard_leader(message)
                if core.rejoining and message.get("term", -1) >= core.raftCurrentTerm:
                    core.rejoining = False
                    log.info("rejoin: heard from the leader of term %s; voting again", message.get("term"))
            elif kind == "request_vote" and self.core.rejoining:
                return
            elif kind in ("pre_vote", "pre_vote_response"):
                if self.prevote is not None:
                    self.prevote.on_message(node, message)
                return
            elif kind == "keepalive":
                return
            elif kind == "next_node_idx" and self.is_leader:
                self._no_rewind(node, message)
                return
        super()._onMessageReceived(node, message)

    def _no_rewind(self, node: Any, message: dict[str, Any]) -> None:
        """pysyncobj moves a follower's nextIndex back to every ack that raises
        its matchIndex, though everything after it is already on the way (same
        TCP connection): each ack of a pipelined entry resent all later ones.
        A successful ack may only move nextIndex forward; a reset (the
        follower lacks prevLogIdx, e.g. after a reconnect) still moves it back."""
        next_index = self.leader_next_index
        before = next_index.get(node)
        super()._onMessageReceived(node, message)
        if (before is not None and message.get("success") and not message.get("reset")
                and next_index.get(node, before) < before):
            next_index[node] = before

    def send(self, node: Any, message: Any) -> bool:
        if not self.is_leader or not self.leader_synced:
            self._journal.sync()
            self.leader_synced = self.is_leader
        if isinstance(message, dict) and "serialized" in message and message["serialized"] \
                and message["serialized"][1]:  # a dump's first chunk: (data, first, last), seam P6
            self._events.snapshot_sending(str(getattr(node, "address", node)))
        if self._trace is not None and isinstance(message, dict):
            kind = message.get("type")
            if kind == "next_node_idx":
                self._trace.line(f"send next_node_idx {message['next_node_idx']} "
                                 f"success={bool(message['success'])}")
            elif kind == "append_entries" and message.get("entries"):
                self._trace.line(f"send append_entries {message['entries'][-1][1]}")
        return bool(super().send(node, message))


_KEEPALIVE = {"type": "keepalive"}
# The Raft port's listen backlog: room for a burst of connects (each is then
# judged by source host, handshake deadline and seal) before SYNs are dropped.
LISTEN_BACKLOG = 1024


def _source_host(addr: str) -> str | None:
    """The host outgoing Raft connections bind to: this node's Raft host (the
    address its peers know it by), unless that is a wildcard."""
    host = addr.rpartition(":")[0].strip("[]")
    return None if host in ("", "0.0.0.0", "::") else host


def _resolve_hosts(addrs: Sequence[str]) -> frozenset[str]:
    """The IP addresses the peers' Raft hosts resolve to (once, at start)."""
    out: set[str] = set()
    for addr in addrs:
        host = addr.rpartition(":")[0].strip("[]")
        try:
            for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM):
                out.add(str(info[4][0]))
        except OSError:
            out.add(host)
    return frozenset(out)


class _LoopPoller:
    """pysyncobj's poller interface on an asyncio loop.

    pysyncobj subscribes its sockets with a callback and an event mask and then
    calls `poll(timeout)` at the end of every tick; here the loop watches the
    fds (add_reader / add_writer, level-triggered like poll(2)), runs the
    callback when one is ready and then asks for one tick, so messages that
    arrive together are handled before a single commit calculation. `poll`
    does nothing. Loop thread only.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, after_event: Callable[[], None]) -> None:
        self._loop = loop
        self._after_event = after_event
        self._subs: dict[int, tuple[Callable[[int, int], None], int]] = {}

    def subscribe(self, descr: int, callback: Callable[[int, int], None], event_mask: int) -> None:
        old = self._subs.get(descr)
        if old is not None and old[1] == event_mask and old[0] == callback:
            return
        self._subs[descr] = (callback, event_mask)
        loop = self._loop
        if event_mask & (POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR):
            loop.add_reader(descr, self._fire, descr, POLL_EVENT_TYPE.READ)
        else:
            loop.remove_reader(descr)
        if event_mask & POLL_EVENT_TYPE.WRITE:
            loop.add_writer(descr, self._fire, descr, POLL_EVENT_TYPE.WRITE)
        else:
            loop.remove_writer(descr)

    def unsubscribe(self, descr: int) -> None:
        if self._subs.pop(descr, None) is not None:
            self._loop.remove_reader(descr)
            self._loop.remove_writer(descr)

    def poll(self, timeout: float) -> None:
        pass  # the loop delivers events

    def close(self) -> None:
        for descr in list(self._subs):
            self.unsubscribe(descr)

    def _fire(self, descr: int, event: int) -> None:
        sub = self._subs.get(descr)
        if sub is None:
            return
        try:
            sub[0](descr, event)
        except JournalFailed:
            pass  # storage failed: RaftNode._storage_failed reports it once and stops the node
        except Exception:
            log.exception("raft socket callback failed")
        self._after_event()


class _SyncObj(RaftCore):
    """The adapter's SyncObj: the seam's `RaftCore` (no eager commit round,
    bounded sends) plus pre-vote and the rejoin mode, whose work before every
    tick is `before_tick` (RaftNode._tick calls it, then doTick).

    Pre-vote (`_PreVote`): a follower whose election timer ran out asks first
    and starts an election only if a majority would vote for it.

    The rejoin mode (docs/storage.md): a node whose data dir was wiped forgot
    the votes it cast: back while an election it voted in is still open, it
    could vote twice in one term. While `rejoining`, it never starts an
    election (here) and ignores request_vote (`_SyncingTransport`); the first
    append_entries from a leader of its term or a later one ends that.
    Loop thread only.
    """

    rejoining = False

    def __init__(self, *args: Any, prevote: _PreVote, **kwargs: Any) -> None:
        self._prevote = prevote
        super().__init__(*args, **kwargs)
        prevote.attach(self)

    def before_tick(self) -> None:
        """Before pysyncobj's tick, which starts with its election check."""
        if self.rejoining:  # keep the election timer from ever firing
            self.election_deadline = monotonic() + self.conf.raftMaxTimeout
        self._prevote.before_tick()  # before pysyncobj's own election check


class _PreVote:
    """Pre-vote (Raft thesis 9.6), which pysyncobj lacks, in the adapter.

    Without it a follower that misses heartbeats for one election timeout
    (say, behind a large entry still in transit) starts an election at term+1;
    it cannot win with a shorter log, but its higher term makes the leader
    step down: term churn with no leader for a while, again and again.

    Here, when pysyncobj's election deadline passes (follower or candidate),
    `before_tick` moves it one random election timeout further and sends
    `pre_vote` {term: current+1, last_log_index, last_log_term} instead; only
    when a majority (itself included) granted it does pysyncobj's own election
    start, at the next tick. A node grants a pre-vote, changing none of its
    own state, only if it is not leader, has not heard from a leader for
    election_timeout_min_s (an append_entries, or bytes of a frame still
    incomplete on the leader's connection: a large message arriving counts),
    the term is above its own, and the candidate's log is at least as up to
    date as its own; grants are counted once per node. A
    refusal carries the refuser's term; a node that learns a higher term that
    way adopts it (as any Raft message with a higher term would make it), so a
    node that fell behind in term can still catch up and win later.

    The same "heard from a leader" test keeps a follower's own timer from
    firing while bytes from its leader are still arriving. Votes themselves
    (request_vote) are unchanged, so safety is pysyncobj's. Loop thread only.
    """

    def __init__(self, transport_of: Callable[[], _SyncingTransport | None], min_timeout_s: float) -> None:
        self._transport_of = transport_of
        self._min_timeout = min_timeout_s
        self._so: _SyncObj | None = None
        self._leader_seen = 0.0
        self._term = -1  # the term of the round in progress
        self._granted: set[Any] = set()  # nodes that granted the round in progress
        self._won = False
        self.rounds = 0  # pre-vote rounds started (RaftNode.status)

    def attach(self, so: _SyncObj) -> None:
        self._so = so
        transport = self._transport_of()
        if transport is not None:
            transport.prevote = self

    def heard_leader(self, message: dict[str, Any]) -> None:
        if self._so is not None and message.get("term", -1) >= self._so.raftCurrentTerm:
            self._leader_seen = monotonic()
            self._won = False

    def _leader_recent(self, now: float) -> bool:
        so = self._so
        assert so is not None
        if now - self._leader_seen < self._min_timeout:
            return True
        leader = so.leader_node()
        transport = self._transport_of()
        return (leader is not None and leader is not so.selfNode and transport is not None
                and now - transport.partial_frame_at(leader) < self._min_timeout)

    def before_tick(self) -> None:
        so = self._so
        if so is None or so.raft_state == LEADER or so.selfNode is None:
            return
        now = monotonic()
        if so.election_deadline >= now or not so.connected_to_anyone():
            return
        if self._won or so.transfer_in_progress:
            self._won = False
            return  # pysyncobj starts the election in this tick
        so.election_deadline = now + so.new_election_timeout()
        if so.raft_state == FOLLOWER and self._leader_recent(now):
            return  # bytes from the leader are still arriving: not dead, just slow
        self.rounds += 1
        self._term, self._granted = so.raftCurrentTerm + 1, set()
        last = so.last_log_entry()
        transport = self._transport_of()
        for node in so.otherNodes:
            if transport is not None:
                transport.send(node, {"type": "pre_vote", "term": self._term,
                                      "last_log_index": last[1], "last_log_term": last[2]})
        self._count()

    def on_message(self, node: Any, message: dict[str, Any]) -> None:
        so = self._so
        if so is None:
            return
        term = message.get("term", -1)
        transport = self._transport_of()
        if message["type"] == "pre_vote":
            last = so.last_log_entry()
            grant = (so.raft_state != LEADER and term > so.raftCurrentTerm
                     and not self._leader_recent(monotonic())
                     and (message["last_log_term"], message["last_log_index"]) >= (last[2], last[1]))
            if transport is not None:
                transport.send(node, {"type": "pre_vote_response", "term": term, "granted": grant,
                                      "voter_term": so.raftCurrentTerm})
            return
        voter_term = message.get("voter_term", -1)
        if voter_term > so.raftCurrentTerm and so.raft_state != LEADER:
            so.set_current_term(voter_term, None)  # as any higher-term message would
            so.set_state(FOLLOWER)
            so.forget_leader()
            return
        if message.get("granted") and term == self._term == so.raftCurrentTerm + 1:
            self._granted.add(node)
            self._count()

    def _count(self) -> None:
        so = self._so
        assert so is not None
        if 1 + len(self._granted) > (len(so.otherNodes) + 1) / 2 and so.raft_state != LEADER:
            self._term, self._won = -1, True
            so.election_deadline = 0  # the next tick starts the election


class _Replica(SyncObjConsumer):
    """The replicated object. Exactly ONE @replicated method: never add another
    (pysyncobj numbers replicated methods by sorted name)."""

    def __init__(self, machine: Machine, lock: threading.Lock,
                 on_applied: Callable[[], None] | None) -> None:
        super().__init__()
        self._machine = machine
        self._lock = lock
        self._on_applied = on_applied

    @replicated
    def apply(self, data: bytes) -> list[dict]:
        try:
            with self._lock:
                return apply_encoded(self._machine, data)
        finally:
            notify_applied(self._on_applied)


def notify_applied(hook: Callable[[], None] | None) -> None:
    if hook is None:
        return
    try:
        hook()
    except Exception:
        log.exception("on_applied hook failed")


@dataclass
class _Pending:
    callback: ProposeCallback
    deadline: float
    done: bool = False


def _private_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    """An event loop running on a thread of its own (RaftNode without a loop)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(started.set)
        loop.run_forever()
        loop.close()
    thread = threading.Thread(target=run, name="raft-loop", daemon=True)
    thread.start()
    started.wait()
    return loop, thread


def _port_free(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host.strip("[]"), int(port)))
        return True
    except OSError:
        return False
    finally:
        s.close()


class RaftNode:
    """One Raft replica of `machine`; see the module docstring and contracts section 2."""

    def __init__(self, config: RaftConfig, machine: Machine,
                 on_applied: Callable[[], None] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None,
                 on_fatal: Callable[[str], None] | None = None,
                 rejoin: bool = False) -> None:
        """`loop`: the running event loop of the calling thread to tick on (the
        node server's); None starts a private loop on a thread of its own.
        `on_fatal(reason)`: called once, on the loop thread, when storage failed
        (see the module docstring); the caller must stop the process.
        `rejoin`: start in the rejoin mode (`_SyncObj`) if this node
        has never learnt a term (its data dir was wiped); no effect otherwise."""
        self._rejoin = rejoin
        self.config = config
        self.machine = machine
        self._on_applied = on_applied
        self._on_fatal = on_fatal
        self._fatal: str | None = None  # why storage failed; then nothing more is ticked or accepted
        self._lock = threading.Lock()
        self._role = 0
        # Leaders this node has followed (or been) since it started, for metrics:
        # a change is counted once a new leader is known, in the tick after.
        self._last_leader: Any = None
        self.leader_changes = 0
        self._destroyed = False
        self._deferred: collections.deque[tuple[ProposeCallback, str]] = collections.deque()
        self._pending: collections.deque[_Pending] = collections.deque()  # loop thread only
        self._tick_scheduled = False
        self._syncing = False  # a leader's journal fdatasync is running on _fsync_thread
        self._fsync_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raft-fsync")
        self._timer: asyncio.TimerHandle | None = None
        self._reaper: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        if loop is None:
            loop, self._thread = _private_loop()
        self._loop = loop
        self._loop_thread_id: int | None = None
        try:
            self._call_on_loop(self._start)
        except BaseException:
            self._stop_private_loop()
            raise

    def _start(self) -> None:
        config = self.config
        self._loop_thread_id = threading.get_ident()
        data_dir = config.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        durable = config.durability == "fsync"
        self._journal_path = data_dir / JOURNAL_FILE
        self._dump_path = data_dir / DUMP_FILE
        # A damaged dump must stop the node here with a clear error: pysyncobj
        # would log it and carry on with an empty state.
        self._preloaded: Dump | None = (read_dump(self._dump_path, durable)
                                        if self._dump_path.exists() else None)
        if not _port_free(config.self_addr):
            raise RaftStartError(f"cannot bind Raft port {config.self_addr}: address in use")

        self._trace = _Trace(config.trace_path) if config.trace_path is not None else None
        trace = self._trace
        self.journal = DurableJournal(
            self._journal_path, data_dir / META_FILE, config.durability,
            on_sync=(lambda idx: trace.line(f"sync {idx}")) if trace else None,
            on_truncate=(lambda idx: trace.line(f"truncate {idx}")) if trace else None,
            on_failed=self._storage_failed,
            dump_last_index=self._preloaded.last[1] if self._preloaded is not None else 0)
        self._replica = _Replica(self.machine, self._lock, self._on_applied)
        self._dumps = DumpWriter(self._dump_path, self.machine.to_snapshot, durable)
        self._events = RaftEvents(config.self_addr, config.names)
        self._dumps_logged = 0  # self._dumps.completed when the last snapshot line was logged
        conf = SyncObjConf(
            password=None,  # the link key is the encryptor (seam P3)
            pollerType="select",  # holds no descriptor; replaced by _LoopPoller (seam P4)
            autoTick=False,  # ticked by the loop (_tick, _periodic, _LoopPoller)
            appendEntriesUseBatch=False,  # send each entry at once (latency)
            appendEntriesPeriod=config.append_entries_period_s,
            appendEntriesBatchSizeBytes=config.append_entries_batch_bytes,
            raftMinTimeout=config.election_timeout_min_s,
            raftMaxTimeout=config.election_timeout_max_s,
            leaderFallbackTimeout=config.leader_fallback_timeout_s,
            connectionTimeout=config.connection_timeout_s,
            connectionRetryTime=config.connection_retry_s,
            bindAddress=config.self_addr,  # else pysyncobj binds 0.0.0.0
            commandsWaitLeader=False,  # fail fast with NO_LEADER during elections
            commandsQueueSize=config.max_queued_proposals,
            dynamicMembershipChange=False,
            journalFile=str(self._journal_path),
            fullDumpFile=str(self._dump_path),
            logCompactionMinEntries=config.compaction_min_entries,
            logCompactionMinTime=config.compaction_min_time_s,
            logCompactionBatchSize=DUMP_CHUNK_BYTES,  # dump chunk size (link.max_frame_bytes)
            serializer=self._dumps.serialize,
            serializeChecker=self._dumps.check,
            deserializer=self._deserialize,
            onStateChanged=self._on_state_changed,
            maxBindRetries=1,
        )
        self._transport: _SyncingTransport | None = None

        def make_transport(*args: Any) -> _SyncingTransport:
            self._transport = _SyncingTransport(*args, journal=self.journal, trace=self._trace, config=config,
                                                poller=self._poller, events=self._events)
            return self._transport
        self._poller = _LoopPoller(self._loop, self._schedule_tick)
        self._prevote = _PreVote(lambda: self._transport, config.election_timeout_min_s)
        try:
            with journal_injected(self.journal, self._journal_path):
                self._sync = _SyncObj(config.self_addr, list(config.peers), conf,
                                      consumers=[self._replica], transportClass=make_transport,
                                      prevote=self._prevote, link_key=LinkKey(config.password),
                                      max_in_flight=config.max_in_flight_bytes)
        except BaseException as exc:
            if self._transport is not None:
                self._transport.destroy()
            self._poller.close()
            self.journal._destroy()
            if self._trace:
                self._trace.close()
            if isinstance(exc, SyncObjException) and "BindError" in str(exc):
                raise RaftStartError(f"cannot bind Raft port {config.self_addr}") from exc
            raise
        if self._rejoin and self.journal.getCurrentTerm() == 0:
            self._sync.rejoining = True
            log.info("rejoin: no vote and no candidacy until a leader is heard from")
        self._sync.addOnTickCallback(self._sync_journal)
        self._sync.addOnTickCallback(self._on_tick)
        self._schedule_tick()
        self._timer = self._loop.call_later(self.config.tick_period_s, self._periodic)
        self._reaper = self._loop.call_later(self._reap_period(), self._reap)

    # ---- public API ------------------------------------------------------

    def propose(self, entry: bytes, callback: ProposeCallback) -> None:
        """Replicate `entry` (msgpack, contracts section 1). `callback(results, None)`
        or `callback(None, code)` is called once, on the loop thread."""
        if threading.get_ident() != self._loop_thread_id:
            try:
                self._loop.call_soon_threadsafe(self.propose, entry, callback)
            except RuntimeError:  # loop closed: destroyed
                callback(None, NO_LEADER)
            return
        if self._destroyed or self._fatal is not None:
            callback(None, NO_LEADER)  # no tick left to call it from
            return
        self._schedule_tick()  # appends (and sends) it, or reports the deferred error
        if not self.is_leader():
            # Never let pysyncobj forward to the leader: the server redirects clients.
            self._deferred.append((callback, NOT_LEADER if self.leader() else NO_LEADER))
            return
        p = _Pending(callback, time.monotonic() + self.config.propose_timeout_s)
        self._pending.append(p)
        try:
            self._replica.apply(bytes(entry), callback=functools.partial(self._on_result, p))
        except Exception:
            log.exception("propose failed")
            self._deferred.append((callback, INTERNAL))
            p.done = True

    def is_leader(self) -> bool:
        return self._fatal is None and bool(self._sync.is_leader())

    @property
    def fatal(self) -> str | None:
        """Why this node's storage failed (it must stop), or None."""
        return self._fatal

    def leader(self) -> str | None:
        if self._fatal is not None:
            return None  # never redirect clients to a node that is stopping
        node = self._sync.leader_node()
        return None if node is None else str(getattr(node, "address", node.id))

    def status(self) -> dict[str, Any]:
        s, t = self._sync, self._transport
        return {
            "role": "leader" if s.is_leader() else _ROLES.get(self._role, "follower"),
            "term": s.raftCurrentTerm,
            "commit_index": s.raftCommitIndex,
            "last_applied": s.raftLastApplied,
            "leader": self.leader(),
            # Raft addresses of the peers this node has a live link to: whom
            # `cluster status` may call a follower rather than unreachable.
            "peers_connected": [str(getattr(n, "address", n.id)) for n in s.otherNodes if s.isNodeConnected(n)],
            # Raft port guards (counters since start): incoming connections
            # refused for their source host, connections reaped (handshake
            # deadline or idle), pre-vote rounds this node started.
            "port_refused": t.refused if t is not None else 0,
            "port_reaped": t.reaped if t is not None else 0,
            "prevote_rounds": self._prevote.rounds,
        }

    def figures(self) -> ReplicationFigures:
        match = ({str(getattr(node, "address", node.id)): idx for node, idx in self._sync.match_index().items()}
                 if self.is_leader() else {})
        return ReplicationFigures(leader_changes=self.leader_changes, last_index=self._sync.last_log_entry()[1],
                                  follower_match=match, fsync_seconds=self.journal.sync_seconds)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Any]:
        """Hold the apply lock; read `machine` only inside."""
        with self._lock:
            yield self.machine

    def wait_leader(self, timeout_s: float) -> str | None:
        """Poll until some leader is known here (or the deadline); return it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None:
                return leader
            time.sleep(0.01)
        return self.leader()

    def force_compaction(self) -> None:
        """Write a dump and drop the journal it covers at the next tick."""
        self._sync.forceLogCompaction()

    @property
    def dumps_written(self) -> int:
        return self._dumps.completed

    def destroy(self) -> None:
        """Stop the node: ticks, sockets, files. Unresolved proposals get TIMEOUT."""
        if self._destroyed:
            return
        try:
            self._call_on_loop(self._destroy_on_loop)
        finally:
            self._stop_private_loop()

    def _destroy_on_loop(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._reaper is not None:
            self._reaper.cancel()
        self._sync.destroy()  # autoTick off: closes the transport and the journal now
        self._fsync_thread.shutdown(wait=True)
        self._poller.close()
        self._dumps.cancel()
        self._on_tick(final=True)
        if self._trace:
            self._trace.close()

    # ---- loop plumbing ---------------------------------------------------

    def _call_on_loop(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the loop thread and return its result (or raise)."""
        if threading.get_ident() == self._loop_thread_id or (
                self._thread is None and self._loop_thread_id is None):
            return fn()  # the caller's own loop (constructing, or already on it)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # handed to the caller
                done.set_exception(exc)
        self._loop.call_soon_threadsafe(run)
        return done.result()

    def _stop_private_loop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def _schedule_tick(self) -> None:
        if not self._tick_scheduled:
            self._tick_scheduled = True
            self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_scheduled = False
        if self._destroyed or self._syncing or self._fatal is not None:
            return  # a finishing sync schedules the next tick; a failed node ticks no more
        try:
            self._sync.before_tick()  # may move the election deadline doTick checks first
            self._sync.doTick(0.0)
        except Exception:
            if self._fatal is None:  # a JournalFailed was reported by _storage_failed
                log.exception("raft tick failed; continuing")

    def _sync_journal(self) -> None:
        """End of every tick: make what this tick appended durable.

        A follower or candidate syncs right here (it also syncs before every
        message it sends). A leader hands the fdatasync to a thread so the loop
        keeps reading requests and acks meanwhile, and runs no further tick
        until it returns: pysyncobj computes the commit index only at the start
        of a tick, so the leader still counts itself towards committing k only
        after k is on its disk (see the module docstring). Whatever arrives
        during the sync goes into the next tick's entries: group commit."""
        if not self.is_leader():
            self.journal.sync()
            return
        begun = self.journal.begin_sync()
        if begun is None:
            return
        fd, index = begun
        self._syncing = True
        fut = self._loop.run_in_executor(self._fsync_thread, _fdatasync_and_close, fd)
        fut.add_done_callback(functools.partial(self._synced, index, time.perf_counter()))

    def _synced(self, index: int, started: float, fut: asyncio.Future[None]) -> None:
        self._syncing = False
        exc = fut.exception()
        if self._destroyed:
            return
        if exc is None:
            self.journal.sync_seconds.observe(time.perf_counter() - started)
            self.journal.end_sync(index)
        else:
            # Never retried (fsyncgate): the journal stays dirty and failed.
            self.journal.mark_failed(f"{self.journal.path}: fdatasync failed ({exc}); "
                                     "not retried: the data may be lost")
        self._schedule_tick()

    def _storage_failed(self, reason: str) -> None:
        """The journal's on_failed hook (loop thread, possibly deep inside a
        pysyncobj call that is about to see JournalFailed): stop ticking now,
        then, outside pysyncobj, fail the proposals and tell the owner."""
        if self._fatal is not None:
            return
        self._fatal = reason
        self._loop.call_soon(self._stop_after_failure)

    def _stop_after_failure(self) -> None:
        self._on_tick(final=True)  # pending proposals: outcome unknown (TIMEOUT)
        if self._on_fatal is None:
            log.critical("storage failed, this node accepts nothing more: %s", self._fatal)
            return
        try:
            self._on_fatal(self._fatal or "")
        except Exception:
            log.exception("on_fatal hook failed")

    def _periodic(self) -> None:
        """Timers (election, heartbeat, proposal deadlines) need ticks when no
        socket is busy: one every tick_period_s."""
        if self._destroyed:
            return
        self._schedule_tick()
        self._timer = self._loop.call_later(self.config.tick_period_s, self._periodic)

    def _reap_period(self) -> float:
        """Keepalives go this often on quiet links: pysyncobj drops a connection
        that read nothing for connection_timeout_s when it next touches it."""
        return self.config.connection_timeout_s / 3

    def _reap(self) -> None:
        """Raft port housekeeping (`_SyncingTransport.reap`), every _reap_period."""
        if self._destroyed:
            return
        if self._transport is not None:
            try:
                self._transport.reap(monotonic())
            except Exception:
                log.exception("raft connection reaper failed; continuing")
        self._reaper = self._loop.call_later(self._reap_period(), self._reap)

    # ---- loop-thread side ------------------------------------------------

    def _on_result(self, p: _Pending, result: Any, err: int) -> None:
        if p.done:
            return
        p.done = True
        if err == FAIL_REASON.SUCCESS:
            if self._trace is not None:
                # pysyncobj resolves an entry's callbacks before counting it applied.
                self._trace.line(f"commit_ack {self._sync.raftLastApplied + 1}")
            _call(p.callback, result, None)
        else:
            _call(p.callback, None, _FAIL_CODES.get(err, INTERNAL))

    def _on_tick(self, final: bool = False) -> None:
        if not final:
            s = self._sync
            leader = s.leader_node()
            if leader is not None and leader is not self._last_leader:  # pysyncobj keeps one object per node
                self._last_leader = leader
                self.leader_changes += 1
            self._events.observe(_ROLES.get(self._role, "follower"), s.raftCurrentTerm, leader)
            if self._dumps.completed != self._dumps_logged:
                self._log_snapshot()
        while self._deferred:
            callback, code = self._deferred.popleft()
            _call(callback, None, code)
        now = time.monotonic()
        expired: list[_Pending] = []
        while self._pending and (self._pending[0].done or final or self._pending[0].deadline <= now):
            p = self._pending.popleft()
            if not p.done:
                p.done = True
                expired.append(p)
        for p in expired:  # after the sweep: a callback may propose again
            _call(p.callback, None, TIMEOUT)

    def _log_snapshot(self) -> None:
        """A dump was written, and pysyncobj compacted the journal in the same
        tick (before the on-tick callbacks): it now starts at the dump's index."""
        self._dumps_logged = self._dumps.completed
        j = self.journal
        try:
            size = self._dump_path.stat().st_size
        except OSError:
            size = 0
        self._events.snapshot_written(j[0][1] if len(j) else 0, size, len(j))

    def _on_state_changed(self, old: int, new: int) -> None:
        self._role = new
        if self._transport is not None:
            self._transport.set_leader(new == LEADER)

    def _deserialize(self, file_name: str) -> tuple[Entry, Entry, list[str]]:
        """pysyncobj's deserializer: restore the machine from a dump (at startup,
        or one streamed from the leader), return what pysyncobj expects."""
        path = Path(file_name)
        dump, self._preloaded = self._preloaded, None
        from_leader = dump is None or path != self._dump_path
        if from_leader:
            try:
                dump = read_dump(path, self.config.durability == "fsync")
            except (OSError, DumpError) as exc:
                # pysyncobj logs this and acks the dump anyway: the failed
                # journal makes that ack (every send syncs first) raise instead.
                self.journal.mark_failed(f"cannot take the dump received from the leader ({exc})")
                raise
        with self._lock:
            self.machine.restore(dump.machine)
        self._align_journal(dump)
        self._events.snapshot_loaded(dump.last[1], from_leader)
        notify_applied(self._on_applied)
        return dump.last, dump.prev, dump.cluster

    def _align_journal(self, dump: Dump) -> None:
        """If a crash hit between a dump's rename and the journal compaction that
        follows it, the journal still starts before the dump. pysyncobj would
        then clear it and lose the entries after the dump; drop only the
        entries the dump covers instead, so pysyncobj finds the journal aligned."""
        j = self.journal
        if len(j) < 2:
            return
        pos = dump.prev[1] - j[0][1]
        if 0 < pos and pos + 1 < len(j) and j[pos] == dump.prev and j[pos + 1] == dump.last:
            j.deleteEntriesTo(pos)


def _fdatasync_and_close(fd: int) -> None:
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _call(callback: ProposeCallback, results: list | None, code: str | None) -> None:
    try:
        callback(results, code)
    except Exception:
        log.exception("propose callback failed")
