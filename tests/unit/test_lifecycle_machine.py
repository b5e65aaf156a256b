"""Scenario tables for the lifecycle commands of the job state machine (issue 3):
dependencies, dead-letter requeue, quarantine, queue limits, capacity-aware
leasing, schedules and the worker registry; plus snapshot format 1 restore and
determinism of logs that use the new commands.
"""
from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest

from replication.machine import LEASE_SCAN_LIMIT, WORKER_GONE_LEASES, JobMachine
from replication.model import JOB_FIELDS_V1, validate_command
from tests.unit.test_machine import Driver


@pytest.fixture
def d() -> Driver:
    return Driver()


def ids(jobs: list[dict[str, Any]]) -> list[str]:
    return [j["id"] for j in jobs]


# ------------------------------------------------------------ dependencies


def test_dependent_is_pending_until_all_parents_succeed(d: Driver) -> None:
    d.submit("a")
    d.submit("b")
    assert d.submit("c", depends_on=["a", "b"]) == {"id": "c", "created": True, "state": "pending"}
    assert d.m.get("c")["depends_on"] == ["a", "b"]
    assert ids(d.lease(n=10)) == ["a", "b"]
    d.complete("a", 1, result={"n": 1})
    assert d.state("c") == "pending"
    d.complete("b", 1, result=[2])
    assert d.state("c") == "queued"
    [leased] = d.lease()
    assert leased["id"] == "c" and leased["parents"] == {"a": {"n": 1}, "b": [2]}


def test_dependency_on_succeeded_job_is_ready_at_once(d: Driver) -> None:
    d.submit("a")
    d.lease()
    d.complete("a", 1, result=7)
    assert d.submit("b", depends_on=["a"])["state"] == "queued"
    assert d.lease()[0]["parents"] == {"a": 7}


def test_dependent_keeps_its_delay(d: Driver) -> None:
    d.submit("a")
    d.submit("b", depends_on=["a"], delay_ms=5_000)
    d.lease()
    d.complete("a", 1)
    assert d.state("b") == "scheduled"
    d.advance(5_000)
    d.tick()
    assert d.state("b") == "queued"


@pytest.mark.parametrize("how", ["fail", "cancel", "cancel_running", "expire"])
def test_failed_or_cancelled_parent_cancels_dependents_transitively(d: Driver, how: str) -> None:
    d.submit("a", max_attempts=1)
    d.submit("b", depends_on=["a"])
    d.submit("c", depends_on=["b"])
    d.submit("x")
    d.submit("e", depends_on=["x", "c"])
    if how == "cancel":
        d.one({"op": "cancel", "id": "a"})
    else:
        d.lease(lease_ms=100)
        if how == "fail":
            d.fail("a", 1, err="boom")
        elif how == "cancel_running":
            d.one({"op": "cancel", "id": "a"})
        else:
            d.advance(100)
            d.tick()
    parent_state = "cancelled" if how.startswith("cancel") else "failed"
    assert d.state("a") == parent_state
    for child in ("b", "c", "e"):
        assert d.state(child) == "cancelled"
    assert d.m.get("b")["error"].startswith(f"dependency a {parent_state}")
    assert d.m.get("c")["error"].startswith(f"dependency b cancelled: dependency a {parent_state}")
    assert d.state("x") == "queued"


def test_submit_with_failed_dependency_is_cancelled(d: Driver) -> None:
    d.submit("a", max_attempts=1)
    d.lease()
    d.fail("a", 1)
    r = d.submit("b", depends_on=["a"])
    assert r["state"] == "cancelled" and d.m.get("b")["error"].startswith("dependency a failed")


def test_unknown_dependency_is_bad_request(d: Driver) -> None:
    r = d.submit("b", depends_on=["nope"])
    assert r["error"] == "BAD_REQUEST" and "nope" in r["message"]
    assert d.m.get("b") is None


@pytest.mark.parametrize("deps, message", [
    (["b"], "itself"),          # self
    (["a", "a"], "twice"),
    ("a", "list"),
    ([1], "ids"),
])
def test_malformed_depends_on(deps: Any, message: str) -> None:
    msg = validate_command({"op": "submit", "job": {"id": "b", "type": "t", "depends_on": deps}})
    assert msg is not None and message in msg


