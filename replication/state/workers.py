"""The worker registry: who leases, from which queues, with what capacity, holding what.

Rows (primary data): `workers[name]` = {queues, capacity, lease_ms,
last_seen_ms, running}; `running` is the set of ids the worker was granted or
last reported in a heartbeat, filtered by job state when read (so it may hold
stale ids). A lease or heartbeat registers and refreshes a worker; `tick`
drops one unseen for more than WORKER_GONE_LEASES x its lease_ms.
Invariant: no worker was seen after the log clock.

No command of its own (lease and heartbeat feed it). Snapshot section
`workers`: [name, queues, capacity, lease_ms, last_seen_ms, sorted running]
rows sorted by name.
"""
from __future__ import annotations

import sys
from typing import Any

from replication.model import RUNNING, Job
from replication.state.check import need
from replication.state.jobs import JobTable

WORKER_GONE_LEASES = 10  # a worker unseen for this many of its lease_ms is dropped


class WorkerRegistry:
    """Workers by name; see the module docstring."""

    def __init__(self, table: JobTable) -> None:
        self._table = table
        self.workers: dict[str, dict[str, Any]] = {}

    def see(self, worker: str, queues: list[str] | None, capacity: dict[str, Any] | None,
            lease_ms: int) -> dict[str, Any]:
        """Register or refresh `worker` (queues and capacity only when a lease names
        them); its row, whose `running` set the caller fills with what it grants."""
        now = self._table.clock_ms
        info = self.workers.get(worker)
        if info is None:
            info = self.workers[worker] = {"queues": [], "capacity": None, "lease_ms": lease_ms,
                                           "last_seen_ms": now, "running": set()}
        if queues is not None:
            info["queues"] = queues
            info["capacity"] = None if capacity is None else dict(capacity)
        info["lease_ms"] = lease_ms
        info["last_seen_ms"] = now
        return info

    def released(self, job: Job) -> None:
        """`job`'s attempt ended (outcome or expiry): its worker no longer holds it."""
        info = self.workers.get(job.worker) if job.worker is not None else None
        if info is not None:
            info["running"].discard(job.id)

    def drop_gone(self, now: int) -> None:
        """tick: forget workers unseen for WORKER_GONE_LEASES of their lease_ms."""
        gone = [w for w, info in self.workers.items()
                if now - info["last_seen_ms"] > WORKER_GONE_LEASES * info["lease_ms"]]
        for w in gone:
            del self.workers[w]

    def view(self) -> list[dict[str, Any]]:
        """The registry; `running` lists only jobs the worker really holds now."""
        jobs = self._table.jobs
        out = []
        for name in sorted(self.workers):
            info = self.workers[name]
            running = sorted(i for i in info["running"]
                             if (j := jobs.get(i)) is not None and j.state == RUNNING and j.worker == name)
            out.append({"name": name, "queues": list(info["queues"]), "capacity": info["capacity"],
                        "running": running, "lease_ms": info["lease_ms"],
                        "last_seen_at": info["last_seen_ms"] / 1000.0})
        return out

    # --------------------------------------------------------------- snapshot

    def to_snapshot(self) -> list[list[Any]]:
        return [[n, list(w["queues"]), w["capacity"], w["lease_ms"], w["last_seen_ms"], sorted(w["running"])]
                for n, w in sorted(self.workers.items())]

    @classmethod
    def from_snapshot(cls, table: JobTable, rows: Any) -> WorkerRegistry:
        part = cls(table)
        try:
            for name, queues, capacity, lease_ms, last_seen_ms, running in rows or ():
                part.workers[sys.intern(name)] = {"queues": list(queues), "capacity": capacity,
                                                  "lease_ms": lease_ms, "last_seen_ms": last_seen_ms,
                                                  "running": set(running)}
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"snapshot workers malformed: {exc}") from None
        return part

    def check_invariants(self) -> None:
        clock = self._table.clock_ms
        for name, info in self.workers.items():
            need(info["last_seen_ms"] <= clock, f"worker {name}: seen after the clock")
