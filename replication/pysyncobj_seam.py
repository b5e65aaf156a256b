"""Every reliance on pysyncobj 0.3.17's internals, in one place.

The rest of replication/ imports pysyncobj only through this module (a unit
test checks that), and reads or changes pysyncobj's private state only through
the named accessors below. tests/unit/test_pysyncobj_assumptions.py pins each
internal this module touches and each behaviour it relies on, so a different
pysyncobj fails there first, naming the assumption.

The patches, each explained where it is made:

  P1 `PIPE_NOTIFIER_ENABLED = False` (module global of pysyncobj.syncobj, set
     at import): no wake-up pipe per proposal; the adapter ticks on its loop.
  P2 `createJournal` (module global) swapped while `SyncObj.__init__` runs:
     the adapter's DurableJournal instead of pysyncobj's unflushed mmap one.
  P3 `RaftCore.encryptor` (a public property, overridden): the link key of
     replication/link.py instead of a Fernet key derived from the password.
  P4 `SeamTransport.__init__` sets the SyncObj's `_poller` before the
     transport subscribes any socket: the adapter's event-loop poller.
  P5 `RaftCore._SyncObj__applyLogEntries`: no eager commit-index round.
  P6 `RaftCore._SyncObj__sendAppendEntries`: bounded, exactly framed sends.
  P7 `SeamTransport.addNode` / `_onNewIncomingConnection`: every connection
     pysyncobj creates becomes a `SealedConnection` (its class is changed
     before any byte moves), and an incoming one may be refused (`admit`).
  P8 `SeamTransport._maybeBind`: the listen backlog widened after the bind.
  P9 `SealedConnection`: TcpConnection with replication/link.py's framing,
     bytearray buffers, bounded reads, WRITE-driven draining, a source bind.

Done by public means instead (these were patches too): the poller (a swap
of `createPoller`; now P4, one attribute, no global), the encryptor (a swap
of `getEncryptor`; now the public `encryptor` property, P3), the pre-vote and
rejoin work before each tick (two overrides of `_onTick`; now the adapter
calls it before the public `doTick`), and the rejoin filter of incoming
messages (an override of the private `__onMessageReceived`; now in the
transport's `_onMessageReceived`, the Transport base class's dispatch to
SyncObj, where replication/raft.py also rewrites stale append_entries, keeps
nextIndex from moving back and routes its own message types).

Behaviours relied on without a patch (pinned by the assumptions test):
  * the leader computes the commit index at the start of `_onTick`, before
    new proposals are appended (`_checkCommandsToApply`) and before the
    on-tick callbacks run (where the adapter starts its journal sync);
  * a proposal's callback runs before `raftLastApplied` counts its entry;
  * a follower deletes every entry after prevLogIdx on any append_entries
    whose prevLogIdx matches (replication/raft.py `_StaleAppendGuard`);
  * the leader moves nextIndex back to every ack that raises matchIndex;
  * a follower reassembles 'transmission' chunks start/process.../finish
    into pickle(entry) (P6 sends them);
  * dump chunks are `Serializer.getTransmissionData(node)` = (data, first,
    last) inside {'serialized': ...};
  * a new leader appends a no-op and sends it while handling the vote,
    outside a tick (raft.py: `leader_synced`);
  * the leader's nextIndex dict exists before the transport and is never
    replaced (`SeamTransport.leader_next_index`);
  * a replicated call is journalled as byte 0 + pickle protocol 2 of
    (method id, args): the journal format;
  * a custom serializer writes dump + '.tmp', renamed over the dump after
    (replication/snapshot.py); a custom deserializer returns (last, prev,
    cluster), and loading it keeps a journal that starts with (prev, last)
    (raft.py `_align_journal`);
  * TcpConnection.disconnect closes the socket before it unsubscribes, and
    a WRITE event with nothing left to send drops the WRITE subscription (P9);
  * `pollerType='select'` makes the poller P4 replaces hold no descriptor.
  * every peer connection past the handshake, and every disconnection (each
    failed reconnect too), reaches SyncObj through the Transport base class's
    `_onNodeConnected` / `_onNodeDisconnected`, which `SeamTransport` extends
    to tell `peer_changed` (the node log, replication/raft_events.py).
Loop thread only, like the adapter that uses it.
"""
from __future__ import annotations

