"""The checker: what one run's records say about raftq's guarantees.

Pure: it reads the records a run collected and returns a `Verdict`; it talks to
nothing, so it can be tested on hand-made histories.

Inputs
- client history: `invoke` / `ok` / `fail` / `unknown` per submit attempt
  (tests/fault/client.py); `ok` = acknowledged.
- worker records: execution `start`/`end` and outbox `ack`/`dropped`
  (tests/fault/jobs.py). An `ack` with state "succeeded" is an *accepted
  completion* of that (id, attempt).
- the final job views after healing and the drain (every job the leader lists).
- replica digests at one applied index, and the liveness observations.

Violations
- lost: acknowledged, but absent from the final state or not final after the drain.
- unexpected: a job in the final state that no client ever invoked.
- duplicated (completed twice): accepted completions from more than one attempt.
- fencing: a completion accepted for attempt a although an attempt b > a had
  already started before the acknowledgement (a newer lease existed), or the
  final state names a different attempt than the only accepted completion
  while an execution of that newer attempt began before the ack.
- resurrected: the job ran again (an attempt > a started) after attempt a's
  completion was acknowledged, or the final state's attempt count moved past
  the accepted completion.
- agreement: replicas reporting different digests at the same applied index
  (or no common index found after quiescence).
- liveness: a write did not succeed within the bound after healing, or the
  drain did not end.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from replication.model import FINAL_STATES


@dataclass
class Verdict:
    operations: int = 0
    acknowledged: int = 0
    unknown: int = 0
    completed: int = 0
    executions: int = 0
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    fencing: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    agreement: list[str] = field(default_factory=list)
    liveness: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unexpected or self.duplicated or self.fencing or self.resurrected
                    or self.agreement or self.liveness)

    def summary(self) -> str:
        parts = [f"ops={self.operations} acked={self.acknowledged} unknown={self.unknown} "
                 f"completed={self.completed} executions={self.executions}"]
        for name in ("lost", "unexpected", "duplicated", "fencing", "resurrected", "agreement", "liveness"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}={len(items)} e.g. {items[:3]}")
        return "; ".join(parts)


def check(history: Iterable[dict[str, Any]], worker_records: Iterable[dict[str, Any]],
          final_jobs: dict[str, dict[str, Any]] | None, digests: dict[int, tuple[str, int]] | None,
          liveness_problems: Iterable[str] = ()) -> Verdict:
    v = Verdict()
    invoked: set[str] = set()
    acked: set[str] = set()
    for ev in history:
        kind = ev.get("ev")
        if kind == "invoke":
            v.operations += 1
            invoked.add(ev["id"])
        elif kind == "ok":
            acked.add(ev["id"])
        elif kind == "unknown":
            v.unknown += 1
    v.acknowledged = len(acked)

    starts: dict[str, list[tuple[int, float]]] = defaultdict(list)
    accepted: dict[str, dict[int, float]] = defaultdict(dict)  # id -> attempt -> first ack time
    for rec in worker_records:
        kind = rec.get("ev")
        if kind == "start":
            starts[rec["id"]].append((int(rec["attempt"]), float(rec["t"])))
            v.executions += 1
        elif kind == "ack" and rec.get("state") == "succeeded":
            attempts = accepted[rec["id"]]
            a = int(rec["attempt"])
            attempts[a] = min(attempts.get(a, float("inf")), float(rec["t"]))
    v.completed = len(accepted)

    v.liveness.extend(liveness_problems)
    if final_jobs is None:
        v.liveness.append("final state could not be read")
        final_jobs = {}
    for job_id in sorted(acked):
        view = final_jobs.get(job_id)
        if view is None:
            v.lost.append(f"{job_id}: acknowledged but absent")
        elif view.get("state") not in FINAL_STATES:
            v.lost.append(f"{job_id}: acknowledged but still {view.get('state')} after the drain")
    for job_id in sorted(final_jobs):
        if job_id not in invoked and not job_id.startswith("probe-"):
            v.unexpected.append(job_id)

    for job_id in sorted(accepted):
        attempts = accepted[job_id]
        if len(attempts) > 1:
            v.duplicated.append(f"{job_id}: accepted completions of attempts {sorted(attempts)}")
        for a, t_ack in sorted(attempts.items()):
            newer_before = [b for b, t in starts.get(job_id, []) if b > a and t < t_ack]
            newer_after = [b for b, t in starts.get(job_id, []) if b > a and t >= t_ack]
            if newer_before:
                v.fencing.append(f"{job_id}: attempt {a} accepted after attempt {max(newer_before)} was leased")
            if newer_after:
                v.resurrected.append(f"{job_id}: attempt {min(newer_after)} ran after attempt {a} completed")
        view = final_jobs.get(job_id)
        if view is not None and view.get("state") == "succeeded" and len(attempts) == 1:
            (a,) = attempts
            final_attempt = int(view.get("attempts") or 0)
            if final_attempt > a and not any(job_id in s for s in v.fencing + v.resurrected):
                v.resurrected.append(f"{job_id}: final state shows attempt {final_attempt} after "
                                     f"attempt {a}'s completion was acknowledged")

    if digests is None:
        v.agreement.append("no common applied index across replicas after quiescence")
    else:
        by_index: dict[int, set[str]] = defaultdict(set)
        for _node, (digest, index) in digests.items():
            by_index[index].add(digest)
        for index, values in sorted(by_index.items()):
            if len(values) > 1:
                v.agreement.append(f"replicas differ at applied index {index}: {sorted(values)}")
    return v
