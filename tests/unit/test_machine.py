"""Scenario tables for the pure job state machine (docs/contracts.md section 1).

Every test drives `JobMachine.apply_entry` exactly as the Raft adapter does, with
an explicit `now_ms`, and checks the machine's own index invariants after each
entry (`Driver.run`).
"""
from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from replication.machine import JobMachine, backoff_delay_ms
from replication.model import BACKOFF_CAP_MS, MAX_ERROR_LEN, validate_command


class Driver:
    """A machine plus a test clock; each call is one log entry."""

    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.m = JobMachine()
        self.now = now_ms
        self.log: list[dict[str, Any]] = []

    def run(self, *cmds: dict[str, Any], now: int | None = None) -> list[dict[str, Any]]:
        if now is not None:
            self.now = now
        entry = {"v": 1, "now_ms": self.now, "cmds": list(cmds)}
        self.log.append(entry)
        results = self.m.apply_entry(entry)
        assert len(results) == len(cmds)
        msgpack.packb(results, use_bin_type=True)  # results are always plain data
        for r in results:
            assert r.get("error") != "INTERNAL", r
        self.m.check_invariants()
        return results

    def one(self, cmd: dict[str, Any], now: int | None = None) -> dict[str, Any]:
        return self.run(cmd, now=now)[0]

    def advance(self, ms: int) -> None:
        self.now += ms

    def submit(self, job_id: str, **spec: Any) -> dict[str, Any]:
        return self.one({"op": "submit", "job": {"id": job_id, "type": "t", **spec}})

    def lease(self, queues: list[str] | None = None, n: int = 1, worker: str = "w1",
              lease_ms: int = 30_000) -> list[dict[str, Any]]:
        r = self.one({"op": "lease", "worker": worker, "queues": queues or ["default"], "max": n,
                      "lease_ms": lease_ms})
        return r["jobs"]

    def complete(self, job_id: str, attempt: int, result: Any = None) -> dict[str, Any]:
        return self.one({"op": "complete", "id": job_id, "attempt": attempt, "result": result})

    def fail(self, job_id: str, attempt: int, err: str = "boom", retryable: bool = True) -> dict[str, Any]:
        return self.one({"op": "fail", "id": job_id, "attempt": attempt, "error": err, "retryable": retryable})

    def tick(self, retention_ms: int = 3_600_000) -> dict[str, Any]:
        return self.one({"op": "tick", "retention_ms": retention_ms})

    def state(self, job_id: str) -> str | None:
        view = self.m.get(job_id)
        return None if view is None else view["state"]


@pytest.fixture
def d() -> Driver:
    return Driver()


# --------------------------------------------------------------------- ordering

@pytest.mark.parametrize(
    "jobs, queues, expected",
    [
        # FIFO within one priority
        ([("a", "default", 0), ("b", "default", 0), ("c", "default", 0)], ["default"], ["a", "b", "c"]),
        # higher priority first, FIFO inside each priority
        ([("a", "default", 0), ("b", "default", 5), ("c", "default", 0), ("d", "default", 5)],
         ["default"], ["b", "d", "a", "c"]),
        # negative priorities run last
        ([("a", "default", -1), ("b", "default", 0)], ["default"], ["b", "a"]),
        # across queues: one global (-priority, seq) order over the listed queues
        ([("a", "q1", 0), ("b", "q2", 0), ("c", "q1", 0), ("d", "q2", 3)], ["q1", "q2"], ["d", "a", "b", "c"]),
        # queue order in the request does not matter
        ([("a", "q1", 0), ("b", "q2", 0)], ["q2", "q1"], ["a", "b"]),
        # unlisted queues are never leased
        ([("a", "q1", 9), ("b", "q2", 0), ("c", "q3", 0)], ["q2", "q3", "nope"], ["b", "c"]),
    ],
)
def test_lease_order_priority_then_fifo(d: Driver, jobs: list[tuple[str, str, int]], queues: list[str],
                                        expected: list[str]) -> None:
    for job_id, queue, prio in jobs:
        assert d.submit(job_id, queue=queue, priority=prio) == {"id": job_id, "created": True, "state": "queued"}
    leased = d.lease(queues, n=10)
    assert [j["id"] for j in leased] == expected
    assert all(j["attempt"] == 1 and j["state"] == "running" and j["worker"] == "w1" for j in leased)


def test_lease_respects_max_and_one_at_a_time(d: Driver) -> None:
    for i in range(5):
        d.submit(f"j{i}")
    assert [j["id"] for j in d.lease(n=2)] == ["j0", "j1"]
    assert [j["id"] for j in d.lease(n=1)] == ["j2"]
    assert [j["id"] for j in d.lease(n=10)] == ["j3", "j4"]
    assert d.lease(n=10) == []
    assert not d.m.has_ready(["default"])


