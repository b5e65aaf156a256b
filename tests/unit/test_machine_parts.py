"""The machine as parts: the fencing hook, whole-state restore, each part's own invariants."""
from __future__ import annotations

from typing import Any

import msgpack
import pytest

from replication.machine import JobMachine
from replication.model import Job


class AnyTokenMachine(JobMachine):
    """The shape of the fault suite's injected fencing bug: every token holds."""

    def _holds_lease(self, job: Job, attempt: Any, worker: str | None = None,
                     lease_token: str | None = None) -> bool:
        return True


def _entry(now: int, *cmds: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "now_ms": now, "cmds": list(cmds)}


def _leased_twice(m: JobMachine) -> None:
    """Job "a" leased by w1 (attempt 1), expired, leased again by w2 (attempt 2)."""
    m.apply_entry(_entry(1_000, {"op": "submit", "job": {"id": "a", "type": "t"}},
                         {"op": "submit", "job": {"id": "b", "type": "t"}}))
    m.apply_entry(_entry(1_001, {"op": "lease", "worker": "w1", "queues": ["default"], "max": 2, "lease_ms": 100}))
    m.apply_entry(_entry(1_200, {"op": "tick", "retention_ms": 60_000}))
    m.apply_entry(_entry(1_201, {"op": "lease", "worker": "w2", "queues": ["default"], "max": 2, "lease_ms": 100_000}))


def _stale_reports(m: JobMachine) -> list[dict[str, Any]]:
    return m.apply_entry(_entry(1_300,
                                {"op": "heartbeat", "worker": "w1", "lease_ms": 1000, "leases": [{"id": "a", "attempt": 1}]},
                                {"op": "complete", "id": "a", "attempt": 1, "result": "stale"},
                                {"op": "fail", "id": "b", "attempt": 1, "error": "stale", "retryable": False}))


def test_stale_tokens_are_fenced_off() -> None:
    m = JobMachine()
    _leased_twice(m)
    heartbeat, complete, fail = _stale_reports(m)
    assert heartbeat == {"lost": ["a"], "cancel": []}
    assert complete["error"] == fail["error"] == "LEASE_LOST"
    assert m.get("a")["state"] == m.get("b")["state"] == "running"


@pytest.mark.parametrize("restored", [False, True])
def test_holds_lease_is_the_one_fencing_decision(restored: bool) -> None:
    """Overriding it alone lets stale heartbeats, completions and failures
    through, and a restore keeps the subclass's decision."""
    m = AnyTokenMachine()
    _leased_twice(m)
    if restored:
        snap = msgpack.unpackb(msgpack.packb(m.to_snapshot(), use_bin_type=True), raw=False)
        m = AnyTokenMachine()
        m.restore(snap)
    heartbeat, complete, fail = _stale_reports(m)
    assert heartbeat == {"lost": [], "cancel": []}
    assert complete == {"state": "succeeded"} and fail == {"state": "failed"}
    assert m.get("a")["result"] == "stale"
    m.check_invariants()


def test_restore_swaps_the_whole_state_or_nothing() -> None:
    m = JobMachine()
    _leased_twice(m)
    snap = m.to_snapshot()
    before = m.digest()
    with pytest.raises(ValueError):
        m.restore({**snap, "jobs": snap["jobs"] + [snap["jobs"][0]]})  # a job twice, found late
    assert m.digest() == before
    m.check_invariants()
    other = JobMachine()
    other.restore(snap)
    assert other.digest() == before and other.workers() == m.workers()


def _rich() -> JobMachine:
    m = JobMachine()
    m.apply_entry(_entry(1_000,
                         {"op": "submit", "job": {"id": "p", "type": "t", "unique_key": "k"}},
                         {"op": "submit", "job": {"id": "c", "type": "t", "depends_on": ["p"]}},
                         {"op": "submit", "job": {"id": "later", "type": "t", "delay_ms": 5000}},
                         {"op": "submit", "job": {"id": "q", "type": "t", "queue": "other"}},
                         {"op": "queue_limit", "queue": "other", "rate_per_s": 1},
                         {"op": "schedule_add", "next_fire_ms": 9_000,
                          "schedule": {"name": "s", "every_ms": 1000, "job": {"type": "t"}}}))
    m.apply_entry(_entry(1_001, {"op": "lease", "worker": "w", "queues": ["default"], "max": 1, "lease_ms": 1000}))
    m.check_invariants()
    return m


def _break_count(m: JobMachine) -> None:
    m._state.table.counts["queued"] += 1


def _break_unique(m: JobMachine) -> None:
    m._state.table.unique.clear()


def _break_ready(m: JobMachine) -> None:
    m._state.lifecycle.ready.clear()


def _break_dependents(m: JobMachine) -> None:
    m._state.lifecycle.dependents.clear()


def _break_leases(m: JobMachine) -> None:
    m._state.leasing.leases.clear()


def _break_limits(m: JobMachine) -> None:
    m._state.limits.limits["other"]["tokens"] = -1


def _break_fire_heap(m: JobMachine) -> None:
    m._state.schedules.fire_heap.clear()


def _break_workers(m: JobMachine) -> None:
    m._state.workers.workers["w"]["last_seen_ms"] = 10**9


@pytest.mark.parametrize("corrupt, what", [
    (_break_count, "state counters"),
    (_break_unique, "unique_key not indexed"),
    (_break_ready, "not in its ready heap"),
    (_break_dependents, "not listed under dep"),
    (_break_leases, "lease heap disagrees"),
    (_break_limits, "negative tokens"),
    (_break_fire_heap, "not in the fire heap"),
    (_break_workers, "seen after the clock"),
])
def test_each_part_checks_its_own_invariants(corrupt: Any, what: str) -> None:
    m = _rich()
    corrupt(m)
    with pytest.raises(AssertionError, match=what):
        m.check_invariants()


def _chain(now: int, queue_ids: list[str]) -> dict[str, Any]:
    """One submit_many: ids[0] <- ids[1] <- ids[2]."""
    specs = [{"id": queue_ids[0], "type": "t"}]
    specs += [{"id": queue_ids[i], "type": "t", "depends_on": [queue_ids[i - 1]]} for i in (1, 2)]
    return _entry(now, {"op": "submit_many", "jobs": specs})


def test_a_purged_child_id_reused_elsewhere_is_not_cancelled_with_its_old_parent() -> None:
    """Found by the stateful test: c waited on e, was cancelled and purged; a new
    c waits on b. Cancelling e must leave the new c pending, on a live replica
    as on one restored from a snapshot (whose index has no stale entry)."""
    live = JobMachine()
    live.apply_entry(_chain(1_000, ["a", "e", "c"]))
    live.apply_entry(_entry(1_000, {"op": "cancel", "id": "c"}))
    assert live.apply_entry(_entry(1_001, {"op": "tick", "retention_ms": 0}))[0]["purged"] == 1
    live.apply_entry(_chain(1_002, ["a", "b", "c"]))
    restored = JobMachine()
    restored.restore(live.to_snapshot())
    for m in (live, restored):
        assert m.apply_entry(_entry(1_003, {"op": "cancel", "id": "e"})) == [{"state": "cancelled"}]
        assert m.get("c")["state"] == "pending"
        m.check_invariants()
    assert live.digest() == restored.digest()
