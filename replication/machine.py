"""The replicated job state machine: pure, deterministic, driven by log entries.

`JobMachine.apply_entry(entry)` is the only way to change state. Every replica
applies the same entries in the same order and so holds the same state; that is
the whole of the replication guarantee, so this module reads no clock, no
randomness, no environment and no disk, and never lets dict/set iteration order
decide a result. Time comes only from each entry's `now_ms` (stamped by the
leader); `clock_ms` is the maximum seen so far and never goes backwards.

Threads: the Raft adapter calls `apply_entry` on its loop thread while holding
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
- `_held_bytes`: the sum over `_jobs` of `args_bytes + outcome_bytes` (the
  sizes of the msgpack encodings of args, and of result + error), kept on
  every change of those fields so the leader's admission check is O(1). Every
  held job, final ones included, counts until retention purges it; the job
  count held is `len(_jobs)`. The sizes are derived (not in snapshot rows).
- `_dependents`: parent id -> [child ids] for `pending` children waiting on a
  live parent; lazy (a child that left `pending` is skipped; a child may be
  listed twice after a retry, which is harmless because only a `pending`
  child is acted on). Popped when the parent becomes final: success releases
  each child whose deps are all done (a dep is done when it succeeded or was
  purged: a purged failed dep would already have cancelled its children);
  failure or cancellation cancels the children, transitively, iteratively.
- `_limits[queue]`: primary data: per-queue `max_running` and a token bucket
  (`rate_milli` = thousandths of a job per second, `tokens` in millionths of a
  job, `refill_ms`) refilled in log time, so every replica grants the same.
- `_schedules[name]`: primary data: cron/interval schedules. The leader
  computes fire times (croniter, outside apply) and proposes `fire`; the
  machine accepts a firing only if `fire_ms` > `last_fire_ms`, so a failover
  can neither double nor re-run one. `_fire_heap`: (next_fire_ms, name) of
  unpaused schedules; lazy, live iff the schedule has that next_fire_ms and is
  not paused.
- `_workers[name]`: primary data: the worker registry (queues, capacity,
  lease_ms, last_seen_ms, `running` = ids it was granted or last reported;
  filtered by job state when read). Dropped by `tick` when unseen for more
  than WORKER_GONE_LEASES x its lease_ms.

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

Snapshot format 2 adds job fields (depends_on, schedule, resources,
max_lease_expiries) and the limits, schedules and workers; `restore` still
reads format 1.
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
    DEFAULT_MAX_LEASE_EXPIRIES,
    JOB_FIELDS_V1,
    MAX_REASON_LEN,
    MAX_SCHEDULES,
    PENDING,
    to_milli,
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

SNAPSHOT_FORMAT = 2
READABLE_FORMATS = (1, 2)
LEASE_SCAN_LIMIT = 256     # non-fitting ready jobs one lease may step over (then it stops)
WORKER_GONE_LEASES = 10    # a worker unseen for this many of its lease_ms is dropped
JOB_UNIT = 1_000_000       # one job in token-bucket units (millionths)
ENTRY_VERSION = 1
LIST_MAX_LIMIT = 10_000
# list_jobs examines at most this many index entries per call (it runs under the
# adapter's lock, on the node's event loop, which also ticks Raft); a filtered
# page may come back short with a cursor to go on. 20,000 entries take ~10-20 ms
# on a loaded 2-core box (200,000 stalled the loop for ~190 ms).
LIST_SCAN_BUDGET = 20_000
_COMPACT_SLACK = 64
# For held-byte sizes: a reused packer costs 0.2 us a call, packb 0.5 us. Only
# apply and restore use it, both under the adapter's lock (autoreset: it keeps
# no state between calls, and a failed pack leaves it empty).
_pack = msgpack.Packer(use_bin_type=True).pack

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


def _dep_reason(parent: Job) -> str:
    """Why a dependent was cancelled; nests along a chain, bounded in length."""
    tail = f": {parent.error}" if parent.error else ""
    return f"dependency {parent.id} {parent.state}{tail}"[:MAX_REASON_LEN]


class JobMachine:
    """All replicated job state, changed only by `apply_entry` (docs/contracts.md section 1)."""

    def __init__(self) -> None:
        self._init_state()
        self._handlers: dict[str, Callable[[dict[str, Any]], Result]] = {
            "submit": self._cmd_submit,
            "submit_many": self._cmd_submit_many,
            "lease": self._cmd_lease,
            "heartbeat": self._cmd_heartbeat,
            "complete": self._cmd_complete,
            "complete_many": self._cmd_complete_many,
            "fail": self._cmd_fail,
            "cancel": self._cmd_cancel,
            "retry": self._cmd_retry,
            "tick": self._cmd_tick,
            "requeue_failed": self._cmd_requeue_failed,
            "queue_limit": self._cmd_queue_limit,
            "schedule_add": self._cmd_schedule_add,
            "schedule_remove": self._cmd_schedule_remove,
            "schedule_pause": self._cmd_schedule_pause,
            "schedule_resume": self._cmd_schedule_resume,
            "fire": self._cmd_fire,
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
        self._dependents: dict[str, list[str]] = {}
        self._limits: dict[str, dict[str, Any]] = {}
        self._schedules: dict[str, dict[str, Any]] = {}
        self._fire_heap: list[tuple[int, str]] = []
        self._workers: dict[str, dict[str, Any]] = {}
        self._held_bytes: int = 0
        self._clear_touched()

    @staticmethod
    def _size(value: Any) -> int:
        """Bytes of `value`'s msgpack encoding (0 for None: an absent result or
        error holds nothing). Deterministic: same value, same bytes, every replica."""
        return 0 if value is None else len(_pack(value))

    def _clear_touched(self) -> None:
        # Not state: a record of the last applied entry, for the node's long
        # polls (cluster/waiters.py). queue -> jobs that became queued there or
        # left `running` (a max_running slot freed); ids whose state changed.
        self.touched_queues: dict[str, int] = {}
        self.touched_jobs: set[str] = set()

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
        self._clear_touched()
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
        old = job.state
        self._count(job.queue, old, -1)
        job.state = state
        self._count(job.queue, state, +1)
        self.touched_jobs.add(job.id)
        if state == QUEUED or old == RUNNING:
            touched = self.touched_queues
            touched[job.queue] = touched.get(job.queue, 0) + 1

    def _resize(self, job: Job) -> None:
        """After `job.result` or `job.error` changed: keep `_held_bytes` exact."""
        result, err = job.result, job.error  # inline _size: this runs on every finish
        size = (0 if result is None else len(_pack(result))) + (0 if err is None else len(_pack(err)))
        self._held_bytes += size - job.outcome_bytes
        job.outcome_bytes = size

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

    def _fire_live(self, item: tuple[int, str]) -> bool:
        sched = self._schedules.get(item[1])
        return sched is not None and not sched["paused"] and sched["next_fire_ms"] == item[0]

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
        """Make `job` final, then settle its dependents (iteratively, transitively)."""
        self._finish_one(job, state)
        if job.id not in self._dependents:
            return
        stack = [job]
        while stack:
            parent = stack.pop()
            for child_id in self._dependents.pop(parent.id, ()):
                child = self._jobs.get(child_id)
                if child is None or child.state != PENDING:
                    continue  # stale entry: the child moved on already
                if parent.state == SUCCEEDED:
                    if self._deps_done(child):
                        self._make_ready_or_scheduled(child, child.run_at_ms)
                else:
                    child.error = _dep_reason(parent)
                    self._finish_one(child, CANCELLED)
                    stack.append(child)

    def _finish_one(self, job: Job, state: str) -> None:
        self._move(job, state)
        job.finished_ms = self.clock_ms
        job.lease_deadline_ms = None
        if job.unique_key is not None and self._unique.get(job.unique_key) == job.id:
            del self._unique[job.unique_key]
        self._finished.append((job.finished_ms, job.seq, job.id))
        self._resize(job)

    def _deps_done(self, job: Job) -> bool:
        """Every dependency succeeded (or succeeded and was purged since). O(deps)."""
        jobs = self._jobs
        for dep_id in job.depends_on or ():
            dep = jobs.get(dep_id)
            if dep is not None and dep.state != SUCCEEDED:
                return False
        return True

    def _enter(self, job: Job) -> None:
        """Place a new or retried job: pending on its deps, cancelled by a failed
        dep, else queued or scheduled (at `run_at_ms`). `job` is counted as QUEUED."""
        if job.depends_on:
            jobs = self._jobs
            waiting: list[str] = []
            for dep_id in job.depends_on:
                dep = jobs.get(dep_id)
                if dep is None or dep.state == SUCCEEDED:
                    continue
                if dep.state in (FAILED, CANCELLED):
                    job.error = _dep_reason(dep)
                    self._finish_one(job, CANCELLED)
                    return
                waiting.append(dep_id)
            if waiting:
                self._move(job, PENDING)
                for dep_id in waiting:
                    self._dependents.setdefault(dep_id, []).append(job.id)
                return
        self._make_ready_or_scheduled(job, job.run_at_ms)

    def _settle(self) -> None:
        """Drop stale heap tops (so next_due_ms is a pure peek) and compact indexes."""
        sched = self._scheduled
        while sched and not self._sched_live(sched[0]):
            heapq.heappop(sched)
        leases = self._leases
        while leases and not self._lease_live(leases[0]):
            heapq.heappop(leases)
        fires = self._fire_heap
        while fires and not self._fire_live(fires[0]):
            heapq.heappop(fires)
        if len(fires) > 2 * len(self._schedules) + _COMPACT_SLACK:
            self._fire_heap = [i for i in fires if self._fire_live(i)]
            heapq.heapify(self._fire_heap)
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

    def _submit_one(self, spec: dict[str, Any], schedule: str | None = None) -> Result:
        existing = self._jobs.get(spec["id"])
        if existing is None:
            unique_key = spec.get("unique_key")
            if unique_key is not None and unique_key in self._unique:
                existing = self._jobs[self._unique[unique_key]]
        if existing is not None:
            return {"id": existing.id, "created": False, "state": existing.state}
        deps = spec.get("depends_on")
        for dep_id in deps or ():
            if dep_id not in self._jobs:
                return error(BAD_REQUEST, f"job {spec['id']!r} depends on unknown job {dep_id!r}")

        now = self.clock_ms
        due: int | None = spec.get("run_at_ms")
        delay = spec.get("delay_ms")
        if delay is not None:
            due = max(due if due is not None else 0, now + delay)
        queue = spec.get("queue")
        max_attempts = spec.get("max_attempts")
        backoff = spec.get("backoff_ms")
        priority = spec.get("priority")
        resources = spec.get("resources")
        max_expiries = spec.get("max_lease_expiries")
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
            state=QUEUED,  # placeholder: counted here, moved by _enter below
            created_ms=now,
            run_at_ms=due,
            depends_on=list(deps) if deps else None,
            schedule=schedule,
            resources=None if resources is None else [to_milli(resources.get("cpu", 0)),
                                                      resources.get("mem_mb", 0)],
            max_lease_expiries=max_expiries if max_expiries is not None else DEFAULT_MAX_LEASE_EXPIRIES,
        )
        job.args_bytes = self._size(job.args)
        self._held_bytes += job.args_bytes
        self._jobs[job.id] = job
        self._by_seq.append((job.seq, job.id))
        if job.unique_key is not None:
            self._unique[job.unique_key] = job.id
        self._count(job.queue, QUEUED, +1)  # _enter's _move subtracts it again
        self._enter(job)
        return {"id": job.id, "created": True, "state": job.state}

    def _cmd_submit(self, cmd: dict[str, Any]) -> Result:
        return self._submit_one(cmd["job"])

    def _cmd_submit_many(self, cmd: dict[str, Any]) -> Result:
        """A batch, possibly a DAG of jobs depending on each other.

        Checked as a whole before anything is applied (unknown dependencies and
        cycles are BAD_REQUEST), then submitted in a topological order that
        keeps the batch order among independent jobs; results follow the batch.
        """
        specs: list[dict[str, Any]] = cmd["jobs"]
        jobs = self._jobs
        first: dict[str, int] = {}  # id of a new job -> its first index in the batch
        for i, spec in enumerate(specs):
            if spec["id"] not in jobs:
                first.setdefault(spec["id"], i)
        if not any(spec.get("depends_on") for spec in specs):
            return {"results": [self._submit_one(spec) for spec in specs]}
        # edges: a batch job must be submitted after the batch jobs it depends on
        # (and a repeated id after its first occurrence, which wins).
        after: list[list[int]] = [[] for _ in specs]
        blockers = [0] * len(specs)
        for i, spec in enumerate(specs):
            if spec["id"] in jobs:
                continue  # an existing job is returned as it is; its deps are moot
            parents = [first[d] for d in spec.get("depends_on") or () if d in first]
            if first[spec["id"]] != i:
                parents.append(first[spec["id"]])
            for dep_id in spec.get("depends_on") or ():
                if dep_id not in jobs and dep_id not in first:
                    return error(BAD_REQUEST, f"jobs[{i}] ({spec['id']!r}) depends on unknown job {dep_id!r}")
            for p in parents:
                after[p].append(i)
                blockers[i] += 1
        ready = [i for i in range(len(specs)) if blockers[i] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for j in after[i]:
                blockers[j] -= 1
                if blockers[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) < len(specs):
            stuck = sorted({specs[i]["id"] for i in range(len(specs)) if blockers[i] > 0})
            return error(BAD_REQUEST, f"dependency cycle among jobs {', '.join(map(repr, stuck[:10]))}")
        results: list[Result] = [{} for _ in specs]
        for i in order:
            results[i] = self._submit_one(specs[i])
        return {"results": results}

    # -- leasing

    def _refill(self, limit: dict[str, Any], now: int) -> int:
        """Tokens (millionths of a job) in `limit`'s bucket at `now`, without storing."""
        rate = limit["rate_milli"]
        if rate is None:
            return 0
        cap = max(JOB_UNIT, rate * 1000)  # a burst of one second's worth, at least one job
        elapsed = max(now - limit["refill_ms"], 0)
        return min(cap, limit["tokens"] + elapsed * rate)  # rate_milli * ms == millionths

    def _allowance(self, queue: str, now: int, *, commit: bool) -> int | None:
        """How many more jobs `queue` may start now (None = unlimited)."""
        limit = self._limits.get(queue)
        if limit is None:
            return None
        allow: int | None = None
        if limit["max_running"] is not None:
            running = self._queue_counts.get(queue, {}).get(RUNNING, 0)
            allow = max(limit["max_running"] - running, 0)
        if limit["rate_milli"] is not None:
            tokens = self._refill(limit, now)
            if commit:
                limit["tokens"], limit["refill_ms"] = tokens, now
            by_rate = tokens // JOB_UNIT
            allow = by_rate if allow is None else min(allow, by_rate)
        return allow

    def _cmd_lease(self, cmd: dict[str, Any]) -> Result:
        worker = sys.intern(cmd["worker"])
        lease_ms: int = cmd["lease_ms"]
        want: int = cmd["max"]
        now = self.clock_ms
        capacity = cmd.get("capacity")
        cpu_left = mem_left = None
        if capacity is not None:
            cpu_left = to_milli(capacity["cpu"]) if "cpu" in capacity else None
            mem_left = capacity.get("mem_mb")
        queues = sorted(set(cmd["queues"]))
        self._see_worker(worker, queues, capacity, lease_ms)
        allowance: dict[str, int | None] = {}
        heaps: list[tuple[str, list[tuple[int, int, str]]]] = []
        for q in queues:
            if q in self._ready:
                allowance[q] = self._allowance(q, now, commit=True)
                if allowance[q] != 0:
                    heaps.append((q, self._ready[q]))
        leased: list[Result] = []
        skipped: list[tuple[list[tuple[int, int, str]], tuple[int, int, str]]] = []
        while len(leased) < want and heaps:
            best: tuple[str, list[tuple[int, int, str]]] | None = None
            for entry in heaps:
                heap = entry[1]
                while heap and not self._ready_live(heap[0]):
                    heapq.heappop(heap)
                if heap and (best is None or heap[0] < best[1][0]):
                    best = entry
            if best is None:
                break
            queue, heap = best
            item = heapq.heappop(heap)
            job = self._jobs[item[2]]
            res = job.resources
            if res is not None and ((cpu_left is not None and res[0] > cpu_left)
                                    or (mem_left is not None and res[1] > mem_left)):
                skipped.append((heap, item))  # keeps its place: pushed back below
                if len(skipped) >= LEASE_SCAN_LIMIT:
                    break
                continue
            if res is not None:
                cpu_left = None if cpu_left is None else cpu_left - res[0]
                mem_left = None if mem_left is None else mem_left - res[1]
            self._grant(job, worker, lease_ms, now)
            leased.append(self._leased_view(job))
            allow = allowance[queue]
            if allow is not None:
                allowance[queue] = allow - 1
                limit = self._limits[queue]
                if limit["rate_milli"] is not None:
                    limit["tokens"] -= JOB_UNIT
                if allow == 1:
                    heaps = [e for e in heaps if e[0] != queue]
        for heap, item in skipped:
            heapq.heappush(heap, item)
        for queue in queues:
            if self._ready.get(queue) == []:
                del self._ready[queue]
        return {"jobs": leased}

    def _grant(self, job: Job, worker: str, lease_ms: int, now: int) -> None:
        job.attempts += 1
        self._move(job, RUNNING)
        job.worker = worker
        job.started_ms = now
        job.lease_deadline_ms = now + lease_ms
        job.progress = None
        heapq.heappush(self._leases, (job.lease_deadline_ms, job.seq, job.attempts, job.id))
        info = self._workers.get(worker)
        if info is not None:
            info["running"].add(job.id)

    def _leased_view(self, job: Job) -> Result:
        """A LeasedJob; a dependent also gets `parents` = {dep id: result}, O(deps)."""
        view = leased_view(job)
        if job.depends_on:
            jobs = self._jobs
            view["parents"] = {d: (p.result if (p := jobs.get(d)) is not None else None)
                               for d in job.depends_on}
        return view

    def _see_worker(self, worker: str, queues: list[str] | None, capacity: dict[str, Any] | None,
                    lease_ms: int) -> dict[str, Any]:
        info = self._workers.get(worker)
        if info is None:
            info = self._workers[worker] = {"queues": [], "capacity": None, "lease_ms": lease_ms,
                                            "last_seen_ms": self.clock_ms, "running": set()}
        if queues is not None:
            info["queues"] = queues
            info["capacity"] = None if capacity is None else dict(capacity)
        info["lease_ms"] = lease_ms
        info["last_seen_ms"] = self.clock_ms
        return info

    def _cmd_heartbeat(self, cmd: dict[str, Any]) -> Result:
        worker: str = sys.intern(cmd["worker"])
        deadline = self.clock_ms + cmd["lease_ms"]
        info = self._see_worker(worker, None, None, cmd["lease_ms"])
        held_ids: set[str] = set()
        lost: list[str] = []
        cancel: list[str] = []
        for lease in cmd["leases"]:
            job = self._jobs.get(lease["id"])
            held = job is not None and self._holds_lease(job, lease["attempt"], worker)
            if held and job.state == RUNNING:
                held_ids.add(job.id)
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
        info["running"] = held_ids
        return {"lost": lost, "cancel": cancel}

    def _holds_lease(self, job: Job, attempt: Any, worker: str | None = None) -> bool:
        """Fencing: is `attempt` (of `worker`, when a heartbeat names one) the
        token of `job`'s current lease? Every token check goes through here, so
        the fault suite can break fencing on purpose (tests/fault/bugs.py)."""
        return job.attempts == attempt and (worker is None or job.worker == worker)

    def _running_job(self, cmd: dict[str, Any]) -> Job | Result:
        """The job a complete/fail names, if `attempt` is its live lease; else an error."""
        job = self._jobs.get(cmd["id"])
        if job is None:
            return error(NOT_FOUND, f"no job {cmd['id']!r}")
        if job.state != RUNNING or not self._holds_lease(job, cmd["attempt"]):
            return error(LEASE_LOST, f"job {job.id!r} attempt {cmd['attempt']} no longer holds a lease "
                                     f"(state {job.state}, attempt {job.attempts})")
        return job

    def _off_worker(self, job: Job) -> None:
        info = self._workers.get(job.worker) if job.worker is not None else None
        if info is not None:
            info["running"].discard(job.id)

    def _cmd_complete(self, cmd: dict[str, Any]) -> Result:
        job = self._jobs.get(cmd["id"])
        if job is not None and job.state == SUCCEEDED and job.attempts == cmd["attempt"]:
            return {"state": SUCCEEDED, "duplicate": True}
        found = self._running_job(cmd)
        if not isinstance(found, Job):
            return found
        self._off_worker(found)
        found.result = cmd.get("result")
        found.error = None
        self._finish(found, SUCCEEDED)
        return {"state": SUCCEEDED}

    def _cmd_complete_many(self, cmd: dict[str, Any]) -> Result:
        """Several completions in one command (a worker's outbox): each item is
        fenced and answered exactly like a `complete` of its own, in order."""
        return {"results": [self._cmd_complete(item) for item in cmd["items"]]}

    def _cmd_fail(self, cmd: dict[str, Any]) -> Result:
        found = self._running_job(cmd)
        if not isinstance(found, Job):
            return found
        job = found
        self._off_worker(job)
        job.error = cmd["error"][:MAX_ERROR_LEN]
        if cmd.get("retryable", True) and job.attempts < job.max_attempts:
            self._resize(job)
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

    def _retry_job(self, job: Job) -> Result:
        if job.state not in (FAILED, CANCELLED):
            return error(CONFLICT, f"only failed or cancelled jobs can be retried; job {job.id!r} is {job.state}")
        if job.unique_key is not None:
            holder = self._unique.get(job.unique_key)
            if holder is not None and holder != job.id:
                return error(CONFLICT, f"unique_key {job.unique_key!r} is held by live job {holder!r}")
        for dep_id in job.depends_on or ():
            dep = self._jobs.get(dep_id)
            if dep is not None and dep.state in (FAILED, CANCELLED):
                return error(CONFLICT, f"job {job.id!r} depends on {dep_id!r}, which is {dep.state}; retry it first")
        if job.unique_key is not None:
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
        self._resize(job)
        self._move(job, QUEUED)  # _enter moves it on from here
        self._enter(job)
        return {"state": job.state}

    def _cmd_retry(self, cmd: dict[str, Any]) -> Result:
        job = self._jobs.get(cmd["id"])
        if job is None:
            return error(NOT_FOUND, f"no job {cmd['id']!r}")
        return self._retry_job(job)

    def _cmd_requeue_failed(self, cmd: dict[str, Any]) -> Result:
        """Dead-letter requeue of an explicit id list (chosen by the server from
        its replica, so every replica requeues exactly the same jobs)."""
        requeued: list[str] = []
        skipped: list[str] = []
        for job_id in cmd["ids"]:
            job = self._jobs.get(job_id)
            if job is not None and job.state == FAILED and "error" not in self._retry_job(job):
                requeued.append(job_id)
            else:
                skipped.append(job_id)
        return {"requeued": requeued, "skipped": skipped}

    def _cmd_queue_limit(self, cmd: dict[str, Any]) -> Result:
        """Set (replace) a queue's limits; both omitted removes them."""
        queue: str = cmd["queue"]
        max_running = cmd.get("max_running")
        rate = cmd.get("rate_per_s")
        if max_running is None and rate is None:
            self._limits.pop(queue, None)
            return {"queue": queue, "max_running": None, "rate_per_s": None}
        rate_milli = None if rate is None else to_milli(rate)
        old = self._limits.get(queue)
        tokens = JOB_UNIT if rate_milli is None else max(JOB_UNIT, rate_milli * 1000)
        if old is not None and old["rate_milli"] is not None and rate_milli is not None:
            tokens = min(self._refill(old, self.clock_ms), tokens)  # no free refill by re-setting
        self._limits[sys.intern(queue)] = {"max_running": max_running, "rate_milli": rate_milli,
                                           "tokens": tokens, "refill_ms": self.clock_ms}
        return {"queue": queue, "max_running": max_running,
                "rate_per_s": None if rate_milli is None else rate_milli / 1000.0}

    # -- schedules

    def _cmd_schedule_add(self, cmd: dict[str, Any]) -> Result:
        spec: dict[str, Any] = cmd["schedule"]
        name: str = spec["name"]
        definition = {
            "cron": spec.get("cron"), "every_ms": spec.get("every_ms"), "tz": spec.get("tz") or "UTC",
            "job": spec["job"], "misfire": spec.get("misfire", "skip"),
            "max_catch_up": spec.get("max_catch_up") or 1,
        }
        existing = self._schedules.get(name)
        if existing is not None:
            if all(existing[k] == v for k, v in definition.items()):
                return {"name": name, "created": False, "next_fire_ms": existing["next_fire_ms"]}
            return error(CONFLICT, f"schedule {name!r} exists with another definition; remove it first")
        if len(self._schedules) >= MAX_SCHEDULES:
            return error(CONFLICT, f"at most {MAX_SCHEDULES} schedules")
        sched = {"name": name, **definition, "paused": bool(spec.get("paused", False)),
                 "next_fire_ms": cmd["next_fire_ms"], "last_fire_ms": None, "fired": 0,
                 "created_ms": self.clock_ms, "missed": 0}  # missed last: where restore adds it to old snapshots
        self._schedules[name] = sched
        if not sched["paused"]:
            heapq.heappush(self._fire_heap, (sched["next_fire_ms"], name))
        return {"name": name, "created": True, "next_fire_ms": sched["next_fire_ms"]}

    def _schedule(self, name: str) -> dict[str, Any] | Result:
        sched = self._schedules.get(name)
        return sched if sched is not None else error(NOT_FOUND, f"no schedule {name!r}")

    def _cmd_schedule_remove(self, cmd: dict[str, Any]) -> Result:
        found = self._schedule(cmd["name"])
        if "error" in found:
            return found
        del self._schedules[cmd["name"]]
        return {"name": cmd["name"], "removed": True}

    def _cmd_schedule_pause(self, cmd: dict[str, Any]) -> Result:
        found = self._schedule(cmd["name"])
        if "error" in found:
            return found
        found["paused"] = True
        return {"name": cmd["name"], "paused": True}

    def _cmd_schedule_resume(self, cmd: dict[str, Any]) -> Result:
        """Unpause; the leader sends the next fire time after now (no burst of missed firings)."""
        found = self._schedule(cmd["name"])
        if "error" in found:
            return found
        if found["paused"]:
            found["paused"] = False
            found["next_fire_ms"] = cmd["next_fire_ms"]
            heapq.heappush(self._fire_heap, (found["next_fire_ms"], found["name"]))
        return {"name": cmd["name"], "paused": False, "next_fire_ms": found["next_fire_ms"]}

    def _cmd_fire(self, cmd: dict[str, Any]) -> Result:
        """One firing of a schedule: a job with id `sched:NAME:FIRE_MS`, at most once.
        With `skip` (the reason, set by a leader whose admission refused the
        job) the firing is counted as `missed` instead and creates no job."""
        name: str = cmd["schedule"]
        found = self._schedule(name)
        if "error" in found:
            return found
        sched = found
        fire_ms: int = cmd["fire_ms"]
        if cmd["next_fire_ms"] <= fire_ms:
            return error(BAD_REQUEST, "'next_fire_ms' must be after 'fire_ms'")
        if sched["paused"]:
            return {"fired": False, "reason": "paused"}
        if sched["last_fire_ms"] is not None and fire_ms <= sched["last_fire_ms"]:
            return {"fired": False, "reason": f"already fired at or after {sched['last_fire_ms']}"}
        skip = cmd.get("skip")
        if skip is None:
            result = {"fired": True, **self._submit_one({**sched["job"], "id": f"sched:{name}:{fire_ms}"},
                                                        schedule=name)}
            sched["fired"] += 1
        else:  # the leader's admission refused it: a missed firing, the schedule moves on
            result = {"fired": False, "reason": f"missed: {skip}"}
            sched["missed"] += 1
        sched["last_fire_ms"] = fire_ms
        sched["next_fire_ms"] = cmd["next_fire_ms"]
        heapq.heappush(self._fire_heap, (sched["next_fire_ms"], name))
        return result

    # -- time

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
            self._off_worker(job)
            job.lease_expiries += 1
            if job.lease_expiries >= job.max_lease_expiries:
                job.error = f"quarantined: worker crashed/lost it {job.lease_expiries} times"
                self._finish(job, FAILED)
                continue
            job.error = f"lease expired (attempt {job.attempts}, worker {job.worker})"
            if job.attempts < job.max_attempts:
                self._resize(job)
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
            self._held_bytes -= job.args_bytes + job.outcome_bytes
            purged += 1

        gone = [w for w, info in self._workers.items()
                if now - info["last_seen_ms"] > WORKER_GONE_LEASES * info["lease_ms"]]
        for w in gone:
            del self._workers[w]
        return {"expired": expired, "promoted": promoted, "purged": purged}

    # ---------------------------------------------------------------- queries

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
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
            "jobs": dict(self._counts),
            "queues": {q: dict(self._queue_counts[q]) for q in sorted(self._queue_counts)},
            "clock_ms": self.clock_ms,
            "live": self.live_count(),
            "held": len(self._jobs),
            "held_bytes": self._held_bytes,
        }

    def has_ready(self, queues: list[str], now_ms: int | None = None) -> bool:
        """Could a lease over `queues` get a job now (queue limits included;
        a worker's capacity is not known here)?"""
        return self.lease_wait_ms(queues, now_ms) == 0

    def lease_wait_ms(self, queues: list[str], now_ms: int | None = None) -> int | None:
        """0 when some listed queue has a queued job its limits let start at
        `now_ms` (default: the log clock); else ms until a rate limit would let
        one start; None when nothing can start until the state changes."""
        now = self.clock_ms if now_ms is None else max(now_ms, self.clock_ms)
        counts = self._queue_counts
        best: int | None = None
        for q in queues:
            if q not in counts or counts[q][QUEUED] == 0:
                continue
            limit = self._limits.get(q)
            if limit is None:
                return 0
            if limit["max_running"] is not None and counts[q][RUNNING] >= limit["max_running"]:
                continue
            if limit["rate_milli"] is None:
                return 0
            missing = JOB_UNIT - self._refill(limit, now)
            if missing <= 0:
                return 0
            wait = -(-missing // limit["rate_milli"])  # ceil: rate_milli millionths per ms
            best = wait if best is None else min(best, wait)
        return best

    def next_fire_ms(self) -> int | None:
        """Earliest next fire time of an unpaused schedule (the top is live after _settle)."""
        return self._fire_heap[0][0] if self._fire_heap else None

    def due_schedules(self, now_ms: int) -> list[dict[str, Any]]:
        """Unpaused schedules whose next fire time is <= now_ms, by (time, name). O(schedules)."""
        due = [dict(s) for s in self._schedules.values() if not s["paused"] and s["next_fire_ms"] <= now_ms]
        due.sort(key=lambda s: (s["next_fire_ms"], s["name"]))
        return due

    def get_schedule(self, name: str) -> dict[str, Any] | None:
        sched = self._schedules.get(name)
        return None if sched is None else dict(sched)

    def schedules(self) -> list[dict[str, Any]]:
        return [dict(self._schedules[n]) for n in sorted(self._schedules)]

    def queues(self) -> list[dict[str, Any]]:
        """Every queue with jobs or limits: counts by state and its limits."""
        out = []
        for q in sorted(set(self._queue_counts) | set(self._limits)):
            limit = self._limits.get(q)
            rate = None if limit is None or limit["rate_milli"] is None else limit["rate_milli"] / 1000.0
            out.append({"queue": q, "jobs": dict(self._queue_counts.get(q) or {s: 0 for s in STATES}),
                        "max_running": None if limit is None else limit["max_running"],
                        "rate_per_s": rate})
        return out

    def workers(self) -> list[dict[str, Any]]:
        """The worker registry; `running` lists only jobs the worker really holds now."""
        jobs = self._jobs
        out = []
        for name in sorted(self._workers):
            info = self._workers[name]
            running = sorted(i for i in info["running"]
                             if (j := jobs.get(i)) is not None and j.state == RUNNING and j.worker == name)
            out.append({"name": name, "queues": list(info["queues"]), "capacity": info["capacity"],
                        "running": running, "lease_ms": info["lease_ms"],
                        "last_seen_at": info["last_seen_ms"] / 1000.0})
        return out

    def next_due_ms(self) -> int | None:
        """Earliest scheduled run_at or lease deadline (tops are live after _settle)."""
        due = [h[0][0] for h in (self._scheduled, self._leases) if h]
        return min(due) if due else None

    def held_count(self) -> int:
        """Jobs held in any state, final ones until retention purges them.
        Lock-free like `live_count`."""
        return len(self._jobs)

    def held_bytes(self) -> int:
        """Bytes of args, results and errors held (msgpack sizes). Lock-free:
        one int attribute read."""
        return self._held_bytes

    def live_count(self) -> int:
        """Jobs not in a final state. Safe to call WITHOUT the lock (the
        server's admission check does): it only reads an int per state from a
        dict whose keys never change, so a racing apply makes it stale, never wrong-typed."""
        counts = self._counts
        return len(self._jobs) - counts[SUCCEEDED] - counts[FAILED] - counts[CANCELLED]

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
            "limits": [[q, lim["max_running"], lim["rate_milli"], lim["tokens"], lim["refill_ms"]]
                       for q, lim in sorted(self._limits.items())],
            "schedules": [dict(self._schedules[n]) for n in sorted(self._schedules)],
            "workers": [[n, list(w["queues"]), w["capacity"], w["lease_ms"], w["last_seen_ms"],
                         sorted(w["running"])] for n, w in sorted(self._workers.items())],
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace all state with `snapshot`'s; raises ValueError (state untouched) if invalid."""
        fmt = snapshot.get("format") if isinstance(snapshot, dict) else None
        if fmt not in READABLE_FORMATS:
            raise ValueError(f"unsupported snapshot format (expected one of {READABLE_FORMATS})")
        fields = JOB_FIELDS_V1 if fmt == 1 else JOB_FIELDS
        if list(snapshot.get("job_fields") or ()) != list(fields):
            raise ValueError("snapshot job_fields do not match this version's job layout")
        clock_ms, next_seq, rows = snapshot.get("clock_ms"), snapshot.get("next_seq"), snapshot.get("jobs")
        if not (is_int(clock_ms) and is_int(next_seq) and isinstance(rows, (list, tuple))):
            raise ValueError("snapshot needs integer clock_ms, next_seq and a jobs list")
        fresh = JobMachine()
        fresh.clock_ms = clock_ms
        fresh._next_seq = next_seq
        last_seq = 0
        finished: list[tuple[int, int, str]] = []
        pending: list[Job] = []
        for row in rows:
            job = job_from_row(row, len(fields))
            if job.state not in STATES or not is_int(job.seq) or job.seq <= last_seq or job.seq >= next_seq:
                raise ValueError(f"snapshot job {job.id!r}: bad state or seq out of order")
            if job.id in fresh._jobs:
                raise ValueError(f"snapshot holds job {job.id!r} twice")
            last_seq = job.seq
            job.args_bytes = fresh._size(job.args)
            job.outcome_bytes = fresh._size(job.result) + fresh._size(job.error)
            fresh._held_bytes += job.args_bytes + job.outcome_bytes
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
            elif job.state == PENDING:
                pending.append(job)
        for job in pending:  # seq order, as a replaying replica would have listed them
            for dep_id in job.depends_on or ():
                dep = fresh._jobs.get(dep_id)
                if dep is not None and dep.state not in FINAL_STATES:
                    fresh._dependents.setdefault(dep_id, []).append(job.id)
        if fmt >= 2:
            fresh._restore_extras(snapshot)
        for heap in fresh._ready.values():
            heapq.heapify(heap)
        heapq.heapify(fresh._scheduled)
        heapq.heapify(fresh._leases)
        finished.sort()
        fresh._finished = deque(finished)
        # Swap in only once everything was built: a bad snapshot leaves us untouched.
        for name in ("clock_ms", "_next_seq", "_jobs", "_by_seq", "_ready", "_scheduled", "_leases",
                     "_finished", "_unique", "_counts", "_queue_counts", "_dependents", "_limits",
                     "_schedules", "_fire_heap", "_workers", "_held_bytes"):
            setattr(self, name, getattr(fresh, name))

    def _restore_extras(self, snapshot: dict[str, Any]) -> None:
        """Format 2's limits, schedules and workers (into a fresh machine)."""
        try:
            for q, max_running, rate_milli, tokens, refill_ms in snapshot.get("limits") or ():
                self._limits[sys.intern(q)] = {"max_running": max_running, "rate_milli": rate_milli,
                                               "tokens": tokens, "refill_ms": refill_ms}
            for sched in snapshot.get("schedules") or ():
                sched = dict(sched)
                sched.setdefault("missed", 0)  # snapshots from before missed firings were counted
                self._schedules[sched["name"]] = sched
                if not sched["paused"]:
                    self._fire_heap.append((sched["next_fire_ms"], sched["name"]))
            heapq.heapify(self._fire_heap)
            for name, queues, capacity, lease_ms, last_seen_ms, running in snapshot.get("workers") or ():
                self._workers[sys.intern(name)] = {"queues": list(queues), "capacity": capacity,
                                                   "lease_ms": lease_ms, "last_seen_ms": last_seen_ms,
                                                   "running": set(running)}
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"snapshot limits/schedules/workers malformed: {exc}") from None

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
        held_bytes = 0
        for job in self._jobs.values():
            counts[job.state] += 1
            need(job.args_bytes == self._size(job.args), f"{job.id}: args_bytes is stale")
            need(job.outcome_bytes == self._size(job.result) + self._size(job.error),
                 f"{job.id}: outcome_bytes is stale")
            held_bytes += job.args_bytes + job.outcome_bytes
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
        need(held_bytes == self._held_bytes, f"held bytes {self._held_bytes} != scan {held_bytes}")
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
        for job in self._jobs.values():
            if job.state != PENDING:
                continue
            need(not self._deps_done(job), f"{job.id}: pending although its deps are done")
            for dep_id in job.depends_on or ():
                dep = self._jobs.get(dep_id)
                need(dep is None or dep.state not in (FAILED, CANCELLED), f"{job.id}: pending on a failed dep")
                if dep is not None and dep.state not in FINAL_STATES:
                    need(job.id in self._dependents.get(dep_id, ()), f"{job.id}: not listed under dep {dep_id}")
        for name, sched in self._schedules.items():
            if not sched["paused"]:
                need((sched["next_fire_ms"], name) in self._fire_heap, f"schedule {name}: not in the fire heap")
        need(all(self._fire_live(self._fire_heap[0]) for _ in (1,) if self._fire_heap), "stale fire top")
        for name, limit in self._limits.items():
            need(limit["tokens"] >= 0, f"queue {name}: negative tokens")
        seqs = [s for s, _ in self._by_seq]
        need(seqs == sorted(seqs), "_by_seq out of order")
        indexed = {(s, i) for s, i in self._by_seq}
        need(all((j.seq, j.id) in indexed for j in self._jobs.values()), "a job is missing from _by_seq")
