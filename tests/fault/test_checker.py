"""The checker is tested twice: on hand-made records (always run, no sockets),
and against real clusters with a known bug injected (tests/fault/buggy_node.py),
each of which the checker must flag (marked `fault`: RAFTQ_FAULT=1 and root).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fault.checker import check


def h(ev: str, job_id: str) -> dict[str, Any]:
    return {"ev": ev, "id": job_id, "t": 0.0}


def w(ev: str, job_id: str, attempt: int, t: float, state: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"ev": ev, "id": job_id, "attempt": attempt, "t": t, "worker": "w1"}
    if state is not None:
        rec["state"] = state
    return rec


def done(attempts: int = 1, state: str = "succeeded") -> dict[str, Any]:
    return {"state": state, "attempts": attempts}


AGREE = {1: ("d", 10), 2: ("d", 10), 3: ("d", 10)}


def test_clean_history_passes() -> None:
    v = check([h("invoke", "a"), h("ok", "a"), h("invoke", "b"), h("unknown", "b")],
              [w("start", "a", 1, 1.0), w("ack", "a", 1, 2.0, "succeeded")],
              {"a": done()}, AGREE)
    assert v.ok, v.summary()
    assert (v.operations, v.acknowledged, v.unknown, v.completed) == (2, 1, 1, 1)


def test_unknown_outcome_may_be_absent_or_present() -> None:
    v = check([h("invoke", "a"), h("unknown", "a"), h("invoke", "b"), h("unknown", "b")], [],
              {"a": done()}, AGREE)
    assert v.ok, v.summary()


def test_lost_absent_and_not_final() -> None:
    v = check([h("invoke", "a"), h("ok", "a"), h("invoke", "b"), h("ok", "b")], [],
              {"b": {"state": "queued", "attempts": 0}}, AGREE)
    assert len(v.lost) == 2


def test_unexpected_job() -> None:
    v = check([], [], {"ghost": done(), "probe-1": done()}, AGREE)
    assert v.unexpected == ["ghost"]


def test_completed_twice() -> None:
    v = check([h("invoke", "a"), h("ok", "a")],
              [w("start", "a", 1, 1.0), w("ack", "a", 1, 2.0, "succeeded"),
               w("start", "a", 2, 3.0), w("ack", "a", 2, 4.0, "succeeded")],
              {"a": done(2)}, AGREE)
    assert v.duplicated and v.resurrected


def test_stale_token_accepted_is_fencing() -> None:
    v = check([h("invoke", "a"), h("ok", "a")],
              [w("start", "a", 1, 1.0), w("start", "a", 2, 3.0), w("ack", "a", 1, 4.0, "succeeded")],
              {"a": done(2)}, AGREE)
    assert v.fencing and not v.duplicated


def test_leased_after_completion_is_resurrection() -> None:
    v = check([h("invoke", "a"), h("ok", "a")],
              [w("start", "a", 1, 1.0), w("ack", "a", 1, 2.0, "succeeded"), w("start", "a", 2, 3.0)],
              {"a": done(1)}, AGREE)
    assert v.resurrected and not v.fencing
    # Also from the final state alone, when the re-run left no record.
    v = check([h("invoke", "a"), h("ok", "a")], [w("ack", "a", 1, 2.0, "succeeded")], {"a": done(3)}, AGREE)
    assert v.resurrected


def test_replica_disagreement_and_no_common_index() -> None:
    v = check([], [], {}, {1: ("x", 10), 2: ("y", 10), 3: ("x", 10)})
    assert v.agreement
    assert check([], [], {}, None).agreement


def test_liveness_problems_and_unreadable_state() -> None:
    v = check([], [], None, AGREE, ["no write within 30s"])
    assert len(v.liveness) == 2


def test_duplicate_ack_of_one_attempt_is_fine() -> None:
    v = check([h("invoke", "a"), h("ok", "a")],
              [w("start", "a", 1, 1.0), w("ack", "a", 1, 2.0, "succeeded"), w("ack", "a", 1, 2.5, "succeeded")],
              {"a": done(1)}, AGREE)
    assert v.ok, v.summary()


# ---- injected bugs against real clusters in namespaces -------------------------

BUG_SCENARIOS = {
    # fault, workload, the checker category that must be non-empty
    "ack_before_commit": ("partition-leader", "short", "lost"),
    "skip_fencing": ("worker-pause", "fence", "fencing"),
    "lease_without_log": ("none", "short", "agreement"),
}


@pytest.mark.fault
@pytest.mark.parametrize("bug", sorted(BUG_SCENARIOS))
def test_injected_bug_is_caught(bug: str, tmp_path: Path) -> None:
    from tests.fault.runner import run_one

    fault, workload, category = BUG_SCENARIOS[bug]
    result = run_one(fault, workload, seed=1, duration=12, workdir=tmp_path, bug=bug)
    flagged = getattr(result.verdict, category)
    assert flagged, f"bug {bug!r} under {fault}/{workload} was not caught: {result.verdict.summary()}\n" + \
        "\n".join(result.events)


@pytest.mark.fault
def test_clean_run_passes(tmp_path: Path) -> None:
    """The same harness without a bug finds nothing (the checker is not trigger-happy)."""
    from tests.fault.runner import run_one

    result = run_one("kill-leader", "short", seed=2, duration=10, workdir=tmp_path)
    assert result.verdict.ok, result.verdict.summary() + "\n" + "\n".join(result.events)


def test_every_known_bug_has_a_scenario() -> None:
    from tests.fault.buggy_node import BUGS

    assert set(BUG_SCENARIOS) == set(BUGS)
