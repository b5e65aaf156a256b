"""The alert part of the machine (replication/state/alerts.py), driven by commands:
rules, transitions recorded once, delivery marks, snapshots with and without alerts."""
from __future__ import annotations

from typing import Any

import msgpack

from replication.machine import JobMachine
from replication.model import MAX_PENDING_ALERTS


def _entry(now: int, *cmds: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "now_ms": now, "cmds": list(cmds)}


def _apply(m: JobMachine, now: int, *cmds: dict[str, Any]) -> list[dict[str, Any]]:
    results = m.apply_entry(_entry(now, *cmds))
    m.check_invariants()
    return results


def _add(name: str = "deep", **extra: Any) -> dict[str, Any]:
    return {"op": "alert_add", "name": name, "when": "depth(q) > 1", "webhook": "http://127.0.0.1:9/h", **extra}


def _transition(name: str, state: str, detail: str = "seen") -> dict[str, Any]:
    return {"op": "alert_transition", "name": name, "state": state, "detail": detail}


def _round_trip(m: JobMachine) -> JobMachine:
    restored = JobMachine()
    restored.restore(msgpack.unpackb(msgpack.packb(m.to_snapshot(), use_bin_type=True), raw=False))
    restored.check_invariants()
    return restored


def test_add_is_idempotent_conflicts_on_another_definition_and_remove_deletes() -> None:
    m = JobMachine()
    assert _apply(m, 1_000, _add(), _add(), _add(webhook="http://other/")) == [
        {"name": "deep", "created": True}, {"name": "deep", "created": False},
        {"error": "CONFLICT", "message": "alert 'deep' exists with another definition; remove it first"}]
    [rule] = m.alerts.view()
    assert rule == {"name": "deep", "when": "depth(q) > 1", "for_ms": 0, "webhook": "http://127.0.0.1:9/h",
                    "email": None, "created_ms": 1_000, "firing": False, "since_ms": 1_000, "undelivered": 0}
    assert _apply(m, 1_001, {"op": "alert_remove", "name": "deep"}, {"op": "alert_remove", "name": "deep"}) == [
        {"name": "deep", "removed": True}, {"error": "NOT_FOUND", "message": "no alert 'deep'"}]
    assert m.alerts.view() == []


def test_a_malformed_command_is_refused_on_apply() -> None:
    m = JobMachine()
    both = _add(email="ops@example.com")
    results = _apply(m, 1, both, {"op": "alert_add", "name": "x", "webhook": "http://h/"},
                     _transition("x", "exploded"), {"op": "alert_delivered", "seq": 0})
    assert [r["error"] for r in results] == ["BAD_REQUEST"] * 4
    assert "exactly one of 'webhook' and 'email'" in results[0]["message"]
    assert m.alerts.view() == []


def test_a_transition_is_recorded_once_numbered_at_log_time_and_pending_until_delivered() -> None:
    m = JobMachine()
    _apply(m, 1_000, _add("a"), _add("b", email="ops@example.com", webhook=None))
    # Two leaders proposing the same firing: the second records nothing.
    assert _apply(m, 2_000, _transition("a", "firing", "depth(q) = 5"), _transition("a", "firing")) == [
        {"recorded": True, "seq": 1}, {"recorded": False}]
    assert _apply(m, 2_500, _transition("b", "resolved")) == [{"recorded": False}]  # was never firing
    assert _apply(m, 3_000, _transition("b", "firing"), _transition("a", "resolved")) == [
        {"recorded": True, "seq": 2}, {"recorded": True, "seq": 3}]
    assert [(t["seq"], t["name"], t["state"], t["at_ms"]) for t in m.alerts.pending_view()] == [
        (1, "a", "firing", 2_000), (2, "b", "firing", 3_000), (3, "a", "resolved", 3_000)]
    first = m.alerts.pending_view()[0]
    assert (first["detail"], first["when"], first["webhook"], first["email"]) == (
        "depth(q) = 5", "depth(q) > 1", "http://127.0.0.1:9/h", None)
    rules = {r["name"]: r for r in m.alerts.view()}
    assert (rules["a"]["firing"], rules["a"]["since_ms"], rules["a"]["undelivered"]) == (False, 3_000, 2)
    assert (rules["b"]["firing"], rules["b"]["undelivered"]) == (True, 1)
    assert _apply(m, 4_000, {"op": "alert_delivered", "seq": 1}, {"op": "alert_delivered", "seq": 1}) == [
        {"delivered": True}, {"delivered": False}]
    assert [t["seq"] for t in m.alerts.pending_view()] == [2, 3]
    assert _apply(m, 4_001, _transition("nope", "firing")) == [
        {"error": "NOT_FOUND", "message": "no alert 'nope'"}]


