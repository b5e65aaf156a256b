"""What replication/pysyncobj_seam.py assumes of pysyncobj's internals, pinned.

A different pysyncobj fails here first: each failure names the assumption
(and the seam patch, P1-P9, or the adapter code that depends on it). The
behaviours are checked on real SyncObj objects: a recording transport in
place of TCP (pysyncobj's own `transport=` parameter), a memory journal, and
ticks run by hand; no sockets except where a connection's own handling is
the assumption.
"""
from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pysyncobj.pickle as pso_pickle
import pysyncobj.syncobj as pso_syncobj
import pytest
from pysyncobj import SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.journal import Journal, MemoryJournal
from pysyncobj.poller import SelectPoller, createPoller
from pysyncobj.serializer import Serializer
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import Transport, TCPTransport
from pysyncobj.version import VERSION

from replication import pysyncobj_seam as seam
from replication.journal import DurableJournal
from replication.link import LinkKey

ROOT = Path(__file__).resolve().parents[2]


def assume(ok: object, assumption: str) -> None:
    assert ok, f"pysyncobj {VERSION} breaks an assumption of replication/pysyncobj_seam.py: {assumption}"


# ---- fixtures: a SyncObj on a recording transport ------------------------------


class RecordingTransport(Transport):
    """pysyncobj's Transport interface, recording what SyncObj sends."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        super().__init__(syncObj, selfNode, otherNodes)
        self.sent: list[tuple[Any, dict[str, Any]]] = []

    def send(self, node: Any, message: Any) -> bool:
        self.sent.append((node, message))
        return True

    def deliver(self, node: Any, message: dict[str, Any]) -> None:
        self._onMessageReceived(node, message)

    def unsent_bytes(self, node: Any) -> int:  # what RaftCore's bounded sends ask (SeamTransport's)
        return 0


class Echo(SyncObjConsumer):
    def __init__(self) -> None:
        super().__init__()
        self.applied: list[bytes] = []

    @replicated
    def apply(self, data: bytes) -> bytes:
        self.applied.append(data)
        return data


SELF, PEER_B, PEER_C = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"
KEY = LinkKey("assumptions")


def make(self_addr: str = SELF, peers: tuple[str, ...] = (PEER_B, PEER_C), consumer: Echo | None = None,
         core: bool = False, batch: int = 4096) -> tuple[Any, RecordingTransport]:
    """A plain SyncObj, or with `core` the seam's RaftCore, on a recording
    transport; heartbeats every 10 s, so a tick sends only what it must."""
    conf = SyncObjConf(autoTick=False, appendEntriesUseBatch=False, commandsWaitLeader=False,
                       dynamicMembershipChange=False, raftMinTimeout=40.0, raftMaxTimeout=100.0,
                       appendEntriesPeriod=10.0, appendEntriesBatchSizeBytes=batch,
                       connectionTimeout=100.0, leaderFallbackTimeout=100.0)
    holder: dict[str, RecordingTransport] = {}

    def transport(*args: Any) -> RecordingTransport:
        holder["t"] = RecordingTransport(*args)
        return holder["t"]
    consumers = [consumer] if consumer else []
    if core:
        so = seam.RaftCore(self_addr, list(peers), conf, consumers=consumers, transportClass=transport,
                           link_key=KEY, max_in_flight=1 << 20)
    else:
        so = SyncObj(self_addr, list(peers), conf, consumers=consumers, transportClass=transport)
    return so, holder["t"]


def node_of(so: SyncObj, addr: str) -> Any:
    return next(n for n in so.otherNodes if n.address == addr)


def elect(so: SyncObj, transport: RecordingTransport) -> None:
    """Make `so` leader: its election timer fires, a peer grants the vote."""
    for n in so.otherNodes:
        transport._onNodeConnected(n)
    so._SyncObj__raftElectionDeadline = 0
    so.doTick(0.0)
    assume(so._SyncObj__raftState == seam.CANDIDATE, "an expired election timer makes a candidate")
    transport.deliver(node_of(so, PEER_B), {"type": "response_vote", "term": so.raftCurrentTerm})
    assume(so._isLeader(), "a majority of response_vote makes a leader")


@pytest.fixture
def leader() -> Iterator[tuple[SyncObj, RecordingTransport]]:
    so, t = make(consumer=Echo())
    elect(so, t)
    yield so, t
    so.destroy()


def signature(obj: Any) -> list[str]:
    return list(inspect.signature(obj).parameters)


# ---- version and the globals the seam sets -------------------------------------


def test_the_version_is_the_one_the_seam_wraps() -> None:
    assume(VERSION == seam.PINNED_VERSION == "0.3.17", f"version 0.3.17 (found {VERSION})")


def test_p1_the_wake_up_pipe_is_a_module_global_read_at_every_proposal() -> None:
    assume(pso_syncobj.PIPE_NOTIFIER_ENABLED is False, "P1: the seam turned PIPE_NOTIFIER_ENABLED off")
    assume("PIPE_NOTIFIER_ENABLED" in inspect.getsource(SyncObj._applyCommand),
           "P1: _applyCommand reads the module global PIPE_NOTIFIER_ENABLED")


def test_p2_syncobj_gets_its_journal_from_the_module_global_create_journal(tmp_path: Path) -> None:
    assume(signature(pso_syncobj.createJournal) == ["journalFile"], "P2: createJournal(journalFile)")
    journal = MemoryJournal()
    path = tmp_path / "raft.journal"
    with seam.journal_injected(journal, path):
        conf = SyncObjConf(autoTick=False, journalFile=str(path))
        so = SyncObj(SELF, [], conf, transportClass=RecordingTransport)
    try:
        assume(so._SyncObj__raftLog is journal, "P2: SyncObj.__init__ calls createJournal(conf.journalFile)")
        assume(len(journal) == 1 and journal[0] == (b"\x01", 1, 0),
               "an empty journal gets the NO_OP entry (b'\\x01', 1, 0) at construction")
    finally:
        so.destroy()
    assume(pso_syncobj.createJournal is not None and pso_syncobj.createJournal.__module__ == "pysyncobj.journal",
           "P2: the swap is undone after construction")


def test_p3_the_transport_takes_the_syncobj_encryptor_property() -> None:
    src = inspect.getsource(TCPTransport)
    assume(src.count("self._syncObj.encryptor") >= 3,
           "P3: TCPTransport reads syncObj.encryptor for new connections and the handshake")
    assume(isinstance(inspect.getattr_static(SyncObj, "encryptor"), property), "P3: SyncObj.encryptor is a property")
    assume("getEncryptor(self.__conf.password)" in inspect.getsource(SyncObj.__init__)
           and "self.__conf.password is not None" in inspect.getsource(SyncObj.__init__),
           "P3: without a password SyncObj derives no key")


def test_p4_syncobj_makes_its_poller_before_the_transport_and_polls_it_each_tick() -> None:
    init = inspect.getsource(SyncObj.__init__)
    assume(init.index("self._poller = createPoller") < init.index("transportClass(self"),
           "P4: SyncObj.__init__ creates self._poller before it constructs the transport")
    assume("self._poller.poll(timeToWait)" in inspect.getsource(SyncObj._onTick), "P4: _onTick polls self._poller")
    for where in (TCPTransport.addNode, TCPTransport._createServer):
        assume("self._syncObj._poller" in inspect.getsource(where),
               f"P4: TCPTransport.{where.__name__} subscribes to syncObj._poller")
    poller = createPoller("select")
    assume(isinstance(poller, SelectPoller) and not hasattr(poller, "fileno"),
           "pollerType='select' makes a SelectPoller that holds no descriptor")


# ---- SyncObj private state and methods -----------------------------------------

SYNCOBJ_STATE = ["raftState", "raftLeader", "raftElectionDeadline", "transferInProgress", "raftNextIndex",
                 "raftMatchIndex", "raftLog", "conf", "transport", "connectedNodes", "serializer",
                 "otherNodes", "readonlyNodes", "raftCurrentTerm", "raftCommitIndex", "newAppendEntriesTime"]


@pytest.mark.parametrize("name", SYNCOBJ_STATE)
def test_syncobj_private_state_the_seam_reads(name: str) -> None:
    so, _ = make()
    try:
        assume(hasattr(so, f"_SyncObj__{name}"), f"SyncObj keeps `__{name}`")
    finally:
        so.destroy()


SYNCOBJ_METHODS = {
    "_SyncObj__setState": ["newState"],
    "_SyncObj__setCurrentTerm": ["term", "votedForNodeId"],
    "_SyncObj__generateRaftTimeout": [],
    "_SyncObj__connectedToAnyone": [],
    "_SyncObj__applyLogEntries": [],  # P5
    "_SyncObj__sendAppendEntries": [],  # P6
    "_onTick": ["timeToWait"],  # doTick runs it (the adapter calls before_tick first)
    "_isLeader": [],
    "_getLeader": [],
    "doTick": ["timeToWait"],
    "addOnTickCallback": ["callback"],
    "forceLogCompaction": [],
}


@pytest.mark.parametrize("name", sorted(SYNCOBJ_METHODS))
def test_syncobj_methods_the_seam_calls_or_overrides(name: str) -> None:
    method = getattr(SyncObj, name, None)
    assume(method is not None, f"SyncObj has {name}")
    assume(signature(method)[1:] == SYNCOBJ_METHODS[name], f"SyncObj.{name}(self, {SYNCOBJ_METHODS[name]})")


@pytest.mark.parametrize("cls,base", [(seam.RaftCore, SyncObj), (seam.SeamTransport, TCPTransport),
                                      (seam.SealedConnection, TcpConnection)])
def test_every_override_in_the_seam_replaces_something_pysyncobj_has(cls: type, base: type) -> None:
    """An override of a name pysyncobj no longer has would be dead code."""
    ours = {"before_tick", "admit", "peer_changed", "core", "connection", "peer_connections", "unidentified_connections",
            "unsent_bytes", "unparsed_bytes", "last_read_at", "frames_sent", "peer_host", "on_poll_event",
            "is_leader", "leader_node", "raft_state", "set_state", "forget_leader", "set_current_term",
            "election_deadline", "new_election_timeout", "connected_to_anyone", "transfer_in_progress",
            "last_log_entry", "match_index"}
    for name, value in vars(cls).items():
        if name.startswith("__") or name in ours or not callable(value) and not isinstance(value, property):
            continue
        if name in ("_send_entries", "_new_session", "_connect_from", "_frame_cap"):
            continue  # helpers of the seam's own
        if name.startswith("_TcpConnection__") and isinstance(value, property):
            continue  # instance attributes: test_tcp_connection_private_state_and_methods
        assume(hasattr(base, name), f"{base.__name__}.{name} exists (overridden in the seam's {cls.__name__})")


def test_the_raft_states_are_the_seams_constants(leader: tuple[SyncObj, RecordingTransport]) -> None:
    so, _ = leader
    assume((seam.FOLLOWER, seam.CANDIDATE, seam.LEADER) == (0, 1, 2),
           "_RAFT_STATE is FOLLOWER 0, CANDIDATE 1, LEADER 2 (raft.py's status names them)")
    assume(so._SyncObj__raftState == seam.LEADER, "a leader's __raftState is LEADER")


# ---- behaviour within a tick (the durability argument) -------------------------


def test_the_commit_index_is_computed_at_the_start_of_a_tick(leader: tuple[SyncObj, RecordingTransport]) -> None:
    """replication/raft.py: a leader's journal sync starts in an on-tick
    callback, after the tick appended new proposals; it counts itself towards
    committing k only at the next tick's start, after that sync returned."""
    so, t = leader
    seen: list[tuple[int, int]] = []
    so.addOnTickCallback(lambda: seen.append((so._SyncObj__raftLog[-1][1], so.raftCommitIndex)))
    for n in so.otherNodes:  # both followers hold everything up to now
        t.deliver(n, {"type": "next_node_idx", "next_node_idx": so._SyncObj__raftLog[-1][1] + 1,
                      "reset": False, "success": True})
    so.doTick(0.0)
    base = so.raftCommitIndex
    results: list[tuple[Any, int, int]] = []
    consumer = so._SyncObj__consumers[0]
    consumer.apply(b"x", callback=lambda res, err: results.append((res, err, so.raftLastApplied)))
    seen.clear()
    so.doTick(0.0)  # appends the proposal, then the callbacks run
    idx = so._SyncObj__raftLog[-1][1]
    assume(idx == base + 1 and seen == [(idx, base)],
           "a proposal is appended within the tick (_checkCommandsToApply), before the on-tick callbacks, "
           "and the commit index that tick was computed before it")
    for n in so.otherNodes:  # acks arrive between ticks: they only move matchIndex
        t.deliver(n, {"type": "next_node_idx", "next_node_idx": idx + 1, "reset": False, "success": True})
    assume(so.raftCommitIndex == base, "an ack does not move the commit index outside a tick")
    so.doTick(0.0)
    assume(so.raftCommitIndex == idx, "the next tick's start commits it")
    assume(results == [(b"x", 0, idx - 1)],
           "a proposal's callback runs (SUCCESS) before raftLastApplied counts its entry (raft.py's trace)")


