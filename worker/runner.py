"""The worker: lease jobs, run them, heartbeat, report outcomes, stop gracefully.

Everything below runs on one asyncio event loop except the handlers themselves,
which run in a ThreadPoolExecutor (pool="thread") or each in its own child
process (pool="process", see worker/process.py; at most `processes` at once). The worker talks to the cluster only through the client's
`lease`, `heartbeat`, `complete_many`, `complete` and `fail` (docs/contracts.md §4),
plus one `cluster_status` at start: every node's client, Raft and HTTP address
joins the addresses network jobs may not reach (worker/jobs/netguard.py).

Tasks and what they own:
- lease loop: long-polls `lease(max=free slots + prefetch room)` only while a
  slot is free and the worker is not stopping; starts one job task per leased
  job, or parks it in `_waiting` (at most min(threads, 16), lease heartbeated)
  until a slot frees, so the next jobs are at hand without a lease round trip.
  Prefetch is on only while recent jobs ran < 0.1 s on average (long jobs
  parked here would wait while another worker idles).
  On stop, parked jobs still run within the grace period; any left are handed
  back with a retryable "worker shutting down".
- job task (one per attempt): runs the handler and settles the attempt exactly
  once, by the first of: the handler returned/raised (report it), the per-job
  timeout (report a retryable "timeout after Ns"), the heartbeat saying the
  lease is lost or the job cancelled (report nothing: the cluster has moved
  on), or shutdown past grace (report a retryable "worker shutting down"). Its
  slot stays taken until the handler has really returned, because the thread
  or process is busy until then.
- heartbeat loop: every heartbeat_s, one batched heartbeat for every lease we
  still hold, i.e. running attempts AND settled ones whose report is still in
  the outbox (so a result waiting out a leader election keeps its lease).
- outbox: small successes go to one batch task that sends them with
  `complete_many` (one request and one Raft command for all that finished
  meanwhile); failures and big results get a delivery task each. Both retry
  transient errors (no leader, unavailable, timeout, connection loss) with
  capped exponential backoff until the cluster answers; LEASE_LOST /
  NOT_FOUND / CONFLICT (per item, for a batch) mean the attempt is no longer
  ours to report and the report is dropped with a log line.

Invariants:
- `_leases` holds exactly the (id, attempt) pairs we may still heartbeat.
- `_runs` holds attempts whose handler has not returned (slots in use).
- `_outbox` holds every settled outcome not yet acknowledged; nothing leaves it
  except acknowledgement, a fencing rejection, or the final flush deadline.

Stopping a run: a thread handler gets its context's cancel flag (it must poll
it); a process handler's child is terminated (SIGTERM, then SIGKILL), and the
slot is freed only once the child has been reaped. Progress from process
handlers comes up their pipe and is heartbeated like a thread handler's.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import hashlib
import logging
import os
import random
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import msgpack

from cluster.errors import BadRequest, Conflict, LeaseLost, NotFound, RaftqError, TooLarge
from worker.config import WorkerConfig
from worker.context import JobCancelled, JobContext
from worker.process import ProcessRun, StoppedBeforeStart
from worker.registry import BadArgument, JobError, JobType, Registry, load_module

log = logging.getLogger("raftq.worker")

FLUSH_S = 5.0  # after the grace period, how long undelivered reports still get
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
MIN_POLL_S = 0.1  # least time between two lease polls that both came back empty
MAX_ERROR_CHARS = 4000
PREFETCH_MAX = 16  # jobs leased beyond the free slots (bounded by the worker's threads)
PREFETCH_BELOW_S = 0.1  # prefetch only while the jobs' average run time is below this
SUMMARY_S = 10.0  # how often the worker logs an INFO summary of the jobs it handled
# How long the start waits to learn the nodes' addresses; without an answer
# jobs are kept from the --cluster addresses and raftq's port band only.
NODE_ADDRS_WAIT_S = 5.0

# Errors that mean "this attempt is no longer ours": drop the report.
_FENCED = (LeaseLost, NotFound, Conflict)
_FENCED_CODES = frozenset(cls.code for cls in _FENCED)

# Batched successes (complete_many): results up to BATCH_RESULT_BYTES go in a
# batch (bigger ones alone, so a batch stays far below the frame limit and one
# oversized result cannot hold the others back); a batch holds at most
# BATCH_MAX_ITEMS items and stops growing past BATCH_MAX_BYTES.
BATCH_RESULT_BYTES = 64 * 1024
BATCH_MAX_ITEMS = 500
BATCH_MAX_BYTES = 1024 * 1024


class _GaveUp(Exception):
    """The final flush deadline passed with the batch still unacknowledged."""


@dataclass
class Outcome:
    """A settled attempt's report: complete(result) or fail(error, retryable)."""

    ok: bool
    result: Any = None
    error: str = ""
    retryable: bool = True
    size: int = 0  # encoded result bytes (successes): small ones are reported in batches

    @staticmethod
    def failure(error: str, retryable: bool = True) -> "Outcome":
        if len(error) > MAX_ERROR_CHARS:
            error = error[: MAX_ERROR_CHARS - 3] + "..."
        return Outcome(False, error=error, retryable=retryable)


