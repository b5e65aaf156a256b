"""Cron and interval schedules, and their firings.

Rows (primary data): `schedules[name]` = {name, cron, every_ms, tz, job,
misfire, max_catch_up, paused, next_fire_ms, last_fire_ms, fired, created_ms,
missed}. The leader computes fire times (croniter, outside apply) and
proposes `fire`; a firing is accepted only if `fire_ms` > `last_fire_ms`, so a
failover can neither double nor re-run one.

Index: `fire_heap`: (next_fire_ms, name) of unpaused schedules; lazy, live iff
the schedule has that next_fire_ms and is not paused; its top is live after
every entry (`settle`), so `next_fire_ms` is a peek. Invariants: every
unpaused schedule has its (next_fire_ms, name) in the heap; the top is live.

Commands: schedule_add, schedule_remove, schedule_pause, schedule_resume,
fire. Snapshot section `schedules`: the schedule maps sorted by name.
"""
from __future__ import annotations

import heapq
from typing import Any

from replication.model import BAD_REQUEST, CONFLICT, MAX_SCHEDULES, NOT_FOUND, error
from replication.state.check import need
from replication.state.jobs import JobTable
from replication.state.lifecycle import COMPACT_SLACK, Lifecycle

Result = dict[str, Any]


class Schedules:
    """Schedules by name and their fire heap; see the module docstring."""

    def __init__(self, table: JobTable, lifecycle: Lifecycle) -> None:
        self._table = table
        self._lifecycle = lifecycle
        self.schedules: dict[str, dict[str, Any]] = {}
        self.fire_heap: list[tuple[int, str]] = []

    def _fire_live(self, item: tuple[int, str]) -> bool:
        sched = self.schedules.get(item[1])
        return sched is not None and not sched["paused"] and sched["next_fire_ms"] == item[0]

    def settle(self) -> None:
        """Drop stale tops (so `next_fire_ms` is a pure peek); compact when stale items dominate."""
        fires = self.fire_heap
        while fires and not self._fire_live(fires[0]):
            heapq.heappop(fires)
        if len(fires) > 2 * len(self.schedules) + COMPACT_SLACK:
            self.fire_heap = [i for i in fires if self._fire_live(i)]
            heapq.heapify(self.fire_heap)

    def _schedule(self, name: str) -> dict[str, Any] | Result:
        sched = self.schedules.get(name)
        return sched if sched is not None else error(NOT_FOUND, f"no schedule {name!r}")

    # --------------------------------------------------------------- commands

    def cmd_schedule_add(self, cmd: dict[str, Any]) -> Result:
        spec: dict[str, Any] = cmd["schedule"]
        name: str = spec["name"]
        definition = {
            "cron": spec.get("cron"), "every_ms": spec.get("every_ms"), "tz": spec.get("tz") or "UTC",
            "job": spec["job"], "misfire": spec.get("misfire", "skip"),
            "max_catch_up": spec.get("max_catch_up") or 1,
        }
        existing = self.schedules.get(name)
        if existing is not None:
            if all(existing[k] == v for k, v in definition.items()):
                return {"name": name, "created": False, "next_fire_ms": existing["next_fire_ms"]}
            return error(CONFLICT, f"schedule {name!r} exists with another definition; remove it first")
        if len(self.schedules) >= MAX_SCHEDULES:
            return error(CONFLICT, f"at most {MAX_SCHEDULES} schedules")
        sched = {"name": name, **definition, "paused": bool(spec.get("paused", False)),
                 "next_fire_ms": cmd["next_fire_ms"], "last_fire_ms": None, "fired": 0,
                 "created_ms": self._table.clock_ms, "missed": 0}  # missed last: where restore adds it to old snapshots
        self.schedules[name] = sched
        if not sched["paused"]:
            heapq.heappush(self.fire_heap, (sched["next_fire_ms"], name))
        return {"name": name, "created": True, "next_fire_ms": sched["next_fire_ms"]}

    def cmd_schedule_remove(self, cmd: dict[str, Any]) -> Result:
        found = self._schedule(cmd["name"])
        if "error" in found:
            return found
        del self.schedules[cmd["name"]]
        return {"name": cmd["name"], "removed": True}

    def cmd_schedule_pause(self, cmd: dict[str, Any]) -> Result:
        found = self._schedule(cmd["name"])
        if "error" in found:
            return found
        found["paused"] = True
        return {"name": cmd["name"], "paused": True}

    def cmd_schedule_resume(self, cmd: dict[str, Any]) -> Result:
        """Unpause; the leader sends the next fire time after now (no burst of missed firings)."""
        found = self._schedule(cmd["name"])
        if "error" in found:
            return found
        if found["paused"]:
            found["paused"] = False
            found["next_fire_ms"] = cmd["next_fire_ms"]
            heapq.heappush(self.fire_heap, (found["next_fire_ms"], found["name"]))
        return {"name": cmd["name"], "paused": False, "next_fire_ms": found["next_fire_ms"]}

    def cmd_fire(self, cmd: dict[str, Any]) -> Result:
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
            result = {"fired": True, **self._lifecycle.submit_one({**sched["job"], "id": f"sched:{name}:{fire_ms}"},
                                                                  schedule=name)}
            sched["fired"] += 1
            self._table.events.fired(name, missed=False)
        else:  # the leader's admission refused it: a missed firing, the schedule moves on
            result = {"fired": False, "reason": f"missed: {skip}"}
            sched["missed"] += 1
            self._table.events.fired(name, missed=True)
        sched["last_fire_ms"] = fire_ms
        sched["next_fire_ms"] = cmd["next_fire_ms"]
        heapq.heappush(self.fire_heap, (sched["next_fire_ms"], name))
        return result

    # ---------------------------------------------------------------- queries

    def next_fire_ms(self) -> int | None:
        """Earliest next fire time of an unpaused schedule (the top is live after settle)."""
        return self.fire_heap[0][0] if self.fire_heap else None

    def due(self, now_ms: int) -> list[dict[str, Any]]:
        """Unpaused schedules whose next fire time is <= now_ms, by (time, name). O(schedules)."""
        due = [dict(s) for s in self.schedules.values() if not s["paused"] and s["next_fire_ms"] <= now_ms]
        due.sort(key=lambda s: (s["next_fire_ms"], s["name"]))
        return due

    def get(self, name: str) -> dict[str, Any] | None:
        sched = self.schedules.get(name)
        return None if sched is None else dict(sched)

    def view(self) -> list[dict[str, Any]]:
        return [dict(self.schedules[n]) for n in sorted(self.schedules)]

    # --------------------------------------------------------------- snapshot

    def to_snapshot(self) -> list[dict[str, Any]]:
        return self.view()

    @classmethod
    def from_snapshot(cls, table: JobTable, lifecycle: Lifecycle, rows: Any) -> Schedules:
        part = cls(table, lifecycle)
        try:
            for sched in rows or ():
                sched = dict(sched)
                sched.setdefault("missed", 0)  # snapshots from before missed firings were counted
                part.schedules[sched["name"]] = sched
                if not sched["paused"]:
                    part.fire_heap.append((sched["next_fire_ms"], sched["name"]))
            heapq.heapify(part.fire_heap)
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"snapshot schedules malformed: {exc}") from None
        return part

    def check_invariants(self) -> None:
        """Every unpaused schedule in the fire heap; a live top."""
        for name, sched in self.schedules.items():
            if not sched["paused"]:
                need((sched["next_fire_ms"], name) in self.fire_heap, f"schedule {name}: not in the fire heap")
        need(not self.fire_heap or self._fire_live(self.fire_heap[0]), "stale fire top")
