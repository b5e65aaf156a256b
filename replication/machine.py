"""The replicated job state machine: pure, deterministic, driven by log entries.

`JobMachine.apply_entry(entry)` is the only way to change state. Every replica
applies the same entries in the same order and so holds the same state; that is
the whole of the replication guarantee, so this module (and every part of
`replication.state`) reads no clock, no randomness, no environment and no
disk, and never lets dict/set iteration order decide a result. Time comes only
from each entry's `now_ms` (stamped by the leader); `clock_ms` is the maximum
seen so far and never goes backwards.

Threads: the Raft adapter calls `apply_entry` on its loop thread while holding
its lock; queries (`get`, `list_jobs`, `stats`, ...) and `to_snapshot` are
called by others holding the same lock. Nothing here locks.

The state is a `replication.state.MachineState` composed of parts; each
part's module docstring lists its rows, indexes and invariants:

- jobs (`JobTable`): `jobs` (id -> Job, the only primary job data, with
  `clock_ms` and `next_seq`); indexes `by_seq` (list_jobs paging, snapshot
  order), `finished` (retention), `unique` (live jobs' unique keys),
  `counts` / `queue_counts` (stats in O(queues)), `held_bytes` (admission
  in O(1));
- lifecycle (`Lifecycle`): `ready[queue]` heaps (FIFO within priority),
  the `scheduled` heap, `dependents` (pending children of live parents);
- leasing (`Leasing`): the `leases` heap of deadlines; fencing by `attempts`
  and each lease's `lease_token`;
- limits (`QueueLimits`, primary data): per-queue max_running and a token
  bucket refilled in log time;
- schedules (`Schedules`, primary data): cron/interval schedules and their
  `fire_heap`; a firing is accepted only after the last one;
- workers (`WorkerRegistry`, primary data): the worker registry, dropped by
  `tick` when unseen for WORKER_GONE_LEASES x its lease_ms;
- alerts (`Alerts`, primary data): alert rules and the transitions recorded
  and not yet delivered (a snapshot section only once alerts were used).

All indexes are lazy (a stale item is skipped, never acted on) and derived from
the jobs; after each entry `settle` pops stale items off the heap tops, so
`next_due_ms` and `next_fire_ms` are O(1) peeks that queries never need to
mutate. Heap layouts and stale items never influence a result, and the
snapshot holds only primary data (jobs in seq order, limits, schedules,
workers), so a restored replica is indistinguishable from one that replayed
the log. `check_invariants` runs every part's own check.

The machine never mutates `args`, `result` or `progress` values in place (it
replaces them), so a snapshot's rows may be encoded after the lock is released.

Snapshot format 2 adds job fields (depends_on, schedule, resources,
max_lease_expiries) and the limits, schedules and workers; `restore` still
reads format 1. `restore` builds a whole new state and swaps that one reference.
"""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from replication.events import JobEvents
from replication.model import BAD_REQUEST, INTERNAL, MAX_MS, Job, error, is_int, validate_command
from replication.state import READABLE_FORMATS, SNAPSHOT_FORMAT, MachineState
from replication.state.alerts import Alerts
from replication.state.leasing import LEASE_SCAN_LIMIT, backoff_delay_ms
from replication.state.workers import WORKER_GONE_LEASES

__all__ = ["ENTRY_VERSION", "LEASE_SCAN_LIMIT", "READABLE_FORMATS", "SNAPSHOT_FORMAT", "WORKER_GONE_LEASES",
           "JobMachine", "backoff_delay_ms", "validate_command"]

ENTRY_VERSION = 1
# ready_since looks at this many ready jobs per queue at most: ~1 ms of the
# node's loop per queue, on a scrape (the loop also ticks Raft).
READY_SCAN_LIMIT = 5_000

Result = dict[str, Any]


