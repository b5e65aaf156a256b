"""Per-queue limits: how many jobs a queue may have running, and how fast it may start them.

Rows (primary data): `limits[queue]` = {max_running, rate_milli, tokens,
refill_ms}: `rate_milli` is thousandths of a job per second, the token bucket
holds `tokens` in millionths of a job and is refilled in log time from
`refill_ms`, so every replica grants the same. Invariant: tokens >= 0.

Command: queue_limit. Snapshot section `limits`: [queue, max_running,
rate_milli, tokens, refill_ms] rows sorted by queue.
"""
from __future__ import annotations

import sys
from typing import Any

from replication.model import QUEUED, RUNNING, STATES, to_milli
from replication.state.check import need
from replication.state.jobs import JobTable

JOB_UNIT = 1_000_000  # one job in token-bucket units (millionths)

Result = dict[str, Any]


class QueueLimits:
    """`max_running` and a token-bucket rate per queue; see the module docstring."""

    def __init__(self, table: JobTable) -> None:
        self._table = table
        self.limits: dict[str, dict[str, Any]] = {}

    def refill(self, limit: dict[str, Any], now: int) -> int:
        """Tokens (millionths of a job) in `limit`'s bucket at `now`, without storing."""
        rate = limit["rate_milli"]
        if rate is None:
            return 0
        cap = max(JOB_UNIT, rate * 1000)  # a burst of one second's worth, at least one job
        elapsed = max(now - limit["refill_ms"], 0)
        return min(cap, limit["tokens"] + elapsed * rate)  # rate_milli * ms == millionths

    def allowance(self, queue: str, now: int) -> int | None:
        """How many more jobs `queue` may start now (None = unlimited); refills
        the bucket (a lease calls this once per queue, then `spend`s)."""
        limit = self.limits.get(queue)
        if limit is None:
            return None
        allow: int | None = None
        if limit["max_running"] is not None:
            running = self._table.queue_counts.get(queue, {}).get(RUNNING, 0)
            allow = max(limit["max_running"] - running, 0)
        if limit["rate_milli"] is not None:
            tokens = self.refill(limit, now)
            limit["tokens"], limit["refill_ms"] = tokens, now
            by_rate = tokens // JOB_UNIT
            allow = by_rate if allow is None else min(allow, by_rate)
        return allow

    def spend(self, queue: str) -> None:
        """One job of a limited `queue` started: take its token."""
        limit = self.limits[queue]
        if limit["rate_milli"] is not None:
            limit["tokens"] -= JOB_UNIT

    def cmd_queue_limit(self, cmd: dict[str, Any]) -> Result:
        """Set (replace) a queue's limits; both omitted removes them."""
        queue: str = cmd["queue"]
        max_running = cmd.get("max_running")
        rate = cmd.get("rate_per_s")
        if max_running is None and rate is None:
            self.limits.pop(queue, None)
            return {"queue": queue, "max_running": None, "rate_per_s": None}
        now = self._table.clock_ms
        rate_milli = None if rate is None else to_milli(rate)
        old = self.limits.get(queue)
        tokens = JOB_UNIT if rate_milli is None else max(JOB_UNIT, rate_milli * 1000)
        if old is not None and old["rate_milli"] is not None and rate_milli is not None:
            tokens = min(self.refill(old, now), tokens)  # no free refill by re-setting
        self.limits[sys.intern(queue)] = {"max_running": max_running, "rate_milli": rate_milli,
                                          "tokens": tokens, "refill_ms": now}
        return {"queue": queue, "max_running": max_running,
                "rate_per_s": None if rate_milli is None else rate_milli / 1000.0}

    # ---------------------------------------------------------------- queries

    def lease_wait_ms(self, queues: list[str], now_ms: int | None = None) -> int | None:
        """0 when some listed queue has a queued job its limits let start at
        `now_ms` (default: the log clock); else ms until a rate limit would let
        one start; None when nothing can start until the state changes."""
        clock = self._table.clock_ms
        now = clock if now_ms is None else max(now_ms, clock)
        counts = self._table.queue_counts
        best: int | None = None
        for q in queues:
            if q not in counts or counts[q][QUEUED] == 0:
                continue
            limit = self.limits.get(q)
            if limit is None:
                return 0
            if limit["max_running"] is not None and counts[q][RUNNING] >= limit["max_running"]:
                continue
            if limit["rate_milli"] is None:
                return 0
            missing = JOB_UNIT - self.refill(limit, now)
            if missing <= 0:
                return 0
            wait = -(-missing // limit["rate_milli"])  # ceil: rate_milli millionths per ms
            best = wait if best is None else min(best, wait)
        return best

    def queues(self) -> list[dict[str, Any]]:
        """Every queue with jobs or limits: counts by state and its limits."""
        counts = self._table.queue_counts
        out = []
        for q in sorted(set(counts) | set(self.limits)):
            limit = self.limits.get(q)
            rate = None if limit is None or limit["rate_milli"] is None else limit["rate_milli"] / 1000.0
            out.append({"queue": q, "jobs": dict(counts.get(q) or {s: 0 for s in STATES}),
                        "max_running": None if limit is None else limit["max_running"],
                        "rate_per_s": rate})
        return out

    # --------------------------------------------------------------- snapshot

    def to_snapshot(self) -> list[list[Any]]:
        return [[q, lim["max_running"], lim["rate_milli"], lim["tokens"], lim["refill_ms"]]
                for q, lim in sorted(self.limits.items())]

    @classmethod
    def from_snapshot(cls, table: JobTable, rows: Any) -> QueueLimits:
        part = cls(table)
        try:
            for q, max_running, rate_milli, tokens, refill_ms in rows or ():
                part.limits[sys.intern(q)] = {"max_running": max_running, "rate_milli": rate_milli,
                                              "tokens": tokens, "refill_ms": refill_ms}
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"snapshot limits malformed: {exc}") from None
        return part

    def check_invariants(self) -> None:
        for name, limit in self.limits.items():
            need(limit["tokens"] >= 0, f"queue {name}: negative tokens")