def test_tick_order() -> None:
    assume("self._onTick(timeToWait)" in inspect.getsource(SyncObj.doTick),
           "doTick runs _onTick (RaftNode._tick calls before_tick, then doTick)")
    src = inspect.getsource(SyncObj._onTick)
    steps = ["__raftElectionDeadline < monotonicTime()", "while commitIdx < self.__getCurrentLogIndex()",
             "needSendAppendEntries = self.__applyLogEntries()", "self.__sendAppendEntries()",
             "self._checkCommandsToApply()",
             "self.__tryLogCompaction()", "for callback in self.__onTickCallbacks", "self._poller.poll"]
    at = [src.find(s) for s in steps]
    assume(-1 not in at and at == sorted(at),
           "_onTick runs: election check, commit index, apply, send, new proposals, compaction, "
           f"on-tick callbacks, poll (in that order; positions {dict(zip(steps, at))})")


def test_the_new_leader_appends_a_no_op_and_sends_it_at_once() -> None:
    so, t = make()
    try:
        elect(so, t)
        last = so._SyncObj__raftLog[-1]
        assume(last == (b"\x01", last[1], so.raftCurrentTerm),
               "__onBecomeLeader appends a NO_OP of its term (raft.py: leader_synced)")
        sent = [m for _, m in t.sent if m.get("type") == "append_entries"]
        assume(any(last in m.get("entries", []) for m in sent),
               "__onBecomeLeader sends it while handling the vote, outside any tick")
        assume(all(set(m) == {"type", "term", "commit_index", "entries", "prevLogIdx", "prevLogTerm"} for m in sent),
               "an append_entries carries type, term, commit_index, entries, prevLogIdx, prevLogTerm "
               "(raft.py's _StaleAppendGuard and trace read them; the seam's P6 writes them)")
    finally:
        so.destroy()


