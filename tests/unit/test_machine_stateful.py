"""Hypothesis drives random command sequences through JobMachine and through a
small reference model that keeps jobs in a plain list and scans it linearly.

After every step both must agree on every result (lease order included), and on
every job's state, attempts and worker; the machine's own index invariants must
hold. Jobs may depend on each other: the reference re-derives every pending
job's fate by scanning to a fixpoint after each command (`Reference.settle`),
where the machine acts only on the parents that just finished. The reference
shares no logic with the machine but `backoff_delay_ms` (a pure function
covered by its own table test); of its constants, only FINAL_STATES (the one
definition of which states are final).

Leases are granted with a nonce or without one (a log written before lease
tokens); reports and heartbeats present the lease's own token, none, or a
foreign one, and the reference fences on the token it derives itself.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from replication.machine import JobMachine, backoff_delay_ms
from replication.model import FINAL_STATES

IDS = ["a", "b", "c", "d", "e", "f"]
QUEUES = ["q1", "q2"]
WORKERS = ["w1", "w2"]
FOREIGN_TOKEN = "f" * 32
TOKEN_CHOICES = ["own", "own", "own", "none", "foreign"]


@dataclass
class RefJob:
    id: str
    queue: str
    priority: int
    max_attempts: int
    backoff_ms: int
    unique_key: str | None
    seq: int
    state: str
    run_at: int | None = None
    attempts: int = 0
    worker: str | None = None
    deadline: int | None = None
    finished: int | None = None
    deps: tuple[str, ...] = ()
    token: str | None = None  # the last lease's token (None: granted without a nonce)
    spec: tuple[Any, ...] = ()  # what a repeated submit of its id must ask for (spec_key)


class Reference:
    """The obviously-correct model: one list, linear scans, no indexes."""

    def __init__(self) -> None:
        self.jobs: list[RefJob] = []
        self.clock = 0
        self.seq = 0

    def find(self, job_id: str) -> RefJob | None:
        return next((j for j in self.jobs if j.id == job_id), None)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    @staticmethod
    def spec_key(spec: dict[str, Any]) -> tuple[Any, ...]:
        """The fields this test varies; delay_ms is not part of a job's identity."""
        return (spec["type"], spec.get("args") or {}, spec["queue"], spec["priority"], spec["max_attempts"],
                spec["backoff_ms"], spec.get("unique_key"), tuple(spec.get("depends_on") or ()))

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        job = self.find(spec["id"])
        if job is not None and job.spec != self.spec_key(spec):
            return {"error": "CONFLICT"}
        if job is None and spec.get("unique_key") is not None:
            job = next((j for j in self.jobs if j.unique_key == spec["unique_key"] and j.state not in FINAL_STATES), None)
        if job is not None:
            return {"id": job.id, "created": False, "state": job.state}
        deps = tuple(spec.get("depends_on") or ())
        if any(self.find(d) is None for d in deps):
            return {"error": "BAD_REQUEST"}
        due = self.clock + spec["delay_ms"] if spec.get("delay_ms") else None
        job = RefJob(spec["id"], spec["queue"], spec["priority"], spec["max_attempts"], spec["backoff_ms"],
                     spec.get("unique_key"), self.next_seq(), "scheduled" if due else "queued", run_at=due,
                     deps=deps, spec=self.spec_key(spec))
        self.jobs.append(job)
        self._enter(job)
        return {"id": job.id, "created": True, "state": job.state}

    def _enter(self, job: RefJob) -> None:
        """Dependencies: cancelled by a failed dep, pending on a live one, else as it was."""
        states = [d.state for d in map(self.find, job.deps) if d is not None]
        if any(s in ("failed", "cancelled") for s in states):
            self._finish(job, "cancelled")
        elif any(s != "succeeded" for s in states):
            job.state = "pending"

    def settle(self) -> None:
        """After every command: cancel dependents of failed deps, release the
        pending jobs whose deps are done (purged counts as done), to a fixpoint."""
        changed = True
        while changed:
            changed = False
            for job in self.jobs:
                if job.state != "pending":
                    continue
                states = [d.state for d in map(self.find, job.deps) if d is not None]
                if any(s in ("failed", "cancelled") for s in states):
                    self._finish(job, "cancelled")
                    changed = True
                elif all(s == "succeeded" for s in states):
                    job.state = "scheduled" if job.run_at is not None and job.run_at > self.clock else "queued"
                    changed = True

    def submit_many(self, specs: list[dict[str, Any]]) -> dict[str, Any]:
        """Whole-batch checks, then a topological order preferring batch order."""
        new = {sp["id"] for sp in specs if self.find(sp["id"]) is None}
        for sp in specs:
            if sp["id"] in new and any(self.find(d) is None and d not in new for d in sp.get("depends_on") or ()):
                return {"error": "BAD_REQUEST"}
        results: list[dict[str, Any] | None] = [None] * len(specs)
        while None in results:
            for i, sp in enumerate(specs):
                if results[i] is None and all(self.find(d) is not None or d not in new
                                              for d in sp.get("depends_on") or ()):
                    results[i] = self.submit(sp)
                    break
            else:
                return {"error": "BAD_REQUEST"}  # a cycle (nothing was submitted: checked first below)
        return {"results": results}

    def lease(self, worker: str, queues: list[str], n: int, lease_ms: int,
              nonce: bytes | None) -> list[tuple[str, int, str | None]]:
        ready = sorted((j for j in self.jobs if j.state == "queued" and j.queue in queues),
                       key=lambda j: (-j.priority, j.seq))[:n]
        for j in ready:
            j.attempts += 1
            j.state, j.worker, j.deadline = "running", worker, self.clock + lease_ms
            j.token = None if nonce is None else hashlib.blake2b(
                f"{j.id}:{j.attempts}".encode(), key=nonce, digest_size=16).hexdigest()
        return [(j.id, j.attempts, j.token) for j in ready]

    @staticmethod
    def holds(job: RefJob, attempt: int, token: str | None) -> bool:
        return job.attempts == attempt and (job.token is None or job.token == token)

    def _finish(self, job: RefJob, state: str) -> None:
        job.state, job.finished, job.deadline = state, self.clock, None

    def _wait_again(self, job: RefJob, due: int | None) -> None:
        job.worker, job.deadline = None, None
        if due is not None and due > self.clock:
            job.state, job.run_at = "scheduled", due
        else:
            job.state = "queued"

    def complete(self, job_id: str, attempt: int, token: str | None) -> dict[str, Any]:
        job = self.find(job_id)
        if job is None:
            return {"error": "NOT_FOUND"}
        if job.state == "succeeded" and self.holds(job, attempt, token):
            return {"state": "succeeded", "duplicate": True}
        if job.state != "running" or not self.holds(job, attempt, token):
            return {"error": "LEASE_LOST"}
        self._finish(job, "succeeded")
        return {"state": "succeeded"}

    def fail(self, job_id: str, attempt: int, token: str | None, retryable: bool) -> dict[str, Any]:
        job = self.find(job_id)
        if job is None:
            return {"error": "NOT_FOUND"}
        if job.state != "running" or not self.holds(job, attempt, token):
            return {"error": "LEASE_LOST"}
        if retryable and job.attempts < job.max_attempts:
            delay = backoff_delay_ms(job.id, job.attempts, job.backoff_ms)
            self._wait_again(job, self.clock + delay if delay else None)
        else:
            self._finish(job, "failed")
        return {"state": job.state}

    def cancel(self, job_id: str) -> dict[str, Any]:
        job = self.find(job_id)
        if job is None:
            return {"error": "NOT_FOUND"}
        if job.state in FINAL_STATES:
            return {"error": "CONFLICT"}
        self._finish(job, "cancelled")
        return {"state": "cancelled"}

    def retry(self, job_id: str) -> dict[str, Any]:
        job = self.find(job_id)
        if job is None:
            return {"error": "NOT_FOUND"}
        if job.state not in ("failed", "cancelled"):
            return {"error": "CONFLICT"}
        if job.unique_key is not None and any(
                j.unique_key == job.unique_key and j.state not in FINAL_STATES for j in self.jobs):
            return {"error": "CONFLICT"}
        if any(d is not None and d.state in ("failed", "cancelled") for d in map(self.find, job.deps)):
            return {"error": "CONFLICT"}
        job.seq, job.attempts, job.worker, job.finished, job.run_at = self.next_seq(), 0, None, None, None
        job.state = "queued"
        self._enter(job)
        return {"state": job.state}

    def heartbeat(self, worker: str, lease_ms: int, leases: list[tuple[str, int, str | None]]) -> dict[str, Any]:
        lost, cancel = [], []
        for job_id, attempt, token in leases:
            job = self.find(job_id)
            held = job is not None and self.holds(job, attempt, token) and job.worker == worker
            if held and job.state == "running":
                job.deadline = self.clock + lease_ms
            elif held and job.state == "cancelled":
                cancel.append(job_id)
            else:
                lost.append(job_id)
        return {"lost": lost, "cancel": cancel}

    def tick(self, retention_ms: int) -> dict[str, Any]:
        expired = promoted = 0
        for job in self.jobs:
            if job.state == "running" and job.deadline <= self.clock:
                expired += 1
                if job.attempts < job.max_attempts:
                    self._wait_again(job, None)
                else:
                    self._finish(job, "failed")
        for job in self.jobs:
            if job.state == "scheduled" and job.run_at <= self.clock:
                job.state = "queued"
                promoted += 1
        keep = [j for j in self.jobs if not (j.state in FINAL_STATES and j.finished < self.clock - retention_ms)]
        purged = len(self.jobs) - len(keep)
        self.jobs = keep
        return {"expired": expired, "promoted": promoted, "purged": purged}


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    """Compare error results by code only (messages are for humans)."""
    return {"error": result["error"]} if "error" in result else result


