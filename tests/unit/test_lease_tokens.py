"""Lease tokens in the machine: derived on apply from the lease command's nonce,
required by every report and heartbeat on that lease, never shown by a read,
kept by snapshots, and absent (fencing by attempt only) for a lease command
logged without a nonce."""
from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from replication.machine import JobMachine
from replication.model import LEASE_NONCE_BYTES

NONCE = bytes(range(LEASE_NONCE_BYTES))
FOREIGN = "0" * 32


def _entry(now: int, *cmds: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "now_ms": now, "cmds": list(cmds)}


def _leased(m: JobMachine, nonce: bytes | None = NONCE, lease_ms: int = 10_000) -> dict[str, Any]:
    """Job "a" submitted and leased by w1 (attempt 1); its LeasedJob."""
    lease: dict[str, Any] = {"op": "lease", "worker": "w1", "queues": ["default"], "max": 1, "lease_ms": lease_ms}
    if nonce is not None:
        lease["nonce"] = nonce
    m.apply_entry(_entry(1_000, {"op": "submit", "job": {"id": "a", "type": "t", "max_attempts": 3}}))
    [result] = m.apply_entry(_entry(1_001, lease))
    [job] = result["jobs"]
    return job


def _one(m: JobMachine, now: int, cmd: dict[str, Any]) -> dict[str, Any]:
    [result] = m.apply_entry(_entry(now, cmd))
    return result


def test_the_token_is_a_keyed_hash_of_id_and_attempt_under_the_nonce() -> None:
    job = _leased(JobMachine())
    want = hashlib.blake2b(b"a:1", key=NONCE, digest_size=16).hexdigest()
    assert job["lease_token"] == want
    assert _leased(JobMachine())["lease_token"] == want  # every replica derives the same
    other = _leased(JobMachine(), nonce=b"\xff" * LEASE_NONCE_BYTES)["lease_token"]
    assert other != want and len(other) == 32


def test_a_missing_or_foreign_token_cannot_complete_fail_or_renew() -> None:
    m = JobMachine()
    job = _leased(m)
    deadline = m.next_due_ms()
    for token in (None, FOREIGN, job["lease_token"].upper()):
        ref: dict[str, Any] = {"id": "a", "attempt": 1}
        if token is not None:
            ref["lease_token"] = token
        assert _one(m, 1_002, {"op": "complete", **ref, "result": "forged"})["error"] == "LEASE_LOST"
        assert _one(m, 1_002, {"op": "fail", **ref, "error": "forged", "retryable": False})["error"] == "LEASE_LOST"
        [item] = _one(m, 1_002, {"op": "complete_many", "items": [{**ref, "result": "forged"}]})["results"]
        assert item["error"] == "LEASE_LOST"
        # A heartbeat in the holder's own name, asking for a tiny lease, changes nothing.
        assert _one(m, 1_002, {"op": "heartbeat", "worker": "w1", "lease_ms": 1,
                               "leases": [ref]}) == {"lost": ["a"], "cancel": []}
    assert m.next_due_ms() == deadline
    view = m.get("a")
    assert (view["state"], view["result"], view["error"], view["progress"]) == ("running", None, None, None)
    m.check_invariants()


def test_the_holder_renews_and_completes_and_only_its_repeat_is_a_duplicate() -> None:
    m = JobMachine()
    job = _leased(m)
    own = {"id": "a", "attempt": 1, "lease_token": job["lease_token"]}
    assert _one(m, 1_002, {"op": "heartbeat", "worker": "w1", "lease_ms": 20_000,
                           "leases": [{**own, "progress": [0.5, "half"]}]}) == {"lost": [], "cancel": []}
    assert m.next_due_ms() == 21_002
    assert _one(m, 1_003, {"op": "complete", **own, "result": "real"}) == {"state": "succeeded"}
    assert _one(m, 1_004, {"op": "complete", **own, "result": "real"}) == {"state": "succeeded", "duplicate": True}
    [item] = _one(m, 1_004, {"op": "complete_many", "items": [{**own, "result": "real"}]})["results"]
    assert item == {"state": "succeeded", "duplicate": True}
    forged = _one(m, 1_005, {"op": "complete", "id": "a", "attempt": 1, "lease_token": FOREIGN, "result": "forged"})
    assert forged["error"] == "LEASE_LOST"
    assert m.get("a")["result"] == "real"


