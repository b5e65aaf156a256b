"""The snapshot format and the machine's answers, pinned byte for byte.

A node restores snapshots written by older versions of itself, and replicas of
different versions must agree on every byte of a snapshot (the digest check
compares them). So a change to how the machine is built inside must change
neither the snapshot's bytes nor any command's result. This file pins both:

- `golden_log()` drives every op through `apply_entry`, leaving jobs in every
  state, dependencies, unique keys, resources, progress, limits (rate and
  max_running), schedules (paused, fired, missed) and workers;
- the sha256 of all its results and of the snapshot's msgpack encoding are
  fixed digests, computed by the machine before it was split into parts;
- `data/machine_snapshot_v2.msgpack` is that snapshot as the old machine wrote
  it: it must restore, re-encode to the same bytes and go on like the original.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import msgpack

from replication.machine import JobMachine
from replication.model import STATES

GOLDEN_SNAPSHOT = Path(__file__).parent / "data" / "machine_snapshot_v2.msgpack"
# Changed once on purpose (issue 14): the golden log reuses 42 job ids with
# another spec, now answered CONFLICT instead of the existing job. Its state,
# SNAPSHOT_SHA256 below, did not change: an old log replays to the same state.
RESULTS_SHA256 = "6c60c7d68377a889144fa52f9f45ccb56dcef292e64e65a5ab8e341919d7cb0f"
SNAPSHOT_SHA256 = "6cee74ba77c61d388508beff5993271592a143af88000777574b153aab7259c1"


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _sha(value: Any) -> str:
    return hashlib.sha256(_pack(value)).hexdigest()


def _random_entries(rng: random.Random, scratch: JobMachine, now: int, n: int) -> list[dict[str, Any]]:
    """Random entries over every op; lease tokens come from `scratch`'s answers so
    that most completions, failures and heartbeats are fenced correctly."""
    ids = [f"j{i}" for i in range(30)]
    tokens: list[tuple[str, int, str]] = []
    log: list[dict[str, Any]] = []
    for _ in range(n):
        now += rng.choice([0, 3, 50, 300, 1200])
        cmds: list[dict[str, Any]] = []
        for _ in range(rng.randrange(1, 4)):
            k = rng.random()
            jid = rng.choice(ids)
            tid, att, worker = rng.choice(tokens[-6:]) if tokens else (jid, 1, "w1")
            if k < 0.2:
                spec: dict[str, Any] = {"id": jid, "type": rng.choice(["t", "u"]), "queue": rng.choice(["a", "b"]),
                                        "args": {"n": rng.randrange(1000)}, "priority": rng.choice([0, 0, 3]),
                                        "max_attempts": rng.randrange(1, 4), "backoff_ms": rng.choice([0, 200]),
                                        "max_lease_expiries": rng.choice([1, 2, 3]),
                                        "unique_key": rng.choice([None, None, "u1", "u2"]),
                                        "delay_ms": rng.choice([None, None, 400])}
                if rng.random() < 0.3:
                    spec["depends_on"] = rng.sample(ids, rng.randrange(1, 3))
                if rng.random() < 0.3:
                    spec["resources"] = {"cpu": rng.choice([0.5, 1, 4]), "mem_mb": rng.choice([10, 900])}
                cmds.append({"op": "submit", "job": spec})
            elif k < 0.25:
                base = rng.randrange(1000)
                cmds.append({"op": "submit_many", "jobs": [
                    {"id": f"m{base}", "type": "t", "queue": "b"},
                    {"id": f"m{base}c", "type": "t", "queue": "a", "depends_on": [f"m{base}"]}]})
            elif k < 0.42:
                cmd = {"op": "lease", "worker": rng.choice(["w1", "w2", "w3"]), "queues": rng.choice([["a"], ["a", "b"]]),
                       "max": rng.randrange(1, 4), "lease_ms": rng.choice([100, 2000, 60_000])}
                if rng.random() < 0.4:
                    cmd["capacity"] = {"cpu": rng.choice([1, 2]), "mem_mb": 1000}
                cmds.append(cmd)
            elif k < 0.5:
                cmds.append({"op": "complete", "id": tid, "attempt": att, "result": {"r": tid}})
            elif k < 0.53:
                cmds.append({"op": "complete_many", "items": [{"id": tid, "attempt": att, "result": [1, 2]},
                                                              {"id": jid, "attempt": 1, "result": None}]})
            elif k < 0.59:
                cmds.append({"op": "fail", "id": tid, "attempt": att, "error": f"boom {att}",
                             "retryable": rng.random() < 0.6})
            elif k < 0.65:
                cmds.append({"op": "heartbeat", "worker": worker, "lease_ms": rng.choice([500, 5000]),
                             "leases": [{"id": tid, "attempt": att, "progress": [rng.random(), "half"]}]})
            elif k < 0.68:
                cmds.append({"op": "cancel", "id": jid})
            elif k < 0.71:
                cmds.append({"op": "retry", "id": jid})
            elif k < 0.73:
                cmds.append({"op": "requeue_failed", "ids": rng.sample(ids, 3)})
            elif k < 0.77:
                cmds.append({"op": "queue_limit", "queue": rng.choice(["a", "b"]),
                             "max_running": rng.choice([None, 1, 2]), "rate_per_s": rng.choice([None, 1.5, 5])})
            elif k < 0.8:
                cmds.append({"op": "schedule_add", "next_fire_ms": now + 500, "schedule": {
                    "name": rng.choice(["s1", "s2", "s3"]), "every_ms": 500,
                    "job": {"type": "t", "queue": "a"}, "paused": rng.random() < 0.2}})
            elif k < 0.87:
                name = rng.choice(["s1", "s2", "s3"])
                fire = now - rng.choice([0, 500])
                cmd = {"op": "fire", "schedule": name, "fire_ms": fire, "next_fire_ms": fire + 500}
                if rng.random() < 0.2:
                    cmd["skip"] = "queue full"
                cmds.append(cmd)
            elif k < 0.9:
                cmds.append({"op": rng.choice(["schedule_pause", "schedule_remove"]),
                             "name": rng.choice(["s1", "s2", "s3"])})
            elif k < 0.92:
                cmds.append({"op": "schedule_resume", "name": rng.choice(["s1", "s2", "s3"]),
                             "next_fire_ms": now + 250})
            else:
                cmds.append({"op": "tick", "retention_ms": rng.choice([0, 5_000, 100_000])})
        entry = {"v": 1, "now_ms": now, "cmds": cmds}
        for cmd, result in zip(cmds, scratch.apply_entry(entry)):
            if cmd["op"] == "lease":
                tokens += [(j["id"], j["attempt"], cmd["worker"]) for j in result["jobs"]]
        log.append(entry)
    return log


def golden_log() -> list[dict[str, Any]]:
    """Random entries, then a fixed tail that leaves a job in every state."""
    log = _random_entries(random.Random(2026), JobMachine(), 10_000, 400)
    now = log[-1]["now_ms"] + 10
    tail: list[list[dict[str, Any]]] = [
        [{"op": "submit", "job": {"id": "g-parent", "type": "t", "queue": "g"}},
         {"op": "submit", "job": {"id": "g-child", "type": "t", "queue": "g", "depends_on": ["g-parent"]}},
         {"op": "submit", "job": {"id": "g-later", "type": "t", "queue": "g", "delay_ms": 60_000}},
         {"op": "submit", "job": {"id": "g-ok", "type": "t", "queue": "h", "unique_key": "g-u"}},
         {"op": "submit", "job": {"id": "g-bad", "type": "t", "queue": "h", "max_attempts": 1}},
         {"op": "submit", "job": {"id": "g-gone", "type": "t", "queue": "h"}},
         {"op": "submit", "job": {"id": "g-run", "type": "t", "queue": "h", "resources": {"cpu": 0.25}}}],
        [{"op": "lease", "worker": "gw", "queues": ["h"], "max": 4, "lease_ms": 90_000,
          "capacity": {"cpu": 2, "mem_mb": 64}}],
        [{"op": "complete", "id": "g-ok", "attempt": 1, "result": {"answer": 42}},
         {"op": "fail", "id": "g-bad", "attempt": 1, "error": "no", "retryable": False},
         {"op": "cancel", "id": "g-gone"},
         {"op": "heartbeat", "worker": "gw", "lease_ms": 90_000,
          "leases": [{"id": "g-run", "attempt": 1, "progress": [0.5, "halfway"]}]},
         {"op": "queue_limit", "queue": "g", "max_running": 5, "rate_per_s": 2.5},
         {"op": "schedule_add", "next_fire_ms": now + 5000, "schedule": {
             "name": "g-sched", "cron": "*/5 * * * *", "tz": "Europe/Paris", "job": {"type": "t", "queue": "g"},
             "misfire": "catch_up", "max_catch_up": 3}}],
    ]
    for i, cmds in enumerate(tail):
        log.append({"v": 1, "now_ms": now + i, "cmds": cmds})
    return log


def _run(log: list[dict[str, Any]]) -> tuple[JobMachine, list[Any]]:
    m = JobMachine()
    results = [m.apply_entry(msgpack.unpackb(_pack(entry), raw=False)) for entry in log]
    return m, results


def test_golden_log_reaches_every_state_and_part() -> None:
    """Guards the pins below against a log that leaves something out."""
    m, _ = _run(golden_log())
    m.check_invariants()
    assert all(n > 0 for n in m.stats()["jobs"].values()), m.stats()["jobs"]
    assert set(m.stats()["jobs"]) == set(STATES)
    snap = m.to_snapshot()
    assert snap["limits"] and snap["workers"] and len(snap["schedules"]) >= 2
    assert any(s["paused"] for s in snap["schedules"]) and any(s["missed"] for s in snap["schedules"])
    assert any(w[5] for w in snap["workers"]), "some worker holds a running job"


def test_results_and_snapshot_bytes_are_pinned() -> None:
    m, results = _run(golden_log())
    assert _sha(results) == RESULTS_SHA256
    assert _sha(m.to_snapshot()) == SNAPSHOT_SHA256
    assert m.digest() == SNAPSHOT_SHA256


def test_snapshot_written_by_the_old_machine_restores_byte_identical() -> None:
    blob = GOLDEN_SNAPSHOT.read_bytes()
    assert hashlib.sha256(blob).hexdigest() == SNAPSHOT_SHA256
    restored = JobMachine()
    restored.restore(msgpack.unpackb(blob, raw=False, strict_map_key=False))
    restored.check_invariants()
    assert _pack(restored.to_snapshot()) == blob
    original, _ = _run(golden_log())
    assert restored.stats() == original.stats() and restored.workers() == original.workers()
    assert restored.queues() == original.queues() and restored.schedules() == original.schedules()
    assert restored.next_due_ms() == original.next_due_ms() and restored.next_fire_ms() == original.next_fire_ms()
    # and both go on alike: the same further log, the same answers and bytes
    more = _random_entries(random.Random(7), JobMachine(), golden_log()[-1]["now_ms"], 150)
    for entry in more:
        assert restored.apply_entry(entry) == original.apply_entry(entry)
    assert _pack(restored.to_snapshot()) == _pack(original.to_snapshot())
