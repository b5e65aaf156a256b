"""The machine's record of the last applied entry (`touched_queues`,
`touched_jobs`), which the node uses to wake only the long polls an entry
concerns (cluster/waiters.py)."""
from __future__ import annotations

from replication.machine import JobMachine


def _apply(m: JobMachine, *cmds: dict, now: int = 1000) -> list[dict]:
    return m.apply_entry({"v": 1, "now_ms": now, "cmds": list(cmds)})


def _job(i: str, queue: str = "q", **kw: object) -> dict:
    return {"id": i, "type": "t", "queue": queue, **kw}


def test_each_entry_records_ready_queues_and_changed_jobs_and_clears_the_last() -> None:
    m = JobMachine()
    _apply(m, {"op": "submit_many", "jobs": [_job("a"), _job("b"), _job("c", "r"), _job("d", delay_ms=60_000)]})
    assert m.touched_queues == {"q": 2, "r": 1} and m.touched_jobs == {"a", "b", "c", "d"}

    [lease] = _apply(m, {"op": "lease", "worker": "w", "queues": ["q"], "max": 1, "lease_ms": 1000})
    assert m.touched_queues == {} and m.touched_jobs == {"a"}

    _apply(m, {"op": "complete", "id": "a", "attempt": lease["jobs"][0]["attempt"], "result": None})
    assert m.touched_queues == {"q": 1}  # a running slot freed (max_running)
    assert m.touched_jobs == {"a"}

    _apply(m, {"op": "get_nothing"})  # a rejected command changes nothing
    assert m.touched_queues == {} and m.touched_jobs == set()


def test_a_due_job_and_an_expired_lease_count_as_ready() -> None:
    m = JobMachine()
    _apply(m, {"op": "submit", "job": _job("late", delay_ms=10)}, {"op": "submit", "job": _job("x", "p")})
    _apply(m, {"op": "lease", "worker": "w", "queues": ["p"], "max": 1, "lease_ms": 100})
    _apply(m, {"op": "tick", "retention_ms": 86_400_000}, now=5000)
    assert m.touched_queues == {"q": 1, "p": 1} and m.touched_jobs == {"late", "x"}