def test_submit_many_dag_in_any_order(d: Driver) -> None:
    r = d.one({"op": "submit_many", "jobs": [
        {"id": "join", "type": "t", "depends_on": ["left", "right"]},
        {"id": "left", "type": "t", "depends_on": ["root"]},
        {"id": "right", "type": "t", "depends_on": ["root"]},
        {"id": "root", "type": "t"},
    ]})
    assert [(x["id"], x["state"]) for x in r["results"]] == [
        ("join", "pending"), ("left", "pending"), ("right", "pending"), ("root", "queued")]
    order = []
    while True:
        jobs = d.lease(n=10)
        if not jobs:
            break
        for j in jobs:
            order.append(j["id"])
            d.complete(j["id"], j["attempt"], result=j["id"])
    assert order == ["root", "left", "right", "join"]
    assert d.m.get("join")["state"] == "succeeded"


@pytest.mark.parametrize("jobs, message", [
    ([{"id": "a", "type": "t", "depends_on": ["b"]}, {"id": "b", "type": "t", "depends_on": ["a"]}], "cycle"),
    ([{"id": "a", "type": "t", "depends_on": ["c"]}, {"id": "b", "type": "t", "depends_on": ["a"]},
      {"id": "c", "type": "t", "depends_on": ["b"]}], "cycle"),
    ([{"id": "a", "type": "t"}, {"id": "b", "type": "t", "depends_on": ["zz"]}], "unknown"),
])
def test_submit_many_rejects_cycles_and_unknown_ids_as_a_whole(d: Driver, jobs: list[dict[str, Any]],
                                                               message: str) -> None:
    r = d.one({"op": "submit_many", "jobs": jobs})
    assert r["error"] == "BAD_REQUEST" and message in r["message"]
    assert d.m.stats()["live"] == 0


def test_submit_many_repeated_id_first_occurrence_wins(d: Driver) -> None:
    r = d.one({"op": "submit_many", "jobs": [
        {"id": "c", "type": "t", "depends_on": ["a"]},
        {"id": "a", "type": "first"},
        {"id": "a", "type": "second"},
    ]})
    assert [x.get("created", x.get("error")) for x in r["results"]] == [True, True, "CONFLICT"]
    assert d.m.get("a")["type"] == "first"


def test_retry_of_cancelled_dependent(d: Driver) -> None:
    d.submit("a", max_attempts=1)
    d.submit("b", depends_on=["a"])
    d.lease()
    d.fail("a", 1)
    assert d.one({"op": "retry", "id": "b"})["error"] == "CONFLICT"
    assert d.one({"op": "retry", "id": "a"}) == {"state": "queued"}
    assert d.one({"op": "retry", "id": "b"}) == {"state": "pending"}
    [a] = d.lease()
    d.complete("a", a["attempt"])
    assert d.state("b") == "queued"


def test_purged_parent_counts_as_done(d: Driver) -> None:
    d.submit("a")
    d.lease()
    d.complete("a", 1, result=1)
    d.advance(10)
    d.tick(retention_ms=0)
    assert d.m.get("a") is None
    r = d.submit("b", depends_on=["a"])
    assert r["error"] == "BAD_REQUEST"  # a purged job is unknown to new submits


# ------------------------------------------------------------ dead letters


def _dead(d: Driver, job_id: str, queue: str = "default") -> None:
    d.submit(job_id, max_attempts=1, queue=queue)
    [j] = d.lease(queues=[queue])
    d.fail(job_id, j["attempt"], err="boom")
    assert d.state(job_id) == "failed"


def test_requeue_failed_by_ids(d: Driver) -> None:
    _dead(d, "a")
    _dead(d, "b")
    d.submit("live")
    r = d.one({"op": "requeue_failed", "ids": ["a", "live", "missing", "b"]})
    assert r == {"requeued": ["a", "b"], "skipped": ["live", "missing"]}
    assert d.state("a") == d.state("b") == "queued" and d.m.get("a")["attempts"] == 0


@pytest.mark.parametrize("ids_value", [[], "a", [1], ["x"] * 1001])
def test_requeue_failed_needs_a_bounded_id_list(d: Driver, ids_value: Any) -> None:
    assert d.one({"op": "requeue_failed", "ids": ids_value})["error"] == "BAD_REQUEST"


