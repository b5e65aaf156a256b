"""The replicated job state machine: pure, deterministic, driven by log entries.

`JobMachine.apply_entry(entry)` is the only way to change state. Every replica
applies the same entries in the same order and so holds the same state; that is
the whole of the replication guarantee, so this module reads no clock, no
randomness, no environment and no disk, and never lets dict/set iteration order
decide a result. Time comes only from each entry's `now_ms` (stamped by the
leader); `clock_ms` is the maximum seen so far and never goes backwards.

Threads: the Raft adapter calls `apply_entry` on its tick thread while holding
its lock; queries (`get`, `list_jobs`, `stats`, ...) and `to_snapshot` are
called by others holding the same lock. Nothing here locks.

State and indexes (all derived from `_jobs` except the two counters, and all
rebuilt by `restore`):

- `_jobs`: id -> Job. The only primary data, with `clock_ms` and `_next_seq`.
- `_by_seq`: [(seq, id)] in increasing seq, append-only (seqs are monotonic);
  lazy: an entry is stale when the job is gone or has another seq (retried).
  Serves `list_jobs` paging (bisect on the cursor) and snapshot order.
- `_ready[queue]`: heap of (-priority, seq, id) for `queued` jobs; lazy: an
  item is live iff the job exists, is `queued` and has that seq. A requeued job
  keeps its seq and so its FIFO place. Items turn stale only through `cancel`
  (lease pops what it takes), so cancel compacts when stale items dominate.
- `_scheduled`: heap of (run_at_ms, seq, id) for `scheduled` jobs; lazy: live
  iff the job is `scheduled` with that seq and run_at_ms.
- `_leases`: heap of (deadline_ms, seq, attempt, id) for `running` jobs; lazy:
  live iff the job is `running` with that seq, attempt and deadline (a
  heartbeat pushes a new item and leaves the old one stale).
- `_finished`: deque of (finished_ms, seq, id) in finishing order, which is
  finished_ms order because the clock never goes backwards; lazy (a retried
  job's old item is stale). `tick` purges from its left end.
- `_unique`: unique_key -> id, for live (non-final) jobs only.
- `_counts[state]`, `_queue_counts[queue][state]`: kept on every transition so
  `stats` is O(queues). A queue with no jobs left is dropped.

Leases end only through an explicit command or `tick`: a complete, fail or
heartbeat presenting the current attempt of a `running` job is accepted even if
its deadline has passed but no tick has expired it yet (nobody else can hold the
job in between, so fencing is unaffected). Lease expiry requeues straight to
`queued` (no backoff; the worker most likely died) and counts `lease_expiries`
apart from handler failures.

After each entry `_settle` pops stale items off the tops of `_scheduled` and
`_leases`, so `next_due_ms` is an O(1) peek that queries never need to mutate.
Heap layouts and stale items never influence a result, and the snapshot holds
only the jobs (in seq order), so a restored replica is indistinguishable from
one that replayed the log.

The machine never mutates `args`, `result` or `progress` values in place (it
replaces them), so a snapshot's rows may be encoded after the lock is released.
"""
from __future__ import annotations

import hashlib
import heapq
import sys
from bisect import bisect_right
from collections import deque
from typing import Any, Callable

import msgpack

from replication.model import (
    BACKOFF_CAP_MS,
    BAD_REQUEST,
    CANCELLED,
    CONFLICT,
    DEFAULT_BACKOFF_MS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE,
    FAILED,
    FINAL_STATES,
    INTERNAL,
    JOB_FIELDS,
    LEASE_LOST,
    MAX_ERROR_LEN,
    MAX_MS,
    MAX_PROGRESS_MSG_LEN,
    NOT_FOUND,
    QUEUED,
    RUNNING,
    SCHEDULED,
    STATES,
    SUCCEEDED,
    Job,
    error,
    is_int,
    job_from_row,
    job_to_row,
    job_view,
    leased_view,
    validate_command,
)

SNAPSHOT_FORMAT = 1
ENTRY_VERSION = 1
LIST_MAX_LIMIT = 10_000
# list_jobs examines at most this many index entries per call (it runs under the
# adapter's lock); a filtered page may come back short with a cursor to go on.
LIST_SCAN_BUDGET = 200_000
_COMPACT_SLACK = 64

Result = dict[str, Any]


