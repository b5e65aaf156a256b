"""Leases: granting queued jobs to workers, fencing their reports, expiring them.

Index (derived, rebuilt from the job table on restore): `leases`: heap of
(deadline_ms, seq, attempt, id) for `running` jobs; lazy: live iff the job is
`running` with that seq, attempt and deadline (a heartbeat pushes a new item
and leaves the old one stale). Its top is live after every entry (`settle`).
Invariants: a job is `running` iff it has a live lease item; a running job has
a worker and a deadline, any other has no deadline.

`attempts` is the fencing token: `lease` increments it, and complete, fail and
heartbeat are accepted only for the current attempt (the decision is the
`holds` callable the machine passes in: `JobMachine._holds_lease`).

Lease tokens make a lease its worker's own: the attempt number is no secret
(any read shows it), so each grant also derives `job.lease_token` =
blake2b(key=nonce, "id:attempt") from the random nonce the leader stamped on
the lease command (apply stays deterministic: the randomness is in the log).
Only the LeasedJob answer carries the token; a report or heartbeat presenting
another (or none) is LEASE_LOST, so nobody else can complete, fail, extend or
shorten the lease. The token stays on the job after the lease ends, so a
repeat of an accepted completion is recognised as a duplicate only with it. A
lease command without a nonce (logged before tokens existed) grants no token,
and such a lease is fenced by attempt only. Leases end
only through an explicit command or `tick`: a report presenting the current
attempt of a `running` job is accepted even if its deadline has passed but no
tick has expired it yet (nobody else can hold the job in between, so fencing
is unaffected). Lease expiry requeues straight to `queued` (no backoff; the
worker most likely died) and counts `lease_expiries` apart from handler
failures; reaching `max_lease_expiries` quarantines the job (`failed`).

Commands: lease, heartbeat, complete, complete_many, fail. No snapshot section
of its own (deadlines and lease tokens are job fields).
"""
from __future__ import annotations

import hashlib
import heapq
import sys
from typing import Any, Callable

from replication.model import (
    BACKOFF_CAP_MS,
    CANCELLED,
    FAILED,
    LEASE_LOST,
    MAX_ERROR_LEN,
    MAX_PROGRESS_MSG_LEN,
    NOT_FOUND,
    RUNNING,
    SUCCEEDED,
    Job,
    error,
    leased_view,
    to_milli,
)
from replication.state.check import need
from replication.state.jobs import JobTable
from replication.state.lifecycle import COMPACT_SLACK, Lifecycle
from replication.state.limits import QueueLimits
from replication.state.workers import WorkerRegistry

LEASE_SCAN_LIMIT = 256  # non-fitting ready jobs one lease may step over (then it stops)

Result = dict[str, Any]
# (job, attempt presented, worker presenting it or None when the command names
# none, lease token presented or None) -> accepted?
LeaseCheck = Callable[[Job, Any, "str | None", "str | None"], bool]


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


def lease_token(nonce: bytes, job_id: str, attempt: int) -> str:
    """The token of `job_id`'s lease `attempt`, granted by a lease command
    carrying `nonce`: unguessable without the nonce, the same on every replica."""
    return hashlib.blake2b(f"{job_id}:{attempt}".encode(), key=nonce, digest_size=16).hexdigest()