@pytest.mark.parametrize("max_expiries, max_attempts, expect", [
    (None, 5, ["queued", "queued", "failed"]),   # default 3
    (1, 5, ["failed"]),
    (2, 5, ["queued", "failed"]),
    (5, 2, ["queued", "failed"]),                # attempts run out first
])
def test_lease_expiry_quarantine(d: Driver, max_expiries: int | None, max_attempts: int,
                                 expect: list[str]) -> None:
    spec: dict[str, Any] = {"max_attempts": max_attempts}
    if max_expiries is not None:
        spec["max_lease_expiries"] = max_expiries
    d.submit("a", **spec)
    seen = []
    for _ in expect:
        d.lease(lease_ms=100)
        d.advance(100)
        d.tick()
        seen.append(d.state("a"))
    assert seen == expect
    view = d.m.get("a")
    if max_expiries is not None and max_expiries <= max_attempts:
        assert view["error"] == f"quarantined: worker crashed/lost it {max_expiries} times"
    assert view["lease_expiries"] == len(expect)


def test_handler_failures_do_not_count_as_lease_expiries(d: Driver) -> None:
    d.submit("a", max_attempts=5, max_lease_expiries=1, backoff_ms=0)
    for attempt in (1, 2):
        d.lease()
        d.fail("a", attempt)
    assert d.state("a") == "queued" and d.m.get("a")["lease_expiries"] == 0


# ------------------------------------------------------------ queue limits


def test_max_running_across_workers(d: Driver) -> None:
    assert d.one({"op": "queue_limit", "queue": "q", "max_running": 2}) == {
        "queue": "q", "max_running": 2, "rate_per_s": None}
    for i in range(5):
        d.submit(f"j{i}", queue="q")
    assert ids(d.lease(queues=["q"], n=5, worker="w1")) == ["j0", "j1"]
    assert d.lease(queues=["q"], n=5, worker="w2") == []
    assert not d.m.has_ready(["q"]) and d.m.lease_wait_ms(["q"]) is None
    d.complete("j0", 1)
    assert d.m.has_ready(["q"])
    assert ids(d.lease(queues=["q"], n=5, worker="w2")) == ["j2"]
    # max_running 0 pauses a queue; no limits at all removes it
    d.one({"op": "queue_limit", "queue": "q", "max_running": 0})
    d.complete("j1", 1)
    assert d.lease(queues=["q"], n=5) == []
    d.one({"op": "queue_limit", "queue": "q"})
    assert ids(d.lease(queues=["q"], n=5)) == ["j3", "j4"]


def test_rate_limit_token_bucket_in_log_time(d: Driver) -> None:
    d.one({"op": "queue_limit", "queue": "q", "rate_per_s": 2})
    for i in range(10):
        d.submit(f"j{i}", queue="q")
    # a full bucket holds one second's worth: 2 jobs
    assert ids(d.lease(queues=["q"], n=10)) == ["j0", "j1"]
    assert d.lease(queues=["q"], n=10) == []
    assert d.m.lease_wait_ms(["q"]) == 500
    assert d.m.lease_wait_ms(["q"], now_ms=d.now + 499) == 1
    assert d.m.has_ready(["q"], now_ms=d.now + 500)
    d.advance(499)
    assert d.lease(queues=["q"], n=10) == []
    d.advance(1)
    assert ids(d.lease(queues=["q"], n=10)) == ["j2"]
    d.advance(10_000)  # the bucket caps at one second's worth
    assert ids(d.lease(queues=["q"], n=10)) == ["j3", "j4"]


def test_limits_apply_per_queue_in_a_multi_queue_lease(d: Driver) -> None:
    d.one({"op": "queue_limit", "queue": "slow", "max_running": 1})
    for i in range(3):
        d.submit(f"s{i}", queue="slow", priority=5)
        d.submit(f"f{i}", queue="fast")
    assert ids(d.lease(queues=["slow", "fast"], n=10)) == ["s0", "f0", "f1", "f2"]


def test_fractional_rate(d: Driver) -> None:
    d.one({"op": "queue_limit", "queue": "q", "rate_per_s": 0.5})
    for i in range(3):
        d.submit(f"j{i}", queue="q")
    assert ids(d.lease(queues=["q"], n=3)) == ["j0"]
    assert d.m.lease_wait_ms(["q"]) == 2000
    d.advance(2000)
    assert ids(d.lease(queues=["q"], n=3)) == ["j1"]
    q = {x["queue"]: x for x in d.m.queues()}["q"]
    assert q["rate_per_s"] == 0.5 and q["max_running"] is None and q["jobs"]["running"] == 2


