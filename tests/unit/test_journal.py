"""DurableJournal: records survive reopen, torn tails are cut, fsync is counted.

These run the real journal on a temp dir (no mocks). fdatasync calls are
counted through `sync_count`, which increments only after a real os.fdatasync.
"""
from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from replication.journal import MAGIC, DurableJournal, JournalError
from replication.snapshot import DumpError, decode_dump, encode_dump


def open_journal(tmp_path: Path, durability: str = "fsync", synced: list[int] | None = None) -> DurableJournal:
    on_sync = synced.append if synced is not None else None
    return DurableJournal(tmp_path / "raft.journal", tmp_path / "raft.meta", durability, on_sync=on_sync)  # type: ignore[arg-type]


def fill(j: DurableJournal, first: int, last: int, term: int = 1) -> None:
    for i in range(first, last + 1):
        j.add(b"cmd-%d" % i, i, term)


def test_add_read_reopen(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    fill(j, 1, 5)
    j.add(b"", 6, 2)  # empty command (pysyncobj's no-op is 1 byte, but be safe)
    assert len(j) == 6
    assert j[0] == (b"cmd-1", 1, 1)
    assert j[-1] == (b"", 6, 2)
    assert j[1:3] == [(b"cmd-2", 2, 1), (b"cmd-3", 3, 1)]
    j._destroy()
    j2 = open_journal(tmp_path)
    assert list(j2[:]) == [(b"cmd-%d" % i, i, 1) for i in range(1, 6)] + [(b"", 6, 2)]
    fill(j2, 7, 8, term=2)  # appends go after the replayed records
    j2._destroy()
    assert [e[1] for e in open_journal(tmp_path)[:]] == list(range(1, 9))


@pytest.mark.parametrize("cut", [1, 5, 20, 25])
def test_torn_tail_is_cut_to_last_good_record(tmp_path: Path, cut: int) -> None:
    j = open_journal(tmp_path)
    fill(j, 1, 3)
    j._destroy()
    path = tmp_path / "raft.journal"
    size = path.stat().st_size
    os.truncate(path, size - cut)  # crash in the middle of writing record 3
    j2 = open_journal(tmp_path)
    assert [e[1] for e in j2[:]] == [1, 2]
    fill(j2, 3, 4)  # the file is usable again: new records follow record 2
    j2._destroy()
    assert [e[0] for e in open_journal(tmp_path)[:]] == [b"cmd-1", b"cmd-2", b"cmd-3", b"cmd-4"]


def test_garbage_tail_and_corrupt_record(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    fill(j, 1, 4)
    j._destroy()
    path = tmp_path / "raft.journal"
    with open(path, "ab") as f:
        f.write(os.urandom(37))
    assert [e[1] for e in open_journal(tmp_path)[:]] == [1, 2, 3, 4]
    # flip one byte inside record 3's command: 3 and everything after go
    data = bytearray(path.read_bytes())
    pos = data.index(b"cmd-3")
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))
    j3 = open_journal(tmp_path)
    assert [e[1] for e in j3[:]] == [1, 2]
    assert path.stat().st_size < len(data)  # the bad tail was truncated on disk


def test_torn_header_and_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    path.write_bytes(MAGIC[:3])
    j = open_journal(tmp_path)
    assert len(j) == 0
    fill(j, 1, 1)
    j._destroy()
    assert len(open_journal(tmp_path)) == 1
    path.write_bytes(b"PYSYNCOBJ\0\0\0 something else entirely")
    with pytest.raises(JournalError, match="not a raftq journal"):
        open_journal(tmp_path)