class Leasing:
    """The lease heap and the commands that grant, renew and end leases."""

    def __init__(self, table: JobTable, lifecycle: Lifecycle, limits: QueueLimits,
                 workers: WorkerRegistry, holds: LeaseCheck) -> None:
        self._table = table
        self._jobs = table.jobs
        self._lifecycle = lifecycle
        self._ready = lifecycle.ready  # never rebound: lease pops from these heaps
        self._limits = limits
        self._workers = workers
        self._holds = holds
        self.leases: list[tuple[int, int, int, str]] = []

    @classmethod
    def from_table(cls, table: JobTable, lifecycle: Lifecycle, limits: QueueLimits,
                   workers: WorkerRegistry, holds: LeaseCheck) -> Leasing:
        part = cls(table, lifecycle, limits, workers, holds)
        part.leases = [(j.lease_deadline_ms, j.seq, j.attempts, j.id) for j in table.jobs.values() if j.state == RUNNING]
        heapq.heapify(part.leases)
        return part

    def _lease_live(self, item: tuple[int, int, int, str]) -> bool:
        job = self._jobs.get(item[3])
        return (job is not None and job.state == RUNNING and job.seq == item[1]
                and job.attempts == item[2] and job.lease_deadline_ms == item[0])

    def settle(self) -> None:
        """Drop stale tops (so `next_due_ms` is a pure peek); compact when stale items dominate."""
        leases = self.leases
        while leases and not self._lease_live(leases[0]):
            heapq.heappop(leases)
        if len(leases) > 2 * self._table.counts[RUNNING] + COMPACT_SLACK:
            self.leases = [i for i in leases if self._lease_live(i)]
            heapq.heapify(self.leases)

    def next_due_ms(self) -> int | None:
        """Earliest lease deadline (the top is live after `settle`)."""
        return self.leases[0][0] if self.leases else None

    # ------------------------------------------------------------------ lease

    def cmd_lease(self, cmd: dict[str, Any]) -> Result:
        worker = sys.intern(cmd["worker"])
        lease_ms: int = cmd["lease_ms"]
        want: int = cmd["max"]
        now = self._table.clock_ms
        capacity = cmd.get("capacity")
        cpu_left = mem_left = None
        if capacity is not None:
            cpu_left = to_milli(capacity["cpu"]) if "cpu" in capacity else None
            mem_left = capacity.get("mem_mb")
        queues = sorted(set(cmd["queues"]))
        nonce: bytes | None = cmd.get("nonce")
        holding: set[str] = self._workers.see(worker, queues, capacity, lease_ms)["running"]
        ready, limits, ready_live = self._ready, self._limits, self._lifecycle.ready_live
        allowance: dict[str, int | None] = {}
        heaps: list[tuple[str, list[tuple[int, int, str]]]] = []
        for q in queues:
            if q in ready:
                allowance[q] = limits.allowance(q, now)
                if allowance[q] != 0:
                    heaps.append((q, ready[q]))
        leased: list[Result] = []
        skipped: list[tuple[list[tuple[int, int, str]], tuple[int, int, str]]] = []
        while len(leased) < want and heaps:
            best: tuple[str, list[tuple[int, int, str]]] | None = None
            for entry in heaps:
                heap = entry[1]
                while heap and not ready_live(heap[0]):
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
            self._grant(job, worker, lease_ms, now, nonce)
            holding.add(job.id)
            leased.append(self._leased_view(job))
            allow = allowance[queue]
            if allow is not None:
                allowance[queue] = allow - 1
                limits.spend(queue)
                if allow == 1:
                    heaps = [e for e in heaps if e[0] != queue]
        for heap, item in skipped:
            heapq.heappush(heap, item)
        for queue in queues:
            if ready.get(queue) == []:
                del ready[queue]
        return {"jobs": leased}

    def _grant(self, job: Job, worker: str, lease_ms: int, now: int, nonce: bytes | None) -> None:
        job.attempts += 1
        job.lease_token = None if nonce is None else lease_token(nonce, job.id, job.attempts)
        self._table.move(job, RUNNING)
        job.worker = worker
        job.started_ms = now
        job.lease_deadline_ms = now + lease_ms
        job.progress = None
        self._table.events.started(job, now)
        heapq.heappush(self.leases, (job.lease_deadline_ms, job.seq, job.attempts, job.id))

    def _leased_view(self, job: Job) -> Result:
        """A LeasedJob; a dependent also gets `parents` = {dep id: result}, O(deps)."""
        view = leased_view(job)
        if job.depends_on:
            jobs = self._jobs
            view["parents"] = {d: (p.result if (p := jobs.get(d)) is not None else None)
                               for d in job.depends_on}
        return view

    # -------------------------------------------------------------- heartbeat

    def cmd_heartbeat(self, cmd: dict[str, Any]) -> Result:
        worker: str = sys.intern(cmd["worker"])
        deadline = self._table.clock_ms + cmd["lease_ms"]
        info = self._workers.see(worker, None, None, cmd["lease_ms"])
        jobs, holds = self._jobs, self._holds
        held_ids: set[str] = set()
        lost: list[str] = []
        cancel: list[str] = []
        for lease in cmd["leases"]:
            job = jobs.get(lease["id"])
            held = job is not None and holds(job, lease["attempt"], worker, lease.get("lease_token"))
            if held and job.state == RUNNING:
                held_ids.add(job.id)
                progress = lease.get("progress")
                if progress is not None:
                    fraction = min(max(float(progress[0]), 0.0), 1.0)
                    job.progress = [fraction, progress[1][:MAX_PROGRESS_MSG_LEN]]
                if job.lease_deadline_ms != deadline:
                    job.lease_deadline_ms = deadline
                    heapq.heappush(self.leases, (deadline, job.seq, job.attempts, job.id))
            elif held and job.state == CANCELLED:
                cancel.append(lease["id"])
            else:
                lost.append(lease["id"])
        info["running"] = held_ids
        return {"lost": lost, "cancel": cancel}

    # --------------------------------------------------------------- outcomes

    def _running_job(self, cmd: dict[str, Any]) -> Job | Result:
        """The job a complete/fail names, if `attempt` and `lease_token` are its live lease; else an error."""
        job = self._jobs.get(cmd["id"])
        if job is None:
            return error(NOT_FOUND, f"no job {cmd['id']!r}")
        if job.state != RUNNING or not self._holds(job, cmd["attempt"], None, cmd.get("lease_token")):
            return error(LEASE_LOST, f"job {job.id!r} attempt {cmd['attempt']} no longer holds a lease "
                                     f"(state {job.state}, attempt {job.attempts})")
        return job

    def _release(self, job: Job) -> None:
        """A running job's attempt ended without an outcome: it waits again."""
        job.worker = None
        job.lease_deadline_ms = None

    def cmd_complete(self, cmd: dict[str, Any]) -> Result:
        job = self._jobs.get(cmd["id"])
        if job is not None and job.state == SUCCEEDED and self._holds(job, cmd["attempt"], None,
                                                                       cmd.get("lease_token")):
            return {"state": SUCCEEDED, "duplicate": True}
        found = self._running_job(cmd)
        if not isinstance(found, Job):
            return found
        self._workers.released(found)
        self._table.events.ran(found, self._table.clock_ms)
        found.result = cmd.get("result")
        found.error = None
        self._lifecycle.finish(found, SUCCEEDED)
        return {"state": SUCCEEDED}

    def cmd_complete_many(self, cmd: dict[str, Any]) -> Result:
        """Several completions in one command (a worker's outbox): each item is
        fenced and answered exactly like a `complete` of its own, in order."""
        return {"results": [self.cmd_complete(item) for item in cmd["items"]]}

    def cmd_fail(self, cmd: dict[str, Any]) -> Result:
        found = self._running_job(cmd)
        if not isinstance(found, Job):
            return found
        job = found
        self._workers.released(job)
        self._table.events.ran(job, self._table.clock_ms)
        job.error = cmd["error"][:MAX_ERROR_LEN]
        if cmd.get("retryable", True) and job.attempts < job.max_attempts:
            self._table.events.retried(job)
            self._table.resize(job)
            self._release(job)
            delay = backoff_delay_ms(job.id, job.attempts, job.backoff_ms)
            self._lifecycle.make_ready_or_scheduled(job, self._table.clock_ms + delay if delay > 0 else None)
        else:
            self._lifecycle.finish(job, FAILED)
        return {"state": job.state}

    def expire(self, now: int) -> int:
        """tick: end every lease whose deadline is <= now; how many."""
        expired = 0
        leases = self.leases
        while leases and leases[0][0] <= now:
            item = heapq.heappop(leases)
            if not self._lease_live(item):
                continue
            job = self._jobs[item[3]]
            expired += 1
            self._workers.released(job)
            job.lease_expiries += 1
            self._table.events.lease_expired(job)
            if job.lease_expiries >= job.max_lease_expiries:
                job.error = f"quarantined: worker crashed/lost it {job.lease_expiries} times"
                self._lifecycle.finish(job, FAILED)
                continue
            job.error = f"lease expired (attempt {job.attempts}, worker {job.worker})"
            if job.attempts < job.max_attempts:
                self._table.resize(job)
                self._release(job)
                self._lifecycle.make_ready_or_scheduled(job, None)  # straight back, keeping its seq
            else:
                self._lifecycle.finish(job, FAILED)
        return expired

    # ------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        live = {i[3] for i in self.leases if self._lease_live(i)}
        for job in self._jobs.values():
            if job.state == RUNNING:
                need(job.worker is not None and job.lease_deadline_ms is not None, f"{job.id}: running without lease")
            else:
                need(job.lease_deadline_ms is None, f"{job.id}: lease deadline while {job.state}")
            need((job.state == RUNNING) == (job.id in live), f"{job.id}: lease heap disagrees")
        need(not self.leases or self._lease_live(self.leases[0]), "stale lease top")
