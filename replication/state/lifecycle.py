"""Where a live job waits, and the moves between states that do not need a lease.

Indexes (derived from the job table, rebuilt from it on restore):

- `ready[queue]`: heap of (-priority, seq, id) for `queued` jobs; lazy: an
  item is live iff the job exists, is `queued` and has that seq. A requeued job
  keeps its seq and so its FIFO place. Items turn stale only through `cancel`
  (lease pops what it takes), so cancel compacts when stale items dominate.
  Leasing holds this dict by reference and pops from its heaps.
- `scheduled`: heap of (run_at_ms, seq, id) for `scheduled` jobs; lazy: live
  iff the job is `scheduled` with that seq and run_at_ms. Its top is live
  after every entry (`settle`), so `next_due_ms` is a peek.
- `dependents`: parent id -> [child ids] for `pending` children waiting on a
  live parent; lazy (a child that left `pending` is skipped, and so is one
  whose id was purged and reused by a job not waiting on that parent; a child
  may be listed twice after a retry, which is harmless because only a
  `pending` child is acted on). Popped when the parent becomes final: success releases
  each child whose deps are all done (a dep is done when it succeeded or was
  purged: a purged failed dep would already have cancelled its children);
  failure or cancellation cancels the children, transitively, iteratively.

Invariants: every queued job has a live item in its queue's ready heap; a job
is scheduled iff it has a live `scheduled` item, and the top is live; a
pending job's deps are not all done, none failed or cancelled, and it is
listed under each live dep in `dependents`.

Commands: submit, submit_many, cancel, retry, requeue_failed. No snapshot
section of its own: everything here is rebuilt from the jobs' rows.
"""
from __future__ import annotations

import heapq
import sys
from typing import Any

from replication.model import (
    BAD_REQUEST,
    CANCELLED,
    CONFLICT,
    DEFAULT_BACKOFF_MS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_LEASE_EXPIRIES,
    DEFAULT_QUEUE,
    FAILED,
    FINAL_STATES,
    MAX_REASON_LEN,
    NOT_FOUND,
    PENDING,
    QUEUED,
    SCHEDULED,
    SUCCEEDED,
    Job,
    error,
    to_milli,
)
from replication.state.check import need
from replication.state.jobs import JobTable, spec_differences

Result = dict[str, Any]
COMPACT_SLACK = 64  # stale heap items tolerated beyond twice the live ones


def _dep_reason(parent: Job) -> str:
    """Why a dependent was cancelled; nests along a chain, bounded in length."""
    tail = f": {parent.error}" if parent.error else ""
    return f"dependency {parent.id} {parent.state}{tail}"[:MAX_REASON_LEN]


