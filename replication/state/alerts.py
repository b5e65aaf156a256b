"""Alert rules, their recorded transitions, and what the leader's evaluator reads.

Rows (primary data): `rules[name]` = {name, when, for_ms, webhook, email,
created_ms, firing, since_ms}: `when` is the condition's text (the leader
parses and evaluates it, cluster/alert_rules.py; apply only stores it),
`firing` whether the last recorded transition was a firing, `since_ms` the log
time of that transition (or of the rule's creation). `pending`: seq ->
transition {seq, name, state, at_ms, detail, when, webhook, email}, every
transition recorded and not yet marked delivered, in seq order; `next_seq`
numbers transitions cluster-wide (from 1); `dropped` counts pending
transitions discarded because more than MAX_PENDING_ALERTS were waiting.

Why the log holds transitions: the leader evaluates conditions against this
state and its wall clock, and *proposes* each change (`alert_transition`);
only the applied transition exists, so a failover can neither lose nor double
one. Delivery is outside apply: the current leader sends every pending
transition and proposes `alert_delivered`; a new leader resends whatever is
still pending (at-least-once; the receiver deduplicates by `NAME/seq`).

Commands: alert_add, alert_remove, alert_transition, alert_delivered.
A transition to the state a rule is already in records nothing (two leaders
may both propose it). Removing a rule drops its pending transitions.

Invariants: every pending transition names an existing rule and has a seq
below `next_seq`; at most MAX_PENDING_ALERTS are pending; no rule's since_ms
is after the log clock.

Snapshot section `alerts` (only once something was recorded, so a cluster
that never used alerts writes the snapshot it always wrote; snapshots without
it load with no rules): {rules sorted by name, pending by seq, next_seq,
dropped}.

The queries at the end (`oldest_ready_ms`, `finish_counts`) read the job
table for the evaluator; each bounds the items it visits, because it runs on
the node's event loop under the apply lock.
"""
from __future__ import annotations

from itertools import islice
from typing import Any

from replication.model import (CONFLICT, FAILED, MAX_ALERTS, MAX_PENDING_ALERTS, NOT_FOUND, QUEUED, SUCCEEDED,
                               error)
from replication.state.check import need
from replication.state.jobs import JobTable
from replication.state.lifecycle import Lifecycle

Result = dict[str, Any]

# The most items one evaluator query visits (a ready heap, the finished deque):
# a few milliseconds of the loop. Beyond it a figure covers what was visited.
SCAN_LIMIT = 10_000

_DEFINITION = ("when", "for_ms", "webhook", "email")