def test_leased_job_view_fields(d: Driver) -> None:
    d.submit("a", args={"x": [1, 2]}, timeout_ms=1500, max_attempts=4, unique_key="k")
    [job] = d.lease(lease_ms=10_000)
    assert job["lease_deadline_at"] == (d.now + 10_000) / 1000
    assert job["started_at"] == job["created_at"] == d.now / 1000
    assert job["timeout_s"] == 1.5 and job["args"] == {"x": [1, 2]} and job["max_attempts"] == 4
    assert job["unique_key"] == "k" and job["progress"] is None
    expected_keys = {"id", "type", "args", "queue", "priority", "state", "attempts", "max_attempts", "result",
                     "error", "created_at", "started_at", "finished_at", "run_at", "timeout_s", "unique_key",
                     "worker", "progress", "depends_on", "schedule", "resources", "lease_expiries",
                     "max_lease_expiries"}
    assert set(job) == expected_keys | {"attempt", "lease_deadline_at"}
    assert set(d.m.get("a")) == expected_keys


def test_requeued_job_keeps_its_fifo_place(d: Driver) -> None:
    d.submit("a", backoff_ms=0)
    d.submit("b")
    [a] = d.lease()
    assert d.fail("a", a["attempt"]) == {"state": "queued"}
    assert [j["id"] for j in d.lease(n=2)] == ["a", "b"]


# ------------------------------------------------------------- delayed jobs

def test_delayed_jobs_promoted_by_tick_in_due_order(d: Driver) -> None:
    t0 = d.now
    d.submit("late", delay_ms=3000)
    d.submit("early", delay_ms=1000)
    d.submit("abs", run_at_ms=t0 + 2000)
    d.submit("past", run_at_ms=t0 - 5)  # already due: queued at once
    assert d.state("past") == "queued"
    assert d.m.next_due_ms() == t0 + 1000
    assert [j["id"] for j in d.lease(n=10)] == ["past"]

    d.advance(999)
    assert d.tick()["promoted"] == 0
    d.advance(1)
    assert d.tick()["promoted"] == 1
    assert d.m.next_due_ms() == t0 + 2000
    d.advance(5000)
    assert d.tick()["promoted"] == 2
    # promoted jobs keep their submit (seq) order, not their due order
    assert [j["id"] for j in d.lease(n=10)] == ["late", "early", "abs"]
    assert d.m.get("abs")["run_at"] == (t0 + 2000) / 1000


def test_scheduled_job_is_not_leased_before_tick(d: Driver) -> None:
    d.submit("a", delay_ms=10)
    d.advance(100)
    assert d.lease() == []  # only tick promotes
    assert not d.m.has_ready(["default"])
    d.tick()
    assert d.m.has_ready(["default"])
    assert [j["id"] for j in d.lease()] == ["a"]


# ----------------------------------------------------------------- fencing

def test_lease_fencing_stale_attempts_rejected(d: Driver) -> None:
    d.submit("a")
    [a1] = d.lease(lease_ms=1000)
    assert a1["attempt"] == 1
    assert d.complete("a", 2)["error"] == "LEASE_LOST"
    assert d.complete("a", 0)["error"] == "LEASE_LOST"
    assert d.m.next_due_ms() == d.now + 1000

    d.advance(1000)
    assert d.tick() == {"expired": 1, "promoted": 0, "purged": 0}
    view = d.m.get("a")
    assert view["state"] == "queued" and view["worker"] is None and "lease expired" in view["error"]
    [a2] = d.lease(worker="w2")
    assert a2["attempt"] == 2 and a2["worker"] == "w2"
    # the first holder's token is dead for complete, fail and heartbeat
    assert d.complete("a", 1)["error"] == "LEASE_LOST"
    assert d.fail("a", 1)["error"] == "LEASE_LOST"
    assert d.one({"op": "heartbeat", "worker": "w1", "lease_ms": 1000,
                  "leases": [{"id": "a", "attempt": 1}]}) == {"lost": ["a"], "cancel": []}
    assert d.complete("a", 2, {"ok": True}) == {"state": "succeeded"}
    assert d.m.get("a")["result"] == {"ok": True}
    assert d.m.get("a")["lease_expiries"] == 1


def test_complete_duplicate_and_missing(d: Driver) -> None:
    d.submit("a")
    [a] = d.lease()
    assert d.complete("a", 1, 42) == {"state": "succeeded"}
    assert d.complete("a", 1, 43) == {"state": "succeeded", "duplicate": True}
    assert d.m.get("a")["result"] == 42  # the outcome is recorded once
    assert d.complete("a", 2)["error"] == "LEASE_LOST"
    assert d.complete("nope", 1)["error"] == "NOT_FOUND"
    assert d.fail("nope", 1)["error"] == "NOT_FOUND"


def test_lease_expiry_exhausts_attempts(d: Driver) -> None:
    d.submit("a", max_attempts=2)
    for attempt in (1, 2):
        [j] = d.lease(lease_ms=50)
        assert j["attempt"] == attempt
        d.advance(50)
        assert d.tick()["expired"] == 1
    view = d.m.get("a")
    assert view["state"] == "failed" and view["attempts"] == 2
    assert view["error"].startswith("lease expired")
    assert view["finished_at"] == d.now / 1000
    assert d.m.get("a")["lease_expiries"] == 2
    assert d.m.live_count() == 0


