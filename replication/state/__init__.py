"""All replicated job state, as the parts `replication.machine.JobMachine` composes.

Each part is one module that owns its rows and indexes, applies its commands,
writes and reads its own section of the snapshot, and checks its own
invariants (each module's docstring lists them):

- `jobs.JobTable`: the jobs, the log clock, seqs, counters, held bytes, the
  unique index, `by_seq` and `finished` (retention);
- `lifecycle.Lifecycle`: ready heaps, the scheduled heap, dependents; submit,
  submit_many, cancel, retry, requeue_failed;
- `leasing.Leasing`: the lease heap; lease, heartbeat, complete,
  complete_many, fail, and lease expiry;
- `limits.QueueLimits`: per-queue max_running and rate; queue_limit;
- `schedules.Schedules`: schedules and the fire heap; schedule_*, fire;
- `workers.WorkerRegistry`: the worker registry (fed by lease and heartbeat);
- `alerts.Alerts`: alert rules and their recorded, undelivered transitions.

Arrows go one way: lifecycle -> jobs; limits, workers -> jobs; schedules,
alerts -> lifecycle; leasing -> lifecycle, limits, workers. `tick` is the one command
that spans parts, so `MachineState` runs it (each part does its own step).
Parts share the job dict (and leasing the ready heaps) by reference, which is
safe because nobody rebinds those containers; a `MachineState` is therefore
replaced whole, never part by part (`JobMachine.restore`).
"""
from __future__ import annotations

from typing import Any, Callable

from replication.state.alerts import Alerts
from replication.state.jobs import JobTable
from replication.state.leasing import LeaseCheck, Leasing
from replication.state.lifecycle import Lifecycle
from replication.state.limits import QueueLimits
from replication.state.schedules import Schedules
from replication.state.workers import WorkerRegistry

SNAPSHOT_FORMAT = 2
READABLE_FORMATS = (1, 2)

Result = dict[str, Any]


class MachineState:
    """The parts, wired together, and the command table over them."""

    def __init__(self, table: JobTable, lifecycle: Lifecycle, limits: QueueLimits,
                 workers: WorkerRegistry, schedules: Schedules, leasing: Leasing, alerts: Alerts) -> None:
        self.table = table
        self.lifecycle = lifecycle
        self.limits = limits
        self.workers = workers
        self.schedules = schedules
        self.leasing = leasing
        self.alerts = alerts
        self.handlers: dict[str, Callable[[dict[str, Any]], Result]] = {
            "submit": lifecycle.cmd_submit,
            "submit_many": lifecycle.cmd_submit_many,
            "lease": leasing.cmd_lease,
            "heartbeat": leasing.cmd_heartbeat,
            "complete": leasing.cmd_complete,
            "complete_many": leasing.cmd_complete_many,
            "fail": leasing.cmd_fail,
            "cancel": lifecycle.cmd_cancel,
            "retry": lifecycle.cmd_retry,
            "tick": self.cmd_tick,
            "requeue_failed": lifecycle.cmd_requeue_failed,
            "queue_limit": limits.cmd_queue_limit,
            "schedule_add": schedules.cmd_schedule_add,
            "schedule_remove": schedules.cmd_schedule_remove,
            "schedule_pause": schedules.cmd_schedule_pause,
            "schedule_resume": schedules.cmd_schedule_resume,
            "fire": schedules.cmd_fire,
            "alert_add": alerts.cmd_alert_add,
            "alert_remove": alerts.cmd_alert_remove,
            "alert_transition": alerts.cmd_alert_transition,
            "alert_delivered": alerts.cmd_alert_delivered,
        }

    @classmethod
    def empty(cls, holds: LeaseCheck) -> MachineState:
        table = JobTable()
        lifecycle = Lifecycle(table)
        limits = QueueLimits(table)
        workers = WorkerRegistry(table)
        return cls(table, lifecycle, limits, workers, Schedules(table, lifecycle),
                   Leasing(table, lifecycle, limits, workers, holds), Alerts(table, lifecycle))

    def cmd_tick(self, cmd: dict[str, Any]) -> Result:
        """Time passes: expire leases, promote due jobs, purge old final ones, drop gone workers."""
        now = self.table.clock_ms
        expired = self.leasing.expire(now)
        promoted = self.lifecycle.promote_due(now)
        purged = self.table.purge(now - cmd["retention_ms"])
        self.workers.drop_gone(now)
        return {"expired": expired, "promoted": promoted, "purged": purged}

    def settle(self) -> None:
        """After each entry: live heap tops (so due times are pure peeks), compacted indexes."""
        self.lifecycle.settle()
        self.leasing.settle()
        self.schedules.settle()
        self.table.settle()

    def next_due_ms(self) -> int | None:
        """Earliest scheduled run_at or lease deadline."""
        due = [t for t in (self.lifecycle.next_due_ms(), self.leasing.next_due_ms()) if t is not None]
        return min(due) if due else None

    # --------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, Any]:
        """Plain data: each part's section, in the format's fixed key order
        (`alerts` last, and only once alerts were used)."""
        snapshot = {
            "format": SNAPSHOT_FORMAT,
            **self.table.to_snapshot(),
            "limits": self.limits.to_snapshot(),
            "schedules": self.schedules.to_snapshot(),
            "workers": self.workers.to_snapshot(),
        }
        alerts = self.alerts.to_snapshot()
        if alerts is not None:
            snapshot["alerts"] = alerts
        return snapshot

    @classmethod
    def from_snapshot(cls, snapshot: Any, holds: LeaseCheck) -> MachineState:
        """A state indistinguishable from one that replayed the log; ValueError if invalid."""
        fmt = snapshot.get("format") if isinstance(snapshot, dict) else None
        if fmt not in READABLE_FORMATS:
            raise ValueError(f"unsupported snapshot format (expected one of {READABLE_FORMATS})")
        table = JobTable.from_snapshot(snapshot, fmt)
        lifecycle = Lifecycle.from_table(table)
        # format 1 had no limits, schedules or workers
        limits = QueueLimits.from_snapshot(table, snapshot.get("limits") if fmt >= 2 else None)
        workers = WorkerRegistry.from_snapshot(table, snapshot.get("workers") if fmt >= 2 else None)
        schedules = Schedules.from_snapshot(table, lifecycle, snapshot.get("schedules") if fmt >= 2 else None)
        leasing = Leasing.from_table(table, lifecycle, limits, workers, holds)
        alerts = Alerts.from_snapshot(table, lifecycle, snapshot.get("alerts"))  # absent before alerts
        return cls(table, lifecycle, limits, workers, schedules, leasing, alerts)

    def check_invariants(self) -> None:
        """Every part's own check (O(n); tests and debugging only)."""
        for part in (self.table, self.lifecycle, self.leasing, self.limits, self.schedules, self.workers,
                     self.alerts):
            part.check_invariants()
