"""A crash-safe Raft journal for pysyncobj 0.3.17.

pysyncobj's own `FileJournal` writes through an mmap that is never flushed and
stores term/vote without fsync, so an acknowledged write survives `kill -9` but
not a power loss. `DurableJournal` implements the same `pysyncobj.journal.Journal`
interface with explicit durability:

Files (in the node's data dir):
  raft.journal  header `MAGIC` then records, appended with os.write:
                  [len u32][crc32 u32][idx u64][term u64][command: len bytes]
                (little endian; the crc covers idx, term and command). On open
                the file is scanned; the first incomplete, corrupt or
                out-of-sequence record and everything after it is cut off, so a
                torn tail (crash mid-append) is recovered to the last good record.
  raft.meta     msgpack {"term", "voted_for", "commit_index"}, replaced
                atomically (tmp + fsync + rename + directory fsync).

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
With durability="none" the same files are written but never fsynced.

Threads: pysyncobj calls every method on the adapter's loop thread (it ticks
there), `destroy` included. Entries stay in
memory (as pysyncobj's own journal does) until compaction drops them.
"""
from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgpack
from pysyncobj.journal import Journal

log = logging.getLogger("raftq.journal")

Durability = Literal["fsync", "none"]
Entry = tuple[bytes, int, int]  # (command, raft index, term), as pysyncobj uses them

MAGIC = b"RAFTQJ01"
_HEAD = struct.Struct("<IIQQ")  # len, crc32, idx, term
MAX_RECORD_BYTES = 1 << 30  # a larger length field can only be garbage


class JournalError(Exception):
    """The journal or meta file cannot be used (not a torn tail: real damage)."""


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


class DurableJournal(Journal):
    """pysyncobj `Journal` over an append-only, checksummed, fsynced file."""

    def __init__(self, path: Path, meta_path: Path, durability: Durability = "fsync",
                 on_sync: Callable[[int], None] | None = None,
                 on_truncate: Callable[[int], None] | None = None) -> None:
        if durability not in ("fsync", "none"):
            raise ValueError(f"durability must be 'fsync' or 'none', not {durability!r}")
        self.path = Path(path)
        self.meta_path = Path(meta_path)
        self._durable = durability == "fsync"
        self._on_sync = on_sync  # called with the last index after each real fdatasync
        self._on_truncate = on_truncate  # called with the new last index after a tail cut
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # file offset where each entry's record starts
        self._dirty = False
        self.sync_count = 0  # real fdatasyncs done (tests and metrics)
        self._meta = self._load_meta()
        self._meta_saved = True
        self._fd = self._open_and_scan()
        if self._durable:
            # Records read back may still sit only in the page cache (the previous
            # process may have died between write and fdatasync): make them
            # durable before this node describes them to anyone.
            self._dirty = True
            self.sync()

    # ---- opening ---------------------------------------------------------

    def _load_meta(self) -> dict[str, Any]:
        try:
            raw = self.meta_path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            meta = msgpack.unpackb(raw, raw=False)
        except Exception as exc:  # written atomically, so damage is not a torn write
            raise JournalError(f"{self.meta_path}: unreadable Raft meta file ({exc})") from exc
        if not isinstance(meta, dict):
            raise JournalError(f"{self.meta_path}: Raft meta file is not a map")
        return meta

    def _open_and_scan(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                _write_all(fd, MAGIC)
                if self._durable:
                    os.fsync(fd)
                    fsync_dir(self.path.parent)
                return fd
            with open(self.path, "rb") as f:
                data = f.read()
            if not data.startswith(MAGIC):
                if len(data) < len(MAGIC) and MAGIC.startswith(data):
                    good = 0  # torn while writing the header itself
                else:
                    raise JournalError(f"{self.path}: not a raftq journal (bad header)")
            else:
                good = self._scan(data)
            if good < len(data):
                log.warning("journal %s: dropping %d bytes of torn or corrupt tail after %d entries",
                            self.path, len(data) - good, len(self._entries))
                os.ftruncate(fd, good)
                if good == 0:
                    os.lseek(fd, 0, os.SEEK_SET)
                    _write_all(fd, MAGIC)
                if self._durable:
                    os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _scan(self, data: bytes) -> int:
        """Load records from `data`; return the offset just past the last good one."""
        pos = len(MAGIC)
        end = len(data)
        while pos + _HEAD.size <= end:
            length, crc, idx, term = _HEAD.unpack_from(data, pos)
            start = pos + _HEAD.size
            if length > MAX_RECORD_BYTES or start + length > end:
                break
            command = data[start:start + length]
            if zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
                break
            if self._entries and idx != self._entries[-1][1] + 1:
                break
            self._entries.append((command, idx, term))
            self._offsets.append(pos)
            pos = start + length
        return pos

    # ---- pysyncobj Journal interface -------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        command = bytes(command)
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        _write_all(self._fd, _record(command, idx, term))
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
        offset = self._offsets[position] if position < len(self._offsets) else len(MAGIC)
        if position == 0:
            offset = len(MAGIC)
        os.ftruncate(self._fd, offset)
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
        kept = self._entries[entryTo:]
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        offsets: list[int] = []
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
        self.sync()
        self._save_meta_if_changed()
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
        atomic_write(self.meta_path, msgpack.packb(self._meta, use_bin_type=True), self._durable)
        self._meta_saved = True

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> str | None:  # noqa: N802
        return self._meta.get("voted_for")

    def onOneSecondTimer(self) -> None:  # noqa: N802
        self._save_meta_if_changed()

    # ---- durability ------------------------------------------------------

    def sync(self) -> None:
        """Make every added record durable; one fdatasync, only if anything changed."""
        if not self._dirty or self._fd < 0:
            return
        self._dirty = False
        if not self._durable:
            return
        os.fdatasync(self._fd)
        self.end_sync(self.last_index())

    def begin_sync(self) -> tuple[int, int] | None:
        """`sync` in two halves, for a leader that fsyncs off its event loop:
        returns (a dup of the file descriptor, the last index it covers) for
        another thread to fdatasync and close, or None when nothing needs it.
        Records added after this call are not covered (they leave the journal
        dirty again). The dup keeps the file open even if compaction replaces
        it meanwhile. Call `end_sync(index)` once the fdatasync returned."""
        if not self._dirty or self._fd < 0:
            return None
        self._dirty = False
        if not self._durable:
            return None
        return os.dup(self._fd), self.last_index()

    def end_sync(self, index: int) -> None:
        self.sync_count += 1
        if self._on_sync is not None:
            self._on_sync(index)

    def sync_failed(self) -> None:
        """A `begin_sync` half did not complete: its records still need a sync."""
        self._dirty = True

    @property
    def dirty(self) -> bool:
        return self._dirty

    def last_index(self) -> int:
        return self._entries[-1][1] if self._entries else 0

    def _save_meta_if_changed(self) -> None:
        if self._meta_saved:
            return
        self.sync()  # never store a commit index past the durable journal
        atomic_write(self.meta_path, msgpack.packb(self._meta, use_bin_type=True), self._durable)
        self._meta_saved = True
