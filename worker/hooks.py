"""Worker hooks: what the worker tells observers about its jobs, as method calls.

In the style of dramatiq's middleware: subclass `WorkerHooks`, override the
events you want (every method is a no-op here), and name the object with
`raftq worker --hook module:attribute` (repeatable) (an instance, or a class called with no
arguments). The fault suite records its worker events through one
(tests/fault/jobs.py); worker metrics are meant to be another. Log lines stay
for humans; hooks are the machine-readable interface.

Every hook runs on the worker's event loop, inline: it must be quick and must
not block. An exception raised by a hook is logged and swallowed, so an
observer can never stop the worker or change what it reports.

Events of one attempt (job id, attempt number), in order:
  on_leased -> on_started -> on_finished -> on_reported | on_report_dropped | on_undelivered
A job leased while no slot is free waits (prefetched) between on_leased and
on_started. An attempt whose lease is lost or whose job is cancelled gets
on_lease_lost, then on_finished with outcome None (nothing is reported); a
parked one only on_lease_lost. A job handed back at shutdown before it started
gets on_finished without on_started.
"""
from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.attempt import Outcome

log = logging.getLogger("raftq.worker")


class WorkerHooks:
    """No-op base: override the events to observe."""

    def on_leased(self, job_id: str, attempt: int, job_type: str) -> None:
        """The cluster leased us this attempt."""

    def on_started(self, job_id: str, attempt: int, job_type: str) -> None:
        """The attempt took a slot and its handler is being started."""

    def on_finished(self, job_id: str, attempt: int, job_type: str, outcome: Outcome | None,
                    duration_s: float) -> None:
        """The attempt is settled: `outcome` is what will be reported (None:
        nothing, the attempt is no longer ours); `duration_s` since it started."""

    def on_reported(self, job_id: str, attempt: int, state: str) -> None:
        """The cluster acknowledged the attempt's report; `state` is the job's state now."""

    def on_report_dropped(self, job_id: str, attempt: int, reason: str) -> None:
        """The report was refused for good (fenced: LEASE_LOST, NOT_FOUND,
        CONFLICT; or a failure report the cluster rejected) and is dropped."""

    def on_undelivered(self, job_id: str, attempt: int) -> None:
        """The worker stopped with this report unacknowledged (the job runs again after its lease expires)."""

    def on_lease_lost(self, job_id: str, attempt: int, reason: str) -> None:
        """A heartbeat said the attempt is no longer ours: "lease lost" or "cancelled"."""

    def on_heartbeat_error(self, error: BaseException, leases: int) -> None:
        """A heartbeat for `leases` leases failed (the next tick retries)."""


_EVENTS = tuple(name for name in vars(WorkerHooks) if name.startswith("on_"))


class HookChain(WorkerHooks):
    """Calls each hook in order; a hook that raises is logged and skipped."""

    def __init__(self, hooks: list[WorkerHooks]) -> None:
        self.hooks = list(hooks)
        for event in _EVENTS:
            # Only the hooks that override an event are called for it.
            targets = [getattr(h, event) for h in self.hooks
                       if getattr(type(h), event, None) is not getattr(WorkerHooks, event)]
            if targets:
                setattr(self, event, _fan_out(event, targets))


def _fan_out(event: str, targets: list[Any]) -> Any:
    def call(*args: Any) -> None:
        for target in targets:
            try:
                target(*args)
            except Exception:  # noqa: BLE001 - an observer must never stop the worker
                log.exception("worker hook %s failed", event)
    return call


class HookLoadError(Exception):
    """A --hook reference could not be loaded; the message says which and why."""


def load_hooks(ref: str) -> WorkerHooks:
    """Import "module:attribute": a WorkerHooks instance, or a class/factory returning one."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise HookLoadError(f"hooks: {ref!r} is not module:attribute")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's module
        raise HookLoadError(f"hooks: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise HookLoadError(f"hooks: module {module_name!r} has no attribute {attr!r}")
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, WorkerHooks)):
        obj = obj()
    if not isinstance(obj, WorkerHooks):
        raise HookLoadError(f"hooks: {ref} is a {type(obj).__name__}, not a worker.hooks.WorkerHooks")
    return obj