@pytest.mark.parametrize("cmd", [
    {"op": "queue_limit", "queue": "", "max_running": 1},
    {"op": "queue_limit", "queue": "q", "max_running": -1},
    {"op": "queue_limit", "queue": "q", "rate_per_s": 0},
    {"op": "queue_limit", "queue": "q", "rate_per_s": float("inf")},
    {"op": "queue_limit", "queue": "q", "rate_per_s": "1"},
])
def test_bad_queue_limits(d: Driver, cmd: dict[str, Any]) -> None:
    assert d.one(cmd)["error"] == "BAD_REQUEST"


# ------------------------------------------------------- capacity-aware leasing


def test_capacity_skips_non_fitting_jobs_keeping_their_order(d: Driver) -> None:
    d.submit("big", resources={"cpu": 4, "mem_mb": 100})
    d.submit("small", resources={"cpu": 0.5, "mem_mb": 100})
    d.submit("plain")
    d.submit("mem", resources={"mem_mb": 5000})
    assert d.m.get("small")["resources"] == {"cpu": 0.5, "mem_mb": 100}
    lease = {"op": "lease", "worker": "w1", "queues": ["default"], "max": 10, "lease_ms": 1000}
    got = d.one({**lease, "capacity": {"cpu": 1, "mem_mb": 1000}})
    assert ids(got["jobs"]) == ["small", "plain"]
    got = d.one({**lease, "capacity": {"cpu": 8, "mem_mb": 200}})
    assert ids(got["jobs"]) == ["big"]
    # the skipped job kept its place; capacity adds up within one lease
    d.submit("m2", resources={"mem_mb": 5000})
    got = d.one({**lease, "max": 1, "capacity": {"cpu": 1, "mem_mb": 6000}})
    assert ids(got["jobs"]) == ["mem"]
    got = d.one({**lease, "capacity": {"cpu": 1, "mem_mb": 9000}})
    assert ids(got["jobs"]) == ["m2"]


def test_no_capacity_means_anything_fits(d: Driver) -> None:
    d.submit("big", resources={"cpu": 64, "mem_mb": 10**6})
    assert ids(d.lease()) == ["big"]


def test_capacity_scan_is_bounded(d: Driver) -> None:
    for i in range(LEASE_SCAN_LIMIT + 5):
        d.submit(f"big{i:04d}", resources={"cpu": 100})
    d.submit("small", resources={"cpu": 1})
    got = d.one({"op": "lease", "worker": "w", "queues": ["default"], "max": 1, "lease_ms": 1000,
                 "capacity": {"cpu": 2}})
    assert got == {"jobs": []}  # stopped after LEASE_SCAN_LIMIT skips
    assert ids(d.lease(n=2)) == ["big0000", "big0001"]  # order intact


@pytest.mark.parametrize("resources", [{"cpu": -1}, {"gpu": 1}, {"mem_mb": 1.5}, [1, 2], {"cpu": float("nan")}])
def test_bad_resources(d: Driver, resources: Any) -> None:
    assert d.submit("a", resources=resources)["error"] == "BAD_REQUEST"


# ------------------------------------------------------------ schedules


def _add(d: Driver, name: str = "s", next_fire_ms: int | None = None, **extra: Any) -> dict[str, Any]:
    sched = {"name": name, "every_ms": 1000, "job": {"type": "report", "args": {"k": 1}, "queue": "cron"}, **extra}
    return d.one({"op": "schedule_add", "schedule": sched,
                  "next_fire_ms": d.now + 1000 if next_fire_ms is None else next_fire_ms})


def _fire(d: Driver, name: str, fire_ms: int, next_ms: int | None = None) -> dict[str, Any]:
    return d.one({"op": "fire", "schedule": name, "fire_ms": fire_ms,
                  "next_fire_ms": fire_ms + 1000 if next_ms is None else next_ms})


