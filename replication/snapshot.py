"""The Raft dump (snapshot) file: format, asynchronous writer, reader.

pysyncobj compacts its log by writing a "full dump" and dropping the entries it
covers. Its default dump pickles the state; raftq never pickles its own state
(an unpickled snapshot could run code), so the adapter plugs in this module as pysyncobj's custom
serializer / serializeChecker / deserializer.

File format (`raft.dump`), entirely ours (a leader streams the file's bytes to
a lagging follower, which hands them to `read_dump`):

    MAGIC (8 bytes) | crc32 of payload (u32 little endian) | payload
    payload = msgpack {"format": 1,
                       "machine": JobMachine.to_snapshot(),
                       "raft": [[cmd, idx, term] of the last applied entry,
                                [cmd, idx, term] of the entry before it],
                       "cluster": [raft addresses]}

Every dump carries the crc32 (since the first format) and `read_dump` verifies
it: a damaged or truncated dump on disk refuses the node's start with one line
(`DumpError`: file, what is wrong, what to do), never an empty state.

Writing must not stall the Raft loop (a state of a million jobs takes
seconds to encode), so `DumpWriter.serialize` forks: the child, which sees the
state exactly as it was after the last applied entry (copy-on-write), encodes
it, writes `raft.dump.writing`, fsyncs, renames it over `raft.dump`, fsyncs the
directory and exits; the parent returns at once and `DumpWriter.check` reaps
the child with waitpid(WNOHANG). Only after SUCCESS does pysyncobj drop journal
entries, so the entries a dump replaces are never gone before the dump is
durable.

pysyncobj quirk this relies on: with a custom serializer its `Serializer`
calls `serializer(dump + ".tmp", data)` and then renames `dump + ".tmp"` over
the dump itself. `serialize` makes sure that path does not exist, so that
rename fails (pysyncobj swallows the error) and only the child ever replaces
the dump.
"""
from __future__ import annotations

import os
import signal
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from replication.pysyncobj_seam import SERIALIZER_STATE

from replication.journal import REMEDY, Entry, fsync_dir

MAGIC = b"RAFTQD01"
FORMAT = 1


class DumpError(Exception):
    """The dump file is missing, damaged or of an unknown format."""


@dataclass(frozen=True)
class Dump:
    machine: dict[str, Any]
    last: Entry  # last applied entry (command, idx, term)
    prev: Entry  # the entry before it
    cluster: list[str]


def encode_dump(machine_snapshot: dict[str, Any], last: Entry, prev: Entry,
                cluster: Iterable[str]) -> bytes:
    payload = msgpack.packb({
        "format": FORMAT,
        "machine": machine_snapshot,
        "raft": [list(last), list(prev)],
        "cluster": sorted(cluster),
    }, use_bin_type=True)
    return MAGIC + struct.pack("<I", zlib.crc32(payload)) + payload


def decode_dump(data: bytes) -> Dump:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise DumpError("not a raftq dump (bad header)")
    (crc,) = struct.unpack_from("<I", data, len(MAGIC))
    payload = memoryview(data)[len(MAGIC) + 4:]
    if zlib.crc32(payload) != crc:
        raise DumpError("dump checksum mismatch")
    try:
        doc = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        if doc["format"] != FORMAT:
            raise DumpError(f"unknown dump format {doc['format']!r}")
        (c1, i1, t1), (c0, i0, t0) = doc["raft"]
        last = (bytes(c1), int(i1), int(t1))
        prev = (bytes(c0), int(i0), int(t0))
        return Dump(machine=doc["machine"], last=last, prev=prev,
                    cluster=[str(a) for a in doc["cluster"]])
    except DumpError:
        raise
    except Exception as exc:
        raise DumpError(f"malformed dump ({exc.__class__.__name__}: {exc})") from exc


def read_dump(path: Path, durable: bool) -> Dump:
    """Read and verify a dump. With `durable`, first make the file itself durable:
    pysyncobj writes a dump received from the leader without fsync."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise DumpError(f"{path}: no such dump") from exc
    try:
        if durable:
            os.fsync(fd)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    if durable:
        fsync_dir(path.parent)
    try:
        return decode_dump(data)
    except DumpError as exc:
        raise DumpError(f"{path}: {exc}; this node's snapshot is damaged: {REMEDY}") from exc


class DumpWriter:
    """pysyncobj's serializer + serializeChecker, writing dumps from a forked child.

    Called only on the Raft adapter's loop thread (serialize, check, and
    cancel from destroy).
    """

    def __init__(self, dump_path: Path, snapshot: Callable[[], dict[str, Any]], durable: bool) -> None:
        self.dump_path = dump_path
        self.writing_path = dump_path.with_name(dump_path.name + ".writing")
        self._snapshot = snapshot
        self._durable = durable
        self._pid = 0
        self._pending: int | None = None  # a result to report once (fork failed)
        self.completed = 0  # dumps written successfully (tests, metrics)
        try:
            self.writing_path.unlink()  # a child killed mid-write leaves this behind
        except FileNotFoundError:
            pass

    def serialize(self, pysyncobj_tmp: str, data: tuple[Any, ...]) -> None:
        last, prev, cluster = data
        addresses = [getattr(n, "address", None) or str(n) for n in cluster]
        try:
            os.unlink(pysyncobj_tmp)  # see the module docstring: this path must not exist
        except FileNotFoundError:
            pass
        if self._pid:
            return
        try:
            pid = os.fork()
        except OSError:
            self._pending = SERIALIZER_STATE.FAILED
            return
        if pid == 0:  # child: no logging, no locks, no return to the caller
            code = 1
            try:
                blob = encode_dump(self._snapshot(), tuple(last), tuple(prev), addresses)
                self._write(blob)
                code = 0
            except BaseException:
                pass
            finally:
                os._exit(code)
        self._pid = pid

    def _write(self, blob: bytes) -> None:
        fd = os.open(self.writing_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
            if self._durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.writing_path, self.dump_path)
        if self._durable:
            fsync_dir(self.dump_path.parent)

    def check(self) -> int:
        if self._pending is not None:
            state, self._pending = self._pending, None
            return state
        if not self._pid:
            return SERIALIZER_STATE.NOT_SERIALIZING
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:
            self._pid = 0
            return SERIALIZER_STATE.FAILED
        if pid == 0:
            return SERIALIZER_STATE.SERIALIZING
        self._pid = 0
        if os.waitstatus_to_exitcode(status) == 0:
            self.completed += 1
            return SERIALIZER_STATE.SUCCESS
        return SERIALIZER_STATE.FAILED

    def cancel(self) -> None:
        """Stop a running child (node shutdown); the old dump stays valid."""
        if not self._pid:
            return
        try:
            os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self._pid = 0
        try:
            self.writing_path.unlink()
        except FileNotFoundError:
            pass
