"""`complete_many`: a batch of completions in one command, each item fenced and
answered exactly as its own `complete` would be (docs/contracts.md section 1)."""
from __future__ import annotations

from typing import Any

import pytest

from replication.machine import JobMachine
from replication.model import MAX_COMPLETE_BATCH, validate_command
from tests.unit.test_machine import Driver


def many(d: Driver, *items: dict[str, Any]) -> list[dict[str, Any]]:
    return d.one({"op": "complete_many", "items": list(items)})["results"]


def test_each_item_is_answered_like_its_own_complete() -> None:
    batched, single = Driver(), Driver()
    for d in (batched, single):
        for jid in ("a", "b", "c", "d"):
            d.submit(jid)
        d.lease(n=3)  # a, b, c running at attempt 1; d queued
        d.complete("c", 1, "early")  # c already succeeded: its repeat is a duplicate
    items = [{"id": "a", "attempt": 1, "result": {"n": 1}},
             {"id": "b", "attempt": 2, "result": None},   # stale attempt
             {"id": "c", "attempt": 1, "result": "early"},
             {"id": "d", "attempt": 1, "result": None},   # never leased
             {"id": "zz", "attempt": 1, "result": None}]  # unknown
    got = many(batched, *items)
    want = [single.complete(i["id"], i["attempt"], i["result"]) for i in items]
    assert got == want
    assert [r.get("state") or r["error"] for r in got] == [
        "succeeded", "LEASE_LOST", "succeeded", "LEASE_LOST", "NOT_FOUND"]
    assert got[2].get("duplicate") is True
    assert batched.m.digest() == single.m.digest()
    assert batched.m.get("a")["result"] == {"n": 1}
    assert batched.m.get("b")["state"] == "running"  # a refused item leaves its job alone


def test_a_repeated_batch_is_idempotent() -> None:
    d = Driver()
    d.submit("a")
    d.submit("b")
    d.lease(n=2)
    items = [{"id": "a", "attempt": 1, "result": 1}, {"id": "b", "attempt": 1, "result": 2}]
    assert [r["state"] for r in many(d, *items)] == ["succeeded", "succeeded"]
    before = d.m.digest()
    again = many(d, *items)
    assert again == [{"state": "succeeded", "duplicate": True}] * 2
    assert d.m.digest() == before


@pytest.mark.parametrize("cmd, fragment", [
    ({"op": "complete_many"}, "'items' must be a non-empty list"),
    ({"op": "complete_many", "items": []}, "'items' must be a non-empty list"),
    ({"op": "complete_many", "items": ["a"]}, "items[0] must be a map"),
    ({"op": "complete_many", "items": [{"id": "a", "attempt": 1}, {"id": "", "attempt": 1}]}, "items[1]"),
    ({"op": "complete_many", "items": [{"id": "a", "attempt": "1"}]}, "items[0]"),
    ({"op": "complete_many", "items": [{"id": "a", "attempt": 1, "result": {1.5j}}]}, "items[0]: 'result'"),
    ({"op": "complete_many", "items": [{"id": "a", "attempt": 1}] * (MAX_COMPLETE_BATCH + 1)}, "at most"),
])
def test_malformed_batches_are_refused_as_a_whole(cmd: dict[str, Any], fragment: str) -> None:
    msg = validate_command(cmd)
    assert msg is not None and fragment in msg
    m = JobMachine()
    result = m.apply_entry({"v": 1, "now_ms": 1, "cmds": [cmd]})[0]
    assert result["error"] == "BAD_REQUEST"


def test_a_well_formed_batch_validates() -> None:
    assert validate_command({"op": "complete_many", "items": [{"id": "a", "attempt": 0, "result": [1, "x"]}]}) is None