def backoff_delay_ms(job_id: str, attempt: int, backoff_ms: int) -> int:
    """Retry delay after failed attempt `attempt` (1-based), deterministic.

    base * 2^(attempt-1), capped at BACKOFF_CAP_MS, times a jitter factor in
    [0.8, 1.2) taken from sha256("id:attempt"). Integer arithmetic only, so every
    replica (and every platform) computes the same delay.
    """
    if backoff_ms <= 0:
        return 0
    base = BACKOFF_CAP_MS if attempt > 40 else min(backoff_ms << max(attempt - 1, 0), BACKOFF_CAP_MS)
    digest = hashlib.sha256(f"{job_id}:{attempt}".encode()).digest()
    jitter = int.from_bytes(digest[:8], "big")  # in [0, 2^64): jitter fraction * 2^64
    # base * (0.8 + 0.4 * jitter / 2^64) == base * (8 * 2^64 + 4 * jitter) / (10 * 2^64)
    return base * (8 * (1 << 64) + 4 * jitter) // (10 * (1 << 64))


class JobMachine:
    """All replicated job state, changed only by `apply_entry` (docs/contracts.md section 1)."""

    def __init__(self, *, test_bug: str | None = None) -> None:
        # Fault-suite only (tests/fault): "skip_fencing" makes complete/fail/heartbeat
        # ignore the lease token, a known bug the checker must catch. Fixed at
        # construction (the node reads RAFTQ_TEST_INJECT_BUG once), so apply stays
        # deterministic; always off in production.
        self._skip_fencing = test_bug == "skip_fencing"
        self._init_state()
        self._handlers: dict[str, Callable[[dict[str, Any]], Result]] = {
            "submit": self._cmd_submit,
            "submit_many": self._cmd_submit_many,
            "lease": self._cmd_lease,
            "heartbeat": self._cmd_heartbeat,
            "complete": self._cmd_complete,
            "fail": self._cmd_fail,
            "cancel": self._cmd_cancel,
            "retry": self._cmd_retry,
            "tick": self._cmd_tick,
        }

    def _init_state(self) -> None:
        self.clock_ms: int = 0
        self._next_seq: int = 1
        self._jobs: dict[str, Job] = {}
        self._by_seq: list[tuple[int, str]] = []
        self._ready: dict[str, list[tuple[int, int, str]]] = {}
        self._scheduled: list[tuple[int, int, str]] = []
        self._leases: list[tuple[int, int, int, str]] = []
        self._finished: deque[tuple[int, int, str]] = deque()
        self._unique: dict[str, str] = {}
        self._counts: dict[str, int] = {s: 0 for s in STATES}
        self._queue_counts: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ apply

    def apply_entry(self, entry: Any) -> list[Result]:
        """Apply one log entry; one result per command, in order. Never raises."""
        if not isinstance(entry, dict):
            return []
        cmds = entry.get("cmds")
        if not isinstance(cmds, (list, tuple)):
            return []  # nothing to answer positionally
        now = entry.get("now_ms")
        version = entry.get("v")
        if not (is_int(version) and version == ENTRY_VERSION and is_int(now) and 0 <= now <= MAX_MS):
            msg = "entry must be {'v': 1, 'now_ms': int >= 0, 'cmds': [...]}"
            return [error(BAD_REQUEST, msg) for _ in cmds]
        if now > self.clock_ms:
            self.clock_ms = now
        results = [self._apply_cmd(cmd) for cmd in cmds]
        self._settle()
        return results

    def _apply_cmd(self, cmd: Any) -> Result:
        msg = validate_command(cmd)
        if msg is not None:
            return error(BAD_REQUEST, msg)
        try:
            return self._handlers[cmd["op"]](cmd)
        except Exception as exc:  # a bug; deterministic on every replica, so answer and go on
            return error(INTERNAL, f"{cmd['op']}: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------ bookkeeping

    def _count(self, queue: str, state: str, delta: int) -> None:
        self._counts[state] += delta
        per_queue = self._queue_counts.get(queue)
        if per_queue is None:
            per_queue = self._queue_counts[queue] = {s: 0 for s in STATES}
        per_queue[state] += delta
        if delta < 0 and not any(per_queue.values()):
            del self._queue_counts[queue]

    def _move(self, job: Job, state: str) -> None:
        self._count(job.queue, job.state, -1)
        job.state = state
        self._count(job.queue, state, +1)

    def _take_seq(self) -> int:
        seq = self._next_seq
        self._next_seq = seq + 1
        return seq

    def _push_ready(self, job: Job) -> None:
        heap = self._ready.get(job.queue)
        if heap is None:
            heap = self._ready[job.queue] = []
        heapq.heappush(heap, (-job.priority, job.seq, job.id))

    def _ready_live(self, item: tuple[int, int, str]) -> bool:
        job = self._jobs.get(item[2])
        return job is not None and job.state == QUEUED and job.seq == item[1]

    def _sched_live(self, item: tuple[int, int, str]) -> bool:
        job = self._jobs.get(item[2])
        return (job is not None and job.state == SCHEDULED and job.seq == item[1]
                and job.run_at_ms == item[0])

    def _lease_live(self, item: tuple[int, int, int, str]) -> bool:
        job = self._jobs.get(item[3])
        return (job is not None and job.state == RUNNING and job.seq == item[1]
                and job.attempts == item[2] and job.lease_deadline_ms == item[0])

    def _finished_live(self, item: tuple[int, int, str]) -> bool:
        job = self._jobs.get(item[2])
        return (job is not None and job.state in FINAL_STATES and job.seq == item[1]
                and job.finished_ms == item[0])

    def _make_ready_or_scheduled(self, job: Job, due_ms: int | None) -> None:
        """Put a (new, requeued or retried) job where it waits: queued now, or scheduled."""
        if due_ms is not None and due_ms > self.clock_ms:
            job.run_at_ms = due_ms
            self._move(job, SCHEDULED)
            heapq.heappush(self._scheduled, (due_ms, job.seq, job.id))
        else:
            self._move(job, QUEUED)
            self._push_ready(job)

    def _release(self, job: Job) -> None:
        """A running job's attempt ended without an outcome: it waits again."""
        job.worker = None
        job.lease_deadline_ms = None

    def _finish(self, job: Job, state: str) -> None:
        self._move(job, state)
        job.finished_ms = self.clock_ms
        job.lease_deadline_ms = None
        if job.unique_key is not None and self._unique.get(job.unique_key) == job.id:
            del self._unique[job.unique_key]
        self._finished.append((job.finished_ms, job.seq, job.id))

    def _settle(self) -> None:
        """Drop stale heap tops (so next_due_ms is a pure peek) and compact indexes."""
        sched = self._scheduled
        while sched and not self._sched_live(sched[0]):
            heapq.heappop(sched)
        leases = self._leases
        while leases and not self._lease_live(leases[0]):
            heapq.heappop(leases)
        if len(leases) > 2 * self._counts[RUNNING] + _COMPACT_SLACK:
            self._leases = [i for i in leases if self._lease_live(i)]
            heapq.heapify(self._leases)
        if len(self._by_seq) > 2 * len(self._jobs) + 1024:
            jobs = self._jobs
            self._by_seq = [(s, i) for s, i in self._by_seq if (j := jobs.get(i)) is not None and j.seq == s]

    def _compact_waiting(self, queue: str) -> None:
        """Rebuild a ready heap / the scheduled heap once stale items dominate."""
        heap = self._ready.get(queue)
        if heap is not None:
            live = self._queue_counts.get(queue, {}).get(QUEUED, 0)
            if len(heap) > 2 * live + _COMPACT_SLACK:
                heap = [i for i in heap if self._ready_live(i)]
                heapq.heapify(heap)
                if heap:
                    self._ready[queue] = heap
                else:
                    del self._ready[queue]
        if len(self._scheduled) > 2 * self._counts[SCHEDULED] + _COMPACT_SLACK:
            self._scheduled = [i for i in self._scheduled if self._sched_live(i)]
            heapq.heapify(self._scheduled)

    # --------------------------------------------------------------- commands

    def _submit_one(self, spec: dict[str, Any]) -> Result:
        existing = self._jobs.get(spec["id"])
        if existing is None:
            unique_key = spec.get("unique_key")
            if unique_key is not None and unique_key in self._unique:
                existing = self._jobs[self._unique[unique_key]]
        if existing is not None:
            return {"id": existing.id, "created": False, "state": existing.state}

        now = self.clock_ms
        due: int | None = spec.get("run_at_ms")
        delay = spec.get("delay_ms")
        if delay is not None:
            due = max(due if due is not None else 0, now + delay)
        queue = spec.get("queue")
        max_attempts = spec.get("max_attempts")
        backoff = spec.get("backoff_ms")
        priority = spec.get("priority")
        job = Job(
            id=spec["id"],
            type=sys.intern(spec["type"]),
            args=spec["args"] if "args" in spec else {},
            queue=sys.intern(queue) if queue is not None else DEFAULT_QUEUE,
            priority=priority if priority is not None else 0,
            max_attempts=max_attempts if max_attempts is not None else DEFAULT_MAX_ATTEMPTS,
            timeout_ms=spec.get("timeout_ms"),
            backoff_ms=backoff if backoff is not None else DEFAULT_BACKOFF_MS,
            unique_key=spec.get("unique_key"),
            seq=self._take_seq(),
            state=QUEUED,  # placeholder: counted by _make_ready_or_scheduled below
            created_ms=now,
            run_at_ms=due,
        )
        self._jobs[job.id] = job
        self._by_seq.append((job.seq, job.id))
        if job.unique_key is not None:
            self._unique[job.unique_key] = job.id
        self._count(job.queue, QUEUED, +1)  # _move below subtracts it again
        self._make_ready_or_scheduled(job, due)
        return {"id": job.id, "created": True, "state": job.state}

    def _cmd_submit(self, cmd: dict[str, Any]) -> Result:
        return self._submit_one(cmd["job"])

    def _cmd_submit_many(self, cmd: dict[str, Any]) -> Result:
        return {"results": [self._submit_one(spec) for spec in cmd["jobs"]]}

    def _cmd_lease(self, cmd: dict[str, Any]) -> Result:
        worker = sys.intern(cmd["worker"])
        lease_ms: int = cmd["lease_ms"]
        want: int = cmd["max"]
        heaps = [(q, self._ready[q]) for q in sorted(set(cmd["queues"])) if q in self._ready]
        now = self.clock_ms
        leased: list[Result] = []
        while len(leased) < want and heaps:
            best: list[tuple[int, int, str]] | None = None
            for queue, heap in heaps:
                while heap and not self._ready_live(heap[0]):
                    heapq.heappop(heap)
                if heap and (best is None or heap[0] < best[0]):
                    best = heap
            if best is None:
                break
            job = self._jobs[heapq.heappop(best)[2]]
            job.attempts += 1
            self._move(job, RUNNING)
            job.worker = worker
            job.started_ms = now
            job.lease_deadline_ms = now + lease_ms
            job.progress = None
            heapq.heappush(self._leases, (job.lease_deadline_ms, job.seq, job.attempts, job.id))
            leased.append(leased_view(job))
        for queue, heap in heaps:
            if not heap and self._ready.get(queue) is heap:
                del self._ready[queue]
        return {"jobs": leased}

    def _cmd_heartbeat(self, cmd: dict[str, Any]) -> Result:
        worker: str = cmd["worker"]
        deadline = self.clock_ms + cmd["lease_ms"]
        lost: list[str] = []
        cancel: list[str] = []
        for lease in cmd["leases"]:
            job = self._jobs.get(lease["id"])
            held = job is not None and job.attempts == lease["attempt"] and job.worker == worker
            if self._skip_fencing:  # injected bug (tests/fault only)
                held = job is not None
            if held and job.state == RUNNING:
                progress = lease.get("progress")
                if progress is not None:
                    fraction = min(max(float(progress[0]), 0.0), 1.0)
                    job.progress = [fraction, progress[1][:MAX_PROGRESS_MSG_LEN]]
                if job.lease_deadline_ms != deadline:
                    job.lease_deadline_ms = deadline
                    heapq.heappush(self._leases, (deadline, job.seq, job.attempts, job.id))
            elif held and job.state == CANCELLED:
                cancel.append(lease["id"])
            else:
                lost.append(lease["id"])
        return {"lost": lost, "cancel": cancel}

    def _running_job(self, cmd: dict[str, Any]) -> Job | Result:
        """The job a complete/fail names, if `attempt` is its live lease; else an error."""
        job = self._jobs.get(cmd["id"])
        if job is None:
            return error(NOT_FOUND, f"no job {cmd['id']!r}")
        if job.state != RUNNING or (job.attempts != cmd["attempt"] and not self._skip_fencing):
            return error(LEASE_LOST, f"job {job.id!r} attempt {cmd['attempt']} no longer holds a lease "
                                     f"(state {job.state}, attempt {job.attempts})")
        return job

    def _cmd_complete(self, cmd: dict[str, Any]) -> Result:
        job = self._jobs.get(cmd["id"])
        if job is not None and job.state == SUCCEEDED and job.attempts == cmd["attempt"]:
            return {"state": SUCCEEDED, "duplicate": True}
        found = self._running_job(cmd)
        if not isinstance(found, Job):
            return found
        found.result = cmd.get("result")
        found.error = None
        self._finish(found, SUCCEEDED)
        return {"state": SUCCEEDED}

    def _cmd_fail(self, cmd: dict[str, Any]) -> Result:
        found = self._running_job(cmd)
        if not isinstance(found, Job):
            return found
        job = found
        job.error = cmd["error"][:MAX_ERROR_LEN]
        if cmd.get("retryable", True) and job.attempts < job.max_attempts:
            self._release(job)
            delay = backoff_delay_ms(job.id, job.attempts, job.backoff_ms)
            self._make_ready_or_scheduled(job, self.clock_ms + delay if delay > 0 else None)
        else:
            self._finish(job, FAILED)
        return {"state": job.state}

    def _cmd_cancel(self, cmd: dict[str, Any]) -> Result:
        job = self._jobs.get(cmd["id"])
        if job is None:
            return error(NOT_FOUND, f"no job {cmd['id']!r}")
        if job.state in FINAL_STATES:
            return error(CONFLICT, f"job {job.id!r} is already {job.state}")
        previous = job.state
        # A running job keeps worker and attempts: its worker's next heartbeat
        # lists it under "cancel". Its lease heap item is now stale.
        self._finish(job, CANCELLED)
        if previous in (QUEUED, SCHEDULED):
            self._compact_waiting(job.queue)
        return {"state": CANCELLED}

    def _cmd_retry(self, cmd: dict[str, Any]) -> Result:
        job = self._jobs.get(cmd["id"])
        if job is None:
            return error(NOT_FOUND, f"no job {cmd['id']!r}")
        if job.state not in (FAILED, CANCELLED):
            return error(CONFLICT, f"only failed or cancelled jobs can be retried; job {job.id!r} is {job.state}")
        if job.unique_key is not None:
            holder = self._unique.get(job.unique_key)
            if holder is not None and holder != job.id:
                return error(CONFLICT, f"unique_key {job.unique_key!r} is held by live job {holder!r}")
            self._unique[job.unique_key] = job.id
        job.seq = self._take_seq()
        self._by_seq.append((job.seq, job.id))
        job.attempts = 0
        job.lease_expiries = 0
        job.result = None
        job.error = None
        job.worker = None
        job.lease_deadline_ms = None
        job.started_ms = None
        job.finished_ms = None
        job.progress = None
        job.run_at_ms = None
        self._make_ready_or_scheduled(job, None)
        return {"state": QUEUED}

    def _cmd_tick(self, cmd: dict[str, Any]) -> Result:
        now = self.clock_ms
        expired = promoted = purged = 0

        leases = self._leases
        while leases and leases[0][0] <= now:
            item = heapq.heappop(leases)
            if not self._lease_live(item):
                continue
            job = self._jobs[item[3]]
            expired += 1
            job.lease_expiries += 1
            job.error = f"lease expired (attempt {job.attempts}, worker {job.worker})"
            if job.attempts < job.max_attempts:
                self._release(job)
                self._make_ready_or_scheduled(job, None)  # straight back, keeping its seq
            else:
                self._finish(job, FAILED)

        sched = self._scheduled
        while sched and sched[0][0] <= now:
            item = heapq.heappop(sched)
            if not self._sched_live(item):
                continue
            job = self._jobs[item[2]]
            self._move(job, QUEUED)
            self._push_ready(job)
            promoted += 1

        horizon = now - cmd["retention_ms"]
        finished = self._finished
        while finished and finished[0][0] < horizon:
            item = finished.popleft()
            if not self._finished_live(item):
                continue
            job = self._jobs.pop(item[2])
            self._count(job.queue, job.state, -1)
            purged += 1
        return {"expired": expired, "promoted": promoted, "purged": purged}

    # ---------------------------------------------------------------- queries

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return None if job is None else job_view(job)

    def list_jobs(self, state: str | None = None, queue: str | None = None, limit: int = 100,
                  cursor: int | None = None) -> tuple[list[dict[str, Any]], int | None]:
        """Jobs in seq order after `cursor` (an opaque int from the previous page).

        Raises ValueError for bad arguments (the server maps it to BAD_REQUEST).
        """
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        if queue is not None and not isinstance(queue, str):
            raise ValueError("queue must be a string")
        if not is_int(limit) or not 1 <= limit <= LIST_MAX_LIMIT:
            raise ValueError(f"limit must be an integer in 1..{LIST_MAX_LIMIT}")
        if cursor is not None and (not is_int(cursor) or cursor < 0):
            raise ValueError("cursor must be a non-negative integer from a previous page")
        index = self._by_seq
        start = 0 if cursor is None else bisect_right(index, cursor, key=lambda item: item[0])
        out: list[dict[str, Any]] = []
        jobs = self._jobs
        end = min(len(index), start + LIST_SCAN_BUDGET)
        for pos in range(start, end):
            seq, job_id = index[pos]
            job = jobs.get(job_id)
            if job is None or job.seq != seq:
                continue
            if (state is None or job.state == state) and (queue is None or job.queue == queue):
                out.append(job_view(job))
                if len(out) == limit:
                    return out, (seq if pos + 1 < len(index) else None)
        if end < len(index):
            return out, index[end - 1][0]
        return out, None

    def stats(self) -> dict[str, Any]:
        return {
            "jobs": dict(self._counts),
            "queues": {q: dict(self._queue_counts[q]) for q in sorted(self._queue_counts)},
            "clock_ms": self.clock_ms,
            "live": self.live_count(),
        }

    def has_ready(self, queues: list[str]) -> bool:
        counts = self._queue_counts
        return any(counts[q][QUEUED] > 0 for q in queues if q in counts)

    def next_due_ms(self) -> int | None:
        """Earliest scheduled run_at or lease deadline (tops are live after _settle)."""
        due = [h[0][0] for h in (self._scheduled, self._leases) if h]
        return min(due) if due else None

    def live_count(self) -> int:
        return len(self._jobs) - sum(self._counts[s] for s in FINAL_STATES)

    # --------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, Any]:
        """Plain data: the jobs as positional rows in seq order, no index layout."""
        jobs = self._jobs
        rows = [job_to_row(j) for s, i in self._by_seq if (j := jobs.get(i)) is not None and j.seq == s]
        return {
            "format": SNAPSHOT_FORMAT,
            "clock_ms": self.clock_ms,
            "next_seq": self._next_seq,
            "job_fields": list(JOB_FIELDS),
            "jobs": rows,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace all state with `snapshot`'s; raises ValueError (state untouched) if invalid."""
        if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported snapshot format (expected {SNAPSHOT_FORMAT})")
        if list(snapshot.get("job_fields") or ()) != list(JOB_FIELDS):
            raise ValueError("snapshot job_fields do not match this version's job layout")
        clock_ms, next_seq, rows = snapshot.get("clock_ms"), snapshot.get("next_seq"), snapshot.get("jobs")
        if not (is_int(clock_ms) and is_int(next_seq) and isinstance(rows, (list, tuple))):
            raise ValueError("snapshot needs integer clock_ms, next_seq and a jobs list")
        fresh = JobMachine()
        fresh.clock_ms = clock_ms
        fresh._next_seq = next_seq
        last_seq = 0
        finished: list[tuple[int, int, str]] = []
        for row in rows:
            job = job_from_row(row)
            if job.state not in STATES or not is_int(job.seq) or job.seq <= last_seq or job.seq >= next_seq:
                raise ValueError(f"snapshot job {job.id!r}: bad state or seq out of order")
            if job.id in fresh._jobs:
                raise ValueError(f"snapshot holds job {job.id!r} twice")
            last_seq = job.seq
            job.type = sys.intern(job.type)
            job.queue = sys.intern(job.queue)
            if job.worker is not None:
                job.worker = sys.intern(job.worker)
            fresh._jobs[job.id] = job
            fresh._by_seq.append((job.seq, job.id))
            fresh._count(job.queue, job.state, +1)
            if job.state in FINAL_STATES:
                if not is_int(job.finished_ms):
                    raise ValueError(f"snapshot job {job.id!r}: final without finished_ms")
                finished.append((job.finished_ms, job.seq, job.id))
                continue
            if job.unique_key is not None:
                fresh._unique[job.unique_key] = job.id
            if job.state == QUEUED:
                fresh._ready.setdefault(job.queue, []).append((-job.priority, job.seq, job.id))
            elif job.state == SCHEDULED:
                fresh._scheduled.append((job.run_at_ms, job.seq, job.id))
            elif job.state == RUNNING:
                fresh._leases.append((job.lease_deadline_ms, job.seq, job.attempts, job.id))
        for heap in fresh._ready.values():
            heapq.heapify(heap)
        heapq.heapify(fresh._scheduled)
        heapq.heapify(fresh._leases)
        finished.sort()
        fresh._finished = deque(finished)
        # Swap in only once everything was built: a bad snapshot leaves us untouched.
        for name in ("clock_ms", "_next_seq", "_jobs", "_by_seq", "_ready", "_scheduled", "_leases",
                     "_finished", "_unique", "_counts", "_queue_counts"):
            setattr(self, name, getattr(fresh, name))

    def digest(self) -> str:
        """sha256 hex of the canonical snapshot encoding; equal replicas, equal digests."""
        return hashlib.sha256(msgpack.packb(self.to_snapshot(), use_bin_type=True)).hexdigest()

    def check_invariants(self) -> None:
        """O(n) self-check of every index against `_jobs` (tests and debugging only).

        Raises AssertionError naming the first broken invariant.
        """
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise AssertionError(what)

        counts = {s: 0 for s in STATES}
        per_queue: dict[str, dict[str, int]] = {}
        for job in self._jobs.values():
            counts[job.state] += 1
            per_queue.setdefault(job.queue, {s: 0 for s in STATES})[job.state] += 1
            need(job.seq < self._next_seq, f"{job.id}: seq {job.seq} >= next_seq")
            need(0 <= job.attempts <= job.max_attempts, f"{job.id}: attempts {job.attempts} out of range")
            if job.state in FINAL_STATES:
                need(job.finished_ms is not None, f"{job.id}: final without finished_ms")
            else:
                need(job.finished_ms is None, f"{job.id}: live with finished_ms")
            if job.state == RUNNING:
                need(job.worker is not None and job.lease_deadline_ms is not None, f"{job.id}: running without lease")
            else:
                need(job.lease_deadline_ms is None, f"{job.id}: lease deadline while {job.state}")
            if job.unique_key is not None and job.state not in FINAL_STATES:
                need(self._unique.get(job.unique_key) == job.id, f"{job.id}: unique_key not indexed")
        need(counts == self._counts, f"state counters {self._counts} != scan {counts}")
        need(per_queue == self._queue_counts, "per-queue counters differ from a scan")
        for key, job_id in self._unique.items():
            job = self._jobs.get(job_id)
            need(job is not None and job.unique_key == key and job.state not in FINAL_STATES,
                 f"unique index entry {key!r} -> {job_id!r} is stale")
        live_ready = {i[2] for h in self._ready.values() for i in h if self._ready_live(i)}
        live_sched = {i[2] for i in self._scheduled if self._sched_live(i)}
        live_leases = {i[3] for i in self._leases if self._lease_live(i)}
        for job in self._jobs.values():
            if job.state == QUEUED:
                need(job.id in live_ready and any(i[2] == job.id for i in self._ready.get(job.queue, ())),
                     f"{job.id}: queued but not in its ready heap")
            need((job.state == SCHEDULED) == (job.id in live_sched), f"{job.id}: scheduled heap disagrees")
            need((job.state == RUNNING) == (job.id in live_leases), f"{job.id}: lease heap disagrees")
        need(all(self._sched_live(self._scheduled[0]) for _ in (1,) if self._scheduled), "stale scheduled top")
        need(all(self._lease_live(self._leases[0]) for _ in (1,) if self._leases), "stale lease top")
        seqs = [s for s, _ in self._by_seq]
        need(seqs == sorted(seqs), "_by_seq out of order")
        indexed = {(s, i) for s, i in self._by_seq}
        need(all((j.seq, j.id) in indexed for j in self._jobs.values()), "a job is missing from _by_seq")