# ------------------------------------------------------------------ retries

@pytest.mark.parametrize(
    "backoff_ms, attempt, base",
    [
        (1000, 1, 1000),
        (1000, 2, 2000),
        (1000, 3, 4000),
        (1000, 9, 256_000),
        (1000, 10, BACKOFF_CAP_MS),   # 512 s capped at 300 s
        (500_000, 1, BACKOFF_CAP_MS),  # a base over the cap is capped too
        (1, 1000, BACKOFF_CAP_MS),
    ],
)
def test_backoff_delay_table(backoff_ms: int, attempt: int, base: int) -> None:
    delay = backoff_delay_ms("job-x", attempt, backoff_ms)
    assert 0.8 * base <= delay < 1.2 * base
    assert delay == backoff_delay_ms("job-x", attempt, backoff_ms)  # deterministic


def test_backoff_jitter_varies_by_id_and_attempt() -> None:
    delays = {backoff_delay_ms(f"j{i}", 1, 10_000) for i in range(50)}
    assert len(delays) > 40
    assert all(8000 <= x < 12_000 for x in delays)
    assert backoff_delay_ms("a", 1, 0) == 0


def test_fail_schedules_retry_with_backoff(d: Driver) -> None:
    d.submit("a", backoff_ms=1000, max_attempts=3)
    [j] = d.lease()
    t_fail = d.now
    assert d.fail("a", 1, "oops") == {"state": "scheduled"}
    delay = backoff_delay_ms("a", 1, 1000)
    view = d.m.get("a")
    assert view["error"] == "oops" and view["worker"] is None and view["attempts"] == 1
    assert view["run_at"] == (t_fail + delay) / 1000
    assert d.m.next_due_ms() == t_fail + delay
    d.advance(delay - 1)
    assert d.tick()["promoted"] == 0
    d.advance(1)
    assert d.tick()["promoted"] == 1
    [j] = d.lease()
    assert j["attempt"] == 2
    t_fail = d.now
    assert d.fail("a", 2) == {"state": "scheduled"}
    assert d.m.next_due_ms() == t_fail + backoff_delay_ms("a", 2, 1000)


def test_same_log_gives_same_retry_time() -> None:
    runs = []
    for _ in range(2):
        drv = Driver()
        drv.submit("same-id", backoff_ms=5000)
        drv.lease()
        drv.fail("same-id", 1)
        runs.append(drv.m.next_due_ms())
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "max_attempts, retryable, outcomes",
    [
        (3, True, ["queued", "queued", "failed"]),
        (1, True, ["failed"]),
        (3, False, ["failed"]),
    ],
)
def test_fail_until_dead_letter(d: Driver, max_attempts: int, retryable: bool, outcomes: list[str]) -> None:
    d.submit("a", max_attempts=max_attempts, backoff_ms=0)
    for i, expected in enumerate(outcomes, start=1):
        [j] = d.lease()
        assert j["attempt"] == i
        assert d.fail("a", i, f"err{i}", retryable=retryable) == {"state": expected}
    view = d.m.get("a")
    assert view["state"] == "failed" and view["error"] == f"err{len(outcomes)}"
    assert view["attempts"] == len(outcomes)
    assert d.lease() == []


def test_long_error_is_truncated(d: Driver) -> None:
    d.submit("a", max_attempts=1)
    d.lease()
    assert d.fail("a", 1, "x" * (MAX_ERROR_LEN + 10)) == {"state": "failed"}
    assert len(d.m.get("a")["error"]) == MAX_ERROR_LEN


# ----------------------------------------------------------- cancel / retry

@pytest.mark.parametrize(
    "setup, expected",
    [
        ("queued", {"state": "cancelled"}),
        ("scheduled", {"state": "cancelled"}),
        ("running", {"state": "cancelled"}),
        ("succeeded", "CONFLICT"),
        ("failed", "CONFLICT"),
        ("cancelled", "CONFLICT"),
        ("missing", "NOT_FOUND"),
    ],
)
def test_cancel_table(d: Driver, setup: str, expected: Any) -> None:
    if setup != "missing":
        d.submit("a", delay_ms=1000 if setup == "scheduled" else None, max_attempts=1)
    if setup in ("running", "succeeded", "failed"):
        d.lease()
    if setup == "succeeded":
        d.complete("a", 1)
    elif setup == "failed":
        d.fail("a", 1)
    elif setup == "cancelled":
        d.one({"op": "cancel", "id": "a"})
    before = d.state("a")
    r = d.one({"op": "cancel", "id": "a"})
    if isinstance(expected, str):
        assert r["error"] == expected and d.state("a") == before
    else:
        assert r == expected and d.state("a") == "cancelled"
        assert d.m.get("a")["finished_at"] == d.now / 1000
        assert d.lease() == [] and d.m.next_due_ms() is None