def test_schedule_fires_once_per_fire_time(d: Driver) -> None:
    assert _add(d)["created"] is True
    t = d.now + 1000
    assert d.m.next_fire_ms() == t
    assert d.m.due_schedules(t - 1) == []
    assert [s["name"] for s in d.m.due_schedules(t)] == ["s"]
    d.advance(1000)
    r = _fire(d, "s", t)
    assert r["fired"] is True and r["id"] == f"sched:s:{t}" and r["state"] == "queued"
    view = d.m.get(f"sched:s:{t}")
    assert view["schedule"] == "s" and view["queue"] == "cron" and view["args"] == {"k": 1}
    # the same firing again (a new leader re-proposing it), or an older one: refused, no new job
    assert _fire(d, "s", t)["fired"] is False
    assert _fire(d, "s", t - 500)["fired"] is False
    assert d.m.next_fire_ms() == t + 1000
    assert _fire(d, "s", t + 1000)["fired"] is True
    jobs, _ = d.m.list_jobs(schedule="s")
    assert ids(jobs) == [f"sched:s:{t}", f"sched:s:{t + 1000}"]
    assert d.m.get_schedule("s")["fired"] == 2 and d.m.get_schedule("s")["last_fire_ms"] == t + 1000


def test_schedule_add_is_idempotent_and_conflicts_on_change(d: Driver) -> None:
    _add(d)
    assert _add(d)["created"] is False
    assert _add(d, every_ms=2000)["error"] == "CONFLICT"


def test_schedule_pause_resume_remove(d: Driver) -> None:
    _add(d)
    t = d.now + 1000
    assert d.one({"op": "schedule_pause", "name": "s"}) == {"name": "s", "paused": True}
    assert d.m.next_fire_ms() is None and d.m.due_schedules(t + 10_000) == []
    assert _fire(d, "s", t) == {"fired": False, "reason": "paused"}
    r = d.one({"op": "schedule_resume", "name": "s", "next_fire_ms": t + 5000})
    assert r == {"name": "s", "paused": False, "next_fire_ms": t + 5000}
    assert d.m.next_fire_ms() == t + 5000
    assert d.one({"op": "schedule_remove", "name": "s"}) == {"name": "s", "removed": True}
    assert d.m.next_fire_ms() is None and d.m.schedules() == []
    assert _fire(d, "s", t + 5000)["error"] == "NOT_FOUND"
    assert d.one({"op": "schedule_pause", "name": "s"})["error"] == "NOT_FOUND"


@pytest.mark.parametrize("sched", [
    {"name": "s", "job": {"type": "t"}},                                     # neither cron nor every
    {"name": "s", "cron": "* * * * *", "every_ms": 1000, "job": {"type": "t"}},
    {"name": "s", "every_ms": 1000, "job": {"type": "t", "id": "x"}},       # no id in a template
    {"name": "s", "every_ms": 1000, "job": {"type": "t", "depends_on": ["a"]}},
    {"name": "s", "every_ms": 1000, "job": {}},
    {"name": "s", "every_ms": 1000, "job": {"type": "t"}, "misfire": "run_all"},
    {"name": "x" * 151, "every_ms": 1000, "job": {"type": "t"}},
    {"name": "s", "every_ms": 0, "job": {"type": "t"}},
])
def test_bad_schedules(d: Driver, sched: dict[str, Any]) -> None:
    r = d.one({"op": "schedule_add", "schedule": sched, "next_fire_ms": 1})
    assert r["error"] == "BAD_REQUEST", r


def test_fire_needs_next_after_fire(d: Driver) -> None:
    _add(d)
    assert _fire(d, "s", d.now + 1000, d.now + 1000)["error"] == "BAD_REQUEST"


# ------------------------------------------------------------ worker registry


def test_worker_registry_from_leases_and_heartbeats(d: Driver) -> None:
    d.submit("a")
    d.submit("b")
    d.one({"op": "lease", "worker": "w1", "queues": ["default", "x"], "max": 2, "lease_ms": 1000,
           "capacity": {"cpu": 2, "mem_mb": 512}})
    [w] = d.m.workers()
    assert w == {"name": "w1", "queues": ["default", "x"], "capacity": {"cpu": 2, "mem_mb": 512},
                 "running": ["a", "b"], "lease_ms": 1000, "last_seen_at": d.now / 1000}
    d.complete("a", 1)
    assert d.m.workers()[0]["running"] == ["b"]
    d.advance(500)
    d.one({"op": "heartbeat", "worker": "w1", "lease_ms": 1000, "leases": [{"id": "b", "attempt": 1}]})
    assert d.m.workers()[0]["last_seen_at"] == d.now / 1000
    d.one({"op": "cancel", "id": "b"})
    assert d.m.workers()[0]["running"] == []
    d.advance(WORKER_GONE_LEASES * 1000)
    d.tick()
    assert len(d.m.workers()) == 1  # exactly 10 leases: still there
    d.advance(1)
    d.tick()
    assert d.m.workers() == []