def test_a_stale_attempt_with_its_own_token_is_fenced_off() -> None:
    m = JobMachine()
    first = _leased(m, lease_ms=100)
    m.apply_entry(_entry(1_200, {"op": "tick", "retention_ms": 60_000}))  # expired: queued again
    [second] = _one(m, 1_201, {"op": "lease", "worker": "w2", "queues": ["default"], "max": 1, "lease_ms": 10_000,
                               "nonce": b"\x01" * LEASE_NONCE_BYTES})["jobs"]
    assert second["attempt"] == 2 and second["lease_token"] != first["lease_token"]
    stale = {"id": "a", "attempt": 1, "lease_token": first["lease_token"]}
    assert _one(m, 1_202, {"op": "complete", **stale, "result": "stale"})["error"] == "LEASE_LOST"
    # The new attempt's number with the old lease's token is still not the lease.
    crossed = {"id": "a", "attempt": 2, "lease_token": first["lease_token"]}
    assert _one(m, 1_202, {"op": "fail", **crossed, "error": "x"})["error"] == "LEASE_LOST"
    assert _one(m, 1_203, {"op": "complete", "id": "a", "attempt": 2, "lease_token": second["lease_token"],
                           "result": "fresh"}) == {"state": "succeeded"}


def test_a_cancelled_job_is_cancelled_only_for_its_holder() -> None:
    m = JobMachine()
    job = _leased(m)
    _one(m, 1_002, {"op": "cancel", "id": "a"})
    hb = {"op": "heartbeat", "worker": "w1", "lease_ms": 1000}
    assert _one(m, 1_003, {**hb, "leases": [{"id": "a", "attempt": 1, "lease_token": FOREIGN}]}) == \
        {"lost": ["a"], "cancel": []}
    assert _one(m, 1_003, {**hb, "leases": [{"id": "a", "attempt": 1, "lease_token": job["lease_token"]}]}) == \
        {"lost": [], "cancel": ["a"]}


def test_reads_never_show_the_token() -> None:
    m = JobMachine()
    token = _leased(m)["lease_token"]
    reads = [m.get("a"), m.list_jobs(), m.workers(), m.stats(), m.queues()]
    assert token not in repr(reads)
    assert "lease_token" not in repr(reads)


def test_replay_and_restore_keep_the_token() -> None:
    log = [
        _entry(1_000, {"op": "submit", "job": {"id": "a", "type": "t"}},
               {"op": "submit", "job": {"id": "b", "type": "t"}}),
        _entry(1_001, {"op": "lease", "worker": "w1", "queues": ["default"], "max": 2, "lease_ms": 10_000,
                       "nonce": NONCE}),
    ]
    m = JobMachine()
    tokens = {j["id"]: j["lease_token"] for j in [r for e in log for r in m.apply_entry(e)][-1]["jobs"]}
    replayed = JobMachine()
    for e in log:
        replayed.apply_entry(e)
    assert replayed.digest() == m.digest()
    restored = JobMachine()
    restored.restore(msgpack.unpackb(msgpack.packb(m.to_snapshot(), use_bin_type=True), raw=False))
    assert restored.digest() == m.digest()
    done = {"op": "complete", "id": "a", "attempt": 1, "lease_token": tokens["a"], "result": 1}
    for machine in (m, restored):
        assert _one(machine, 1_002, dict(done)) == {"state": "succeeded"}
        assert _one(machine, 1_002, {**done, "id": "b", "lease_token": tokens["a"]})["error"] == "LEASE_LOST"
    assert restored.digest() == m.digest()


def test_a_lease_logged_without_a_nonce_is_fenced_by_attempt_only() -> None:
    """Log entries written before lease tokens replay as they did."""
    m = JobMachine()
    job = _leased(m, nonce=None)
    assert "lease_token" not in job
    assert _one(m, 1_002, {"op": "heartbeat", "worker": "w1", "lease_ms": 5_000,
                           "leases": [{"id": "a", "attempt": 1}]}) == {"lost": [], "cancel": []}
    assert _one(m, 1_003, {"op": "complete", "id": "a", "attempt": 2, "result": "x"})["error"] == "LEASE_LOST"
    assert _one(m, 1_003, {"op": "complete", "id": "a", "attempt": 1, "result": "x"}) == {"state": "succeeded"}
    assert _one(m, 1_004, {"op": "complete", "id": "a", "attempt": 1}) == {"state": "succeeded", "duplicate": True}
    # Its snapshot rows hold exactly the job fields, as before lease tokens.
    snap = m.to_snapshot()
    assert all(len(row) == len(snap["job_fields"]) for row in snap["jobs"])


def test_a_malformed_nonce_or_token_is_a_bad_request() -> None:
    m = JobMachine()
    m.apply_entry(_entry(1_000, {"op": "submit", "job": {"id": "a", "type": "t"}}))
    lease = {"op": "lease", "worker": "w1", "queues": ["default"], "max": 1, "lease_ms": 1000}
    for nonce in (b"short", "x" * 16, 16):
        assert _one(m, 1_001, {**lease, "nonce": nonce})["error"] == "BAD_REQUEST"
    assert m.get("a")["state"] == "queued"
    assert _one(m, 1_001, {"op": "complete", "id": "a", "attempt": 1, "lease_token": 7})["error"] == "BAD_REQUEST"