def test_cancel_running_tells_worker_and_voids_lease(d: Driver) -> None:
    d.submit("a")
    [j] = d.lease(worker="w1", lease_ms=1000)
    d.one({"op": "cancel", "id": "a"})
    hb = d.one({"op": "heartbeat", "worker": "w1", "lease_ms": 1000, "leases": [{"id": "a", "attempt": 1}]})
    assert hb == {"lost": [], "cancel": ["a"]}
    other = d.one({"op": "heartbeat", "worker": "w2", "lease_ms": 1000, "leases": [{"id": "a", "attempt": 1}]})
    assert other == {"lost": ["a"], "cancel": []}
    assert d.complete("a", 1)["error"] == "LEASE_LOST"
    d.advance(5000)
    assert d.tick()["expired"] == 0  # the void lease never expires into a requeue
    assert d.state("a") == "cancelled"


@pytest.mark.parametrize("final", ["failed", "cancelled"])
def test_retry_requeues_with_new_seq_and_reset_attempts(d: Driver, final: str) -> None:
    d.submit("a", max_attempts=1)
    d.submit("b")
    d.lease()  # a
    if final == "failed":
        d.fail("a", 1)
    else:
        d.one({"op": "cancel", "id": "a"})
    d.submit("c")
    assert d.one({"op": "retry", "id": "a"}) == {"state": "queued"}
    view = d.m.get("a")
    assert view["attempts"] == 0 and view["error"] is None and view["finished_at"] is None
    # new seq: it goes behind the jobs already waiting
    assert [j["id"] for j in d.lease(n=5)] == ["b", "c", "a"]
    assert d.m.get("a")["attempts"] == 1


@pytest.mark.parametrize("state", ["queued", "running", "succeeded"])
def test_retry_conflicts_unless_failed_or_cancelled(d: Driver, state: str) -> None:
    d.submit("a")
    if state != "queued":
        d.lease()
    if state == "succeeded":
        d.complete("a", 1)
    assert d.one({"op": "retry", "id": "a"})["error"] == "CONFLICT"
    assert d.one({"op": "retry", "id": "zz"})["error"] == "NOT_FOUND"


# ---------------------------------------------------------- idempotent submit

def test_submit_is_idempotent_by_id(d: Driver) -> None:
    assert d.submit("a", args={"v": 1}) == {"id": "a", "created": True, "state": "queued"}
    assert d.submit("a", args={"v": 1}) == {"id": "a", "created": False, "state": "queued"}
    assert d.submit("a", args={"v": 2}, queue="other")["error"] == "CONFLICT"  # tests/unit/test_submit_conflict.py
    assert d.m.get("a")["args"] == {"v": 1}
    d.lease()
    assert d.submit("a", args={"v": 1}) == {"id": "a", "created": False, "state": "running"}
    assert d.m.stats()["jobs"]["running"] == 1 and d.m.live_count() == 1


def test_unique_key_returns_live_holder_then_frees(d: Driver) -> None:
    assert d.submit("a", unique_key="k")["created"] is True
    assert d.submit("b", unique_key="k") == {"id": "a", "created": False, "state": "queued"}
    assert d.m.get("b") is None
    d.lease()
    d.complete("a", 1)
    assert d.submit("b", unique_key="k") == {"id": "b", "created": True, "state": "queued"}
    # a retry may not take a key a live job holds
    d.lease()
    d.one({"op": "cancel", "id": "b"})
    d.submit("c", unique_key="k")
    assert d.one({"op": "retry", "id": "b"})["error"] == "CONFLICT"


def test_submit_many_results_and_whole_batch_validation(d: Driver) -> None:
    r = d.one({"op": "submit_many", "jobs": [{"id": "a", "type": "t"}, {"id": "b", "type": "t"},
                                             {"id": "a", "type": "t"}]})
    assert [x["created"] for x in r["results"]] == [True, True, False]
    bad = d.one({"op": "submit_many", "jobs": [{"id": "c", "type": "t"}, {"id": "d"}]})
    assert bad["error"] == "BAD_REQUEST" and "jobs[1]" in bad["message"]
    assert d.m.get("c") is None  # nothing of a bad batch is applied


# ---------------------------------------------------------------- heartbeat

def test_heartbeat_extends_stores_progress_and_reports_lost(d: Driver) -> None:
    d.submit("a")
    d.submit("b")
    d.lease(n=2, worker="w1", lease_ms=1000)
    d.advance(900)
    hb = d.one({"op": "heartbeat", "worker": "w1", "lease_ms": 1000, "leases": [
        {"id": "a", "attempt": 1, "progress": [0.5, "half"]},
        {"id": "b", "attempt": 7},
        {"id": "ghost", "attempt": 1},
    ]})
    assert hb == {"lost": ["b", "ghost"], "cancel": []}
    assert d.m.get("a")["progress"] == [0.5, "half"]
    d.advance(200)  # past b's deadline, inside a's extended one
    assert d.tick()["expired"] == 1
    assert d.state("a") == "running" and d.state("b") == "queued"
    assert d.m.next_due_ms() == d.now - 200 + 1000
    d.advance(800)
    assert d.tick()["expired"] == 1
    assert d.state("a") == "queued"


