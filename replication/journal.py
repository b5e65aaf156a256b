"""A crash-safe Raft journal for pysyncobj 0.3.17.

pysyncobj's own `FileJournal` writes through an mmap that is never flushed and
stores term/vote without fsync, so an acknowledged write survives `kill -9` but
not a power loss. `DurableJournal` implements the same `pysyncobj.journal.Journal`
interface with explicit durability:

Files (in the node's data dir; docs/storage.md is the operator's view):
  raft.journal  header `MAGIC` then records, appended with os.write:
                  [len u32][crc32 u32][idx u64][term u64][command: len bytes]
                (little endian; the crc covers idx, term and command, which
                are contiguous in the record).
  raft.meta     msgpack {"term", "voted_for", "commit_index"}, replaced
                atomically (tmp + fsync + rename + directory fsync). Written
                (term 0) when a node opens an empty journal without one, so a
                journal that holds records always has a meta beside it.

Opening checks (each failure is a `JournalError` with one line naming the
file, the offset or index and what the operator does):
  * Records are read in order. The first bad one (short, impossible length,
    crc mismatch, index not following the previous one) ends the good part.
    It is a torn tail (a crash mid-append), cut off with a warning, only if
    it lies past the stored commit index (committed entries were synced before
    the commit index was stored) AND no valid record follows it anywhere in
    the file (`_find_later_record`: a crc-correct record whose index and term
    could follow the last good one). Otherwise it is corruption: refuse.
  * A missing meta, or one without a term, next to log state (records, or a
    dump) is refused: the node would forget its vote and could vote twice in
    one term.
  * A stored commit index past the end of the log (the journal's last index,
    or the dump's when compaction left less in the journal) is refused.

Invariants (durability="fsync"):
  * `sync()` makes every record added so far durable (one fdatasync, and only
    when something changed). The adapter calls it before any Raft message
    leaves the node and at the end of every tick, so no peer ever learns of
    an entry this node could lose in a power cut.
  * `setCurrentTerm` (term and vote) is durable before it returns: Raft needs
    both on disk before a vote or a higher-term message is sent.
  * The commit index is only a hint for a faster restart. It is kept in memory
    and written by `onOneSecondTimer`, after the journal is synced, so the
    stored commit index never points past the durable journal.
  * `deleteEntriesTo` (compaction) writes a complete new file, fsyncs it and
    renames it over the old one: at every instant one full journal is on disk.
  * The dirty flag is cleared only after the fdatasync that covers it returned
    (or, for `begin_sync`, once the descriptor the other thread syncs exists).
  * Any failed write, fdatasync/fsync or meta write puts the journal in the
    failed state (`failed` holds the reason, `on_failed` is called once) and
    is never retried: after a failed fsync the kernel may have dropped the
    dirty pages, so a retry could "succeed" without the data (fsyncgate).
    From then on every method that writes, syncs or lets a message out raises
    `JournalFailed`, so nothing more is acknowledged; the node must stop.
With durability="none" the same files are written but never fsynced.

Threads: pysyncobj calls every method on the adapter's loop thread (it ticks
there), `destroy` included. Entries stay in
memory (as pysyncobj's own journal does) until compaction drops them.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgpack
from replication.events import LATENCY_BUCKETS_S, Distribution
from replication.pysyncobj_seam import Journal

log = logging.getLogger("raftq.journal")

Durability = Literal["fsync", "none"]
Entry = tuple[bytes, int, int]  # (command, raft index, term), as pysyncobj uses them

MAGIC = b"RAFTQJ01"
_HEAD = struct.Struct("<IIQQ")  # len, crc32, idx, term
_CRC_FROM = 8  # the crc covers the record from the idx field to its end
MAX_RECORD_BYTES = 1 << 30  # a larger length field can only be garbage
# What the operator does about damaged storage (every refusal ends with it).
REMEDY = ("restore it from a backup, or wipe the node's data dir and start it again "
          "to rejoin from the leader (docs/storage.md)")


class JournalError(Exception):
    """The journal or meta file cannot be used (not a torn tail: real damage)."""


class JournalFailed(JournalError):
    """A write, fsync or meta write failed at run time: the journal accepts
    nothing more and the node must stop (see the module docstring)."""


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, durable: bool) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        _write_all(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _record(command: bytes, idx: int, term: int) -> bytes:
    body = struct.pack("<QQ", idx, term) + command
    return _HEAD.pack(len(command), zlib.crc32(body), idx, term) + command


def _record_at(data: bytes, pos: int) -> tuple[Entry, int] | str:
    """The record at `pos` and the offset just past it, or what is wrong with it."""
    end = len(data)
    if pos + _HEAD.size > end:
        return "incomplete header"
    length, crc, idx, term = _HEAD.unpack_from(data, pos)
    start = pos + _HEAD.size
    if length > MAX_RECORD_BYTES:
        return f"impossible length {length}"
    if start + length > end:
        return f"length {length} runs past the end of the file"
    if zlib.crc32(data[pos + _CRC_FROM:start + length]) != crc:
        return "crc mismatch"
    return (data[start:start + length], idx, term), start + length


def _find_later_record(data: bytes, bad: int, min_idx: int, max_idx: int,
                       min_term: int) -> tuple[int, int] | None:
    """(offset, idx) of a valid record after offset `bad` whose idx lies in
    [min_idx, max_idx] and whose term is >= min_term, or None.

    Sound: every offset is considered. Cheap: a regex (C speed) keeps only
    offsets whose length field is below MAX_RECORD_BYTES and whose idx has the
    high 32 bits (and non-zero low 32 bits) an idx in range can have; only
    those are unpacked, and the
    crc is computed only when idx and term are plausible. The record the
    bad one's length field points to is tried first (the usual case: one
    damaged byte inside a record)."""
    his = range(min_idx >> 32, (max_idx >> 32) + 1)
    idx_hi = b"|".join(re.escape(struct.pack("<I", h)) for h in his) if len(his) <= 4 else b".{4}"
    top = re.escape(bytes([MAX_RECORD_BYTES >> 24]))  # the length's top byte is at most this
    # Below 2**32 an idx >= 1 has non-zero low bytes: this skips runs of zeros
    # (a hole left by a power cut) at C speed too.
    low = b"(?!\\x00{4})" if 1 <= min_idx and max_idx < 1 << 32 else b""
    pattern = re.compile(b"(?=.{3}[\\x00-" + top + b"].{4}" + low + b".{4}(?:" + idx_hi + b"))", re.DOTALL)

    def plausible(pos: int) -> int | None:
        if pos + _HEAD.size > len(data):
            return None
        _, _, idx, term = _HEAD.unpack_from(data, pos)
        if not (min_idx <= idx <= max_idx and term >= min_term):
            return None
        return idx if isinstance(_record_at(data, pos), tuple) else None

    if bad + _HEAD.size <= len(data):
        length = _HEAD.unpack_from(data, bad)[0]
        nxt = bad + _HEAD.size + length
        idx = plausible(nxt) if length <= MAX_RECORD_BYTES else None
        if idx is not None:
            return nxt, idx
    for m in pattern.finditer(data, bad + 1):
        idx = plausible(m.start())
        if idx is not None:
            return m.start(), idx
    return None


class DurableJournal(Journal):
    """pysyncobj `Journal` over an append-only, checksummed, fsynced file."""

    def __init__(self, path: Path, meta_path: Path, durability: Durability = "fsync",
                 on_sync: Callable[[int], None] | None = None,
                 on_truncate: Callable[[int], None] | None = None,
                 on_failed: Callable[[str], None] | None = None,
                 dump_last_index: int = 0) -> None:
        """`dump_last_index`: the last index the node's dump covers (0: no dump);
        the log ends at the later of it and the journal's last index."""
        if durability not in ("fsync", "none"):
            raise ValueError(f"durability must be 'fsync' or 'none', not {durability!r}")
        self.path = Path(path)
        self.meta_path = Path(meta_path)
        self._durable = durability == "fsync"
        self._on_sync = on_sync  # called with the last index after each real fdatasync
        self._on_truncate = on_truncate  # called with the new last index after a tail cut
        self._on_failed = on_failed  # called once, with the reason, on entering the failed state
        self._dump_last = dump_last_index
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # file offset where each entry's record starts
        self._dirty = False
        self.failed: str | None = None  # why a write or sync failed; then nothing more is accepted
        self.sync_count = 0  # real fdatasyncs done (tests and metrics)
        # How long they took (a leader's, on its fsync thread, measured by raft.py).
        self.sync_seconds = Distribution(LATENCY_BUCKETS_S)
        meta = self._load_meta()
        self._meta: dict[str, Any] = meta or {}
        self._meta_saved = True
        self._fd, good, size = self._open_and_scan()
        try:
            self._check_meta(meta)  # before anything on disk changes
            if good < size:
                self._cut_torn_tail(good, size)
            os.lseek(self._fd, 0, os.SEEK_END)
            if self._durable:
                # Records read back may still sit only in the page cache (the previous
                # process may have died between write and fdatasync): make them
                # durable before this node describes them to anyone.
                self._dirty = True
                self.sync()
        except BaseException:
            os.close(self._fd)
            raise

    # ---- opening ---------------------------------------------------------

    def _load_meta(self) -> dict[str, Any] | None:
        try:
            raw = self.meta_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            meta = msgpack.unpackb(raw, raw=False)
        except Exception as exc:  # written atomically, so damage is not a torn write
            raise JournalError(f"{self.meta_path}: unreadable Raft meta file ({exc}); {REMEDY}") from exc
        if not isinstance(meta, dict):
            raise JournalError(f"{self.meta_path}: Raft meta file is not a map; {REMEDY}")
        return meta

    def _stored_commit(self) -> int | None:
        commit = self._meta.get("commit_index")
        return commit if isinstance(commit, int) else None

    def _check_meta(self, meta: dict[str, Any] | None) -> None:
        """The meta rules of the module docstring; writes a fresh meta for a new node."""
        has_log = bool(self._entries) or self._dump_last > 0
        what = f"the journal ends at index {self.last_index()}" if self._entries else \
            f"the dump covers up to index {self._dump_last}"
        if has_log and meta is None:
            raise JournalError(f"{self.meta_path}: missing although {what}; without it this node "
                               f"forgets its term and vote and could vote twice in one term: {REMEDY}")
        term = (meta or {}).get("term")
        termless = not isinstance(term, int) or isinstance(term, bool) or term < 0
        if has_log and termless:
            raise JournalError(f"{self.meta_path}: no valid term (found {term!r}) although {what}; "
                               f"this node would forget its vote: {REMEDY}")
        commit = self._stored_commit()
        end = max(self.last_index(), self._dump_last)
        if commit is not None and commit > end:
            raise JournalError(f"{self.meta_path}: stored commit index {commit} is past the end of the log "
                               f"(index {end}): committed entries are missing: {REMEDY}")
        if termless:
            # A new node: a meta with a term beside the journal from the start,
            # so a journal with records never lacks one (the rules above).
            self._meta = {"term": 0, "voted_for": None}
            atomic_write(self.meta_path, msgpack.packb(self._meta, use_bin_type=True), self._durable)

    def _open_and_scan(self) -> tuple[int, int, int]:
        """Open (or create) the journal and load its records: (fd, offset where
        a torn tail starts, file size). Changes nothing on disk but a new file's
        header."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                _write_all(fd, MAGIC)
                if self._durable:
                    os.fsync(fd)
                    fsync_dir(self.path.parent)
                return fd, len(MAGIC), len(MAGIC)
            with open(self.path, "rb") as f:
                data = f.read()
            if not data.startswith(MAGIC):
                if len(data) < len(MAGIC) and MAGIC.startswith(data):
                    return fd, 0, len(data)  # torn while writing the header itself
                raise JournalError(f"{self.path}: not a raftq journal (bad header)")
            return fd, self._scan(data), len(data)
        except BaseException:
            os.close(fd)
            raise

    def _cut_torn_tail(self, good: int, size: int) -> None:
        log.warning("journal %s: cutting a torn tail of %d bytes at offset %d after %d entries",
                    self.path, size - good, good, len(self._entries))
        os.ftruncate(self._fd, good)
        if good == 0:
            os.lseek(self._fd, 0, os.SEEK_SET)
            _write_all(self._fd, MAGIC)
        if self._durable:
            os.fsync(self._fd)

    def _scan(self, data: bytes) -> int:
        """Load records from `data`; return the offset where a torn tail starts
        (len(data) if none). Raises JournalError when the first bad record is
        corruption rather than a torn tail (module docstring)."""
        pos = len(MAGIC)
        end = len(data)
        problem = ""
        head, crc32 = _HEAD.unpack_from, zlib.crc32
        entries, offsets = self._entries, self._offsets
        while pos < end:
            # The common case inline (a restart reads every record); any doubt
            # goes to _record_at, which says what is wrong.
            if pos + _HEAD.size <= end:
                length, crc, idx, term = head(data, pos)
                stop = pos + _HEAD.size + length
                if length <= MAX_RECORD_BYTES and stop <= end and crc32(data[pos + _CRC_FROM:stop]) == crc:
                    if entries and idx != entries[-1][1] + 1:
                        problem = f"index {idx} does not follow {entries[-1][1]}"
                        break
                    entries.append((data[pos + _HEAD.size:stop], idx, term))
                    offsets.append(pos)
                    pos = stop
                    continue
            rec = _record_at(data, pos)
            problem = rec if isinstance(rec, str) else "unreadable record"
            break
        if pos >= end:
            return end
        last = self._entries[-1] if self._entries else None
        commit = self._stored_commit()
        if commit is not None and commit > max(self.last_index(), self._dump_last):
            raise JournalError(f"{self.path}: corrupt record at offset {pos} ({problem}) at or before "
                               f"the last committed entry {commit}; this node's log is damaged: {REMEDY}")
        # Each record takes at least _HEAD.size bytes: no later record can carry
        # an index beyond this (a journal's first index follows the dump's).
        base = last[1] if last else max(self._dump_last, 1)
        max_idx = base + (end - pos) // _HEAD.size + 1
        later = _find_later_record(data, pos, last[1] + 1 if last else 1, max_idx, last[2] if last else 0)
        if later is not None:
            raise JournalError(f"{self.path}: corrupt record at offset {pos} ({problem}) followed by a valid "
                               f"record (index {later[1]} at offset {later[0]}); this node's log is damaged "
                               f"in the middle: {REMEDY}")
        return pos

    # ---- failure ---------------------------------------------------------

    def mark_failed(self, reason: str) -> None:
        """Enter the failed state (idempotent; `on_failed` runs once). A failed
        journal is never clean: whatever a failed sync covered may be lost."""
        self._dirty = True
        if self.failed is not None:
            return
        self.failed = reason
        if self._on_failed is not None:
            self._on_failed(reason)

    def _failure(self, what: str, exc: OSError) -> JournalFailed:
        self.mark_failed(f"{what} failed ({exc.strerror or exc}); not retried: the data may be lost")
        return JournalFailed(self.failed)

    def check(self) -> None:
        """Raise JournalFailed if the journal is in the failed state."""
        if self.failed is not None:
            raise JournalFailed(self.failed)

    # ---- pysyncobj Journal interface -------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        if self.failed is not None:
            raise JournalFailed(self.failed)
        command = bytes(command)
        try:
            offset = os.lseek(self._fd, 0, os.SEEK_END)
            _write_all(self._fd, _record(command, idx, term))
        except OSError as exc:
            raise self._failure(f"{self.path}: append of entry {idx}", exc) from exc
        self._entries.append((command, idx, term))
        self._offsets.append(offset)
        self._dirty = True

    def clear(self) -> None:
        self._truncate_at(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 (pysyncobj's name)
        """Drop entries at list positions >= entryFrom (a conflicting tail)."""
        if entryFrom < 0:
            entryFrom = max(0, len(self._entries) + entryFrom)
        if entryFrom < len(self._entries):
            self._truncate_at(entryFrom)

    def _truncate_at(self, position: int) -> None:
        self.check()
        offset = self._offsets[position] if position < len(self._offsets) else len(MAGIC)
        if position == 0:
            offset = len(MAGIC)
        try:
            os.ftruncate(self._fd, offset)
        except OSError as exc:
            raise self._failure(f"{self.path}: truncate", exc) from exc
        del self._entries[position:]
        del self._offsets[position:]
        self._dirty = True
        if self._on_truncate is not None:
            self._on_truncate(self.last_index())

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802
        """Drop entries at list positions < entryTo (compaction after a durable dump).

        Writes the kept tail to a new file and renames it over the old one, so a
        crash at any point leaves one complete journal on disk.
        """
        if entryTo <= 0:
            return
        self.check()
        kept = self._entries[entryTo:]
        tmp = self.path.with_name(self.path.name + ".tmp")
        offsets: list[int] = []
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                chunks = [MAGIC]
                pos = len(MAGIC)
                for command, idx, term in kept:
                    rec = _record(command, idx, term)
                    offsets.append(pos)
                    chunks.append(rec)
                    pos += len(rec)
                _write_all(fd, b"".join(chunks))
                if self._durable:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            os.replace(tmp, self.path)
            if self._durable:
                fsync_dir(self.path.parent)
        except OSError as exc:
            raise self._failure(f"{self.path}: compaction", exc) from exc
        os.close(self._fd)
        self._fd = fd
        os.lseek(self._fd, 0, os.SEEK_END)
        self._entries = kept
        self._offsets = offsets
        self._dirty = False  # the new file was fsynced whole

    def __getitem__(self, item: int | slice) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        if self._fd < 0:
            return
        try:
            if self.failed is None:  # a failed journal writes nothing more
                self.sync()
                self._save_meta_if_changed()
        finally:
            os.close(self._fd)
            self._fd = -1

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802,N803
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_saved = False

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return int(self._meta.get("commit_index", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:  # noqa: N802,N803
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        # Term and vote must be on disk before any message reflecting them is
        # sent; the journal is synced too so the stored commit index stays valid.
        self.sync()
        self._write_meta()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        return self._meta.get("voted_for")

    def onOneSecondTimer(self) -> None:  # noqa: N802
        self._save_meta_if_changed()

    # ---- durability ------------------------------------------------------

    def sync(self) -> None:
        """Make every added record durable; one fdatasync, only if anything changed.
        Raises JournalFailed if it (or an earlier write or sync) failed."""
        if self.failed is not None:
            raise JournalFailed(self.failed)
        if not self._dirty or self._fd < 0:
            return
        if self._durable:
            started = time.perf_counter()
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                raise self._failure(f"{self.path}: fdatasync", exc) from exc
            self.sync_seconds.observe(time.perf_counter() - started)
        self._dirty = False
        if self._durable:
            self.end_sync(self.last_index())

    def begin_sync(self) -> tuple[int, int] | None:
        """`sync` in two halves, for a leader that fsyncs off its event loop:
        returns (a dup of the file descriptor, the last index it covers) for
        another thread to fdatasync and close, or None when nothing needs it.
        Records added after this call are not covered (they leave the journal
        dirty again). The dup keeps the file open even if compaction replaces
        it meanwhile. Call `end_sync(index)` once the fdatasync returned, or
        `mark_failed` if it did not.

        If no descriptor can be had (EMFILE), the sync runs here instead; the
        journal is never marked clean before something that syncs it exists."""
        self.check()
        if not self._dirty or self._fd < 0:
            return None
        if not self._durable:
            self._dirty = False
            return None
        try:
            fd = os.dup(self._fd)
        except OSError:
            self.sync()
            return None
        self._dirty = False
        return fd, self.last_index()

    def end_sync(self, index: int) -> None:
        self.sync_count += 1
        if self._on_sync is not None:
            self._on_sync(index)

    @property
    def dirty(self) -> bool:
        return self._dirty

    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    def _save_meta_if_changed(self) -> None:
        if self._meta_saved:
            return
        self.sync()  # never store a commit index past the durable journal
        self._write_meta()

    def _write_meta(self) -> None:
        self.check()
        try:
            atomic_write(self.meta_path, msgpack.packb(self._meta, use_bin_type=True), self._durable)
        except OSError as exc:
            raise self._failure(f"{self.meta_path}: meta write", exc) from exc
        self._meta_saved = True
