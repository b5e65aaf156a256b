"""The lease book: which leases this worker holds, and their heartbeats.

A lease is held from the moment the cluster leases us an attempt until its
report is acknowledged or dropped, or the cluster says it is no longer ours:
running attempts, parked (prefetched) ones AND settled ones whose report is
still in the outbox, so a result waiting out a leader election keeps its lease.

`heartbeat` sends one batched heartbeat for every held lease (with the
handler's latest progress) and our own TTL, so leasing and extending agree
whatever the node's default. Jobs the cluster answers as lost or cancelled
leave the book and are handed to `on_gone` (the runner stops them and reports
nothing).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Iterator

from worker.attempt import Attempt, brief
from worker.hooks import WorkerHooks

log = logging.getLogger("raftq.worker")

Key = tuple[str, int]  # (job id, attempt)


class LeaseBook:
    """Invariant: holds exactly the (id, attempt) pairs we may still heartbeat,
    each with its attempt (for its lease token and latest progress)."""

    def __init__(self, hooks: WorkerHooks, on_gone: Callable[[Key, str], None]) -> None:
        self._held: dict[Key, Attempt] = {}
        self._hooks = hooks
        self._on_gone = on_gone

    def hold(self, att: Attempt) -> None:
        self._held[att.key] = att

    def release(self, key: Key) -> None:
        self._held.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._held

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._held))

    async def heartbeat(self, client: Any, worker: str, lease_ms: int) -> None:
        """One heartbeat for every held lease; a failure is logged (the next tick retries)."""
        if not self._held:
            return
        payload = []
        for (jid, attempt), att in list(self._held.items()):
            entry: dict[str, Any] = {"id": jid, "attempt": attempt, "lease_token": att.lease_token}
            progress = att.ctx.last_progress
            if progress is not None:
                entry["progress"] = [progress[0], progress[1]]
            payload.append(entry)
        try:
            reply = await client.heartbeat(worker, payload, lease_ms=lease_ms)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - next tick retries
            log.warning("heartbeat for %d lease(s) failed: %s", len(payload), brief(exc))
            self._hooks.on_heartbeat_error(exc, len(payload))
            return
        reply = reply if isinstance(reply, dict) else {}
        for jid in reply.get("lost") or []:
            self._gone(jid, "lease lost")
        for jid in reply.get("cancel") or []:
            self._gone(jid, "cancelled")

    def _gone(self, jid: str, reason: str) -> None:
        for key in [k for k in self._held if k[0] == jid]:
            self._held.pop(key, None)
            self._hooks.on_lease_lost(key[0], key[1], reason)
            self._on_gone(key, reason)