# -------------------------------------------------------------- retention

def test_tick_purges_final_jobs_after_retention(d: Driver) -> None:
    d.submit("a")
    d.submit("b")
    d.submit("keep")
    d.lease(n=2)
    d.complete("a", 1)
    d.advance(500)
    d.one({"op": "cancel", "id": "b"})
    d.advance(1000)
    assert d.tick(retention_ms=1000) == {"expired": 0, "promoted": 0, "purged": 1}  # a: 1500 ago
    assert d.m.get("a") is None and d.m.get("b") is not None
    d.advance(1)
    assert d.tick(retention_ms=1000)["purged"] == 1
    assert d.m.get("b") is None and d.state("keep") == "queued"
    assert d.m.stats()["jobs"]["succeeded"] == 0
    # a purged id may be submitted again as a new job
    assert d.submit("a")["created"] is True


def test_retried_job_is_not_purged_by_its_old_finish(d: Driver) -> None:
    d.submit("a", max_attempts=1)
    d.lease()
    d.fail("a", 1)
    d.one({"op": "retry", "id": "a"})
    d.advance(10_000)
    assert d.tick(retention_ms=0)["purged"] == 0
    assert d.state("a") == "queued"


# ------------------------------------------------------------ clock + stats

def test_clock_never_goes_backwards(d: Driver) -> None:
    d.run(now=5000)
    d.submit("a", delay_ms=100)
    d.run({"op": "tick", "retention_ms": 0}, now=1000)  # a stale leader stamp
    assert d.m.stats()["clock_ms"] == 5000
    assert d.state("a") == "scheduled"
    d.submit("b")
    assert d.m.get("b")["created_at"] == 5.0
    d.run({"op": "tick", "retention_ms": 0}, now=5100)
    assert d.state("a") == "queued"


def test_stats_and_queries(d: Driver) -> None:
    assert d.m.stats() == {"jobs": {s: 0 for s in ("pending", "scheduled", "queued", "running", "succeeded",
                                                   "failed", "cancelled")},
                           "queues": {}, "clock_ms": 0, "live": 0, "held": 0, "held_bytes": 0}
    d.submit("a", queue="q1")
    d.submit("b", queue="q2", delay_ms=10)
    d.submit("c", queue="q1")
    d.lease(["q1"])
    d.complete("a", 1)
    s = d.m.stats()
    assert s["jobs"]["queued"] == 1 and s["jobs"]["scheduled"] == 1 and s["jobs"]["succeeded"] == 1
    assert s["queues"]["q1"]["succeeded"] == 1 and s["queues"]["q1"]["queued"] == 1
    assert s["queues"]["q2"]["scheduled"] == 1 and s["live"] == 2 == d.m.live_count()
    assert d.m.has_ready(["q1"]) and not d.m.has_ready(["q2", "zzz"])
    d.tick(retention_ms=0)
    assert "q1" in d.m.stats()["queues"]


def test_list_jobs_paging_and_filters(d: Driver) -> None:
    for i in range(7):
        d.submit(f"j{i}", queue="odd" if i % 2 else "even")
    d.lease(["even"])  # j0 running
    page, cursor = d.m.list_jobs(limit=3)
    assert [v["id"] for v in page] == ["j0", "j1", "j2"] and cursor is not None
    seen = [v["id"] for v in page]
    while cursor is not None:
        page, cursor = d.m.list_jobs(limit=3, cursor=cursor)
        seen += [v["id"] for v in page]
    assert seen == [f"j{i}" for i in range(7)]
    assert [v["id"] for v in d.m.list_jobs(queue="odd")[0]] == ["j1", "j3", "j5"]
    assert [v["id"] for v in d.m.list_jobs(state="running")[0]] == ["j0"]
    assert d.m.list_jobs(state="queued", queue="even", limit=10) == (
        [d.m.get("j2"), d.m.get("j4"), d.m.get("j6")], None)
    for bad in ({"state": "nope"}, {"limit": 0}, {"cursor": -1}, {"cursor": "x"}):
        with pytest.raises(ValueError):
            d.m.list_jobs(**bad)


# ------------------------------------------------------------- bad input

