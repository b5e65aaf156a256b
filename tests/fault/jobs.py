"""Worker-side recording for the fault suite, loaded with
`raftq worker --import tests.fault.jobs --hook tests.fault.jobs:FaultRecorder`.

Two machine-readable logs, one JSON object per line, appended and flushed per
line so a kill -9 loses at most the line being written. Both go to the file
named by RAFTQ_FAULT_LOG (one file per worker process), with the worker's name
from RAFTQ_FAULT_WORKER:

- `{"ev": "start"|"end", "id", "attempt", "worker", "t"}` from the `fault.record`
  job type around each execution (execution is at-least-once: a stalled worker
  may run an attempt the cluster has already given to another);
- `{"ev": "ack", "id", "attempt", "state", "worker", "t"}` each time the
  worker's outbox gets an acknowledgement for a report, and `"dropped"` when
  the cluster fenced it (LEASE_LOST etc.), from the worker's hooks
  (worker/hooks.py), so the worker runs unmodified.

`t` is time.time() on this machine; all namespaces share one clock (workers are
never started with a skewed clock).
"""
from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from worker.context import JobCancelled, JobContext
from worker.hooks import WorkerHooks
from worker.registry import default_registry, require

_lock = threading.Lock()
_PATH = os.environ.get("RAFTQ_FAULT_LOG")
_WORKER = os.environ.get("RAFTQ_FAULT_WORKER", "?")


def record(ev: str, **fields: Any) -> None:
    if _PATH is None:
        return
    line = json.dumps({"ev": ev, "worker": _WORKER, "t": time.time(), **fields}) + "\n"
    with _lock:
        with open(_PATH, "a") as f:
            f.write(line)
            f.flush()


@default_registry.job("fault.record")
def fault_record(args: dict, ctx: JobContext) -> dict:
    """Sleep `ms` milliseconds (cancellable), logging the execution's start and end."""
    ms = require(args, "ms", int, default=100, min=0, max=600_000)
    record("start", id=ctx.id, attempt=ctx.attempt)
    if ctx.wait(ms / 1000.0):
        raise JobCancelled(ctx.cancel_reason or "cancelled")
    record("end", id=ctx.id, attempt=ctx.attempt)
    return {"worker": _WORKER, "attempt": ctx.attempt}


class FaultRecorder(WorkerHooks):
    """Worker hooks (`raftq worker --hook tests.fault.jobs:FaultRecorder`)
    turning the outbox's answers into ack / dropped lines."""

    def on_reported(self, job_id: str, attempt: int, state: str) -> None:
        record("ack", id=job_id, attempt=attempt, state=state)

    def on_report_dropped(self, job_id: str, attempt: int, reason: str) -> None:
        record("dropped", id=job_id, attempt=attempt)