class Alerts:
    """Alert rules and pending transitions; see the module docstring."""

    def __init__(self, table: JobTable, lifecycle: Lifecycle) -> None:
        self._table = table
        self._lifecycle = lifecycle
        self.rules: dict[str, dict[str, Any]] = {}
        self.pending: dict[int, dict[str, Any]] = {}  # insertion order is seq order
        self.next_seq = 1
        self.dropped = 0

    # --------------------------------------------------------------- commands

    def cmd_alert_add(self, cmd: dict[str, Any]) -> Result:
        name: str = cmd["name"]
        definition = {"when": cmd["when"], "for_ms": cmd.get("for_ms") or 0,
                      "webhook": cmd.get("webhook"), "email": cmd.get("email")}
        existing = self.rules.get(name)
        if existing is not None:
            if all(existing[k] == definition[k] for k in _DEFINITION):
                return {"name": name, "created": False}
            return error(CONFLICT, f"alert {name!r} exists with another definition; remove it first")
        if len(self.rules) >= MAX_ALERTS:
            return error(CONFLICT, f"at most {MAX_ALERTS} alerts")
        now = self._table.clock_ms
        self.rules[name] = {"name": name, **definition, "created_ms": now, "firing": False, "since_ms": now}
        return {"name": name, "created": True}

    def cmd_alert_remove(self, cmd: dict[str, Any]) -> Result:
        name: str = cmd["name"]
        if self.rules.pop(name, None) is None:
            return error(NOT_FOUND, f"no alert {name!r}")
        for seq in [s for s, t in self.pending.items() if t["name"] == name]:
            del self.pending[seq]
        return {"name": name, "removed": True}

    def cmd_alert_transition(self, cmd: dict[str, Any]) -> Result:
        """Record that alert `name` started firing or resolved, at log time."""
        name: str = cmd["name"]
        rule = self.rules.get(name)
        if rule is None:
            return error(NOT_FOUND, f"no alert {name!r}")
        firing = cmd["state"] == "firing"
        if rule["firing"] == firing:
            return {"recorded": False}
        now = self._table.clock_ms
        rule["firing"] = firing
        rule["since_ms"] = now
        seq = self.next_seq
        self.next_seq += 1
        self.pending[seq] = {"seq": seq, "name": name, "state": cmd["state"], "at_ms": now,
                             "detail": cmd.get("detail"), "when": rule["when"], "webhook": rule["webhook"],
                             "email": rule["email"]}
        while len(self.pending) > MAX_PENDING_ALERTS:  # a receiver down for long: keep the newest
            del self.pending[next(iter(self.pending))]
            self.dropped += 1
        return {"recorded": True, "seq": seq}

    def cmd_alert_delivered(self, cmd: dict[str, Any]) -> Result:
        return {"delivered": self.pending.pop(cmd["seq"], None) is not None}

    # ---------------------------------------------------------------- queries

    def view(self) -> list[dict[str, Any]]:
        """Every rule with its state and how many of its transitions wait for delivery."""
        waiting: dict[str, int] = {}
        for t in self.pending.values():
            waiting[t["name"]] = waiting.get(t["name"], 0) + 1
        return [{**self.rules[n], "undelivered": waiting.get(n, 0)} for n in sorted(self.rules)]

    def is_pending(self, seq: int) -> bool:
        return seq in self.pending

    def pending_view(self) -> list[dict[str, Any]]:
        """Pending transitions in seq order."""
        return [dict(t) for t in self.pending.values()]

    def oldest_ready_ms(self, queue: str) -> int | None:
        """When the longest-waiting queued job of `queue` became ready (its run_at,
        else its creation), among the first SCAN_LIMIT items of its ready heap:
        those nearest its top, where the oldest job of the top priority is."""
        jobs = self._table.jobs
        oldest: int | None = None
        for n, (_, seq, job_id) in enumerate(self._lifecycle.ready.get(queue, ())):
            if n >= SCAN_LIMIT:
                break
            job = jobs.get(job_id)
            if job is None or job.state != QUEUED or job.seq != seq:
                continue  # a stale heap item
            ready_ms = max(job.created_ms, job.run_at_ms or 0)
            if oldest is None or ready_ms < oldest:
                oldest = ready_ms
        return oldest

    def finish_counts(self, since_ms: int) -> dict[str, tuple[int, int]]:
        """queue -> (succeeded, failed) of jobs that finished at or after
        `since_ms` (log time) and are still in that state: the newest
        SCAN_LIMIT finishes at most."""
        jobs = self._table.jobs
        counts: dict[str, tuple[int, int]] = {}
        for finished_ms, seq, job_id in islice(reversed(self._table.finished), SCAN_LIMIT):
            if finished_ms < since_ms:
                break
            job = jobs.get(job_id)
            if job is None or job.seq != seq or job.finished_ms != finished_ms:
                continue
            ok, bad = counts.get(job.queue, (0, 0))
            if job.state == SUCCEEDED:
                counts[job.queue] = (ok + 1, bad)
            elif job.state == FAILED:
                counts[job.queue] = (ok, bad + 1)
        return counts

    # --------------------------------------------------------------- snapshot

    def to_snapshot(self) -> dict[str, Any] | None:
        """None while nothing was ever recorded (the snapshot then has no section)."""
        if not self.rules and not self.pending and self.next_seq == 1 and not self.dropped:
            return None
        return {"rules": [dict(self.rules[n]) for n in sorted(self.rules)],
                "pending": [dict(t) for t in self.pending.values()],
                "next_seq": self.next_seq, "dropped": self.dropped}

    @classmethod
    def from_snapshot(cls, table: JobTable, lifecycle: Lifecycle, section: Any) -> Alerts:
        part = cls(table, lifecycle)
        if section is None:
            return part  # a snapshot from before alerts, or of a cluster that never used them
        try:
            for rule in section["rules"]:
                part.rules[rule["name"]] = dict(rule)
            for t in sorted(section["pending"], key=lambda t: t["seq"]):
                part.pending[t["seq"]] = dict(t)
            part.next_seq = int(section["next_seq"])
            part.dropped = int(section["dropped"])
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"snapshot alerts malformed: {exc}") from None
        return part

    def check_invariants(self) -> None:
        need(len(self.pending) <= MAX_PENDING_ALERTS, "too many pending alert transitions")
        last = 0
        for seq, t in self.pending.items():
            need(t["name"] in self.rules, f"alert transition {seq}: no rule {t['name']!r}")
            need(last < seq < self.next_seq, f"alert transition {seq}: out of order or not yet numbered")
            last = seq
        for name, rule in self.rules.items():
            need(rule["since_ms"] <= self._table.clock_ms, f"alert {name}: since after the clock")
