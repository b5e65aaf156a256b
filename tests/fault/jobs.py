"""Worker-side recording for the fault suite, loaded with `raftq worker --import tests.fault.jobs`.

Two machine-readable logs, one JSON object per line, appended and flushed per
line so a kill -9 loses at most the line being written. Both go to the file
named by RAFTQ_FAULT_LOG (one file per worker process), with the worker's name
from RAFTQ_FAULT_WORKER:

- `{"ev": "start"|"end", "id", "attempt", "worker", "t"}` from the `fault.record`
  job type around each execution (execution is at-least-once: a stalled worker
  may run an attempt the cluster has already given to another);
- `{"ev": "ack", "id", "attempt", "state", "worker", "t"}` each time the
  worker's outbox gets an acknowledgement for a report, and `"dropped"` when
  the cluster fenced it (LEASE_LOST etc.). They are taken from the real
  worker's "raftq.worker" log records, so the worker runs unmodified.

`t` is time.time() on this machine; all namespaces share one clock (workers are
never started with a skewed clock).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from worker.context import JobCancelled, JobContext
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


class _OutboxRecorder(logging.Handler):
    """Turns the worker's outbox log records into ack / dropped lines."""

    def emit(self, rec: logging.LogRecord) -> None:
        try:
            msg = str(rec.msg)
            args = rec.args if isinstance(rec.args, tuple) else ()
            if msg.startswith("job %s#%d reported") and len(args) >= 3:
                record("ack", id=args[0], attempt=args[1], state=str(args[2]))
            elif msg.startswith("job %s#%d: report dropped") and len(args) >= 2:
                record("dropped", id=args[0], attempt=args[1])
        except Exception:  # noqa: BLE001 - a recording hook must never stop the worker
            pass


def _install() -> None:
    wlog = logging.getLogger("raftq.worker")
    if not any(isinstance(h, _OutboxRecorder) for h in wlog.handlers):
        handler = _OutboxRecorder(level=logging.DEBUG)
        wlog.addHandler(handler)
        wlog.setLevel(logging.DEBUG)
        # Keep debug lines out of the console log; only our recorder wants them.
        for root_handler in logging.getLogger().handlers:
            if root_handler.level == logging.NOTSET:
                root_handler.setLevel(logging.INFO)


_install()