# ---- follower and leader behaviours the adapter corrects ------------------------


def _follower_with(entries: int) -> tuple[SyncObj, RecordingTransport, Any]:
    so, t = make()
    leader_node = node_of(so, PEER_B)
    for i in range(2, entries + 1):
        so._SyncObj__raftLog.add(b"\x01", i, 1)
    return so, t, leader_node


def test_a_follower_cuts_after_prev_log_idx_even_when_entries_match() -> None:
    """raft.py `_StaleAppendGuard` exists because of this."""
    so, t, leader_node = _follower_with(5)
    try:
        t.deliver(leader_node, {"type": "append_entries", "term": 1, "commit_index": 1,
                                "prevLogIdx": 3, "prevLogTerm": 1, "entries": [(b"\x01", 4, 1)]})
        assume(so._SyncObj__raftLog[-1][1] == 4,
               "an append_entries whose entries all match still deletes every entry after prevLogIdx")
        ack = t.sent[-1][1]
        assume(ack == {"type": "next_node_idx", "next_node_idx": 5, "reset": False, "success": True},
               "the follower acks with next_node_idx = last index in the message + 1")
    finally:
        so.destroy()


def test_the_leader_moves_next_index_back_to_every_ack(leader: tuple[SyncObj, RecordingTransport]) -> None:
    """raft.py `_SyncingTransport._no_rewind` exists because of this."""
    so, t = leader
    b = node_of(so, PEER_B)
    so._SyncObj__raftNextIndex[b] = 10
    t.deliver(b, {"type": "next_node_idx", "next_node_idx": 3, "reset": False, "success": True})
    assume(so._SyncObj__raftNextIndex[b] == 3, "a successful ack raising matchIndex sets nextIndex to it")
    assume(so._SyncObj__raftMatchIndex[b] == 2, "matchIndex = next_node_idx - 1")


