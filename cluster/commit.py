"""Group commit: concurrent writes gathered into one Raft entry.

Every write handler awaits `GroupCommitter.commit(cmd)`. Commands that arrive
while the loop is busy, or while `max_in_flight` entries are already being
replicated, wait in `_pending` and leave together as ONE entry:

    {"v": 1, "now_ms": <leader wall clock>, "cmds": [cmd, ...]}

So an idle node proposes a lone command at once (no timer, no added latency),
and a loaded node sends fewer, larger entries: one Raft round trip and one
fsync on each replica cover the whole batch. `now_ms` is stamped here, on the
leader, because the state machine may not read a clock (docs/contracts.md §1).

Isolation: each command is encoded on its own as it is enqueued, and the entry
is assembled from those bytes (msgpack concatenates: the entry's map and array
headers are written here). A command that cannot be encoded, that would make
the entry undecodable on the replicas (nested too deep), that is larger than
`max_batch_bytes` or that `check` refuses fails alone, synchronously, before it
joins any batch; nothing that reaches `_pending` can fail a whole entry.

Invariants: an entry never holds more than `max_batch` commands nor more than
`max_batch_bytes` bytes; every command in it was encoded and depth-checked.

Threads: everything runs on the asyncio loop. The Raft adapter ticks on the
same loop (replication/raft.py), so a commit callback resolves the futures
directly; a proposer on another thread gets its result handed back with
`call_soon_threadsafe`.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time
from collections import deque
from typing import Any, Callable

import msgpack

from cluster.errors import BadRequest, Internal, RaftqError, TooLarge, error_class
from replication.events import BATCH_BUCKETS, LATENCY_BUCKETS_S, Distribution
from replication.model import MAX_VALUE_DEPTH
from replication.replica import Replica

log = logging.getLogger("raftq.commit")

# The replicas decode an entry with msgpack's unpacker, whose stack holds 1024
# levels, and the entry adds 2 (its map and the cmds array) around each
# command. A command of n bytes nests at most n levels, so one under this size
# cannot be too deep and skips the check (`_too_deep`).
_DEPTH_CHECK_BYTES = 1000
# Bytes the entry adds around its commands: fixmap(3), "v", 1, "now_ms", uint64,
# "cmds", array32 header (1 + 2 + 1 + 7 + 9 + 5 + 5 = 30).
ENTRY_OVERHEAD_BYTES = 32
_ENTRY_HEAD = b"\x83" + msgpack.packb("v") + msgpack.packb(1) + msgpack.packb("now_ms")
_CMDS_KEY = msgpack.packb("cmds")


class CommitStats:
    """Counters and distributions the metrics endpoint reads."""

    def __init__(self) -> None:
        self.entries = 0
        self.commands = 0
        self.failed_entries = 0
        self.batch_commands = Distribution(BATCH_BUCKETS)  # commands per entry
        self.seconds = Distribution(LATENCY_BUCKETS_S)     # propose -> committed and applied


class GroupCommitter:
    def __init__(
        self,
        replica: Replica,  # only its propose is used
        *,
        # One entry replicating at a time: everything that arrives meanwhile
        # leaves as the next entry. With 4 in flight a loaded leader cut more,
        # smaller entries, each with its own fdatasync and append_entries on
        # every replica: draining jobs, 1 vs 4 gave 3,800-4,100 vs 3,470-3,870
        # jobs/s and 99-107 vs 115-133 us of leader CPU per job.
        max_in_flight: int = 1,
        max_batch: int = 4096,
        # The whole entry, headers included (ClusterConfig.max_entry_bytes).
        max_batch_bytes: int = 4 * 1024 * 1024,
        # Called with (command, its encoded size) before it is queued; raises
        # a RaftqError to refuse it (the server's per-field size caps).
        check: Callable[[dict[str, Any], int], None] | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._replica = replica
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._max_batch_bytes = max_batch_bytes
        self._max_cmd_bytes = max_batch_bytes - ENTRY_OVERHEAD_BYTES
        self._check = check
        self._clock_ms = clock_ms
        self._packer = msgpack.Packer(use_bin_type=True)
        self._pending: deque[tuple[bytes, int, asyncio.Future[dict[str, Any]]]] = deque()  # (cmd, its size, fut)
        self._in_flight = 0
        self._flush_scheduled = False
        self.stats = CommitStats()
        # The latest commit latencies (s): the dashboard's live p50/p99 (the
        # histogram in stats counts since start, which a live chart cannot use).
        self.latencies: deque[float] = deque(maxlen=4096)

    async def commit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Replicate one command; return its result dict from the state machine.

        Raises BadRequest / TooLarge (see `encode`) before anything is proposed,
        and NotLeader / NoLeader / Timeout when the entry did not commit (the
        outcome of a Timeout is unknown: callers retry with the same ids).
        """
        return await self.enqueue(cmd)

    def enqueue(self, cmd: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """`commit` without the coroutine: the future it would await (loop thread
        only). Raises BadRequest / TooLarge at once for a command that may not
        enter the log. Cancelling the future before its entry is proposed drops
        the command."""
        data = self.encode(cmd)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending.append((data, len(data), fut))
        self._schedule_flush(loop)
        return fut

    def encode(self, cmd: dict[str, Any]) -> bytes:
        """`cmd` as the bytes it will have inside an entry, or BadRequest /
        TooLarge (or whatever `check` raises) naming why it may not enter the log."""
        try:
            data = self._packer.pack(cmd)
        except (TypeError, OverflowError, UnicodeError) as exc:
            raise BadRequest(f"command cannot be encoded: {exc}") from None
        except ValueError:  # msgpack's recursion limit
            raise BadRequest(f"value nested deeper than {MAX_VALUE_DEPTH} levels") from None
        size = len(data)
        if size > _DEPTH_CHECK_BYTES:
            if size > self._max_cmd_bytes:
                raise TooLarge(f"command of {size} bytes exceeds the max_entry_bytes limit of "
                               f"{self._max_batch_bytes} bytes per Raft entry; send less per request")
            if _too_deep(data):
                raise BadRequest(f"value nested deeper than {MAX_VALUE_DEPTH} levels")
        if self._check is not None:
            self._check(cmd, size)
        return data

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        # call_soon, not an immediate flush: every command that arrives in the
        # same loop iteration joins the same entry.
        if not self._flush_scheduled and self._pending and self._in_flight < self._max_in_flight:
            self._flush_scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_scheduled = False
        pending = self._pending
        while pending and self._in_flight < self._max_in_flight:
            batch: list[tuple[bytes, asyncio.Future[dict[str, Any]]]] = []
            room = self._max_cmd_bytes
            slots = self._max_batch
            while pending and slots and pending[0][1] <= room:
                data, size, fut = pending.popleft()
                if fut.cancelled():
                    continue
                batch.append((data, fut))
                room -= size
                slots -= 1
            if not batch:
                return
            self._propose(loop, batch)

    def _propose(self, loop: asyncio.AbstractEventLoop,
                 batch: list[tuple[bytes, asyncio.Future[dict[str, Any]]]]) -> None:
        n = len(batch)
        count = bytes((0x90 | n,)) if n < 16 else (b"\xdc" + struct.pack(">H", n) if n < 65536
                                                   else b"\xdd" + struct.pack(">I", n))
        parts = [_ENTRY_HEAD, self._packer.pack(self._clock_ms()), _CMDS_KEY, count]
        parts += [data for data, _ in batch]
        entry = b"".join(parts)
        self._in_flight += 1
        self.stats.entries += 1
        self.stats.commands += n
        self.stats.batch_commands.observe(n)
        started = time.perf_counter()

        loop_thread = threading.get_ident()

        def on_commit(results: list | None, error: str | None) -> None:
            if threading.get_ident() == loop_thread:
                self._resolve(loop, batch, results, error, started)
            else:
                loop.call_soon_threadsafe(self._resolve, loop, batch, results, error, started)

        try:
            self._replica.propose(entry, on_commit)
        except Exception as exc:  # a bug in the adapter must not wedge every writer
            log.exception("propose failed")
            self._resolve(loop, batch, None, "INTERNAL:" + str(exc), started)

    def _resolve(self, loop: asyncio.AbstractEventLoop,
                 batch: list[tuple[bytes, asyncio.Future[dict[str, Any]]]],
                 results: list | None, error: str | None, started: float) -> None:
        self._in_flight -= 1
        elapsed = time.perf_counter() - started
        self.stats.seconds.observe(elapsed)
        self.latencies.append(elapsed)
        if error is None and (not isinstance(results, list) or len(results) != len(batch)):
            error = "INTERNAL:state machine returned a malformed result"
        if error is not None:
            self.stats.failed_entries += 1
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(_error(error))
        else:
            assert results is not None
            for (_, fut), result in zip(batch, results):
                if not fut.done():
                    fut.set_result(result)
        self._schedule_flush(loop)


def _too_deep(data: bytes) -> bool:
    """Would `data`, wrapped in an entry, nest deeper than the replicas can decode?
    Skipping (parsing without building objects) runs in C: ~70 us for 50 KB."""
    unpacker = msgpack.Unpacker(max_buffer_size=len(data) + 2)
    unpacker.feed(b"\x91\x91")  # the entry's map and cmds array, as two levels
    unpacker.feed(data)
    try:
        unpacker.skip()
    except msgpack.StackError:
        return True
    return False


def _error(code: str) -> RaftqError:
    if code.startswith("INTERNAL:"):
        return Internal(code.split(":", 1)[1])
    cls = error_class(code)  # the adapter reports NOT_LEADER, NO_LEADER, TIMEOUT, OVERLOADED
    messages = {
        "NOT_LEADER": "this node lost leadership before the write committed",
        "NO_LEADER": "no leader (election in progress); retry",
        "TIMEOUT": "leader changed before the write committed; outcome unknown, retry with the same id",
        "OVERLOADED": "raft command queue is full",
    }
    return cls(messages.get(code, code))
