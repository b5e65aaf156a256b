"""A submit whose id exists: the same spec is an idempotent repeat, another
spec is CONFLICT naming the job, and neither changes the state (so logs
written before the check replay to the same state)."""
from __future__ import annotations

from typing import Any

import pytest

from replication.machine import JobMachine
from tests.unit.test_machine import Driver

FULL_SPEC: dict[str, Any] = {
    "type": "text.wordcount", "args": {"text": "a b", "n": [1, 2.5, None]}, "queue": "q", "priority": 3,
    "max_attempts": 5, "timeout_ms": 9_000, "backoff_ms": 50, "unique_key": "k", "depends_on": ["parent"],
    "resources": {"cpu": 0.5, "mem_mb": 64}, "max_lease_expiries": 2,
}


@pytest.fixture
def d() -> Driver:
    driver = Driver()
    driver.submit("parent")
    return driver


def test_the_same_full_spec_is_idempotent(d: Driver) -> None:
    assert d.submit("x", **FULL_SPEC)["created"] is True
    assert d.submit("x", **FULL_SPEC) == {"id": "x", "created": False, "state": "pending"}
    # when it may run is no part of the job: a retried --delay submit is a repeat
    assert d.submit("x", **FULL_SPEC, delay_ms=5_000)["created"] is False
    # map key order is not either
    reordered = {**FULL_SPEC, "args": {"n": [1, 2.5, None], "text": "a b"}}
    assert d.submit("x", **reordered)["created"] is False


def test_an_omitted_field_equals_its_default(d: Driver) -> None:
    assert d.submit("x")["created"] is True
    explicit = {"args": {}, "queue": "default", "priority": 0, "max_attempts": 3, "backoff_ms": 1_000,
                "max_lease_expiries": 3}
    assert d.submit("x", **explicit)["created"] is False


@pytest.mark.parametrize("field, other", [
    ("type", "util.sleep"), ("args", {"text": "a b", "n": [1, 2.5]}), ("args", {"text": "a b", "n": [1, 2, None]}),
    ("queue", "other"), ("priority", 4), ("max_attempts", 1), ("timeout_ms", None), ("backoff_ms", 0),
    ("unique_key", None), ("depends_on", None), ("resources", {"cpu": 1}), ("max_lease_expiries", 3),
])
def test_another_spec_for_an_existing_id_is_conflict(d: Driver, field: str, other: Any) -> None:
    d.submit("x", **FULL_SPEC)
    before = d.m.digest()
    got = d.submit("x", **{**FULL_SPEC, field: other})
    assert got["error"] == "CONFLICT"
    assert "'x'" in got["message"] and field in got["message"]
    assert "text.wordcount" in got["message"] and "pending" in got["message"]
    assert d.m.digest() == before  # nothing changed


def test_numbers_of_another_type_are_another_spec(d: Driver) -> None:
    d.submit("x", args={"n": 1})
    assert d.submit("x", args={"n": 1.0})["error"] == "CONFLICT"
    assert d.submit("x", args={"n": True})["error"] == "CONFLICT"


def test_conflict_names_a_finished_job_and_its_state(d: Driver) -> None:
    d.submit("x", type="text.wordcount", args={"text": "hi"})
    d.lease(n=2)
    d.complete("x", 1, result={"words": 1})
    got = d.submit("x", type="util.sleep", args={"seconds": 1})
    assert got["error"] == "CONFLICT" and "text.wordcount" in got["message"] and "succeeded" in got["message"]


def test_submit_many_reports_conflict_per_item_and_submits_the_rest(d: Driver) -> None:
    d.submit("x", type="a")
    r = d.one({"op": "submit_many", "jobs": [{"id": "x", "type": "b"}, {"id": "y", "type": "b"},
                                             {"id": "x", "type": "a"}]})
    assert r["results"][0]["error"] == "CONFLICT"
    assert r["results"][1:] == [{"id": "y", "created": True, "state": "queued"},
                                {"id": "x", "created": False, "state": "queued"}]
    # the DAG path too: a child of the conflicting id still depends on the job that holds it
    r = d.one({"op": "submit_many", "jobs": [{"id": "x", "type": "b"}, {"id": "z", "type": "b",
                                                                       "depends_on": ["x"]}]})
    assert r["results"][0]["error"] == "CONFLICT" and r["results"][1]["state"] == "pending"


def test_unique_key_still_returns_its_live_holder_whatever_the_spec(d: Driver) -> None:
    d.submit("x", type="a", unique_key="nightly")
    assert d.submit("y", type="b", args={"v": 1}, unique_key="nightly") == {
        "id": "x", "created": False, "state": "queued"}


def test_a_schedule_firing_of_an_existing_id_returns_the_job() -> None:
    """Firing ids are the machine's (sched:NAME:FIRE_MS): a schedule removed
    and added again with another job may meet an old firing's id."""
    d = Driver()
    add = {"op": "schedule_add", "next_fire_ms": 2_000_000,
           "schedule": {"name": "s", "every_ms": 60_000, "job": {"type": "a"}}}
    d.one(add)
    assert d.one({"op": "fire", "schedule": "s", "fire_ms": 2_000_000, "next_fire_ms": 2_060_000})["created"]
    d.one({"op": "schedule_remove", "name": "s"})
    d.one({**add, "schedule": {**add["schedule"], "job": {"type": "b"}}})
    got = d.one({"op": "fire", "schedule": "s", "fire_ms": 2_000_000, "next_fire_ms": 2_060_000})
    assert got == {"fired": True, "id": "sched:s:2000000", "created": False, "state": "queued"}


def test_a_log_with_conflicting_submits_replays_to_the_state_without_them() -> None:
    """What an old log holds (a reused id, then accepted as a repeat) replays
    to the same state as it did: the check changes results only."""
    with_conflicts, without = Driver(), Driver()
    for driver in (with_conflicts, without):
        driver.submit("a", type="text.wordcount", args={"text": "x"})
        driver.lease()
    with_conflicts.submit("a", type="util.sleep", args={"seconds": 1})
    with_conflicts.one({"op": "submit_many", "jobs": [{"id": "a", "type": "b"}]})
    for driver in (with_conflicts, without):
        driver.complete("a", 1, result=1)
    assert with_conflicts.m.digest() == without.m.digest()
    replayed = JobMachine()
    for entry in with_conflicts.log:
        replayed.apply_entry(entry)
    assert replayed.digest() == with_conflicts.m.digest()