def test_removing_a_rule_drops_its_pending_transitions_only() -> None:
    m = JobMachine()
    _apply(m, 1, _add("a"), _add("b"), _transition("a", "firing"), _transition("b", "firing"))
    _apply(m, 2, {"op": "alert_remove", "name": "a"})
    assert [(t["seq"], t["name"]) for t in m.alerts.pending_view()] == [(2, "b")]
    # Numbers are never reused: a new rule's first transition gets the next one.
    assert _apply(m, 3, _add("a"), _transition("a", "firing"))[1] == {"recorded": True, "seq": 3}


def test_pending_transitions_are_bounded_oldest_dropped_first() -> None:
    m = JobMachine()
    _apply(m, 1, _add("a"))
    flips = [_transition("a", "firing" if i % 2 == 0 else "resolved") for i in range(MAX_PENDING_ALERTS + 3)]
    _apply(m, 2, *flips)
    pending = m.alerts.pending_view()
    assert len(pending) == MAX_PENDING_ALERTS
    assert pending[0]["seq"] == 4 and pending[-1]["seq"] == MAX_PENDING_ALERTS + 3
    assert m.to_snapshot()["alerts"]["dropped"] == 3


def test_snapshot_round_trip_keeps_rules_pending_and_numbering() -> None:
    m = JobMachine()
    _apply(m, 1_000, _add("a", for_ms=30_000), _add("b", email="ops@example.com", webhook=None),
           _transition("a", "firing"), _transition("b", "firing"), {"op": "alert_delivered", "seq": 1})
    restored = _round_trip(m)
    assert restored.digest() == m.digest()
    assert restored.alerts.view() == m.alerts.view()
    assert restored.alerts.pending_view() == m.alerts.pending_view()
    # Both go on numbering alike.
    for machine in (m, restored):
        assert _apply(machine, 2_000, _transition("a", "resolved")) == [{"recorded": True, "seq": 3}]
    assert restored.digest() == m.digest()


def test_a_cluster_without_alerts_writes_the_snapshot_it_always_wrote() -> None:
    m = JobMachine()
    _apply(m, 1, {"op": "submit", "job": {"id": "j", "type": "t"}})
    snapshot = m.to_snapshot()
    assert "alerts" not in snapshot
    assert list(snapshot) == ["format", "clock_ms", "next_seq", "job_fields", "jobs", "limits", "schedules",
                              "workers"]


def test_an_old_snapshot_without_alerts_loads_with_none() -> None:
    m = JobMachine()
    _apply(m, 1, {"op": "submit", "job": {"id": "j", "type": "t"}}, _add("a"), _transition("a", "firing"))
    old = m.to_snapshot()
    del old["alerts"]  # what a node from before alerts wrote
    restored = JobMachine()
    restored.restore(old)
    restored.check_invariants()
    assert restored.get("j") is not None
    assert restored.alerts.view() == [] and restored.alerts.pending_view() == []
    assert _apply(restored, 2, _add("a"), _transition("a", "firing"))[1] == {"recorded": True, "seq": 1}


def test_a_malformed_alerts_section_is_refused_and_leaves_the_state_untouched() -> None:
    m = JobMachine()
    _apply(m, 1, _add("a"))
    snapshot = m.to_snapshot()
    snapshot["alerts"] = {"rules": "nonsense"}
    try:
        m.restore(snapshot)
    except ValueError as exc:
        assert "snapshot alerts malformed" in str(exc)
    else:
        raise AssertionError("a malformed alerts section was accepted")
    assert [r["name"] for r in m.alerts.view()] == ["a"]


def test_the_evaluator_queries_read_ready_ages_and_recent_finishes() -> None:
    m = JobMachine()
    _apply(m, 1_000, {"op": "submit", "job": {"id": "old", "type": "t", "queue": "q"}})
    _apply(m, 2_000, {"op": "submit", "job": {"id": "new", "type": "t", "queue": "q", "priority": 5}},
           {"op": "submit", "job": {"id": "other", "type": "t", "queue": "r"}})
    assert m.alerts.oldest_ready_ms("q") == 1_000  # not the heap top (higher priority), the oldest
    assert m.alerts.oldest_ready_ms("empty") is None
    [lease] = _apply(m, 3_000, {"op": "lease", "worker": "w", "queues": ["q"], "max": 2, "lease_ms": 60_000})
    new, old = lease["jobs"]
    assert m.alerts.oldest_ready_ms("q") is None
    _apply(m, 4_000, {"op": "complete", "id": "new", "attempt": new["attempt"], "lease_token": new.get("lease_token")})
    _apply(m, 9_000, {"op": "fail", "id": "old", "attempt": old["attempt"], "lease_token": old.get("lease_token"),
                      "error": "boom", "retryable": False})
    assert m.alerts.finish_counts(since_ms=0) == {"q": (1, 1)}
    assert m.alerts.finish_counts(since_ms=5_000) == {"q": (0, 1)}
    assert m.alerts.finish_counts(since_ms=10_000) == {}
    # A requeued dead letter no longer counts as one.
    _apply(m, 9_500, {"op": "requeue_failed", "ids": ["old"]})
    assert m.alerts.finish_counts(since_ms=5_000) == {}