def test_delete_entries_from_then_reopen(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    fill(j, 1, 6)
    j.deleteEntriesFrom(4)  # list positions >= 4, i.e. indexes 5 and 6
    assert [e[1] for e in j[:]] == [1, 2, 3, 4]
    j.add(b"new-5", 5, 2)  # a new leader's entry replaces the conflicting one
    j._destroy()
    j2 = open_journal(tmp_path)
    assert j2[:] == [(b"cmd-1", 1, 1), (b"cmd-2", 2, 1), (b"cmd-3", 3, 1), (b"cmd-4", 4, 1), (b"new-5", 5, 2)]
    j2.clear()
    j2.add(b"x", 10, 3)
    j2._destroy()
    assert open_journal(tmp_path)[:] == [(b"x", 10, 3)]


def test_delete_entries_to_compacts_file(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    fill(j, 1, 100)
    before = (tmp_path / "raft.journal").stat().st_size
    j.deleteEntriesTo(97)  # keep positions 97.. i.e. indexes 98, 99, 100
    assert [e[1] for e in j[:]] == [98, 99, 100]
    j.add(b"cmd-101", 101, 1)
    j._destroy()
    assert (tmp_path / "raft.journal").stat().st_size < before / 10
    assert not (tmp_path / "raft.journal.tmp").exists()
    assert [e[1] for e in open_journal(tmp_path)[:]] == [98, 99, 100, 101]


def test_meta_persistence(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId(), j.getRaftCommitIndex()) == (0, None, 1)
    fill(j, 1, 3)
    j.setCurrentTerm(7, "127.0.0.1:1234")
    # term and vote are on disk as soon as setCurrentTerm returns (no destroy)
    meta = msgpack.unpackb((tmp_path / "raft.meta").read_bytes())
    assert meta["term"] == 7 and meta["voted_for"] == "127.0.0.1:1234"
    j.setRaftCommitIndex(3)
    assert "commit_index" not in msgpack.unpackb((tmp_path / "raft.meta").read_bytes())
    j.onOneSecondTimer()  # the commit index is saved lazily, after a journal sync
    j2 = open_journal(tmp_path)
    assert (j2.getCurrentTerm(), j2.getVotedForNodeId(), j2.getRaftCommitIndex()) == (7, "127.0.0.1:1234", 3)
    (tmp_path / "raft.meta").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(JournalError, match="unreadable Raft meta"):
        open_journal(tmp_path)


def test_sync_counts(tmp_path: Path) -> None:
    synced: list[int] = []
    j = open_journal(tmp_path, synced=synced)
    base = j.sync_count  # opening syncs once (records may be only in the page cache)
    j.sync()
    j.sync()
    assert j.sync_count == base  # nothing new: no fdatasync
    fill(j, 1, 50)
    j.sync()
    assert j.sync_count == base + 1  # one fdatasync covers the whole batch
    assert synced[-1] == 50
    j.sync()
    assert j.sync_count == base + 1
    j.add(b"more", 51, 1)
    j.sync()
    assert (j.sync_count, synced[-1]) == (base + 2, 51)
    j.setCurrentTerm(2, None)  # nothing new in the journal: meta fsync only
    assert j.sync_count == base + 2


def test_split_sync_covers_what_was_added_before_it_began(tmp_path: Path) -> None:
    """A leader's sync runs on another thread (begin_sync ... end_sync)."""
    synced: list[int] = []
    j = open_journal(tmp_path, synced=synced)
    assert j.begin_sync() is None  # nothing added: nothing to sync
    fill(j, 1, 5)
    fd, index = j.begin_sync()
    assert index == 5 and not j.dirty
    j.add(b"late", 6, 1)  # added while the fdatasync runs: not covered
    assert j.dirty
    j.deleteEntriesTo(2)  # compaction replaces the file (fsynced whole, "late" included)
    assert not j.dirty
    os.fdatasync(fd)  # the dup still names the old file: still a valid descriptor
    os.close(fd)
    base = j.sync_count
    j.end_sync(index)
    assert (j.sync_count, synced[-1]) == (base + 1, 5)
    j.add(b"next", 7, 1)
    fd, index = j.begin_sync()
    os.close(fd)
    j.sync_failed()  # that fdatasync failed: its records still need one
    assert j.dirty and index == 7
    j.sync()
    assert synced[-1] == 7 and not j.dirty


def test_durability_none_never_fsyncs(tmp_path: Path) -> None:
    j = open_journal(tmp_path, durability="none")
    fill(j, 1, 10)
    j.sync()
    j.setCurrentTerm(1, None)
    assert j.sync_count == 0
    j._destroy()
    assert len(open_journal(tmp_path, durability="none")) == 10


def test_dump_roundtrip_and_damage() -> None:
    blob = encode_dump({"format": 1, "jobs": {1: b"\x00"}}, (b"c1", 9, 2), (b"c0", 8, 2), ["b:1", "a:1"])
    dump = decode_dump(blob)
    assert dump.machine == {"format": 1, "jobs": {1: b"\x00"}}
    assert (dump.last, dump.prev, dump.cluster) == ((b"c1", 9, 2), (b"c0", 8, 2), ["a:1", "b:1"])
    damaged = bytearray(blob)
    damaged[-1] ^= 1
    with pytest.raises(DumpError, match="checksum"):
        decode_dump(bytes(damaged))
    with pytest.raises(DumpError, match="bad header"):
        decode_dump(b"\x80\x03pickle")


# ---- _StaleAppendGuard (replication/raft.py): Raft's "truncate only on conflict"


def _ae(term: int, prev: int, prev_term: int, entries: list[tuple[bytes, int, int]]) -> dict:
    return {"type": "append_entries", "term": term, "commit_index": 0,
            "prevLogIdx": prev, "prevLogTerm": prev_term, "entries": entries}


def test_guard_turns_stale_retransmission_into_heartbeat(tmp_path: Path) -> None:
    from replication.raft import _StaleAppendGuard

    j = open_journal(tmp_path)
    fill(j, 1, 6, term=2)
    guard = _StaleAppendGuard(j)
    # the leader (term 2) sent 2..6 earlier: all verified
    assert guard.rewrite(_ae(2, 1, 2, list(j[1:6])), 2)["entries"] == []
    # a stale retransmission of 3..4 must not cut 5..6
    out = guard.rewrite(_ae(2, 2, 2, list(j[2:4])), 2)
    assert (out["prevLogIdx"], out["prevLogTerm"], out["entries"]) == (6, 2, [])


def test_guard_keeps_only_new_entries_and_real_conflicts(tmp_path: Path) -> None:
    from replication.raft import _StaleAppendGuard

    j = open_journal(tmp_path)
    fill(j, 1, 5, term=1)
    guard = _StaleAppendGuard(j)
    new = [(b"cmd-3", 3, 1), (b"x", 4, 2), (b"y", 5, 2), (b"z", 6, 2)]
    out = guard.rewrite(_ae(2, 2, 1, new), 2)  # 3 matches, 4 conflicts (term 2 vs 1)
    assert (out["prevLogIdx"], out["prevLogTerm"], out["entries"]) == (3, 1, new[1:])
    # unverified extras from an older term past a heartbeat: left to pysyncobj (cut)
    fresh = _StaleAppendGuard(j)
    hb = _ae(2, 3, 1, [])
    assert fresh.rewrite(hb, 2) is hb
    # mismatching prev, a stale term, other messages: untouched
    bad = _ae(2, 4, 9, [])
    assert fresh.rewrite(bad, 2) is bad
    old = _ae(1, 1, 1, [])
    assert fresh.rewrite(old, 2) is old
    vote = {"type": "request_vote", "term": 3}
    assert fresh.rewrite(vote, 2) is vote