@pytest.mark.parametrize(
    "cmd",
    [
        None, 5, "submit", [], {}, {"op": "nope"}, {"op": 3},
        {"op": "submit"}, {"op": "submit", "job": {"type": "t"}}, {"op": "submit", "job": {"id": "", "type": "t"}},
        {"op": "submit", "job": {"id": "x" * 201, "type": "t"}},
        {"op": "submit", "job": {"id": "a", "type": "t", "priority": "high"}},
        {"op": "submit", "job": {"id": "a", "type": "t", "priority": True}},
        {"op": "submit", "job": {"id": "a", "type": "t", "max_attempts": 0}},
        {"op": "submit", "job": {"id": "a", "type": "t", "delay_ms": -1}},
        {"op": "submit", "job": {"id": "a", "type": "t", "bogus": 1}},
        {"op": "submit", "job": {"id": "a", "type": "t", "args": {1.5: "x"}}},
        {"op": "submit", "job": {"id": "a", "type": "t", "args": object()}},
        {"op": "submit", "job": {"id": "a", "type": "t", "args": 2**70}},
        {"op": "submit_many", "jobs": []},
        {"op": "lease", "worker": "w", "queues": [], "max": 1, "lease_ms": 10},
        {"op": "lease", "worker": "w", "queues": ["q"], "max": 0, "lease_ms": 10},
        {"op": "lease", "worker": "w", "queues": "q", "max": 1, "lease_ms": 10},
        {"op": "lease", "worker": "w", "queues": ["q"], "max": 1},
        {"op": "heartbeat", "worker": "w", "lease_ms": 10, "leases": [{"id": "a"}]},
        {"op": "heartbeat", "worker": "w", "lease_ms": 10, "leases": [{"id": "a", "attempt": 1,
                                                                      "progress": [float("nan"), "x"]}]},
        {"op": "heartbeat", "worker": "w", "lease_ms": 10, "leases": [{"id": "a", "attempt": 1,
                                                                      "progress": [10**400, "x"]}]},
        {"op": "complete", "id": "a"},
        {"op": "complete", "id": "a", "attempt": "1"},
        {"op": "fail", "id": "a", "attempt": 1},
        {"op": "fail", "id": "a", "attempt": 1, "error": "e", "retryable": "yes"},
        {"op": "cancel"}, {"op": "retry", "id": 7}, {"op": "tick"}, {"op": "tick", "retention_ms": -1},
    ],
)
def test_malformed_commands_are_bad_request(d: Driver, cmd: Any) -> None:
    assert validate_command(cmd) is not None
    r = d.m.apply_entry({"v": 1, "now_ms": 5, "cmds": [cmd]})
    assert r[0]["error"] == "BAD_REQUEST" and isinstance(r[0]["message"], str)
    assert d.m.live_count() == 0


@pytest.mark.parametrize(
    "entry, n_results",
    [
        (None, 0), ([], 0), ({"v": 1, "now_ms": 1}, 0), ({"v": 1, "now_ms": 1, "cmds": "x"}, 0),
        ({"v": 2, "now_ms": 1, "cmds": [{"op": "tick", "retention_ms": 0}]}, 1),
        ({"v": True, "now_ms": 1, "cmds": [{"op": "tick", "retention_ms": 0}]}, 1),
        ({"v": 1, "now_ms": -1, "cmds": [{"op": "tick", "retention_ms": 0}]}, 1),
        ({"v": 1, "now_ms": 1.5, "cmds": [{"op": "tick", "retention_ms": 0}] * 2}, 2),
    ],
)
def test_malformed_entries(entry: Any, n_results: int) -> None:
    m = JobMachine()
    results = m.apply_entry(entry)
    assert len(results) == n_results
    assert all(r["error"] == "BAD_REQUEST" for r in results)
    assert m.stats()["clock_ms"] == 0


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    choices: list[Any] = [None, True, -3, 0, 1, 2**65, "", "x", "default", 1.5, float("inf"), b"b", object()]
    if depth < 2:
        choices += [[_random_value(rng, depth + 1) for _ in range(rng.randrange(3))],
                    {rng.choice(["id", "type", "attempt", 1]): _random_value(rng, depth + 1)}]
    return rng.choice(choices)


_FIELDS = ["op", "job", "jobs", "id", "attempt", "worker", "queues", "max", "lease_ms", "leases", "error",
           "retryable", "retention_ms", "result", "progress"]


def test_fuzz_random_commands_never_raise() -> None:
    rng = random.Random(1234)
    m = JobMachine()
    ops = ["submit", "submit_many", "lease", "heartbeat", "complete", "fail", "cancel", "retry", "tick", "x"]
    valid_job = {"id": "j", "type": "t"}
    for i in range(600):
        cmd: dict[Any, Any] = {"op": rng.choice(ops)}
        for field in rng.sample(_FIELDS, rng.randrange(6)):
            cmd[field] = _random_value(rng)
        if rng.random() < 0.3:
            cmd["job"] = {**valid_job, rng.choice(["id", "priority", "args", "delay_ms"]): _random_value(rng)}
        if rng.random() < 0.2:
            cmd["leases"] = [{"id": _random_value(rng), "attempt": _random_value(rng),
                              "progress": _random_value(rng)}]
        results = m.apply_entry({"v": 1, "now_ms": i, "cmds": [cmd]})
        assert len(results) == 1
        assert results[0].get("error") != "INTERNAL", (cmd, results)
        if results[0].get("error") == "BAD_REQUEST":
            assert validate_command(cmd) is not None
    m.check_invariants()
    m.digest()


# ----------------------------------------------------------- determinism