class JobMachine:
    """All replicated job state, changed only by `apply_entry` (docs/contracts.md section 1)."""

    def __init__(self) -> None:
        self._state = MachineState.empty(self._holds_lease)

    def _holds_lease(self, job: Job, attempt: Any, worker: str | None = None,
                     lease_token: str | None = None) -> bool:
        """Fencing: are `attempt` (of `worker`, when a heartbeat names one) and
        `lease_token` those of `job`'s current (or, once succeeded, last) lease?
        A lease granted without a token (an old log's) is fenced by attempt
        only. Every check (complete, fail, heartbeat) goes through here, so the
        fault suite can break fencing on purpose (tests/fault/buggy_node.py
        overrides it); it must stay deterministic like everything the machine does."""
        return (job.attempts == attempt and (worker is None or job.worker == worker)
                and (job.lease_token is None or job.lease_token == lease_token))

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
        state = self._state
        table = state.table
        if now > table.clock_ms:
            table.clock_ms = now
        table.clear_touched()
        handlers = state.handlers
        results: list[Result] = []
        for cmd in cmds:
            msg = validate_command(cmd)
            if msg is not None:
                results.append(error(BAD_REQUEST, msg))
                continue
            try:
                results.append(handlers[cmd["op"]](cmd))
            except Exception as exc:  # a bug; deterministic on every replica, so answer and go on
                results.append(error(INTERNAL, f"{cmd['op']}: {type(exc).__name__}: {exc}"))
        state.settle()
        return results

    @property
    def touched_queues(self) -> dict[str, int]:
        """Not state: queue -> jobs that became queued there or left `running`
        in the last applied entry, for the node's long polls (cluster/waiters.py)."""
        return self._state.table.touched_queues

    @property
    def touched_jobs(self) -> set[str]:
        """Not state: ids whose state changed in the last applied entry."""
        return self._state.table.touched_jobs

    # ---------------------------------------------------------------- queries

    def get(self, job_id: str) -> dict[str, Any] | None:
        return self._state.table.get(job_id)

    def list_jobs(self, state: str | None = None, queue: str | None = None, limit: int = 100,
                  cursor: int | None = None, schedule: str | None = None,
                  ) -> tuple[list[dict[str, Any]], int | None]:
        """Jobs in seq order after `cursor` (an opaque int from the previous page).

        Raises ValueError for bad arguments (the server maps it to BAD_REQUEST).
        """
        return self._state.table.list_jobs(state=state, queue=queue, limit=limit, cursor=cursor,
                                           schedule=schedule)

    def stats(self) -> dict[str, Any]:
        return self._state.table.stats()

    def has_ready(self, queues: list[str], now_ms: int | None = None) -> bool:
        """Could a lease over `queues` get a job now (queue limits included;
        a worker's capacity is not known here)?"""
        return self._state.limits.lease_wait_ms(queues, now_ms) == 0

    def lease_wait_ms(self, queues: list[str], now_ms: int | None = None) -> int | None:
        """0 when some listed queue has a queued job its limits let start at
        `now_ms` (default: the log clock); else ms until a rate limit would let
        one start; None when nothing can start until the state changes."""
        return self._state.limits.lease_wait_ms(queues, now_ms)

    def next_fire_ms(self) -> int | None:
        """Earliest next fire time of an unpaused schedule."""
        return self._state.schedules.next_fire_ms()

    def due_schedules(self, now_ms: int) -> list[dict[str, Any]]:
        """Unpaused schedules whose next fire time is <= now_ms, by (time, name). O(schedules)."""
        return self._state.schedules.due(now_ms)

    def get_schedule(self, name: str) -> dict[str, Any] | None:
        return self._state.schedules.get(name)

    def schedules(self) -> list[dict[str, Any]]:
        return self._state.schedules.view()

    def queues(self) -> list[dict[str, Any]]:
        """Every queue with jobs or limits: counts by state and its limits."""
        return self._state.limits.queues()

    def workers(self) -> list[dict[str, Any]]:
        """The worker registry; `running` lists only jobs the worker really holds now."""
        return self._state.workers.view()

    def next_due_ms(self) -> int | None:
        """Earliest scheduled run_at or lease deadline."""
        return self._state.next_due_ms()

    @property
    def alerts(self) -> Alerts:
        """The alert rules, their pending transitions and the evaluator's
        queries (replication/state/alerts.py); read it under the replica's lock."""
        return self._state.alerts

    def ready_since(self) -> dict[str, int]:
        """queue -> when (log ms) its oldest queued job became runnable (its
        submit or run_at time); queues with no queued job are absent. Looks at
        most READY_SCAN_LIMIT jobs per queue (`Lifecycle.ready_since`)."""
        return self._state.lifecycle.ready_since(READY_SCAN_LIMIT)

    @property
    def events(self) -> JobEvents:
        """Not state: what applying the log did, counted (replication/events.py)."""
        return self._state.table.events

    def held_count(self) -> int:
        """Jobs held in any state, final ones until retention purges them.
        Lock-free like `live_count`."""
        return len(self._state.table.jobs)

    def held_bytes(self) -> int:
        """Bytes of args, results and errors held (msgpack sizes). Lock-free:
        one int attribute read."""
        return self._state.table.held_bytes

    def live_count(self) -> int:
        """Jobs not in a final state. Safe to call WITHOUT the lock (the
        server's admission check does): see `JobTable.live_count`."""
        return self._state.table.live_count()

    # --------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, Any]:
        """Plain data: the jobs as positional rows in seq order, no index layout;
        limits, schedules and workers (replication/state/__init__.py)."""
        return self._state.to_snapshot()

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace all state with `snapshot`'s; raises ValueError (state untouched) if invalid."""
        # Swap in only once everything was built: a bad snapshot leaves us untouched.
        state = MachineState.from_snapshot(snapshot, self._holds_lease)
        state.table.events = self._state.table.events  # not state: counts go on across a restore
        self._state = state

    def digest(self) -> str:
        """sha256 hex of the canonical snapshot encoding; equal replicas, equal digests."""
        return hashlib.sha256(msgpack.packb(self.to_snapshot(), use_bin_type=True)).hexdigest()

    def check_invariants(self) -> None:
        """O(n) self-check of every part's indexes against the jobs (tests and
        debugging only). Raises AssertionError naming the first broken invariant."""
        self._state.check_invariants()