def test_the_next_index_dict_exists_before_the_transport_and_is_never_replaced() -> None:
    """SeamTransport keeps a reference to it (leader_next_index)."""
    src = inspect.getsource(SyncObj)
    init = inspect.getsource(SyncObj.__init__)
    assume(src.count("self.__raftNextIndex = ") == 1
           and init.index("self.__raftNextIndex = {}") < init.index("transportClass(self"),
           "__raftNextIndex is assigned once, in __init__, before the transport is constructed")


def test_a_follower_reassembles_transmission_chunks() -> None:
    """P6 sends an entry larger than a batch as start/process.../finish chunks
    of pysyncobj.pickle.dumps(entry)."""
    so, t, leader_node = _follower_with(1)
    try:
        entry = (b"\x00" + b"z" * 100, 2, 1)
        data = pso_pickle.dumps(entry)
        parts = [data[:40], data[40:80], data[80:]]
        base = {"type": "append_entries", "term": 1, "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 0}
        for kind, part in zip(("start", "process", "finish"), parts):
            t.deliver(leader_node, {**base, "transmission": kind, "data": part})
        acks = [m for _, m in t.sent if m["type"] == "next_node_idx"]
        assume([a["success"] for a in acks] == [False, False, True] and not any(a["reset"] for a in acks),
               "'start' and 'process' are acked success=False reset=False, 'finish' success=True")
        assume(so._SyncObj__raftLog[-1] == entry, "'finish' unpickles the concatenated chunks as the entry")
    finally:
        so.destroy()


def test_dump_chunks_and_the_deserializer_contract() -> None:
    assume(signature(Serializer.getTransmissionData)[1:] == ["transmissionID"]
           and "return data, isFirst, isLast" in inspect.getsource(Serializer.getTransmissionData),
           "P6: Serializer.getTransmissionData(node) returns (data, isFirst, isLast) or None")
    assume(hasattr(Serializer, "cancelTransmisstion"), "P6: Serializer.cancelTransmisstion (sic) exists")
    assume("(None,) + self.__deserializer(self.__fileName)" in inspect.getsource(Serializer.deserialize),
           "a custom deserializer returns (last entry, entry before it, cluster)")
    load = inspect.getsource(SyncObj._SyncObj__loadDumpFile)
    assume("self.__raftLog[0] != data[2]" in load and "self.__raftLog[1] != data[1]" in load,
           "loading a dump keeps the journal only if it starts with (prev, last) (raft.py _align_journal)")
    serialize = inspect.getsource(Serializer.serialize)
    assume("tmpFile = self.__fileName + '.tmp'" in serialize and "self.__serializer(tmpFile" in serialize
           and "atomicReplace(tmpFile, self.__fileName)" in serialize,
           "a custom serializer is called with dump + '.tmp', then renamed over the dump (snapshot.py)")


def test_the_journal_format_of_a_replicated_call() -> None:
    """The command bytes pysyncobj stores for `_Replica.apply(data)` (raft.py):
    changing them changes the journal format."""
    consumer = Echo()
    so, t = make(consumer=consumer)
    try:
        elect(so, t)
        consumer.apply(b"payload", callback=lambda res, err: None)
        so.doTick(0.0)
        assume(so._SyncObj__raftLog[-1][0] == (b"\x00\x80\x02K\x00c_codecs\nencode\nq\x00X\x07\x00\x00\x00payloadq"
                                               b"\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04\x85q\x05\x86q\x06."),
               "a replicated call is stored as REGULAR (0) + pickle protocol 2 of (method id, args)")
    finally:
        so.destroy()


def test_the_journal_interface_is_what_durable_journal_implements() -> None:
    wanted = {n for n, v in vars(Journal).items() if callable(v) and not n.startswith("__")} | {
        "__getitem__", "__len__"}
    assume(wanted == {"add", "clear", "deleteEntriesFrom", "deleteEntriesTo", "__getitem__", "__len__", "_destroy",
                      "setRaftCommitIndex", "getRaftCommitIndex", "setCurrentTerm", "getCurrentTerm",
                      "getVotedForNodeId", "onOneSecondTimer"}, f"the Journal interface is unchanged ({wanted})")
    for name in wanted:
        assume(name in vars(DurableJournal), f"DurableJournal implements Journal.{name}")


# ---- the seam's RaftCore on a real SyncObj ---------------------------------------


def test_the_accessors_read_and_write_pysyncobjs_own_state() -> None:
    states: list[tuple[int, int]] = []
    so, t = make(core=True)
    so.conf.onStateChanged = lambda old, new: states.append((old, new))
    try:
        assume(so.encryptor is KEY, "P3: RaftCore.encryptor answers the link key")
        elect(so, t)
        assume(so.is_leader() and so.raft_state == seam.LEADER and so.leader_node() is so.selfNode,
               "is_leader / raft_state / leader_node read __raftState and __raftLeader")
        assume(so.last_log_entry() == so._SyncObj__raftLog[-1], "last_log_entry reads __raftLog")
        assume(so.match_index() == so._SyncObj__raftMatchIndex, "match_index reads __raftMatchIndex")
        assume(so.connected_to_anyone() and not so.transfer_in_progress, "connected_to_anyone, transfer_in_progress")
        assume(40.0 <= so.new_election_timeout() <= 100.0, "new_election_timeout is within raftMin/MaxTimeout")
        so.election_deadline = 12.5
        assume(so._SyncObj__raftElectionDeadline == 12.5, "election_deadline writes __raftElectionDeadline")
        so.set_current_term(so.raftCurrentTerm + 1, None)
        assume(so._SyncObj__raftLog.getCurrentTerm() == so.raftCurrentTerm,
               "set_current_term writes the term through the journal")
        so.set_state(seam.FOLLOWER)
        so.forget_leader()
        assume(states[-1] == (seam.LEADER, seam.FOLLOWER) and so.leader_node() is None,
               "set_state fires onStateChanged; forget_leader clears __raftLeader")
    finally:
        so.destroy()


def test_p5_no_append_entries_round_after_a_commit() -> None:
    def round_after_commit(core: bool) -> list[dict[str, Any]]:
        consumer = Echo()
        so, t = make(consumer=consumer, core=core)
        try:
            elect(so, t)
            consumer.apply(b"x", callback=lambda res, err: None)
            so.doTick(0.0)
            for n in so.otherNodes:
                t.deliver(n, {"type": "next_node_idx", "next_node_idx": so._SyncObj__raftLog[-1][1] + 1,
                              "reset": False, "success": True})
            t.sent.clear()
            so.doTick(0.0)  # commits and applies
            assume(consumer.applied == [b"x"], "the tick after the acks applies the entry")
            return [m for _, m in t.sent]
        finally:
            so.destroy()
    assume(len(round_after_commit(core=False)) == 2, "P5: pysyncobj sends each follower an append_entries "
           "after applying (the eager commit round)")
    assume(round_after_commit(core=True) == [], "P5: RaftCore sends nothing after applying")


def test_p6_a_pysyncobj_follower_takes_the_bounded_sends() -> None:
    """Large entries as transmission chunks, small ones batched: a plain
    pysyncobj follower ends with the leader's log."""
    consumer = Echo()
    leader, lt = make(consumer=consumer, core=True, batch=1024)
    follower, ft = make(self_addr=PEER_B, peers=(SELF, PEER_C), batch=1024)
    try:
        elect(leader, lt)
        for data in (b"L" * 5000, b"s1", b"s2", b"L" * 2048):
            consumer.apply(data, callback=lambda res, err: None)
        leader.doTick(0.0)
        b = node_of(leader, PEER_B)
        to_b = [m for n, m in lt.sent if n == b]
        assume({m.get("transmission") for m in to_b} >= {"start", "process", "finish"},
               "P6: an entry over a batch goes as start/process/finish chunks")
        source = node_of(follower, SELF)
        for m in to_b:
            ft.deliver(source, m)
        log = leader._SyncObj__raftLog
        assume(list(follower._SyncObj__raftLog[:]) == list(log[:]),
               "P6: a pysyncobj follower rebuilds the leader's log from what RaftCore sent")
        acks = [m for _, m in ft.sent if m["type"] == "next_node_idx" and m["success"]]
        assume(acks[-1]["next_node_idx"] == log[-1][1] + 1, "the follower acks the last entry")
    finally:
        leader.destroy()
        follower.destroy()


# ---- the transport and the connection --------------------------------------------


def test_transport_hooks() -> None:
    assume(signature(TCPTransport.__init__)[1:] == ["syncObj", "selfNode", "otherNodes"], "TCPTransport(syncObj, ...)")
    assume(signature(TCPTransport._onNewIncomingConnection)[1:] == ["conn"],
           "P7: TcpServer hands new connections to TCPTransport._onNewIncomingConnection(conn)")
    assume("self._connections[node] = conn" in inspect.getsource(TCPTransport.addNode),
           "P7: addNode creates the outgoing connection in _connections[node]")
    assume("self._onNewIncomingConnection" in inspect.getsource(TCPTransport._createServer),
           "P7: the server's new-connection callback is _onNewIncomingConnection")
    for where in (TCPTransport.addNode, TCPTransport._onIncomingMessageReceived,
                  TCPTransport._onOutgoingMessageReceived):
        assume("partial(self._onMessageReceived, node)" in inspect.getsource(where),
               f"every peer message reaches SyncObj through Transport._onMessageReceived ({where.__name__}): "
               "raft.py filters there (rejoin, pre-vote, stale appends)")
    for where in (TCPTransport._onIncomingMessageReceived, TCPTransport._onOutgoingMessageReceived):
        assume("self._onNodeConnected(" in inspect.getsource(where),
               f"a peer's connection is reported through Transport._onNodeConnected ({where.__name__})")
    assume("self._onNodeDisconnected(node)" in inspect.getsource(TCPTransport._onDisconnected),
           "a peer's disconnection (and each failed reconnect) is reported through Transport._onNodeDisconnected")
    bind = inspect.getsource(TcpServer.bind)
    assume("self.__socket.listen(5)" in bind, "P8: TcpServer.bind listens on self.__socket with a backlog of 5")
    assume("self._ready" in inspect.getsource(TCPTransport._maybeBind), "P8: _maybeBind sets _ready once bound")


class RecordingPoller:
    def __init__(self) -> None:
        self.masks: dict[int, int] = {}
        self.unsubscribed: list[tuple[int, bool]] = []
        self.conn: TcpConnection | None = None

    def subscribe(self, descr: int, callback: Any, event_mask: int) -> None:
        self.masks[descr] = event_mask

    def unsubscribe(self, descr: int) -> None:
        sock = self.conn._TcpConnection__socket if self.conn is not None else None  # type: ignore[attr-defined]
        self.unsubscribed.append((descr, sock is None))
        self.masks.pop(descr, None)


TCP_STATE = ["socket", "fileno", "state", "poller", "readBuffer", "writeBuffer", "lastReadTime",
             "sendBufferSize", "recvBufferSize", "timeout"]
TCP_METHODS = {"_TcpConnection__processConnection": ["descr", "eventType"], "_TcpConnection__trySendBuffer": [],
               "_TcpConnection__processSend": [], "_TcpConnection__tryReadBuffer": [],
               "_TcpConnection__processRead": [], "_TcpConnection__processParseMessage": [],
               "connect": ["host", "port"], "disconnect": [], "send": ["message"], "setSockoptKeepalive": []}


@pytest.fixture
def tcp() -> Iterator[tuple[TcpConnection, socket.socket, RecordingPoller]]:
    mine, peer = socket.socketpair()
    mine.setblocking(False)
    poller = RecordingPoller()
    conn = TcpConnection(poller, socket=mine)
    poller.conn = conn
    yield conn, peer, poller
    conn.disconnect()
    peer.close()


def test_tcp_connection_private_state_and_methods(tcp: tuple[TcpConnection, socket.socket, RecordingPoller]) -> None:
    conn, _, _ = tcp
    for name in TCP_STATE:
        assume(hasattr(conn, f"_TcpConnection__{name}"), f"P9: TcpConnection keeps `__{name}`")
    assume(isinstance(conn._TcpConnection__readBuffer, bytes), "P9: the buffers start as bytes (seal converts)")
    for name, params in TCP_METHODS.items():
        assume(signature(getattr(TcpConnection, name))[1:] == params, f"P9: TcpConnection.{name}({params})")
    src = inspect.getsource(TcpConnection._TcpConnection__trySendBuffer)
    assume("while self.__processSend()" in src, "P9: __trySendBuffer loops on __processSend")
    src = inspect.getsource(TcpConnection._TcpConnection__processConnection)
    assume(src.index("self.__tryReadBuffer()") < src.index("self.__processParseMessage()"),
           "P9: a READ event reads (__tryReadBuffer), then parses until __processParseMessage returns None")


def test_tcp_connection_closes_before_it_unsubscribes(
        tcp: tuple[TcpConnection, socket.socket, RecordingPoller]) -> None:
    """SealedConnection.disconnect unsubscribes first because of this."""
    conn, _, poller = tcp
    conn.disconnect()
    assume(poller.unsubscribed and poller.unsubscribed[0][1], "TcpConnection.disconnect closes the socket first")


def test_tcp_connection_write_events_stop_once_the_buffer_is_empty(
        tcp: tuple[TcpConnection, socket.socket, RecordingPoller]) -> None:
    """SealedConnection.send subscribes WRITE for a partial send and relies on this to drop it."""
    conn, _, poller = tcp
    conn._TcpConnection__processConnection(conn.fileno(), seam.POLL_EVENT_TYPE.WRITE)
    assume(poller.masks[conn.fileno()] == seam.POLL_EVENT_TYPE.READ | seam.POLL_EVENT_TYPE.ERROR,
           "a WRITE event with nothing left to send resubscribes READ | ERROR only")


def test_seal_converts_a_connection_pysyncobj_made(tcp: tuple[TcpConnection, socket.socket, RecordingPoller]) -> None:
    conn, peer, _ = tcp
    conn.encryptor = KEY
    sealed = seam.seal(conn, 1 << 20)
    sealed.send("hello")
    assume(isinstance(sealed._TcpConnection__readBuffer, bytearray)
           and isinstance(sealed._TcpConnection__writeBuffer, bytearray),
           "P9: the buffer attributes become bytearray properties")
    assume(peer.recv(4096), "P9: a sealed connection sends through pysyncobj's __trySendBuffer")


# ---- the rule: pysyncobj only through the seam -----------------------------------


def test_replication_touches_pysyncobj_only_through_the_seam() -> None:
    offenders = []
    for path in sorted((ROOT / "replication").glob("*.py")):
        if path.name == "pysyncobj_seam.py":
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if ("import pysyncobj" in code or "from pysyncobj" in code or "_SyncObj__" in code
                    or "_TcpConnection__" in code or "_TcpServer__" in code):
                offenders.append(f"{path.name}:{lineno}: {line.strip()}")
    assert not offenders, "pysyncobj internals outside replication/pysyncobj_seam.py:\n" + "\n".join(offenders)