# ------------------------------------------------------------ snapshots and determinism


def test_restore_reads_format_1(d: Driver) -> None:
    d.submit("a", unique_key="k")
    d.submit("b", delay_ms=100)
    d.lease()
    snap = d.m.to_snapshot()
    v1 = {"format": 1, "clock_ms": snap["clock_ms"], "next_seq": snap["next_seq"],
          "job_fields": list(JOB_FIELDS_V1), "jobs": [row[:len(JOB_FIELDS_V1)] for row in snap["jobs"]]}
    m = JobMachine()
    m.restore(msgpack.unpackb(msgpack.packb(v1)))
    m.check_invariants()
    assert m.digest() == d.m.digest() or m.to_snapshot()["jobs"] == snap["jobs"]
    assert m.get("a")["max_lease_expiries"] == 3 and m.get("a")["depends_on"] is None
    assert m.get("a")["state"] == "running"


def _lifecycle_log(seed: int, n_entries: int = 250) -> list[dict[str, Any]]:
    """A random log of the new commands mixed with the old ones."""
    rng = random.Random(seed)
    scratch = JobMachine()
    log: list[dict[str, Any]] = []
    now = 10_000
    ids_ = [f"j{i}" for i in range(25)]
    tokens: list[tuple[str, int, str]] = []
    for _ in range(n_entries):
        now += rng.choice([0, 3, 50, 300, 1200])
        cmds: list[dict[str, Any]] = []
        for _ in range(rng.randrange(1, 4)):
            k = rng.random()
            jid = rng.choice(ids_)
            if k < 0.25:
                spec: dict[str, Any] = {"id": jid, "type": "t", "queue": rng.choice(["a", "b"]),
                                        "max_attempts": rng.randrange(1, 3), "backoff_ms": 0,
                                        "max_lease_expiries": rng.choice([1, 2, 3])}
                if rng.random() < 0.4:
                    spec["depends_on"] = rng.sample(ids_, rng.randrange(1, 3))
                if rng.random() < 0.3:
                    spec["resources"] = {"cpu": rng.choice([0.5, 1, 4]), "mem_mb": rng.choice([10, 900])}
                cmds.append({"op": "submit", "job": spec})
            elif k < 0.45:
                cmd = {"op": "lease", "worker": rng.choice(["w1", "w2"]), "queues": ["a", "b"],
                       "max": rng.randrange(1, 4), "lease_ms": rng.choice([100, 2000])}
                if rng.random() < 0.5:
                    cmd["capacity"] = {"cpu": rng.choice([1, 2]), "mem_mb": 1000}
                cmds.append(cmd)
            elif k < 0.6 and tokens:
                tid, att, _w = rng.choice(tokens[-6:])
                if rng.random() < 0.7:
                    cmds.append({"op": "complete", "id": tid, "attempt": att, "result": tid})
                else:
                    cmds.append({"op": "fail", "id": tid, "attempt": att, "error": "e", "retryable": False})
            elif k < 0.65:
                cmds.append({"op": "cancel", "id": jid})
            elif k < 0.7:
                cmds.append({"op": "requeue_failed", "ids": rng.sample(ids_, 3)})
            elif k < 0.75:
                cmds.append({"op": "queue_limit", "queue": rng.choice(["a", "b"]),
                             "max_running": rng.choice([None, 1, 2]), "rate_per_s": rng.choice([None, 1.5, 5])})
            elif k < 0.8:
                cmds.append({"op": "schedule_add", "next_fire_ms": now + 500, "schedule": {
                    "name": rng.choice(["s1", "s2"]), "every_ms": 500, "job": {"type": "t", "queue": "a"}}})
            elif k < 0.87:
                name = rng.choice(["s1", "s2"])
                fire = now - rng.choice([0, 500])
                cmds.append({"op": "fire", "schedule": name, "fire_ms": fire, "next_fire_ms": fire + 500})
            elif k < 0.9:
                cmds.append({"op": rng.choice(["schedule_pause", "schedule_remove"]), "name": rng.choice(["s1", "s2"])})
            else:
                cmds.append({"op": "tick", "retention_ms": rng.choice([0, 5_000, 100_000])})
        entry = {"v": 1, "now_ms": now, "cmds": cmds}
        for cmd, result in zip(cmds, scratch.apply_entry(entry)):
            if cmd["op"] == "lease":
                tokens += [(j["id"], j["attempt"], cmd["worker"]) for j in result["jobs"]]
        log.append(entry)
    return log