def _random_log(seed: int, n_entries: int = 300) -> list[dict[str, Any]]:
    """A plausible command log: submits, leases, outcomes, cancels, ticks.

    Built against a scratch machine so that most complete/fail/heartbeat
    commands carry a token some lease really handed out (some of them stale).
    """
    rng = random.Random(seed)
    scratch = JobMachine()
    log: list[dict[str, Any]] = []
    now = 1_000
    ids = [f"job-{i}" for i in range(40)]
    tokens: list[tuple[str, int, str]] = []  # (id, attempt, worker) from lease results
    for _ in range(n_entries):
        now += rng.choice([0, 1, 7, 50, 400, 2000])
        cmds: list[dict[str, Any]] = []
        for _ in range(rng.randrange(1, 4)):
            jid = rng.choice(ids)
            attempt, worker = rng.randrange(1, 4), rng.choice(["w1", "w2"])
            if tokens and rng.random() < 0.8:
                jid, attempt, worker = rng.choice(tokens[-8:])
            kind = rng.random()
            if kind < 0.3:
                cmds.append({"op": "submit", "job": {
                    "id": rng.choice(ids), "type": "t", "args": {"n": rng.randrange(100)},
                    "queue": rng.choice(["a", "b"]), "priority": rng.choice([0, 0, 1, 5]),
                    "max_attempts": rng.randrange(1, 4), "backoff_ms": rng.choice([0, 100, 1000]),
                    "delay_ms": rng.choice([None, None, 300]),
                    "unique_key": rng.choice([None, None, None, "u1", "u2"])}})
            elif kind < 0.5:
                cmds.append({"op": "lease", "worker": worker, "queues": rng.choice([["a"], ["b"], ["a", "b"]]),
                             "max": rng.randrange(1, 4), "lease_ms": rng.choice([100, 1000, 5000])})
            elif kind < 0.62:
                cmds.append({"op": "complete", "id": jid, "attempt": attempt, "result": [jid]})
            elif kind < 0.72:
                cmds.append({"op": "fail", "id": jid, "attempt": attempt, "error": "e",
                             "retryable": rng.random() < 0.8})
            elif kind < 0.8:
                cmds.append({"op": "heartbeat", "worker": worker, "lease_ms": 1000,
                             "leases": [{"id": jid, "attempt": attempt, "progress": [0.25, "p"]}]})
            elif kind < 0.85:
                cmds.append({"op": "cancel", "id": jid})
            elif kind < 0.9:
                cmds.append({"op": "retry", "id": jid})
            else:
                cmds.append({"op": "tick", "retention_ms": rng.choice([0, 10_000, 100_000])})
        entry = {"v": 1, "now_ms": now, "cmds": cmds}
        for cmd, result in zip(cmds, scratch.apply_entry(entry)):
            if cmd["op"] == "lease":
                tokens += [(j["id"], j["attempt"], cmd["worker"]) for j in result["jobs"]]
        log.append(entry)
    return log


