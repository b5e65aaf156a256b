"""The results outbox: every settled outcome until the cluster has answered for it.

Small successes go to one batch task that sends them with `complete_many` (one
request and one Raft command for all that finished meanwhile); failures and
big results get a delivery task each (`complete` / `fail`). Both follow ONE
retry policy (`_until_answered`): transient errors (no leader, unavailable,
timeout, connection loss) are retried with capped, jittered exponential
backoff until the cluster answers or the final flush deadline passes. An
answer is final: acknowledged (the job's new state), fenced (LEASE_LOST /
NOT_FOUND / CONFLICT, per item for a batch: the attempt is no longer ours, the
report is dropped with a log line), or refused (BAD_REQUEST / TOO_LARGE: a
refused batch is reported one by one, a refused success is reported as a final
failure instead, a refused failure is dropped).

Invariant: the outbox holds every settled outcome not yet answered for; nothing
leaves it except an answer or the final flush deadline (then it is recorded as
undelivered). An item's lease is released from the lease book when it leaves.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable, TypeVar

from cluster.errors import BadRequest, Conflict, LeaseLost, NotFound, TooLarge
from worker.attempt import Attempt, Outcome, brief
from worker.hooks import WorkerHooks
from worker.leases import Key, LeaseBook

log = logging.getLogger("raftq.worker")

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0

# Errors that mean "this attempt is no longer ours": drop the report.
_FENCED = (LeaseLost, NotFound, Conflict)
_FENCED_CODES = frozenset(cls.code for cls in _FENCED)
# Errors that are the cluster's answer to this very report: never retried as they are.
_REFUSED = (BadRequest, TooLarge)

# Batched successes (complete_many): results up to BATCH_RESULT_BYTES go in a
# batch (bigger ones alone, so a batch stays far below the frame limit and one
# oversized result cannot hold the others back); a batch holds at most
# BATCH_MAX_ITEMS items and stops growing past BATCH_MAX_BYTES.
BATCH_RESULT_BYTES = 64 * 1024
BATCH_MAX_ITEMS = 500
BATCH_MAX_BYTES = 1024 * 1024

T = TypeVar("T")


class _GaveUp(Exception):
    """The final flush deadline passed with the report still unacknowledged."""


class Outbox:
    def __init__(self, client: Any, leases: LeaseBook, hooks: WorkerHooks, stats: dict[str, int],
                 notify: Callable[[], None]) -> None:
        self.client = client  # set before the first put
        self._leases = leases
        self._hooks = hooks
        self._stats = stats
        self._notify = notify
        self._pending: dict[Key, asyncio.Task] = {}  # each unanswered report -> the task sending it
        self._batch: dict[Key, tuple[Attempt, Outcome]] = {}  # successes waiting for the next complete_many
        self._flusher: asyncio.Task | None = None  # the one task sending them
        self._undelivered: list[Key] = []  # given up at the final deadline (or cancelled)
        # Once set (on stop), transient errors are retried only until then.
        self.deadline: float | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    @property
    def undelivered(self) -> list[Key]:
        return sorted(self._undelivered)

    def put(self, att: Attempt, outcome: Outcome) -> None:
        """Report `outcome` for `att` until the cluster answers."""
        if outcome.ok and outcome.size <= BATCH_RESULT_BYTES:
            # Small successes share one complete_many (see _flush_completions).
            self._batch[att.key] = (att, outcome)
            if self._flusher is None:
                self._flusher = asyncio.create_task(self._flush_completions(), name="raftq-complete-many")
            self._pending[att.key] = self._flusher
            return
        self._pending[att.key] = self._deliver_one(att, outcome)

    async def close(self) -> None:
        """Stop sending: whatever is still unanswered is recorded as undelivered."""
        tasks = list(self._pending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the one retry policy ---

    async def _until_answered(self, send: Callable[[], Awaitable[T]], what: str) -> T:
        """`send()` until the cluster answers: its reply, or the answer's error
        raised. Transient errors are retried with capped exponential backoff;
        past the deadline, _GaveUp."""
        backoff = BACKOFF_MIN_S
        while True:
            try:
                return await send()
            except asyncio.CancelledError:
                raise
            except (*_FENCED, *_REFUSED):
                raise
            except Exception as exc:  # noqa: BLE001 - transient: retry until answered
                if self.deadline is not None and time.monotonic() >= self.deadline:
                    raise _GaveUp() from None
                log.warning("%s not acknowledged (%s); retrying in %.1fs", what, brief(exc), backoff)
                await asyncio.sleep(jitter(backoff))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    # --- answers ---

    def _acknowledged(self, att: Attempt, ok: bool, state: Any) -> None:
        self._stats["succeeded" if ok else "failed"] += 1
        log.debug("job %s#%d reported: now %s", att.id, att.attempt, state)
        self._hooks.on_reported(att.id, att.attempt, str(state))

    def _fenced(self, att: Attempt, reason: str) -> None:
        self._stats["dropped"] += 1
        log.warning("job %s#%d: report dropped, the attempt is no longer ours (%s)", att.id, att.attempt, reason)
        self._hooks.on_report_dropped(att.id, att.attempt, reason)

    def _left(self, key: Key, task: asyncio.Task | None, delivered: bool) -> None:
        """The report for `key` leaves the outbox (if `task` still owns it)."""
        if self._pending.get(key) is not task:
            return
        del self._pending[key]
        self._leases.release(key)
        if not delivered:
            self._undelivered.append(key)
            self._hooks.on_undelivered(*key)

    # --- one by one ---

    def _deliver_one(self, att: Attempt, outcome: Outcome) -> asyncio.Task:
        return asyncio.create_task(self._deliver(att, outcome), name=f"raftq-report-{att.id}")

    async def _deliver(self, att: Attempt, outcome: Outcome) -> None:
        finished = False  # answered: acknowledged, or deliberately dropped
        what = f"job {att.id}#{att.attempt}: report"
        try:
            while True:
                try:
                    if outcome.ok:
                        result = outcome.result
                        state = await self._until_answered(
                            lambda: self.client.complete(att.id, att.attempt, result,
                                                         lease_token=att.lease_token), what)
                    else:
                        failed = outcome
                        state = await self._until_answered(
                            lambda: self.client.fail(att.id, att.attempt, failed.error,
                                                      retryable=failed.retryable,
                                                      lease_token=att.lease_token), what)
                    self._acknowledged(att, outcome.ok, state)
                    finished = True
                    return
                except _FENCED as exc:
                    self._fenced(att, brief(exc))
                    finished = True
                    return
                except _REFUSED as exc:
                    if not outcome.ok:
                        self._stats["dropped"] += 1
                        log.error("job %s#%d: the cluster rejected the failure report (%s)",
                                  att.id, att.attempt, brief(exc))
                        self._hooks.on_report_dropped(att.id, att.attempt, brief(exc))
                        finished = True
                        return
                    outcome = Outcome.failure(
                        f"{att.type}: result rejected by the cluster ({brief(exc)})", retryable=False)
        except _GaveUp:
            pass  # the final flush deadline passed: recorded below
        finally:
            self._left(att.key, asyncio.current_task(), finished)
            self._notify()

    # --- batched successes ---

    async def _flush_completions(self) -> None:
        """Send the batched successes, one complete_many at a time, until none
        is left. A transport error tells us nothing, so the whole batch is
        retried; that is safe because a repeat of an accepted completion is
        answered as a duplicate. Whatever comes in while a batch is in flight
        goes out in the next one."""
        inflight: dict[Key, tuple[Attempt, Outcome]] = {}
        me = asyncio.current_task()
        try:
            await asyncio.sleep(0)  # let the jobs settling in this same loop pass join the batch
            while self._batch:
                inflight = {}
                size = 0
                for key in list(self._batch):
                    if len(inflight) >= BATCH_MAX_ITEMS or (inflight and size >= BATCH_MAX_BYTES):
                        break
                    inflight[key] = self._batch.pop(key)
                    size += inflight[key][1].size
                await self._deliver_batch(inflight)
                inflight = {}
        except _GaveUp:
            pass  # the final flush deadline passed: the finally below records what is left
        finally:
            if self._flusher is me:
                self._flusher = None
            # Cancelled or given up at the final deadline: these were not acknowledged.
            for key in [*inflight, *self._batch]:
                self._left(key, me, delivered=False)
            self._batch.clear()
            self._notify()

    async def _deliver_batch(self, items: dict[Key, tuple[Attempt, Outcome]]) -> None:
        """Every item answered for: acknowledged, fenced (dropped), or handed to
        a one-by-one delivery with the full error handling (refused or not answered)."""
        payload = [{"id": att.id, "attempt": att.attempt, "lease_token": att.lease_token, "result": out.result}
                   for att, out in items.values()]

        async def send() -> list:
            answers = await self.client.complete_many(payload)
            if not isinstance(answers, list) or len(answers) != len(payload):
                raise BadRequest(f"malformed complete_many reply: {str(answers)[:120]}")
            return answers

        try:
            answers: list = await self._until_answered(send, f"report of {len(items)} result(s)")
        except (*_FENCED, *_REFUSED) as exc:
            # Refused as a whole (e.g. a node without complete_many): one by one instead.
            log.warning("batched report of %d result(s) refused (%s); reporting them one by one",
                        len(items), brief(exc))
            answers = [None] * len(payload)
        me = asyncio.current_task()
        for (key, (att, outcome)), answer in zip(list(items.items()), answers):
            del items[key]
            code = answer.get("error") if isinstance(answer, dict) else None
            if isinstance(answer, dict) and code is None and "state" in answer:
                self._acknowledged(att, True, answer["state"])
            elif code in _FENCED_CODES:
                self._fenced(att, f"{code}: {answer.get('message', '')}")
            else:  # refused for another reason, or not answered: the full one-by-one path
                if self._pending.get(key) is me:
                    self._pending[key] = self._deliver_one(att, outcome)
                continue
            self._left(key, me, delivered=True)
        self._notify()


def jitter(seconds: float) -> float:
    return seconds * (0.5 + random.random() / 2)