def test_lifecycle_log_exercises_the_new_paths() -> None:
    seen: set[str] = set()
    for seed in (11, 12, 13):
        m = JobMachine()
        for entry in _lifecycle_log(seed):
            for cmd, r in zip(entry["cmds"], m.apply_entry(entry)):
                assert r.get("error") != "INTERNAL", (cmd, r)
                outcome = r.get("error") or (f"fired={r['fired']}" if "fired" in r else r.get("state"))
                seen.add(f"{cmd['op']}:{outcome or 'ok'}")
                if cmd["op"] == "requeue_failed" and r.get("requeued"):
                    seen.add("requeue_failed:requeued")
        m.check_invariants()
    for key in ("submit:pending", "submit:cancelled", "fire:fired=True", "fire:fired=False",
                "requeue_failed:requeued", "schedule_pause:ok", "queue_limit:ok"):
        assert key in seen, (key, sorted(seen))


@pytest.mark.parametrize("seed, cut", [(21, 0), (22, 120), (23, 249)])
def test_lifecycle_log_same_twice_and_snapshot_replay_identical(seed: int, cut: int) -> None:
    log = _lifecycle_log(seed)
    a, b = JobMachine(), JobMachine()
    for entry in log:
        assert a.apply_entry(msgpack.unpackb(msgpack.packb(entry))) == b.apply_entry(
            msgpack.unpackb(msgpack.packb(entry)))
    a.check_invariants()
    assert a.digest() == b.digest()

    first = JobMachine()
    for entry in log[:cut]:
        first.apply_entry(entry)
    restored = JobMachine()
    restored.restore(msgpack.unpackb(msgpack.packb(first.to_snapshot(), use_bin_type=True), raw=False))
    restored.check_invariants()
    assert restored.digest() == first.digest()
    for entry in log[cut:]:
        assert restored.apply_entry(entry) == first.apply_entry(entry)
    assert msgpack.packb(restored.to_snapshot()) == msgpack.packb(a.to_snapshot())
    assert restored.workers() == a.workers() and restored.queues() == a.queues()
    assert restored.next_fire_ms() == a.next_fire_ms()


def test_a_skipped_firing_is_missed_creates_no_job_and_moves_the_schedule_on(d: Driver) -> None:
    """The leader's admission refused the firing: `skip` carries why, in the log."""
    t = d.now + 1000
    _add(d, "s", next_fire_ms=t)
    r = d.one({"op": "fire", "schedule": "s", "fire_ms": t, "next_fire_ms": t + 1000, "skip": "queue full"})
    assert r == {"fired": False, "reason": "missed: queue full"}
    sched = d.m.get_schedule("s")
    assert (sched["fired"], sched["missed"], sched["last_fire_ms"]) == (0, 1, t)
    assert d.m.next_fire_ms() == t + 1000 and d.m.get(f"sched:s:{t}") is None and d.m.held_count() == 0
    assert _fire(d, "s", t)["fired"] is False  # a missed time is done with, like a fired one
    assert _fire(d, "s", t + 1000)["fired"] is True
    assert d.one({"op": "fire", "schedule": "s", "fire_ms": t + 2000, "next_fire_ms": t + 3000,
                  "skip": 5})["error"] == "BAD_REQUEST"


def test_snapshots_from_before_missed_firings_restore_with_zero_missed(d: Driver) -> None:
    _add(d, "s")
    snap = d.m.to_snapshot()
    for sched in snap["schedules"]:
        del sched["missed"]
    restored = JobMachine()
    restored.restore(snap)
    assert restored.get_schedule("s")["missed"] == 0 and restored.digest() == d.m.digest()