import contextlib
import errno
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysyncobj.pickle as _pso_pickle
import pysyncobj.syncobj as _pso_syncobj
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, SyncObjException, replicated
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.journal import Journal
from pysyncobj.monotonic import monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection, _getAddrType
from pysyncobj.transport import TCPTransport
from pysyncobj.version import VERSION

from replication.link import ENTRY_OVERHEAD_BYTES, HANDSHAKE_FRAME_BYTES, LinkError, LinkKey, Receiver, Sender

__all__ = [
    "CANDIDATE", "CONNECTION_STATE", "FAIL_REASON", "FOLLOWER", "LEADER", "POLL_EVENT_TYPE",
    "PINNED_VERSION", "SERIALIZER_STATE", "Journal", "RaftCore", "SealedConnection", "SeamTransport",
    "SyncObjConf", "SyncObjConsumer", "SyncObjException", "journal_injected", "monotonic",
    "replicated", "seal",
]

PINNED_VERSION = "0.3.17"
if VERSION != PINNED_VERSION:  # pragma: no cover - guarded by the pin in pyproject
    raise ImportError(f"replication.pysyncobj_seam wraps pysyncobj {PINNED_VERSION} internals, found {VERSION}: "
                      "tests/unit/test_pysyncobj_assumptions.py lists what it relies on")

# The Raft states, as onStateChanged reports them.
FOLLOWER = _pso_syncobj._RAFT_STATE.FOLLOWER
CANDIDATE = _pso_syncobj._RAFT_STATE.CANDIDATE
LEADER = _pso_syncobj._RAFT_STATE.LEADER

# P1. With appendEntriesUseBatch off, pysyncobj writes to a wake-up pipe on
# every proposal so its poll() returns; the adapter proposes on the loop
# thread and schedules the tick itself, so the pipe would only cost a write
# and a read per proposal. Read at construction and at every proposal, so it
# stays off for the process (raftq runs no other SyncObj).
_pso_syncobj.PIPE_NOTIFIER_ENABLED = False

_construct_lock = threading.Lock()


@contextlib.contextmanager
def journal_injected(journal: Journal, path: Path) -> Iterator[None]:
    """P2. Make `SyncObj.__init__` (run inside this block) use `journal` for
    conf.journalFile == `path`. pysyncobj has no hook for a journal: it calls
    its module's `createJournal(journalFile)`, which is swapped here and only
    here, under a lock (a node constructed on another thread meanwhile waits)."""
    with _construct_lock:
        original = _pso_syncobj.createJournal

        def create(journal_file: str | None = None) -> Journal:
            if journal_file is None or Path(journal_file) != path:
                raise RuntimeError(f"unexpected journal file {journal_file!r}")
            return journal

        _pso_syncobj.createJournal = create
        try:
            yield
        finally:
            _pso_syncobj.createJournal = original


# ---- the SyncObj -------------------------------------------------------------