class Lifecycle:
    """Submission, dependencies, waiting (ready / scheduled), cancel and retry."""

    def __init__(self, table: JobTable) -> None:
        self._table = table
        self._jobs = table.jobs
        self.ready: dict[str, list[tuple[int, int, str]]] = {}
        self.scheduled: list[tuple[int, int, str]] = []
        self.dependents: dict[str, list[str]] = {}

    @classmethod
    def from_table(cls, table: JobTable) -> Lifecycle:
        """The indexes a replica that replayed the log would hold (heap layout aside)."""
        part = cls(table)
        ready, scheduled, dependents = part.ready, part.scheduled, part.dependents
        jobs = table.jobs
        for job in jobs.values():  # in seq order (as the rows were): dependents listed as on replay
            state = job.state
            if state == QUEUED:
                ready.setdefault(job.queue, []).append((-job.priority, job.seq, job.id))
            elif state == SCHEDULED:
                scheduled.append((job.run_at_ms, job.seq, job.id))
            elif state == PENDING:
                for dep_id in job.depends_on or ():
                    dep = jobs.get(dep_id)
                    if dep is not None and dep.state not in FINAL_STATES:
                        dependents.setdefault(dep_id, []).append(job.id)
        for heap in ready.values():
            heapq.heapify(heap)
        heapq.heapify(scheduled)
        return part

    # ------------------------------------------------------------------ moves

    def push_ready(self, job: Job) -> None:
        heap = self.ready.get(job.queue)
        if heap is None:
            heap = self.ready[job.queue] = []
        heapq.heappush(heap, (-job.priority, job.seq, job.id))

    def ready_live(self, item: tuple[int, int, str]) -> bool:
        job = self._jobs.get(item[2])
        return job is not None and job.state == QUEUED and job.seq == item[1]

    def sched_live(self, item: tuple[int, int, str]) -> bool:
        job = self._jobs.get(item[2])
        return (job is not None and job.state == SCHEDULED and job.seq == item[1]
                and job.run_at_ms == item[0])

    def make_ready_or_scheduled(self, job: Job, due_ms: int | None) -> None:
        """Put a (new, requeued or retried) job where it waits: queued now, or scheduled."""
        table = self._table
        if due_ms is not None and due_ms > table.clock_ms:
            job.run_at_ms = due_ms
            table.move(job, SCHEDULED)
            heapq.heappush(self.scheduled, (due_ms, job.seq, job.id))
        else:
            table.move(job, QUEUED)
            self.push_ready(job)

    def finish(self, job: Job, state: str) -> None:
        """Make `job` final, then settle its dependents (iteratively, transitively)."""
        table = self._table
        table.finish_one(job, state)
        if job.id not in self.dependents:
            return
        stack = [job]
        while stack:
            parent = stack.pop()
            for child_id in self.dependents.pop(parent.id, ()):
                child = self._jobs.get(child_id)
                if child is None or child.state != PENDING or parent.id not in child.depends_on:
                    # Stale entry: the child moved on, or it was purged and its id
                    # reused by a job that does not wait on this parent (a restored
                    # replica rebuilds the index without such entries, so acting on
                    # one would make replicas disagree).
                    continue
                if parent.state == SUCCEEDED:
                    if self.deps_done(child):
                        self.make_ready_or_scheduled(child, child.run_at_ms)
                else:
                    child.error = _dep_reason(parent)
                    table.finish_one(child, CANCELLED)
                    stack.append(child)

    def deps_done(self, job: Job) -> bool:
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
                    self._table.finish_one(job, CANCELLED)
                    return
                waiting.append(dep_id)
            if waiting:
                self._table.move(job, PENDING)
                for dep_id in waiting:
                    self.dependents.setdefault(dep_id, []).append(job.id)
                return
        self.make_ready_or_scheduled(job, job.run_at_ms)

    def promote_due(self, now: int) -> int:
        """tick: scheduled jobs whose time has come become queued; how many."""
        promoted = 0
        sched = self.scheduled
        while sched and sched[0][0] <= now:
            item = heapq.heappop(sched)
            if not self.sched_live(item):
                continue
            job = self._jobs[item[2]]
            self._table.move(job, QUEUED)
            self.push_ready(job)
            promoted += 1
        return promoted

    def settle(self) -> None:
        """Drop stale tops off `scheduled` so `next_due_ms` is a pure peek."""
        sched = self.scheduled
        while sched and not self.sched_live(sched[0]):
            heapq.heappop(sched)

    def next_due_ms(self) -> int | None:
        """Earliest run_at of a scheduled job (the top is live after `settle`)."""
        return self.scheduled[0][0] if self.scheduled else None

    def ready_since(self, scan_limit: int) -> dict[str, int]:
        """queue -> the earliest time (log ms) a job now queued there became
        runnable: its submit time, or its run_at time when later. A query for
        metrics and alerts: it looks at no more than `scan_limit` heap items
        per queue (the top levels of the heap), so with more ready jobs than
        that in a queue of mixed priorities an older low-priority job may be
        missed; a queue of one priority has its oldest job at the top."""
        out: dict[str, int] = {}
        jobs = self._jobs
        for queue, heap in self.ready.items():
            oldest: int | None = None
            for _, seq, job_id in heap[:scan_limit]:
                job = jobs.get(job_id)
                if job is None or job.state != QUEUED or job.seq != seq:
                    continue
                since = job.created_ms if job.run_at_ms is None else max(job.created_ms, job.run_at_ms)
                if oldest is None or since < oldest:
                    oldest = since
            if oldest is not None:
                out[queue] = oldest
        return out

    def _compact_waiting(self, queue: str) -> None:
        """Rebuild a ready heap / the scheduled heap once stale items dominate."""
        heap = self.ready.get(queue)
        if heap is not None:
            live = self._table.queue_counts.get(queue, {}).get(QUEUED, 0)
            if len(heap) > 2 * live + COMPACT_SLACK:
                heap = [i for i in heap if self.ready_live(i)]
                heapq.heapify(heap)
                if heap:
                    self.ready[queue] = heap
                else:
                    del self.ready[queue]
        if len(self.scheduled) > 2 * self._table.counts[SCHEDULED] + COMPACT_SLACK:
            self.scheduled = [i for i in self.scheduled if self.sched_live(i)]
            heapq.heapify(self.scheduled)

    # --------------------------------------------------------------- commands

    def submit_one(self, spec: dict[str, Any], schedule: str | None = None) -> Result:
        """A new job, or the existing one (created False) for a repeated id or a
        live unique_key.

        A client's submit whose id exists with another spec is CONFLICT (a
        schedule's firing ids are the machine's own: a repeat returns the job).
        Either way nothing changes, so a log written before this check replays
        to the same state: only the result of such an entry differs, and
        nobody awaits the results of replayed entries. A live unique_key
        returns its holder whatever the spec: that is what the key is for."""
        jobs = self._jobs
        existing = jobs.get(spec["id"])
        if existing is not None and schedule is None:
            differs = spec_differences(existing, spec)
            if differs:
                return error(CONFLICT, f"job {existing.id!r} exists with another {' and '.join(differs)}: "
                                       f"it is a {existing.type} job, {existing.state}; "
                                       f"use another id, or repeat the same spec")
        if existing is None:
            unique_key = spec.get("unique_key")
            if unique_key is not None and unique_key in self._table.unique:
                existing = jobs[self._table.unique[unique_key]]
        if existing is not None:
            return {"id": existing.id, "created": False, "state": existing.state}
        deps = spec.get("depends_on")
        for dep_id in deps or ():
            if dep_id not in jobs:
                return error(BAD_REQUEST, f"job {spec['id']!r} depends on unknown job {dep_id!r}")

        table = self._table
        now = table.clock_ms
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
            seq=table.take_seq(),
            state=QUEUED,  # placeholder: counted by add, moved on by _enter below
            created_ms=now,
            run_at_ms=due,
            depends_on=list(deps) if deps else None,
            schedule=schedule,
            resources=None if resources is None else [to_milli(resources.get("cpu", 0)),
                                                      resources.get("mem_mb", 0)],
            max_lease_expiries=max_expiries if max_expiries is not None else DEFAULT_MAX_LEASE_EXPIRIES,
        )
        table.add(job)
        self._enter(job)
        return {"id": job.id, "created": True, "state": job.state}

    def cmd_submit(self, cmd: dict[str, Any]) -> Result:
        return self.submit_one(cmd["job"])

    def cmd_submit_many(self, cmd: dict[str, Any]) -> Result:
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
            return {"results": [self.submit_one(spec) for spec in specs]}
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
            results[i] = self.submit_one(specs[i])
        return {"results": results}

    def cmd_cancel(self, cmd: dict[str, Any]) -> Result:
        job = self._jobs.get(cmd["id"])
        if job is None:
            return error(NOT_FOUND, f"no job {cmd['id']!r}")
        if job.state in FINAL_STATES:
            return error(CONFLICT, f"job {job.id!r} is already {job.state}")
        previous = job.state
        # A running job keeps worker and attempts: its worker's next heartbeat
        # lists it under "cancel". Its lease heap item is now stale.
        self.finish(job, CANCELLED)
        if previous in (QUEUED, SCHEDULED):
            self._compact_waiting(job.queue)
        return {"state": CANCELLED}

    def _retry_job(self, job: Job) -> Result:
        if job.state not in (FAILED, CANCELLED):
            return error(CONFLICT, f"only failed or cancelled jobs can be retried; job {job.id!r} is {job.state}")
        table = self._table
        if job.unique_key is not None:
            holder = table.unique.get(job.unique_key)
            if holder is not None and holder != job.id:
                return error(CONFLICT, f"unique_key {job.unique_key!r} is held by live job {holder!r}")
        for dep_id in job.depends_on or ():
            dep = self._jobs.get(dep_id)
            if dep is not None and dep.state in (FAILED, CANCELLED):
                return error(CONFLICT, f"job {job.id!r} depends on {dep_id!r}, which is {dep.state}; retry it first")
        table.reseq(job)
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
        table.resize(job)
        table.move(job, QUEUED)  # _enter moves it on from here
        self._enter(job)
        return {"state": job.state}

    def cmd_retry(self, cmd: dict[str, Any]) -> Result:
        job = self._jobs.get(cmd["id"])
        if job is None:
            return error(NOT_FOUND, f"no job {cmd['id']!r}")
        return self._retry_job(job)

    def cmd_requeue_failed(self, cmd: dict[str, Any]) -> Result:
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

    # ------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Every queued job in its ready heap, scheduled jobs exactly the live
        items of `scheduled` (live top), pending jobs listed under each live dep."""
        jobs = self._jobs
        live_ready = {i[2] for h in self.ready.values() for i in h if self.ready_live(i)}
        live_sched = {i[2] for i in self.scheduled if self.sched_live(i)}
        for job in jobs.values():
            if job.state == QUEUED:
                need(job.id in live_ready and any(i[2] == job.id for i in self.ready.get(job.queue, ())),
                     f"{job.id}: queued but not in its ready heap")
            need((job.state == SCHEDULED) == (job.id in live_sched), f"{job.id}: scheduled heap disagrees")
        need(not self.scheduled or self.sched_live(self.scheduled[0]), "stale scheduled top")
        for job in jobs.values():
            if job.state != PENDING:
                continue
            need(not self.deps_done(job), f"{job.id}: pending although its deps are done")
            for dep_id in job.depends_on or ():
                dep = jobs.get(dep_id)
                need(dep is None or dep.state not in (FAILED, CANCELLED), f"{job.id}: pending on a failed dep")
                if dep is not None and dep.state not in FINAL_STATES:
                    need(job.id in self.dependents.get(dep_id, ()), f"{job.id}: not listed under dep {dep_id}")