class MachineVsReference(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = JobMachine()
        self.ref = Reference()
        self.now = 1_000
        self.nonces = 0  # each lease's nonce: a counter (any 16 bytes do)

    def apply(self, cmd: dict[str, Any]) -> dict[str, Any]:
        [result] = self.machine.apply_entry({"v": 1, "now_ms": self.now, "cmds": [cmd]})
        self.ref.clock = max(self.ref.clock, self.now)
        return result

    def token(self, job_id: str, delta: int) -> int:
        """The attempt number to present (the current one moved by `delta`)."""
        job = self.ref.find(job_id)
        return max((job.attempts if job else 1) + delta, 0)

    def lease_token(self, job_id: str, choice: str) -> str | None:
        """The lease token to present: the job's own (if any), none, or a foreign one."""
        job = self.ref.find(job_id)
        return {"own": job.token if job else None, "none": None, "foreign": FOREIGN_TOKEN}[choice]

    @staticmethod
    def with_token(cmd: dict[str, Any], token: str | None) -> dict[str, Any]:
        return cmd if token is None else {**cmd, "lease_token": token}

    @rule(job_id=st.sampled_from(IDS), queue=st.sampled_from(QUEUES), priority=st.sampled_from([0, 0, 1, 3]),
          delay=st.sampled_from([0, 0, 100, 1500]), max_attempts=st.integers(1, 3),
          backoff=st.sampled_from([0, 200]), unique_key=st.sampled_from([None, None, "k"]),
          deps=st.sampled_from([(), (), (-1,), (-1,), (-2,), (-1, -2), (-3, -1)]),
          args=st.sampled_from([{}, {"n": 1}, {"s": "x" * 300}]))
    def submit(self, job_id: str, queue: str, priority: int, delay: int, max_attempts: int, backoff: int,
               unique_key: str | None, deps: tuple[int, ...], args: dict[str, Any]) -> None:
        # deps are offsets in IDS (-1: the previous id), so chains a <- b <- c form often
        here = IDS.index(job_id)
        spec = {"id": job_id, "type": "t", "queue": queue, "priority": priority, "delay_ms": delay,
                "max_attempts": max_attempts, "backoff_ms": backoff, "unique_key": unique_key,
                "depends_on": [IDS[(here + off) % len(IDS)] for off in deps] or None, "args": args}
        got = self.apply({"op": "submit", "job": spec})
        assert _strip(got) == self.ref.submit(spec)
        self.ref.settle()

    @rule(chain=st.permutations(IDS).map(lambda p: p[:3]), reverse=st.booleans(), cycle=st.booleans(),
          queue=st.sampled_from(QUEUES))
    def submit_chain(self, chain: list[str], reverse: bool, cycle: bool, queue: str) -> None:
        """A DAG in one batch: chain[0] <- chain[1] <- chain[2] (optionally a cycle)."""
        specs = [{"id": chain[0], "type": "t", "queue": queue, "priority": 0, "max_attempts": 1, "backoff_ms": 0,
                  "depends_on": [chain[2]] if cycle else None}]
        specs += [{"id": chain[i], "type": "t", "queue": queue, "priority": 0, "max_attempts": 1, "backoff_ms": 0,
                   "depends_on": [chain[i - 1]]} for i in (1, 2)]
        if reverse:
            specs.reverse()
        if cycle and all(self.ref.find(i) is None for i in chain):
            assert self.apply({"op": "submit_many", "jobs": specs})["error"] == "BAD_REQUEST"
            return
        got = self.apply({"op": "submit_many", "jobs": specs})
        want = self.ref.submit_many(specs)
        assert (_strip(got) if "error" in got else {"results": [_strip(r) for r in got["results"]]}) == want
        self.ref.settle()

    @rule(pick=st.integers(0, 5), ok=st.booleans(), choice=st.sampled_from(TOKEN_CHOICES))
    def finish_running(self, pick: int, ok: bool, choice: str) -> None:
        """Complete or fatally fail one running job (drives dependency chains
        forward), mostly with its own lease token."""
        running = sorted(j.id for j in self.ref.jobs if j.state == "running")
        if not running:
            return
        job_id = running[pick % len(running)]
        attempt, token = self.token(job_id, 0), self.lease_token(job_id, choice)
        if ok:
            got = self.apply(self.with_token({"op": "complete", "id": job_id, "attempt": attempt}, token))
            assert _strip(got) == self.ref.complete(job_id, attempt, token)
        else:
            got = self.apply(self.with_token({"op": "fail", "id": job_id, "attempt": attempt, "error": "x",
                                              "retryable": False}, token))
            assert _strip(got) == self.ref.fail(job_id, attempt, token, False)
        self.ref.settle()

    @rule(worker=st.sampled_from(WORKERS), queues=st.sampled_from([["q1"], ["q2"], ["q1", "q2"], ["q2", "q1"]]),
          n=st.integers(1, 3), lease_ms=st.sampled_from([100, 1000]),
          with_nonce=st.sampled_from([True, True, False]))
    def lease(self, worker: str, queues: list[str], n: int, lease_ms: int, with_nonce: bool) -> None:
        cmd: dict[str, Any] = {"op": "lease", "worker": worker, "queues": queues, "max": n, "lease_ms": lease_ms}
        nonce = None
        if with_nonce:
            self.nonces += 1
            nonce = cmd["nonce"] = self.nonces.to_bytes(16, "big")
        got = self.apply(cmd)
        assert ([(j["id"], j["attempt"], j.get("lease_token")) for j in got["jobs"]]
                == self.ref.lease(worker, queues, n, lease_ms, nonce))

    @rule(job_id=st.sampled_from(IDS), delta=st.sampled_from([0, 0, 0, -1, 1]), choice=st.sampled_from(TOKEN_CHOICES))
    def complete(self, job_id: str, delta: int, choice: str) -> None:
        attempt, token = self.token(job_id, delta), self.lease_token(job_id, choice)
        got = self.apply(self.with_token({"op": "complete", "id": job_id, "attempt": attempt, "result": job_id}, token))
        assert _strip(got) == self.ref.complete(job_id, attempt, token)
        self.ref.settle()

    @rule(job_id=st.sampled_from(IDS), delta=st.sampled_from([0, 0, 0, -1]), retryable=st.booleans(),
          choice=st.sampled_from(TOKEN_CHOICES))
    def fail(self, job_id: str, delta: int, retryable: bool, choice: str) -> None:
        attempt, token = self.token(job_id, delta), self.lease_token(job_id, choice)
        got = self.apply(self.with_token({"op": "fail", "id": job_id, "attempt": attempt, "error": "x",
                                          "retryable": retryable}, token))
        assert _strip(got) == self.ref.fail(job_id, attempt, token, retryable)
        self.ref.settle()

    @rule(job_id=st.sampled_from(IDS))
    def cancel(self, job_id: str) -> None:
        assert _strip(self.apply({"op": "cancel", "id": job_id})) == self.ref.cancel(job_id)
        self.ref.settle()

    @rule(job_id=st.sampled_from(IDS))
    def retry(self, job_id: str) -> None:
        assert _strip(self.apply({"op": "retry", "id": job_id})) == self.ref.retry(job_id)
        self.ref.settle()

    @rule(worker=st.sampled_from(WORKERS), ids=st.lists(st.sampled_from(IDS), max_size=3),
          delta=st.sampled_from([0, 0, -1]), lease_ms=st.sampled_from([100, 1000]),
          choice=st.sampled_from(TOKEN_CHOICES))
    def heartbeat(self, worker: str, ids: list[str], delta: int, lease_ms: int, choice: str) -> None:
        leases = [(i, self.token(i, delta), self.lease_token(i, choice)) for i in ids]
        got = self.apply({"op": "heartbeat", "worker": worker, "lease_ms": lease_ms,
                          "leases": [self.with_token({"id": i, "attempt": a}, t) for i, a, t in leases]})
        assert got == self.ref.heartbeat(worker, lease_ms, leases)

    @rule(retention_ms=st.sampled_from([0, 500, 100_000]))
    def tick(self, retention_ms: int) -> None:
        got = self.apply({"op": "tick", "retention_ms": retention_ms})
        assert got == self.ref.tick(retention_ms)
        self.ref.settle()

    @rule(ms=st.sampled_from([1, 50, 99, 100, 400, 1000, 5000]))
    def advance_clock(self, ms: int) -> None:
        self.now += ms

    @rule(retention_ms=st.sampled_from([0, 100_000]))
    def tick_exactly_when_due(self, retention_ms: int) -> None:
        """Jump to the earliest deadline on the dot: `deadline <= clock` is due."""
        due = self.machine.next_due_ms()
        if due is not None and due > self.now:
            self.now = due
        self.tick(retention_ms)

    @rule(back=st.sampled_from([1, 500]))
    def stale_stamp(self, back: int) -> None:
        """A deposed leader's older stamp: applies, but the clock does not go back."""
        [got] = self.machine.apply_entry({"v": 1, "now_ms": self.now - back, "cmds": [
            {"op": "tick", "retention_ms": 100_000}]})
        self.ref.clock = max(self.ref.clock, self.now - back)
        assert got == self.ref.tick(100_000)
        self.ref.settle()

    @invariant()
    def agree(self) -> None:
        m = self.machine
        m.check_invariants()
        assert m.stats()["clock_ms"] == self.ref.clock
        mine = {v["id"]: (v["state"], v["attempts"], v["worker"]) for v in m.list_jobs(limit=100)[0]}
        assert all(v["depends_on"] in (None, list(self.ref.find(v["id"]).deps)) for v in m.list_jobs(limit=100)[0])
        theirs = {j.id: (j.state, j.attempts, j.worker) for j in self.ref.jobs}
        assert mine == theirs
        assert m.live_count() == sum(j.state not in FINAL_STATES for j in self.ref.jobs)
        assert m.held_count() == len(self.ref.jobs)
        restored = JobMachine()
        restored.restore(m.to_snapshot())  # the held-bytes counter is rebuilt, not stored
        assert restored.held_bytes() == m.held_bytes()
        assert restored.digest() == m.digest()  # lease tokens included
        dues = [j.run_at for j in self.ref.jobs if j.state == "scheduled"]
        dues += [j.deadline for j in self.ref.jobs if j.state == "running"]
        assert m.next_due_ms() == (min(dues) if dues else None)
        for q in QUEUES:
            assert m.has_ready([q]) == any(j.state == "queued" and j.queue == q for j in self.ref.jobs)
        # The full ready order, read by leasing everything from a copy of the live
        # heaps (a restored machine would rebuild them and hide a heap bug).
        scratch = copy.deepcopy(m)
        [leased] = scratch.apply_entry({"v": 1, "now_ms": self.now, "cmds": [
            {"op": "lease", "worker": "probe", "queues": QUEUES, "max": len(IDS), "lease_ms": 1}]})
        ready = sorted((j for j in self.ref.jobs if j.state == "queued"), key=lambda j: (-j.priority, j.seq))
        assert [v["id"] for v in leased["jobs"]] == [j.id for j in ready]


MachineVsReference.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestMachineVsReference = MachineVsReference.TestCase