class RaftCore(SyncObj):
    """pysyncobj's SyncObj, with named accessors for the private state the
    adapter reads or changes, and the patches P3, P5 and P6.

    `link_key` is what the transport seals connections with; `max_in_flight`
    bounds what P6 queues per follower (a transport from `SeamTransport`
    reports `unsent_bytes(node)`)."""

    def __init__(self, *args: Any, link_key: LinkKey, max_in_flight: int, **kwargs: Any) -> None:
        self._link_key = link_key
        self._max_in_flight = max_in_flight
        super().__init__(*args, **kwargs)

    # P3. The transport hands `encryptor` to every connection and runs the
    # random-key handshake only when it is truthy. The adapter passes no
    # password to pysyncobj (so it derives no Fernet key it would never use)
    # and answers the link key here; SealedConnection refuses anything else.
    @property
    def encryptor(self) -> LinkKey:
        return self._link_key

    # ---- accessors: public names for pysyncobj's private state ----

    is_leader = SyncObj._isLeader  # aliases: no extra call on the hot path
    leader_node = SyncObj._getLeader

    @property
    def raft_state(self) -> int:
        """FOLLOWER, CANDIDATE or LEADER."""
        return self._SyncObj__raftState  # type: ignore[attr-defined,no-any-return]

    def set_state(self, state: int) -> None:
        """Change state as pysyncobj does (onStateChanged fires)."""
        self._SyncObj__setState(state)  # type: ignore[attr-defined]

    def forget_leader(self) -> None:
        self._SyncObj__raftLeader = None

    def set_current_term(self, term: int, voted_for: str | None) -> None:
        """Term and vote, written through the journal (durable on return)."""
        self._SyncObj__setCurrentTerm(term, voted_for)  # type: ignore[attr-defined]

    @property
    def election_deadline(self) -> float:
        return self._SyncObj__raftElectionDeadline  # type: ignore[attr-defined,no-any-return]

    @election_deadline.setter
    def election_deadline(self, when: float) -> None:
        self._SyncObj__raftElectionDeadline = when

    def new_election_timeout(self) -> float:
        """A random election timeout in [raftMinTimeout, raftMaxTimeout]."""
        return self._SyncObj__generateRaftTimeout()  # type: ignore[attr-defined,no-any-return]

    def connected_to_anyone(self) -> bool:
        """pysyncobj starts an election only when this holds."""
        return self._SyncObj__connectedToAnyone()  # type: ignore[attr-defined,no-any-return]

    @property
    def transfer_in_progress(self) -> bool:
        """A leadership transfer ('timeout_now') forces this node's election."""
        return self._SyncObj__transferInProgress  # type: ignore[attr-defined,no-any-return]

    def last_log_entry(self) -> tuple[bytes, int, int]:
        return self._SyncObj__raftLog[-1]  # type: ignore[attr-defined,no-any-return]

    def match_index(self) -> dict[Any, int]:
        """On a leader: peer node -> the highest index known replicated there."""
        return dict(self._SyncObj__raftMatchIndex)  # type: ignore[attr-defined]

    # ---- P5 ----

    def _SyncObj__applyLogEntries(self) -> bool:  # noqa: N802 - pysyncobj's private name
        """pysyncobj's __applyLogEntries, reporting that no append_entries round
        is due. With appendEntriesUseBatch off, the original returns True after
        applying, and the tick then sends every follower an append_entries only
        to announce the new commit index, each acked: per commit two more
        messages out, two acks back and a wake-up of every follower, on the
        CPU the next request needs. Followers learn the commit index from the
        next append_entries anyway (new entries, or the heartbeat)."""
        SyncObj._SyncObj__applyLogEntries(self)  # type: ignore[attr-defined]
        return False

    # ---- P6 ----

    def _SyncObj__sendAppendEntries(self) -> None:  # noqa: N802 - pysyncobj's private name
        """pysyncobj's __sendAppendEntries, with what it sends bounded.

        pysyncobj queues, per follower, everything from nextIndex to the end
        of its log (or a whole dump, chunk after chunk) into the connection's
        write buffer within appendEntriesPeriod, however much is still unsent
        there, and its batches could exceed appendEntriesBatchSizeBytes by one
        whole entry. Here:
        * the first message of a round always goes (it is the heartbeat when
          there is nothing new); more entries or dump chunks go only while
          fewer than max_in_flight bytes wait unsent to that follower; the
          rest goes in a later round (next proposal or heartbeat), from the
          nextIndex this one left;
        * a batch holds entries while sum(len(command) +
          ENTRY_OVERHEAD_BYTES) <= batch bytes; a single entry whose pickle is larger goes as
          'transmission' chunks of exactly batch bytes, all in one go (a
          follower restarts a transmission at 'start'); pysyncobj marked the
          chunk that crossed len(command) as 'finish', which could come one
          chunk early. So every message fits link.max_frame_bytes.
        """
        conf = self._SyncObj__conf  # type: ignore[attr-defined]
        now = monotonic()
        self._SyncObj__newAppendEntriesTime = now + conf.appendEntriesPeriod
        deadline = now + conf.appendEntriesPeriod
        transport = self._SyncObj__transport  # type: ignore[attr-defined]
        connected = self._SyncObj__connectedNodes  # type: ignore[attr-defined]
        next_index = self._SyncObj__raftNextIndex  # type: ignore[attr-defined]
        serializer = self._SyncObj__serializer  # type: ignore[attr-defined]
        raft_log = self._SyncObj__raftLog  # type: ignore[attr-defined]
        batch = conf.appendEntriesBatchSizeBytes
        for node in self._SyncObj__otherNodes | self._SyncObj__readonlyNodes:  # type: ignore[attr-defined]
            if node not in connected:
                serializer.cancelTransmisstion(node)
                continue
            first = True
            while node in connected:
                nxt = next_index[node]
                log_first, log_last = raft_log[0][1], raft_log[-1][1]
                room = transport.unsent_bytes(node) < self._max_in_flight
                if not first and (nxt > log_last or not room or monotonic() > deadline):
                    break
                term = self._SyncObj__raftCurrentTerm  # type: ignore[attr-defined]
                commit = self._SyncObj__raftCommitIndex  # type: ignore[attr-defined]
                if nxt > log_first:
                    entries: list[Any] = []
                    if nxt <= log_last and room:
                        entries = _batch(raft_log, nxt - log_first, batch)
                    # past the log's end, (None, None) as pysyncobj: the follower asks for a reset
                    prev: tuple[int | None, int | None] = (
                        (nxt - 1, raft_log[nxt - 1 - log_first][2]) if nxt <= log_last + 1 else (None, None))
                    self._send_entries(node, entries, prev, term, commit, batch)
                    if entries:
                        next_index[node] = entries[-1][1] + 1
                    else:
                        break  # a heartbeat: nothing more this round
                else:  # the follower needs entries the log no longer has: a dump
                    data = serializer.getTransmissionData(node)
                    if not data:
                        # No dump ready yet (one is being written). pysyncobj sent
                        # 'serialized': None here, over and over for the whole
                        # appendEntriesPeriod; nothing goes until a chunk is ready.
                        break
                    transport.send(node, {"type": "append_entries", "term": term,
                                          "commit_index": commit, "serialized": data})
                    if data[2]:  # the last chunk
                        next_index[node] = raft_log[1][1] + 1
                first = False

    def _send_entries(self, node: Any, entries: list[Any], prev: tuple[int | None, int | None],
                      term: int, commit: int, batch: int) -> None:
        transport = self._SyncObj__transport  # type: ignore[attr-defined]
        base = {"type": "append_entries", "term": term, "commit_index": commit,
                "prevLogIdx": prev[0], "prevLogTerm": prev[1]}
        if len(entries) == 1 and len(entries[0][0]) + ENTRY_OVERHEAD_BYTES > batch:
            data = _pso_pickle.dumps(entries[0])  # what the follower's 'finish' unpickles
            if len(data) > batch:
                for pos in range(0, len(data), batch):
                    kind = "start" if pos == 0 else "finish" if pos + batch >= len(data) else "process"
                    transport.send(node, {**base, "transmission": kind, "data": data[pos:pos + batch]})
                    if node not in self._SyncObj__connectedNodes:  # type: ignore[attr-defined]
                        return
                return
        transport.send(node, {**base, "entries": entries})