def _outcomes(log: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    m = JobMachine()
    counts: dict[tuple[str, str], int] = {}
    for entry in log:
        for cmd, r in zip(entry["cmds"], m.apply_entry(entry)):
            key = (cmd["op"], r.get("error") or r.get("state") or "ok")
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_random_log_exercises_every_outcome() -> None:
    """Guards the determinism tests below against a log that does nothing interesting."""
    counts: dict[tuple[str, str], int] = {}
    for seed in (1, 2, 3, 4, 5, 6):
        for key, n in _outcomes(_random_log(seed)).items():
            counts[key] = counts.get(key, 0) + n
    for key in [("complete", "succeeded"), ("complete", "LEASE_LOST"), ("fail", "scheduled"), ("fail", "queued"),
                ("fail", "failed"), ("cancel", "cancelled"), ("retry", "queued"), ("submit", "queued")]:
        assert counts.get(key, 0) >= 3, (key, counts)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_same_log_same_digest_and_results(seed: int) -> None:
    log = _random_log(seed)
    a, b = JobMachine(), JobMachine()
    for entry in log:
        # the adapter hands each replica its own decoded copy of the entry
        ra = a.apply_entry(msgpack.unpackb(msgpack.packb(entry)))
        rb = b.apply_entry(msgpack.unpackb(msgpack.packb(entry)))
        assert ra == rb
    a.check_invariants()
    assert a.digest() == b.digest()
    assert a.stats()["jobs"] != {}  # the log did something
    assert sum(a.stats()["jobs"].values()) > 0


@pytest.mark.parametrize("seed, cut", [(4, 0), (5, 100), (6, 299)])
def test_snapshot_restore_then_replay_is_byte_identical(seed: int, cut: int) -> None:
    log = _random_log(seed)
    straight = JobMachine()
    for entry in log:
        straight.apply_entry(entry)

    first = JobMachine()
    for entry in log[:cut]:
        first.apply_entry(entry)
    wire = msgpack.packb(first.to_snapshot(), use_bin_type=True)  # as the adapter would store it
    restored = JobMachine()
    restored.apply_entry({"v": 1, "now_ms": 99, "cmds": [{"op": "submit", "job": {"id": "junk", "type": "t"}}]})
    restored.restore(msgpack.unpackb(wire, raw=False))  # replaces all previous state
    assert restored.digest() == first.digest()
    restored.check_invariants()
    for entry in log[cut:]:
        assert restored.apply_entry(entry) == first.apply_entry(entry)
    assert msgpack.packb(restored.to_snapshot()) == msgpack.packb(straight.to_snapshot())
    assert restored.digest() == straight.digest()
    assert restored.next_due_ms() == straight.next_due_ms()
    assert restored.stats() == straight.stats()


def test_snapshot_is_plain_data_in_seq_order(d: Driver) -> None:
    d.submit("b")
    d.submit("a")
    snap = d.m.to_snapshot()
    assert snap["format"] == 2 and snap["clock_ms"] == d.now and snap["next_seq"] == 3
    seq_index = snap["job_fields"].index("seq")
    assert [row[seq_index] for row in snap["jobs"]] == [1, 2]
    assert msgpack.unpackb(msgpack.packb(snap)) == snap


@pytest.mark.parametrize("bad", [None, {}, {"format": 3}, {"format": 1, "job_fields": ["id"]},
                                 {"format": 2, "job_fields": ["id"]}])
def test_restore_rejects_bad_snapshot_and_keeps_state(d: Driver, bad: Any) -> None:
    d.submit("a")
    before = d.m.digest()
    with pytest.raises(ValueError):
        d.m.restore(bad)
    assert d.m.digest() == before


def test_late_heartbeat_before_tick_keeps_the_lease(d: Driver) -> None:
    """A lease ends only through tick: until then its holder may still extend or complete it."""
    d.submit("a")
    d.lease(lease_ms=100)
    d.advance(150)
    assert d.one({"op": "heartbeat", "worker": "w1", "lease_ms": 100,
                  "leases": [{"id": "a", "attempt": 1}]}) == {"lost": [], "cancel": []}
    assert d.tick()["expired"] == 0
    assert d.complete("a", 1) == {"state": "succeeded"}


def test_state_machine_modules_stay_pure() -> None:
    """The apply path imports no clock, randomness, I/O, threads or pysyncobj."""
    import ast
    import pathlib

    import replication.machine
    import replication.model

    banned = {"asyncio", "socket", "time", "random", "os", "threading", "pysyncobj", "datetime", "uuid"}
    for module in (replication.machine, replication.model):
        tree = ast.parse(pathlib.Path(module.__file__).read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & banned, (module.__name__, imported & banned)


# ------------------------------------------------------------ held jobs and bytes

def _packed(value: Any) -> int:
    return len(msgpack.packb(value, use_bin_type=True))


def test_held_counters_follow_every_change_of_args_result_and_error(d: Driver) -> None:
    """Admission reads `held_count` / `held_bytes`: every job until purged, and
    the msgpack sizes of its args, result and error (Driver.run recounts them
    through check_invariants after every entry)."""
    args = {"blob": "x" * 1000}
    d.submit("a", args=args)
    d.submit("b")
    base = _packed(args) + _packed({})
    assert (d.m.held_count(), d.m.held_bytes()) == (2, base)
    [job] = d.lease()
    d.fail("a", job["attempt"], err="e" * 500)  # retried: the error is held while it waits
    assert d.m.held_bytes() == base + _packed("e" * 500)
    d.advance(10_000)
    d.tick()  # the backoff is over: a is queued again
    jobs = d.lease(n=2)
    attempt = {j["id"]: j["attempt"] for j in jobs}
    d.fail("a", attempt["a"], err="final", retryable=False)
    d.complete("b", attempt["b"], result={"r": [1, 2, 3]})
    assert d.m.held_count() == 2  # final jobs still count
    assert d.m.held_bytes() == base + _packed("final") + _packed({"r": [1, 2, 3]})
    d.one({"op": "retry", "id": "a"})  # clears the error
    assert d.m.held_bytes() == base + _packed({"r": [1, 2, 3]})
    d.advance(10_000)
    d.tick(retention_ms=0)  # purges b only (a is queued again)
    assert (d.m.held_count(), d.m.held_bytes()) == (1, _packed(args))


def test_held_bytes_are_rebuilt_by_restore_without_changing_the_snapshot(d: Driver) -> None:
    d.submit("a", args={"k": "v" * 100})
    [job] = d.lease()
    d.complete("a", job["attempt"], result="done")
    d.submit("b", args=[1, 2])
    snap = d.m.to_snapshot()
    assert "held_bytes" not in snap and all(len(row) == len(snap["job_fields"]) for row in snap["jobs"])
    restored = JobMachine()
    restored.restore(msgpack.unpackb(msgpack.packb(snap, use_bin_type=True), raw=False))
    restored.check_invariants()
    assert (restored.held_count(), restored.held_bytes()) == (d.m.held_count(), d.m.held_bytes())
    assert restored.digest() == d.m.digest()
