"""The job table: the jobs themselves, the log clock, and the indexes every part reads.

Rows and indexes (all derived from `jobs` except `clock_ms` and `next_seq`):

- `jobs`: id -> Job. The only primary job data, with `clock_ms` (the maximum
  `now_ms` seen, never going backwards) and `next_seq`. Other parts hold this
  dict by reference; nothing ever rebinds it.
- `by_seq`: [(seq, id)] in increasing seq, append-only (seqs are monotonic);
  lazy: an entry is stale when the job is gone or has another seq (retried).
  Serves `list_jobs` paging (bisect on the cursor) and snapshot order.
- `finished`: deque of (finished_ms, seq, id) in finishing order, which is
  finished_ms order because the clock never goes backwards; lazy (a retried
  job's old item is stale). `purge` (tick) drops from its left end.
- `unique`: unique_key -> id, for live (non-final) jobs only.
- `counts[state]`, `queue_counts[queue][state]`: kept on every transition so
  `stats` is O(queues). A queue with no jobs left is dropped.
- `held_bytes`: the sum over `jobs` of `args_bytes + outcome_bytes` (the sizes
  of the msgpack encodings of args, and of result + error), kept on every
  change of those fields so the leader's admission check is O(1). Every held
  job, final ones included, counts until retention purges it. The sizes are
  derived (not in snapshot rows).

Invariants (`check_invariants`): counters, per-queue counters and held bytes
equal a scan; a job's seq < next_seq and 0 <= attempts <= max_attempts; a job
has `finished_ms` iff it is final, and every final job has a live `finished`
item; a live job's unique_key maps to it and every `unique` entry names a live
job holding that key; `by_seq` is sorted and lists every job.

Snapshot section: `clock_ms`, `next_seq`, `job_fields` and the jobs as
positional rows in seq order (no index layout).
"""
from __future__ import annotations

import sys
from bisect import bisect_right
from collections import deque
from typing import Any

import msgpack

from replication.events import JobEvents
from replication.model import (
    CANCELLED,
    DEFAULT_BACKOFF_MS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_LEASE_EXPIRIES,
    DEFAULT_QUEUE,
    FAILED,
    FINAL_STATES,
    JOB_FIELDS,
    JOB_FIELDS_V1,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    Job,
    is_int,
    job_from_row,
    job_to_row,
    job_view,
    to_milli,
)
from replication.state.check import need

LIST_MAX_LIMIT = 10_000
# list_jobs examines at most this many index entries per call (it runs under the
# adapter's lock, on the node's event loop, which also ticks Raft); a filtered
# page may come back short with a cursor to go on. 20,000 entries take ~10-20 ms
# on a loaded 2-core box (200,000 stalled the loop for ~190 ms).
LIST_SCAN_BUDGET = 20_000
# For held-byte sizes: a reused packer costs 0.2 us a call, packb 0.5 us. Only
# apply and restore use it, both under the adapter's lock (autoreset: it keeps
# no state between calls, and a failed pack leaves it empty).
_pack = msgpack.Packer(use_bin_type=True).pack


def size_of(value: Any) -> int:
    """Bytes of `value`'s msgpack encoding (0 for None: an absent result or
    error holds nothing). Deterministic: same value, same bytes, every replica."""
    return 0 if value is None else len(_pack(value))


def _same_value(a: Any, b: Any) -> bool:
    """Equal as msgpack data: types kept apart (1, 1.0 and True differ; a list
    and a tuple do not: both are an array), map key order ignored."""
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same_value, a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_value(v, b[k]) for k, v in a.items())
    return bool(a == b) or (a != a and b != b)  # NaN: the same spec, sent again