def _batch(raft_log: Any, start: int, batch: int) -> list[Any]:
    """Entries from log position `start` while sum(len(command) +
    ENTRY_OVERHEAD_BYTES) <= batch (always at least one)."""
    out = [raft_log[start]]
    size = len(out[0][0]) + ENTRY_OVERHEAD_BYTES
    end = len(raft_log)
    pos = start + 1
    while pos < end:
        entry = raft_log[pos]
        size += len(entry[0]) + ENTRY_OVERHEAD_BYTES
        if size > batch:
            break
        out.append(entry)
        pos += 1
    return out


# ---- the transport -----------------------------------------------------------


class SeamTransport(TCPTransport):
    """pysyncobj's TCP transport with P4, P7 and P8, and named accessors for
    its connections. The subclass supplies `admit(conn)`."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *,  # noqa: N803 - pysyncobj's names
                 poller: Any, max_frame: int, bind_host: str | None, listen_backlog: int) -> None:
        self._max_frame = max_frame
        self._bind_host = bind_host
        self._listen_backlog = listen_backlog
        # P4. pysyncobj creates its poller in SyncObj.__init__ (`_poller`) just
        # before it constructs the transport, which subscribes every socket to
        # `syncObj._poller` and the tick polls it: replacing it here, first,
        # means no socket and no poll ever sees pysyncobj's own.
        syncObj._poller = poller
        # The leader's nextIndex per follower. SyncObj.__init__ creates this
        # dict before the transport and never replaces it, so a reference
        # kept here stays live (read on every ack: a plain attribute).
        self.leader_next_index: dict[Any, int] = syncObj._SyncObj__raftNextIndex
        super().__init__(syncObj, selfNode, otherNodes)

    def admit(self, conn: SealedConnection) -> bool:
        """An incoming connection, sealed, before pysyncobj registers it:
        False closes it."""
        return True

    def peer_changed(self, node: Any, connected: bool) -> None:
        """A peer's connection came up (past the handshake) or went down;
        pysyncobj also reports every failed reconnect as down."""

    # The Transport base class's callbacks to SyncObj on a peer's connection
    # and disconnection (for the node log: replication/raft_events.py).
    def _onNodeConnected(self, node: Any) -> None:  # noqa: N802 - pysyncobj's name
        super()._onNodeConnected(node)
        self.peer_changed(node, True)

    def _onNodeDisconnected(self, node: Any) -> None:  # noqa: N802 - pysyncobj's name
        super()._onNodeDisconnected(node)
        self.peer_changed(node, False)

    # P7 (outgoing). TCPTransport.addNode creates the TcpConnection to every
    # peer this node dials; sealed before its first connect.
    def addNode(self, node: Any) -> None:  # noqa: N802 - pysyncobj's name
        super().addNode(node)
        conn = self._connections.get(node)
        if conn is not None:
            seal(conn, self._max_frame, self._bind_host)

    # P7 (incoming). TcpServer creates the connection and calls this before
    # the first read; sealed, judged by `admit`, then handed to pysyncobj.
    def _onNewIncomingConnection(self, conn: Any) -> None:  # noqa: N802 - pysyncobj's name
        sealed = seal(conn, self._max_frame)
        if not self.admit(sealed):
            sealed.disconnect()
            return
        super()._onNewIncomingConnection(sealed)

    # P8. TcpServer.bind listens with a backlog of 5: a burst of strangers'
    # connects would make a peer's (re)connect wait for SYN retransmits (1 s,
    # 3 s). listen() again on the bound socket only widens the backlog.
    def _maybeBind(self) -> None:  # noqa: N802 - pysyncobj's name
        was_ready = self._ready
        super()._maybeBind()
        if self._ready and not was_ready and self._server is not None:
            self._server._TcpServer__socket.listen(self._listen_backlog)

    # ---- accessors ----

    @property
    def core(self) -> RaftCore:
        return self._syncObj  # type: ignore[no-any-return]

    def connection(self, node: Any) -> SealedConnection | None:
        conn = self._connections.get(node)
        return conn if isinstance(conn, SealedConnection) else None

    def peer_connections(self) -> list[Any]:
        """Connections bound to a peer (each a SealedConnection)."""
        return list(self._connections.values())

    def unidentified_connections(self) -> list[Any]:
        """Incoming connections not yet past the handshake."""
        return list(self._unknownConnections)

    def unsent_bytes(self, node: Any) -> int:
        conn = self._connections.get(node)
        return conn.unsent_bytes if isinstance(conn, SealedConnection) else 0


# ---- the connection ----------------------------------------------------------


def _bytearray_attribute(name: str) -> property:
    """One of TcpConnection's name-mangled buffer attributes, stored in `name`
    and kept a bytearray whatever pysyncobj assigns (`bytes()`, a slice); its
    own `+=` hands back the same object, which is kept as it is."""
    def get(self: Any) -> bytearray:
        return getattr(self, name)  # type: ignore[no-any-return]

    def set_(self: Any, value: bytes | bytearray) -> None:
        if value is not getattr(self, name):
            setattr(self, name, bytearray(value))
    return property(get, set_)


class SealedConnection(TcpConnection):
    """P9. pysyncobj's TcpConnection with replication/link.py's framing and
    bytearray buffers.

    The base class keeps its buffers in name-mangled attributes and reassigns
    them (`= bytes()` on connect/disconnect, `+=` on read); the properties
    below keep them bytearrays, so appends and front cuts are O(1). Its
    messages are always sealed: without the cluster's LinkKey it refuses to
    send and drops whatever arrives.

    Besides pysyncobj's behaviour: frames are capped (link.py's module
    docstring); `opened_at`, `authentic` and `last_frame_at` (pysyncobj's
    monotonic clock) tell the transport's reaper when the connection began and
    whether and when the other side last proved it holds the key; an outgoing
    connection binds its source address to `bind_host` (so peers can check
    it); and a send that does not fit in the socket at once asks the poller
    for WRITE events, so the rest drains as the socket allows (pysyncobj only
    flushed its write buffer on its next send: a 1 MiB entry crept out one
    socket buffer per heartbeat, with heartbeats behind it).
    """

    _rbuf: bytearray
    _wbuf: bytearray
    _sender: Sender | None
    _receiver: Receiver | None
    max_frame: int
    bind_host: str | None
    authentic: bool
    opened_at: float
    last_frame_at: float

    keepalive_mark: int  # frames_sent at the reaper's last round (raft.py)

    _TcpConnection__readBuffer = _bytearray_attribute("_rbuf")
    _TcpConnection__writeBuffer = _bytearray_attribute("_wbuf")

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued here that the socket has not taken yet."""
        return len(self._wbuf)

    @property
    def unparsed_bytes(self) -> int:
        """Bytes read but not yet a whole frame (or not yet parsed)."""
        return len(self._rbuf)

    @property
    def last_read_at(self) -> float:
        """When pysyncobj last read from the socket (its monotonic clock)."""
        return float(self._TcpConnection__lastReadTime)  # type: ignore[attr-defined]

    @property
    def frames_sent(self) -> int:
        """Frames sealed on this TCP connection so far (its counter)."""
        return self._sender.counter if self._sender is not None else 0

    def peer_host(self) -> str | None:
        sock = self._TcpConnection__socket  # type: ignore[attr-defined]
        try:
            return str(sock.getpeername()[0]) if sock is not None else None
        except OSError:
            return None

    def _new_session(self) -> None:
        key = self.encryptor
        if not isinstance(key, LinkKey):  # never fall back to pysyncobj's framing
            raise LinkError("a sealed connection needs the cluster's LinkKey")
        self._sender, self._receiver = Sender(key), Receiver(key)

    def connect(self, host: str, port: int) -> Any:
        if self.bind_host is None:
            result = super().connect(host, port)
        else:
            result = self._connect_from(self.bind_host, host, port)
        self._new_session()  # a new TCP connection: a new salt, counters from 1
        self.authentic = False
        self.opened_at = self.last_frame_at = monotonic()
        return result

    def _connect_from(self, source: str, host: str, port: int) -> bool:
        """TcpConnection.connect, with the socket bound to `source` first
        (pysyncobj lets the kernel pick the source address: on loopback always
        127.0.0.1, on a multi-homed host any interface's)."""
        if host is None:
            return False
        self._TcpConnection__state = CONNECTION_STATE.DISCONNECTED
        self._TcpConnection__fileno = None
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        self._TcpConnection__socket = sock
        sndbuf, rcvbuf = self._TcpConnection__sendBufferSize, self._TcpConnection__recvBufferSize  # type: ignore[attr-defined]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.setSockoptKeepalive()
        sock.setblocking(False)
        self._rbuf, self._wbuf = bytearray(), bytearray()
        self._TcpConnection__lastReadTime = monotonic()
        try:
            sock.bind((source, 0))
            sock.connect((host, port))
        except OSError as exc:
            if exc.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                sock.close()
                self._TcpConnection__socket = None
                return False
        self._TcpConnection__fileno = sock.fileno()
        self._TcpConnection__state = CONNECTION_STATE.CONNECTING
        self._TcpConnection__poller.subscribe(  # type: ignore[attr-defined]
            self._TcpConnection__fileno, self._TcpConnection__processConnection,  # type: ignore[attr-defined]
            POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        return True

    def disconnect(self) -> None:
        self._sender = self._receiver = None
        fileno = self._TcpConnection__fileno  # type: ignore[attr-defined]
        if fileno is not None:
            # pysyncobj closes the socket first and unsubscribes after; an
            # event loop's epoll cannot drop a closed fd, so unsubscribe first.
            self._TcpConnection__poller.unsubscribe(fileno)  # type: ignore[attr-defined]
        super().disconnect()

    def send(self, message: Any) -> None:
        if self._sender is None:
            self._new_session()
        assert self._sender is not None
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        self._wbuf += self._sender.seal(message)
        self._TcpConnection__trySendBuffer()  # type: ignore[attr-defined]
        if self._wbuf and self.state == CONNECTION_STATE.CONNECTED:
            # Drain the rest on WRITE events; pysyncobj's WRITE handler drops
            # the WRITE subscription again once the buffer is empty.
            self._TcpConnection__poller.subscribe(  # type: ignore[attr-defined]
                self._TcpConnection__fileno, self._TcpConnection__processConnection,  # type: ignore[attr-defined]
                POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)

    def on_poll_event(self, event: int) -> None:
        """What pysyncobj runs when the poller reports `event` on this socket."""
        self._TcpConnection__processConnection(self.fileno(), event)  # type: ignore[attr-defined]

    def _frame_cap(self) -> int:
        return self.max_frame if self.authentic else HANDSHAKE_FRAME_BYTES

    # pysyncobj's __trySendBuffer loops on this until it returns False.
    def _TcpConnection__processSend(self) -> bool:  # noqa: N802 - pysyncobj's private name
        buf = self._wbuf
        if not buf:
            return False
        try:
            sent = self._TcpConnection__socket.send(buf)  # type: ignore[attr-defined]
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if sent <= 0:
            if sent < 0:
                self.disconnect()
            return False
        del buf[:sent]
        return True

    # pysyncobj's READ handling calls this, then parses messages.
    def _TcpConnection__tryReadBuffer(self) -> None:  # noqa: N802 - pysyncobj's private name
        # pysyncobj reads until EAGAIN: a fast stream would grow the buffer
        # without bound before any length is checked. Stop at one whole frame
        # of the current cap; level-triggered polling brings the rest.
        limit = 4 + self._frame_cap()
        while len(self._rbuf) < limit and self._TcpConnection__processRead():  # type: ignore[attr-defined]
            pass
        self._TcpConnection__lastReadTime = monotonic()

    # pysyncobj calls this until it returns None, delivering each message.
    def _TcpConnection__processParseMessage(self) -> Any:  # noqa: N802 - pysyncobj's private name
        try:
            if self._receiver is None:
                self._new_session()
            receiver = self._receiver
            assert receiver is not None
            frame = receiver.next_frame(self._rbuf, self._frame_cap())
            if frame is None:
                return None
            message = receiver.open(frame)
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise LinkError("wrong connection key")
                self.authentic = True  # it holds the key this node chose: not a replay
        except Exception:
            self.disconnect()  # like pysyncobj: a bad frame drops the connection
            return None
        self.last_frame_at = monotonic()
        return message


def seal(conn: TcpConnection, max_frame: int, bind_host: str | None = None) -> SealedConnection:
    """P7/P9. Turn a TcpConnection pysyncobj just created (no byte read or
    written yet) into a SealedConnection whose authentic frames may hold up to
    `max_frame` bytes (link.max_frame_bytes); `bind_host`: the source address
    of its outgoing connects. Its class is changed in place because pysyncobj
    creates connections inside TCPTransport.addNode and TcpServer, and holds
    them in its own tables and callbacks."""
    state = conn.__dict__
    rbuf = state.pop("_TcpConnection__readBuffer", b"")
    wbuf = state.pop("_TcpConnection__writeBuffer", b"")
    conn.__class__ = SealedConnection
    assert isinstance(conn, SealedConnection)
    conn._rbuf, conn._wbuf = bytearray(rbuf), bytearray(wbuf)
    conn._sender = conn._receiver = None
    conn.max_frame, conn.bind_host = max_frame, bind_host
    conn.authentic = False
    conn.opened_at = conn.last_frame_at = monotonic()
    conn.keepalive_mark = 0
    return conn