@dataclass
class _Attempt:
    job: dict
    id: str
    attempt: int
    type: str
    ctx: JobContext
    timeout_s: float | None
    started: float = field(default_factory=time.monotonic)
    settled: bool = False
    wake: Callable[[], None] | None = None  # set while _execute waits; _settle calls it
    proc: ProcessRun | None = None  # set for pool="process" handlers
    own_workdir: bool = False  # thread handlers: _call_handler removes the workdir

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.attempt)


class Worker:
    """One worker process's job runner. `await run()`; `request_stop()` to stop."""

    def __init__(self, config: WorkerConfig, registry: Registry, client: Any = None) -> None:
        self.config = config
        self.registry = registry
        self._client = client
        self._own_client = client is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()  # something the shutdown/lease waits depend on
        self._stopping = False
        self._forced = False
        self._outbox_deadline: float | None = None
        self._leases: dict[tuple[str, int], JobContext] = {}
        self._runs: dict[tuple[str, int], _Attempt] = {}
        self._outbox: dict[tuple[str, int], asyncio.Task] = {}
        self._undelivered: list[tuple[str, int]] = []  # reports given up at the final deadline
        # Leased jobs waiting for a free slot (at most `_prefetch`), in lease order.
        self._waiting: dict[tuple[str, int], tuple[_Attempt, JobType | None]] = {}
        # A lease asks for up to this many jobs beyond the free slots, so that the
        # next jobs are at hand when slots free up instead of one lease round trip
        # later. Off when jobs are placed by declared cpu/mem (capacity leasing).
        # Only while recent jobs are short (moving average of run times): a long
        # job parked here would wait for a slot while another worker idles.
        self._avg_run_s: float | None = None
        self._prefetch = (0 if config.cpu is not None or config.mem_mb is not None
                          else min(PREFETCH_MAX, config.threads))
        # Successes waiting for the next complete_many, and the one task sending them.
        self._batch: dict[tuple[str, int], tuple[_Attempt, Outcome]] = {}
        self._flusher: asyncio.Task | None = None
        self._summary_at = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        # One thread per running process job (start, wait, reap): its size bounds the children.
        self._proc_io: concurrent.futures.ThreadPoolExecutor | None = None
        self._settings = config.job_settings
        self.stats = {"leased": 0, "succeeded": 0, "failed": 0, "dropped": 0}

    async def _learn_node_addrs(self) -> None:
        """Add every node's client, Raft and HTTP address to the settings'
        `node_addrs` (jobs may not reach them; --cluster may name only one node
        and never names the HTTP ports). Best effort: the worker still runs
        without them, with a warning."""
        assert self._client is not None
        try:
            status = await asyncio.wait_for(self._client.cluster_status(), NODE_ADDRS_WAIT_S)
        except (RaftqError, OSError, asyncio.TimeoutError) as exc:
            log.warning("could not learn the nodes' addresses (%s): jobs are kept only from --cluster "
                        "and raftq's port band", exc or type(exc).__name__)
            return
        learned = [n.get(key) for n in status.get("nodes", []) for key in ("client", "raft", "http")]
        addrs = dict.fromkeys([*self._settings.node_addrs, *(a for a in learned if isinstance(a, str) and a)])
        self._settings = replace(self._settings, node_addrs=tuple(addrs))

    # --- public control ---

    def request_stop(self) -> None:
        """Begin a graceful stop; a second call stops at once. Thread-safe."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._on_stop)
        else:
            self._on_stop()

    def _on_stop(self) -> None:
        if self._stopping:
            if not self._forced:
                log.warning("second stop request: stopping now without waiting for jobs")
            self._forced = True
        else:
            log.info("stopping: no new leases; running jobs get %gs to finish", self.config.grace_s)
        self._stopping = True
        self._stop.set()
        self._notify()

    def _notify(self) -> None:
        self._changed.set()

    @property
    def free_slots(self) -> int:
        return self.config.threads - len(self._runs)

    def free_capacity(self) -> dict[str, Any]:
        """What a job's `resources` may use now: configured cpu/mem_mb less the
        running jobs' declared resources (cpu defaults to one per free slot)."""
        used_cpu = used_mem = 0.0
        for att in self._runs.values():
            res = att.job.get("resources") if isinstance(att.job, dict) else None
            if isinstance(res, dict):
                used_cpu += _number_or_zero(res.get("cpu"))
                used_mem += _number_or_zero(res.get("mem_mb"))
        cfg = self.config
        cpu = max(0.0, cfg.cpu - used_cpu) if cfg.cpu is not None else float(self.free_slots)
        capacity: dict[str, Any] = {"cpu": round(cpu, 3)}
        if cfg.mem_mb is not None:
            capacity["mem_mb"] = max(0, int(cfg.mem_mb - used_mem))
        return capacity

    # --- main ---

    async def run(self) -> int:
        """Run until stopped. Returns 0 when every finished result was delivered, else 1."""
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        if self._stopping:  # request_stop() before run(): still honour it
            self._stop.set()
        if self._client is None:
            from cluster.client import AsyncClient  # the only way to the cluster

            self._client = AsyncClient(list(cfg.cluster), token=cfg.token, role="worker", tls=cfg.tls)
            await self._learn_node_addrs()  # before the first lease: no job runs without them
        self._threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=cfg.threads, thread_name_prefix="raftq-job"
        )
        log.info(
            "worker %s: queues=%s threads=%d processes=%d job types=%s",
            cfg.name, ",".join(cfg.queues), cfg.threads, cfg.processes, ",".join(self.registry.names()),
        )
        lease_task = asyncio.create_task(self._lease_loop(), name="raftq-lease")
        hb_task = asyncio.create_task(self._heartbeat_loop(), name="raftq-heartbeat")
        lease_task.add_done_callback(self._on_lease_loop_done)
        undelivered: list[tuple[str, int]] = []
        try:
            await self._stop.wait()
            # Graceful stop: running jobs get grace_s. An in-flight long poll
            # is cut short once no job is running any more (closing our
            # connection below ends the server's side of it; a job leased in
            # that instant is recovered by lease expiry). With an injected
            # client we cannot close, so the poll is waited out instead and
            # whatever it brings is handed back at once.
            job_deadline = time.monotonic() + cfg.grace_s

            def jobs_done() -> bool:
                idle = not self._unsettled()
                if idle and self._own_client and not lease_task.done():
                    lease_task.cancel()
                return idle and lease_task.done()

            await self._wait_until(jobs_done, job_deadline)
            if not lease_task.done():
                lease_task.cancel()
            for att, _ in list(self._waiting.values()):
                log.warning("job %s#%d not started before the grace ended: handing it back", att.id, att.attempt)
                self._waiting.pop(att.key)
                self._settle(att, Outcome.failure("worker shutting down", retryable=True))
            for att in self._unsettled():
                log.warning("job %s#%d still running after grace: handing it back", att.id, att.attempt)
                self._settle(att, Outcome.failure("worker shutting down", retryable=True), "worker shutting down")
            self._outbox_deadline = time.monotonic() + (0.0 if self._forced else FLUSH_S)
            self._notify()
            await self._wait_until(lambda: not self._outbox, self._outbox_deadline)
            for task in list(self._outbox.values()):
                task.cancel()
            await asyncio.gather(*self._outbox.values(), return_exceptions=True)
            undelivered = sorted(self._undelivered)
            if undelivered:
                log.error(
                    "exiting with %d undelivered result(s) (the jobs will run again after their leases expire): %s",
                    len(undelivered), ", ".join(f"{i}#{a}" for i, a in undelivered),
                )
        finally:
            for task in (lease_task, hb_task, *self._outbox.values(), *self._tasks):
                task.cancel()
            await asyncio.gather(lease_task, hb_task, *self._outbox.values(), *self._tasks,
                                 return_exceptions=True)
            self._shutdown_pools()
            if self._own_client and self._client is not None:
                await _maybe_await(self._client.close())
        log.info("worker %s stopped: %s", cfg.name, self.stats)
        return 1 if undelivered else 0

    def _on_lease_loop_done(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("lease loop crashed; stopping the worker", exc_info=task.exception())
            self._on_stop()
        self._notify()

    async def _wait_until(self, cond: Callable[[], bool], deadline: float) -> None:
        while not cond() and not self._forced:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._changed.clear()
            if cond():
                return
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _unsettled(self) -> list[_Attempt]:
        return [att for att in self._runs.values() if not att.settled] + [a for a, _ in self._waiting.values()]

    async def _sleep(self, seconds: float, *, wake_on_stop: bool) -> None:
        if wake_on_stop:
            try:
                await asyncio.wait_for(self._stop.wait(), seconds)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(seconds)

    # --- leasing ---

    async def _lease_loop(self) -> None:
        cfg = self.config
        backoff = BACKOFF_MIN_S
        while not self._stopping:
            if self._lease_room() <= 0:
                self._changed.clear()
                if self._lease_room() <= 0 and not self._stopping:
                    await self._changed.wait()
                continue
            polled_at = time.monotonic()
            try:
                jobs = await self._client.lease(
                    cfg.name, list(cfg.queues), max=self._lease_room(),
                    wait_s=cfg.poll_wait_s, lease_ms=cfg.lease_ttl_ms, capacity=self.free_capacity(),
                )
                backoff = BACKOFF_MIN_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error: log, back off, retry
                log.warning("lease failed (%s); retrying in %.1fs", _brief(exc), backoff)
                await self._sleep(_jitter(backoff), wake_on_stop=True)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            for job in jobs or []:
                self._start(job)
            if not jobs and time.monotonic() - polled_at < MIN_POLL_S:
                # An empty answer that came back at once (poll_wait_s=0, or a
                # node answering early): do not spin against the cluster.
                await self._sleep(MIN_POLL_S, wake_on_stop=True)

    def _lease_room(self) -> int:
        """How many jobs the next lease may ask for: the free slots plus what
        the prefetch buffer can still take (none while no slot is free, so a
        busy worker does not hoard jobs that idle workers could run)."""
        free = self.free_slots
        if free <= 0:
            return 0
        avg = self._avg_run_s
        if avg is None or avg > PREFETCH_BELOW_S:
            return free  # long (or not yet seen) jobs: parking them would only delay them
        return free + max(0, self._prefetch - len(self._waiting))

    def _start(self, job: Any) -> None:
        try:
            jid, attempt, jtype = job["id"], int(job["attempt"]), str(job.get("type", ""))
        except (TypeError, KeyError, ValueError):
            log.error("ignoring malformed leased job from the cluster: %r", job)
            return
        if (jid, attempt) in self._runs or (jid, attempt) in self._waiting:
            log.error("ignoring a second delivery of job %s#%d, which is already running", jid, attempt)
            return
        self.stats["leased"] += 1
        jt = self.registry.get(jtype)
        timeout = job.get("timeout_s")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            timeout = jt.timeout_s if jt is not None else None
        ctx = JobContext(jid, attempt, job.get("args"), self._workdir(jid, attempt), type=jtype,
                         settings=self._settings)
        att = _Attempt(job, jid, attempt, jtype, ctx, float(timeout) if timeout else None)
        self._leases[att.key] = ctx
        if self._stopping:
            # Leased by a long poll that was in flight when stop was requested.
            self._runs[att.key] = att
            self._settle(att, Outcome.failure("worker shutting down", retryable=True), "worker shutting down")
            self._release(att)
            return
        if self.free_slots <= 0:
            # Prefetched: it waits here (its lease heartbeated) for the next free slot.
            self._waiting[att.key] = (att, jt)
            return
        self._launch(att, jt)

    def _launch(self, att: _Attempt, jt: JobType | None) -> None:
        self._runs[att.key] = att
        att.started = time.monotonic()
        log.debug("job %s#%d %s: started", att.id, att.attempt, att.type)
        task = asyncio.create_task(self._run_attempt(att, jt), name=f"raftq-job-{att.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- running one attempt ---

    async def _run_attempt(self, att: _Attempt, jt: JobType | None) -> None:
        try:
            await self._execute(att, jt)
        except Exception as exc:  # noqa: BLE001 - a worker-side failure must still settle the attempt
            log.exception("job %s#%d: worker error while running it", att.id, att.attempt)
            self._settle(att, Outcome.failure(f"worker error: {_brief(exc)}", retryable=True))
        finally:
            self._release(att)

    async def _execute(self, att: _Attempt, jt: JobType | None) -> None:
        if jt is None:
            known = ", ".join(self.registry.names()[:20]) or "none"
            self._settle(att, Outcome.failure(
                f"unknown job type {att.type!r} (this worker runs: {known})", retryable=False))
            return
        fut = self._submit(jt, att)
        # One future woken by whichever comes first: the handler's return, the
        # attempt being settled elsewhere (cancel, lost lease, shutdown) or the
        # timeout. (asyncio.wait plus a Task per job waiting on an Event cost
        # more than a no-op job itself.)
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)
        fut.add_done_callback(wake)
        att.wake = wake
        timer = loop.call_later(att.timeout_s, wake) if att.timeout_s else None
        if att.settled:
            wake()
        try:
            await woken
        finally:
            att.wake = None
            fut.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
        handler_done = fut.done()
        if handler_done and not att.settled:
            self._settle(att, self._outcome(att, fut))
        elif not att.settled:
            self._settle(att, Outcome.failure(f"timeout after {att.timeout_s:g}s", retryable=True),
                         f"timeout after {att.timeout_s:g}s")
        if handler_done:
            if not fut.cancelled():
                fut.exception()  # settled elsewhere first (e.g. cancel raced the return): consume it
            return
        # Settled without the handler returning (timeout, cancel, lost lease,
        # shutdown): its thread/process is still busy, so keep the slot until
        # it really ends. Awaiting also consumes whatever it raises.
        try:
            await fut
        except asyncio.CancelledError:
            raise
        except BaseException:  # noqa: BLE001 - the outcome is already settled
            pass
        log.info("job %s#%d: handler returned after the attempt was settled (%s)",
                 att.id, att.attempt, att.ctx.cancel_reason or "settled")

    def _submit(self, jt: JobType, att: _Attempt) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if jt.pool == "process":
            att.ctx.workdir.mkdir(parents=True, exist_ok=True)
            spec = (att.id, att.attempt, att.type, str(att.ctx.workdir))
            att.proc = ProcessRun(jt.fn, att.ctx.args, spec, self._settings, on_progress=att.ctx.progress,
                                  preload=self.config.imports)
            return loop.run_in_executor(self._process_io(), att.proc.execute)
        assert self._threads is not None
        att.own_workdir = True  # made (if used) and removed on the job's thread, not on the loop
        return loop.run_in_executor(self._threads, _call_handler, jt.fn, att.ctx.args, att.ctx)

    def _outcome(self, att: _Attempt, fut: asyncio.Future) -> Outcome:
        exc = fut.exception()
        if exc is None:
            result = fut.result()
            try:
                size = len(msgpack.packb(result, use_bin_type=True))
            except Exception as err:  # noqa: BLE001 - any encoding failure is the handler's
                return Outcome.failure(
                    f"{att.type}: result cannot be stored ({type(err).__name__}: {err}); "
                    "return None, bool, numbers, str, bytes, lists and maps", retryable=False)
            return Outcome(True, result=result, size=size)
        if isinstance(exc, BadArgument):
            return Outcome.failure(f"{att.type}: {exc}", retryable=False)
        if isinstance(exc, JobError):
            return Outcome.failure(f"{type(exc).__name__}: {exc}", retryable=exc.retryable)
        if isinstance(exc, StoppedBeforeStart):
            return Outcome.failure("stopped before it started", retryable=True)
        if isinstance(exc, JobCancelled) and att.ctx.cancelled:
            return Outcome.failure(f"cancelled: {exc}", retryable=True)
        log.warning("job %s#%d %s raised %s", att.id, att.attempt, att.type, _brief(exc),
                    exc_info=(type(exc), exc, exc.__traceback__))
        return Outcome.failure(f"{type(exc).__name__}: {exc}", retryable=True)

    def _settle(self, att: _Attempt, outcome: Outcome | None, cancel_reason: str = "") -> None:
        """Record the attempt's single outcome (None: nothing to report)."""
        if att.settled:
            return
        att.settled = True
        if cancel_reason:
            att.ctx.cancel(cancel_reason)
            if att.proc is not None:
                att.proc.stop()  # a process cannot poll a flag: end it
        if att.wake is not None:
            att.wake()
        self._notify()
        if outcome is None:
            self._leases.pop(att.key, None)
            self.stats["dropped"] += 1
            return
        took = time.monotonic() - att.started
        if outcome.ok:
            log.debug("job %s#%d %s: succeeded in %.3fs", att.id, att.attempt, att.type, took)
        else:
            log.debug("job %s#%d %s: failed in %.3fs (%s): %s", att.id, att.attempt, att.type, took,
                      "retryable" if outcome.retryable else "final", outcome.error)
        if outcome.ok and outcome.size <= BATCH_RESULT_BYTES:
            # Small successes share one complete_many (see _flush_completions).
            self._batch[att.key] = (att, outcome)
            if self._flusher is None:
                self._flusher = asyncio.create_task(self._flush_completions(), name="raftq-complete-many")
            self._outbox[att.key] = self._flusher
            return
        self._outbox[att.key] = self._deliver_one(att, outcome)

    def _deliver_one(self, att: _Attempt, outcome: Outcome) -> asyncio.Task:
        return asyncio.create_task(self._deliver(att, outcome), name=f"raftq-report-{att.id}")

    def _release(self, att: _Attempt) -> None:
        """The handler has returned: free its slot and scratch directory."""
        self._runs.pop(att.key, None)
        took = time.monotonic() - att.started
        self._avg_run_s = took if self._avg_run_s is None else 0.8 * self._avg_run_s + 0.2 * took
        if not att.own_workdir:
            workdir = att.ctx.finish()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        while self._waiting and self.free_slots > 0:
            key = next(iter(self._waiting))
            self._launch(*self._waiting.pop(key))
        self._notify()

    def _workdir(self, jid: str, attempt: int) -> Path:
        # Job ids are arbitrary strings: never let one name a path.
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", jid)[:64]
        digest = hashlib.sha1(jid.encode("utf-8", "surrogatepass")).hexdigest()[:10]
        return self.config.workdir / f"{safe}-{digest}-a{attempt}"

    # --- outbox ---

    async def _deliver(self, att: _Attempt, outcome: Outcome) -> None:
        backoff = BACKOFF_MIN_S
        finished = False  # acknowledged, or deliberately dropped
        try:
            while True:
                try:
                    if outcome.ok:
                        state = await self._client.complete(att.id, att.attempt, outcome.result)
                    else:
                        state = await self._client.fail(att.id, att.attempt, outcome.error,
                                                        retryable=outcome.retryable)
                    self.stats["succeeded" if outcome.ok else "failed"] += 1
                    # tests/fault/jobs.py turns this line and "report dropped" below into
                    # its completion records: keep the format strings and their args.
                    log.debug("job %s#%d reported: now %s", att.id, att.attempt, state)
                    finished = True
                    return
                except asyncio.CancelledError:
                    raise
                except _FENCED as exc:
                    self.stats["dropped"] += 1
                    log.warning("job %s#%d: report dropped, the attempt is no longer ours (%s)",
                                att.id, att.attempt, _brief(exc))
                    finished = True
                    return
                except (BadRequest, TooLarge) as exc:
                    if not outcome.ok:
                        self.stats["dropped"] += 1
                        log.error("job %s#%d: the cluster rejected the failure report (%s)",
                                  att.id, att.attempt, _brief(exc))
                        finished = True
                        return
                    outcome = Outcome.failure(
                        f"{att.type}: result rejected by the cluster ({_brief(exc)})", retryable=False)
                    continue
                except Exception as exc:  # noqa: BLE001 - transient: retry until acknowledged
                    if self._outbox_deadline is not None and time.monotonic() >= self._outbox_deadline:
                        return
                    log.warning("job %s#%d: report not acknowledged (%s); retrying in %.1fs",
                                att.id, att.attempt, _brief(exc), backoff)
                    await asyncio.sleep(_jitter(backoff))
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            if not finished:
                self._undelivered.append(att.key)
            if self._outbox.get(att.key) is asyncio.current_task():
                del self._outbox[att.key]
            self._leases.pop(att.key, None)
            self._notify()

    async def _flush_completions(self) -> None:
        """Send the batched successes, one complete_many at a time, until none
        is left. An item leaves the outbox only once the cluster has answered
        for it: its state (delivered), LEASE_LOST / NOT_FOUND / CONFLICT
        (dropped with a log line), anything else (handed to a one-by-one
        delivery with the full error handling). A transport error tells us
        nothing, so the whole batch is retried; that is safe because a repeat
        of an accepted completion is answered as a duplicate. Whatever comes
        in while a batch is in flight goes out in the next one."""
        inflight: dict[tuple[str, int], tuple[_Attempt, Outcome]] = {}
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
            if self._flusher is asyncio.current_task():
                self._flusher = None
            # Cancelled or given up at the final deadline: these were not acknowledged.
            for key in [*inflight, *self._batch]:
                if self._outbox.get(key) is asyncio.current_task():
                    self._undelivered.append(key)
                    del self._outbox[key]
                    self._leases.pop(key, None)
            self._batch.clear()
            self._notify()

    async def _deliver_batch(self, items: dict[tuple[str, int], tuple[_Attempt, Outcome]]) -> None:
        backoff = BACKOFF_MIN_S
        payload = [{"id": att.id, "attempt": att.attempt, "result": out.result} for att, out in items.values()]
        while True:
            try:
                answers = await self._client.complete_many(payload)
                if not isinstance(answers, list) or len(answers) != len(payload):
                    raise BadRequest(f"malformed complete_many reply: {str(answers)[:120]}")
                break
            except asyncio.CancelledError:
                raise
            except (BadRequest, TooLarge) as exc:
                # Refused as a whole (e.g. a node without complete_many): one by one instead.
                log.warning("batched report of %d result(s) refused (%s); reporting them one by one",
                            len(items), _brief(exc))
                answers = [None] * len(payload)
                break
            except Exception as exc:  # noqa: BLE001 - transient: retry the batch until answered
                if self._outbox_deadline is not None and time.monotonic() >= self._outbox_deadline:
                    raise _GaveUp() from None
                log.warning("report of %d result(s) not acknowledged (%s); retrying in %.1fs",
                            len(items), _brief(exc), backoff)
                await asyncio.sleep(_jitter(backoff))
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        me = asyncio.current_task()
        for (key, (att, outcome)), answer in zip(list(items.items()), answers):
            code = answer.get("error") if isinstance(answer, dict) else None
            if isinstance(answer, dict) and code is None and "state" in answer:
                self.stats["succeeded"] += 1
                log.debug("job %s#%d reported: now %s", att.id, att.attempt, answer["state"])
            elif code in _FENCED_CODES:
                self.stats["dropped"] += 1
                log.warning("job %s#%d: report dropped, the attempt is no longer ours (%s: %s)",
                            att.id, att.attempt, code, answer.get("message", ""))
            else:  # refused for another reason, or not answered: the full one-by-one path
                del items[key]
                if self._outbox.get(key) is me:
                    self._outbox[key] = self._deliver_one(att, outcome)
                continue
            del items[key]
            if self._outbox.get(key) is me:
                del self._outbox[key]
            self._leases.pop(key, None)
        self._notify()

    # --- heartbeats ---

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        reported = dict(self.stats)
        self._summary_at = time.monotonic() + SUMMARY_S
        while True:
            await asyncio.sleep(cfg.heartbeat_s)
            if time.monotonic() >= self._summary_at:
                # Per-job lines are DEBUG (at thousands of jobs/s they cost more than
                # the jobs): a periodic summary says the worker is making progress.
                self._summary_at = time.monotonic() + SUMMARY_S
                if self.stats != reported:
                    log.info("worker %s: last %gs: %s; running %d, unreported %d", cfg.name, SUMMARY_S,
                             ", ".join(f"{k} {self.stats[k] - reported.get(k, 0)}" for k in self.stats),
                             len(self._runs), len(self._outbox))
                    reported = dict(self.stats)
            if not self._leases:
                continue
            payload = []
            for (jid, attempt), ctx in list(self._leases.items()):
                entry: dict[str, Any] = {"id": jid, "attempt": attempt}
                progress = ctx.last_progress
                if progress is not None:
                    entry["progress"] = [progress[0], progress[1]]
                payload.append(entry)
            try:
                # Our own TTL, so leasing and extending agree whatever the node's default.
                reply = await self._client.heartbeat(cfg.name, payload, lease_ms=cfg.lease_ttl_ms)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - next tick retries
                log.warning("heartbeat for %d lease(s) failed: %s", len(payload), _brief(exc))
                continue
            reply = reply if isinstance(reply, dict) else {}
            for jid in reply.get("lost") or []:
                self._abandon(jid, "lease lost")
            for jid in reply.get("cancel") or []:
                self._abandon(jid, "cancelled")

    def _abandon(self, jid: str, reason: str) -> None:
        """The cluster says this job is no longer ours: stop it, report nothing."""
        for key in [k for k in self._leases if k[0] == jid]:
            self._leases.pop(key, None)
            waiting = self._waiting.pop(key, None)
            if waiting is not None:
                log.warning("job %s#%d: %s before it started; dropping it", jid, key[1], reason)
                self.stats["dropped"] += 1
                continue
            att = self._runs.get(key)
            if att is not None and not att.settled:
                log.warning("job %s#%d: %s; stopping it", jid, key[1], reason)
                self._settle(att, None, reason)

    # --- pools ---

    def _process_io(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._proc_io is None:
            self._proc_io = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.config.processes, thread_name_prefix="raftq-proc"
            )
        return self._proc_io

    def _shutdown_pools(self) -> None:
        for att in self._runs.values():
            att.ctx.cancel(att.ctx.cancel_reason or "worker shutting down")
            if att.proc is not None:
                att.proc.stop()  # a process handler cannot be cancelled cooperatively: end it
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
        if self._proc_io is not None:
            # Waits for the io threads, which reap their (now terminated) children.
            self._proc_io.shutdown(wait=True, cancel_futures=True)


def _call_handler(fn: Callable[[Any, JobContext], Any], args: Any, ctx: JobContext) -> Any:
    """On a pool thread: the handler, then the removal of its scratch directory
    if it made one (filesystem calls kept off the event loop)."""
    try:
        return fn(args if args is not None else {}, ctx)
    finally:
        workdir = ctx.finish()
        if workdir is not None:
            try:
                os.rmdir(workdir)  # most handlers leave it empty: skip rmtree's walk
            except OSError:
                shutil.rmtree(workdir, ignore_errors=True)


def _number_or_zero(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _jitter(seconds: float) -> float:
    return seconds * (0.5 + random.random() / 2)


def _brief(exc: BaseException) -> str:
    code = getattr(exc, "code", None) if isinstance(exc, RaftqError) else None
    text = str(exc) or type(exc).__name__
    return f"{code}: {text}" if code and code not in text else f"{type(exc).__name__}: {text}"



async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def run_worker(config: WorkerConfig, registry: Registry | None = None) -> int:
    """Run a worker in this process until SIGTERM/SIGINT; returns the exit code.

    0: stopped cleanly with every finished result delivered; 1: results were
    left undelivered (those jobs run again after lease expiry); 2: a job
    module given in `config.imports` could not be imported.
    """
    import uvloop

    from worker import jobs as _builtins  # noqa: F401 - registers the built-ins on import
    from worker.registry import LoadError, default_registry

    # A no-op when the embedding program already configured logging.
    logging.basicConfig(level=logging.INFO,
                        format=f"%(asctime)s {config.name} %(name)s %(levelname)s %(message)s")
    try:
        for name in config.imports:
            load_module(name)
    except LoadError as exc:
        log.error("%s", exc)
        return 2
    the_worker = Worker(config, registry if registry is not None else default_registry)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, the_worker.request_stop)
                installed.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):
                log.debug("cannot install a handler for %s outside the main thread", sig.name)
        try:
            return await the_worker.run()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
        return loop_runner.run(main())