def spec_differences(job: Job, spec: dict[str, Any]) -> list[str]:
    """The JobSpec fields in which `spec` asks for another job than `job`
    (empty: the same job, so a submit of it is an idempotent repeat).

    Each field is read with the default a new job would get (Lifecycle.submit_one),
    so leaving out a field equals sending its default. When the job may run
    (delay_ms, run_at_ms) is not compared: a delay is relative to the entry
    that applied it, so a client's retry of the very same submit asks for
    another time. Only for a submit whose id exists, off the fast path."""
    deps = spec.get("depends_on")
    resources = spec.get("resources")
    wanted: tuple[tuple[str, Any, Any], ...] = (
        ("type", spec["type"], job.type),
        ("args", spec["args"] if "args" in spec else {}, job.args),
        ("queue", _or(spec.get("queue"), DEFAULT_QUEUE), job.queue),
        ("priority", _or(spec.get("priority"), 0), job.priority),
        ("max_attempts", _or(spec.get("max_attempts"), DEFAULT_MAX_ATTEMPTS), job.max_attempts),
        ("timeout_ms", spec.get("timeout_ms"), job.timeout_ms),
        ("backoff_ms", _or(spec.get("backoff_ms"), DEFAULT_BACKOFF_MS), job.backoff_ms),
        ("unique_key", spec.get("unique_key"), job.unique_key),
        ("depends_on", list(deps) if deps else None, job.depends_on),
        ("resources", None if resources is None else [to_milli(resources.get("cpu", 0)),
                                                      resources.get("mem_mb", 0)], job.resources),
        ("max_lease_expiries", _or(spec.get("max_lease_expiries"), DEFAULT_MAX_LEASE_EXPIRIES),
         job.max_lease_expiries),
    )
    return [name for name, asked, held in wanted if not _same_value(asked, held)]


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


class JobTable:
    """The jobs, their counters and the clock; see the module docstring."""

    def __init__(self) -> None:
        self.clock_ms: int = 0
        self.next_seq: int = 1
        self.jobs: dict[str, Job] = {}
        self.by_seq: list[tuple[int, str]] = []
        self.finished: deque[tuple[int, int, str]] = deque()
        self.unique: dict[str, str] = {}
        self.counts: dict[str, int] = {s: 0 for s in STATES}
        self.queue_counts: dict[str, dict[str, int]] = {}
        self.held_bytes: int = 0
        # Not state: counts of applied events for metrics (replication/events.py).
        self.events = JobEvents()
        self.clear_touched()

    def clear_touched(self) -> None:
        # Not state: a record of the last applied entry, for the node's long
        # polls (cluster/waiters.py). queue -> jobs that became queued there or
        # left `running` (a max_running slot freed); ids whose state changed.
        self.touched_queues: dict[str, int] = {}
        self.touched_jobs: set[str] = set()

    # ------------------------------------------------------------ bookkeeping

    def count(self, queue: str, state: str, delta: int) -> None:
        self.counts[state] += delta
        per_queue = self.queue_counts.get(queue)
        if per_queue is None:
            per_queue = self.queue_counts[queue] = {s: 0 for s in STATES}
        per_queue[state] += delta
        if delta < 0 and not any(per_queue.values()):
            del self.queue_counts[queue]

    def move(self, job: Job, state: str) -> None:
        """Every change of a job's state goes through here (counters, touched)."""
        old = job.state
        self.count(job.queue, old, -1)
        job.state = state
        self.count(job.queue, state, +1)
        self.touched_jobs.add(job.id)
        if state == QUEUED or old == RUNNING:
            touched = self.touched_queues
            touched[job.queue] = touched.get(job.queue, 0) + 1

    def resize(self, job: Job) -> None:
        """After `job.result` or `job.error` changed: keep `held_bytes` exact."""
        result, err = job.result, job.error  # inline size_of: this runs on every finish
        size = (0 if result is None else len(_pack(result))) + (0 if err is None else len(_pack(err)))
        self.held_bytes += size - job.outcome_bytes
        job.outcome_bytes = size

    def take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq = seq + 1
        return seq

    def add(self, job: Job) -> None:
        """Insert a new job, counted in its (placeholder) state."""
        job.args_bytes = size_of(job.args)
        self.held_bytes += job.args_bytes
        self.jobs[job.id] = job
        self.by_seq.append((job.seq, job.id))
        if job.unique_key is not None:
            self.unique[job.unique_key] = job.id
        self.count(job.queue, job.state, +1)

    def reseq(self, job: Job) -> None:
        """A retried final job: a new seq (the end of the FIFO) and its unique key back."""
        if job.unique_key is not None:
            self.unique[job.unique_key] = job.id
        job.seq = self.take_seq()
        self.by_seq.append((job.seq, job.id))

    def finish_one(self, job: Job, state: str) -> None:
        """Make `job` final (its dependents are the lifecycle's business)."""
        self.move(job, state)
        job.finished_ms = self.clock_ms
        job.lease_deadline_ms = None
        if job.unique_key is not None and self.unique.get(job.unique_key) == job.id:
            del self.unique[job.unique_key]
        self.finished.append((job.finished_ms, job.seq, job.id))
        self.resize(job)
        self.events.finished_job(job, state)

    def finished_live(self, item: tuple[int, int, str]) -> bool:
        job = self.jobs.get(item[2])
        return (job is not None and job.state in FINAL_STATES and job.seq == item[1]
                and job.finished_ms == item[0])

    def purge(self, horizon_ms: int) -> int:
        """Drop final jobs that finished before `horizon_ms` (retention); how many."""
        purged = 0
        finished = self.finished
        while finished and finished[0][0] < horizon_ms:
            item = finished.popleft()
            if not self.finished_live(item):
                continue
            job = self.jobs.pop(item[2])
            self.count(job.queue, job.state, -1)
            self.held_bytes -= job.args_bytes + job.outcome_bytes
            purged += 1
        return purged

    def settle(self) -> None:
        """Compact `by_seq` once stale entries dominate (retries, purges)."""
        if len(self.by_seq) > 2 * len(self.jobs) + 1024:
            jobs = self.jobs
            self.by_seq = [(s, i) for s, i in self.by_seq if (j := jobs.get(i)) is not None and j.seq == s]

    # ---------------------------------------------------------------- queries

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        return None if job is None else job_view(job)

    def list_jobs(self, state: str | None = None, queue: str | None = None, limit: int = 100,
                  cursor: int | None = None, schedule: str | None = None,
                  ) -> tuple[list[dict[str, Any]], int | None]:
        """Jobs in seq order after `cursor` (an opaque int from the previous page).

        Raises ValueError for bad arguments (the server maps it to BAD_REQUEST).
        """
        if state is not None and state not in STATES:
            raise ValueError(f"unknown state {state!r}; expected one of {', '.join(STATES)}")
        if queue is not None and not isinstance(queue, str):
            raise ValueError("queue must be a string")
        if schedule is not None and not isinstance(schedule, str):
            raise ValueError("schedule must be a string")
        if not is_int(limit) or not 1 <= limit <= LIST_MAX_LIMIT:
            raise ValueError(f"limit must be an integer in 1..{LIST_MAX_LIMIT}")
        if cursor is not None and (not is_int(cursor) or cursor < 0):
            raise ValueError("cursor must be a non-negative integer from a previous page")
        index = self.by_seq
        start = 0 if cursor is None else bisect_right(index, cursor, key=lambda item: item[0])
        out: list[dict[str, Any]] = []
        jobs = self.jobs
        end = min(len(index), start + LIST_SCAN_BUDGET)
        for pos in range(start, end):
            seq, job_id = index[pos]
            job = jobs.get(job_id)
            if job is None or job.seq != seq:
                continue
            if ((state is None or job.state == state) and (queue is None or job.queue == queue)
                    and (schedule is None or job.schedule == schedule)):
                out.append(job_view(job))
                if len(out) == limit:
                    return out, (seq if pos + 1 < len(index) else None)
        if end < len(index):
            return out, index[end - 1][0]
        return out, None

    def stats(self) -> dict[str, Any]:
        return {
            "jobs": dict(self.counts),
            "queues": {q: dict(self.queue_counts[q]) for q in sorted(self.queue_counts)},
            "clock_ms": self.clock_ms,
            "live": self.live_count(),
            "held": len(self.jobs),
            "held_bytes": self.held_bytes,
        }

    def live_count(self) -> int:
        """Jobs not in a final state. Safe to call WITHOUT the lock (the
        server's admission check does): it only reads an int per state from a
        dict whose keys never change, so a racing apply makes it stale, never wrong-typed."""
        counts = self.counts
        return len(self.jobs) - counts[SUCCEEDED] - counts[FAILED] - counts[CANCELLED]

    # --------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, Any]:
        """This part's section of the snapshot (the map's keys, in their order)."""
        jobs = self.jobs
        rows = [job_to_row(j) for s, i in self.by_seq if (j := jobs.get(i)) is not None and j.seq == s]
        return {"clock_ms": self.clock_ms, "next_seq": self.next_seq, "job_fields": list(JOB_FIELDS), "jobs": rows}

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], fmt: int) -> JobTable:
        """The table a replica that replayed the log would hold; ValueError if invalid."""
        fields = JOB_FIELDS_V1 if fmt == 1 else JOB_FIELDS
        if list(snapshot.get("job_fields") or ()) != list(fields):
            raise ValueError("snapshot job_fields do not match this version's job layout")
        clock_ms, next_seq, rows = snapshot.get("clock_ms"), snapshot.get("next_seq"), snapshot.get("jobs")
        if not (is_int(clock_ms) and is_int(next_seq) and isinstance(rows, (list, tuple))):
            raise ValueError("snapshot needs integer clock_ms, next_seq and a jobs list")
        table = cls()
        table.clock_ms = clock_ms
        table.next_seq = next_seq
        jobs = table.jobs
        last_seq = 0
        finished: list[tuple[int, int, str]] = []
        for row in rows:
            job = job_from_row(row, len(fields))
            if job.state not in STATES or not is_int(job.seq) or job.seq <= last_seq or job.seq >= next_seq:
                raise ValueError(f"snapshot job {job.id!r}: bad state or seq out of order")
            if job.id in jobs:
                raise ValueError(f"snapshot holds job {job.id!r} twice")
            last_seq = job.seq
            job.args_bytes = size_of(job.args)
            job.outcome_bytes = size_of(job.result) + size_of(job.error)
            table.held_bytes += job.args_bytes + job.outcome_bytes
            job.type = sys.intern(job.type)
            job.queue = sys.intern(job.queue)
            if job.worker is not None:
                job.worker = sys.intern(job.worker)
            jobs[job.id] = job
            table.by_seq.append((job.seq, job.id))
            table.count(job.queue, job.state, +1)
            if job.state in FINAL_STATES:
                if not is_int(job.finished_ms):
                    raise ValueError(f"snapshot job {job.id!r}: final without finished_ms")
                finished.append((job.finished_ms, job.seq, job.id))
            elif job.unique_key is not None:
                table.unique[job.unique_key] = job.id
        finished.sort()
        table.finished = deque(finished)
        return table

    # ------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Counters, sizes, the unique index and `by_seq` against a scan of `jobs`."""
        counts = {s: 0 for s in STATES}
        per_queue: dict[str, dict[str, int]] = {}
        held_bytes = 0
        for job in self.jobs.values():
            counts[job.state] += 1
            need(job.args_bytes == size_of(job.args), f"{job.id}: args_bytes is stale")
            need(job.outcome_bytes == size_of(job.result) + size_of(job.error), f"{job.id}: outcome_bytes is stale")
            held_bytes += job.args_bytes + job.outcome_bytes
            per_queue.setdefault(job.queue, {s: 0 for s in STATES})[job.state] += 1
            need(job.seq < self.next_seq, f"{job.id}: seq {job.seq} >= next_seq")
            need(0 <= job.attempts <= job.max_attempts, f"{job.id}: attempts {job.attempts} out of range")
            if job.state in FINAL_STATES:
                need(job.finished_ms is not None, f"{job.id}: final without finished_ms")
            else:
                need(job.finished_ms is None, f"{job.id}: live with finished_ms")
            if job.unique_key is not None and job.state not in FINAL_STATES:
                need(self.unique.get(job.unique_key) == job.id, f"{job.id}: unique_key not indexed")
        need(counts == self.counts, f"state counters {self.counts} != scan {counts}")
        need(held_bytes == self.held_bytes, f"held bytes {self.held_bytes} != scan {held_bytes}")
        need(per_queue == self.queue_counts, "per-queue counters differ from a scan")
        for key, job_id in self.unique.items():
            job = self.jobs.get(job_id)
            need(job is not None and job.unique_key == key and job.state not in FINAL_STATES,
                 f"unique index entry {key!r} -> {job_id!r} is stale")
        seqs = [s for s, _ in self.by_seq]
        need(seqs == sorted(seqs), "by_seq out of order")
        indexed = {(s, i) for s, i in self.by_seq}
        need(all((j.seq, j.id) in indexed for j in self.jobs.values()), "a job is missing from by_seq")
        live_finished = {item[2] for item in self.finished if self.finished_live(item)}
        need(live_finished == {j.id for j in self.jobs.values() if j.state in FINAL_STATES},
             "finished disagrees with the final jobs")
