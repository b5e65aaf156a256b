"""The worker: lease jobs, run them, heartbeat, report outcomes, stop gracefully.

The runner composes three parts and owns the slots between them:
- the attempt (worker/attempt.py): runs one leased job's handler in a thread
  or a child process, bounded by its timeout, stopped when told;
- the lease book (worker/leases.py): the leases we hold and their heartbeats;
  a job the cluster says is lost or cancelled comes back to `_abandon`;
- the outbox (worker/outbox.py): reports every settled outcome until the
  cluster answers, with one retry policy for single and batched reports.
Observers get every step through hooks (worker/hooks.py); log lines are for humans.

Everything runs on one asyncio event loop except the handlers themselves. The
worker talks to the cluster only through the client's `lease`, `heartbeat`,
`complete_many`, `complete` and `fail` (docs/contracts.md §4), plus one
`cluster_status` at start: every node's client, Raft and HTTP address joins the
addresses network jobs may not reach (worker/jobs/netguard.py).

Tasks and what they own:
- lease loop: long-polls `lease(max=free slots + prefetch room)` only while a
  slot is free and the worker is not stopping; starts one job task per leased
  job, or parks it in `_waiting` (at most min(threads, 16), lease heartbeated)
  until a slot frees, so the next jobs are at hand without a lease round trip.
  Prefetch is on only while recent jobs ran < 0.1 s on average (long jobs
  parked here would wait while another worker idles).
  On stop, parked jobs still run within the grace period; any left are handed
  back with a retryable "worker shutting down".
- job task (one per attempt): `Attempt.run`, which settles the attempt exactly
  once through `_settle`, by the first of: the handler returned/raised (report
  it), the per-job timeout (report a retryable "timeout after Ns"), the
  heartbeat saying the lease is lost or the job cancelled (report nothing: the
  cluster has moved on), or shutdown past grace (report a retryable "worker
  shutting down"). Its slot stays taken until the handler has really returned.
- heartbeat loop: every heartbeat_s, the lease book's heartbeat, and now and
  then an INFO summary of the jobs handled.
- the outbox's report tasks.

Invariants:
- `leases` holds exactly the (id, attempt) pairs we may still heartbeat.
- `_runs` holds attempts whose handler has not returned (slots in use).
- `outbox` holds every settled outcome not yet answered for.
"""
from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from cluster.errors import RaftqError
from worker.attempt import Attempt, Outcome, Pools, brief
from worker.config import WorkerConfig
from worker.context import JobContext
from worker.hooks import HookChain, HookLoadError, WorkerHooks, load_hooks
from worker.metrics import WorkerMetrics
from worker.leases import Key, LeaseBook
from worker.outbox import BACKOFF_MAX_S, BACKOFF_MIN_S, Outbox, jitter
from worker.refusals import REFUSED_EXIT_CODE, Refusals
from worker.registry import JobType, Registry, load_module

log = logging.getLogger("raftq.worker")

FLUSH_S = 5.0  # after the grace period, how long undelivered reports still get
MIN_POLL_S = 0.1  # least time between two lease polls that both came back empty
PREFETCH_MAX = 16  # jobs leased beyond the free slots (bounded by the worker's threads)
PREFETCH_BELOW_S = 0.1  # prefetch only while the jobs' average run time is below this
SUMMARY_S = 10.0  # how often the worker logs an INFO summary of the jobs it handled
# How long the start waits to learn the nodes' addresses; without an answer
# jobs are kept from the --cluster addresses and raftq's port band only.
NODE_ADDRS_WAIT_S = 5.0


class Worker:
    """One worker process's job runner. `await run()`; `request_stop()` to stop."""

    def __init__(self, config: WorkerConfig, registry: Registry, client: Any = None,
                 hooks: list[WorkerHooks] | None = None) -> None:
        self.config = config
        self.registry = registry
        self._client = client
        self._own_client = client is None
        self.hooks: WorkerHooks = HookChain(hooks or [])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()  # something the shutdown/lease waits depend on
        self._stopping = False
        self._forced = False
        self.stats = {"leased": 0, "succeeded": 0, "failed": 0, "dropped": 0}
        self.leases = LeaseBook(self.hooks, self._abandon)
        self.outbox = Outbox(client, self.leases, self.hooks, self.stats, self._notify)
        self._runs: dict[Key, Attempt] = {}
        # Leased jobs waiting for a free slot (at most `_prefetch`), in lease order.
        self._waiting: dict[Key, tuple[Attempt, JobType | None]] = {}
        # A lease asks for up to this many jobs beyond the free slots, so that the
        # next jobs are at hand when slots free up instead of one lease round trip
        # later. Off when jobs are placed by declared cpu/mem (capacity leasing).
        # Only while recent jobs are short (moving average of run times): a long
        # job parked here would wait for a slot while another worker idles.
        self._avg_run_s: float | None = None
        self._prefetch = (0 if config.cpu is not None or config.mem_mb is not None
                          else min(PREFETCH_MAX, config.threads))
        self._tasks: set[asyncio.Task] = set()
        self._pools: Pools | None = None
        self._settings = config.job_settings
        self._refusals = Refusals(config.refused_retry_s)
        self._refused: str | None = None  # why the cluster refused this worker for the whole window

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
            self.outbox.client = self._client
            await self._learn_node_addrs()  # before the first lease: no job runs without them
        self._pools = Pools(cfg.threads, cfg.processes, self._settings, cfg.imports)
        log.info(
            "worker %s: queues=%s threads=%d processes=%d job types=%s",
            cfg.name, ",".join(cfg.queues), cfg.threads, cfg.processes, ",".join(self.registry.names()),
        )
        lease_task = asyncio.create_task(self._lease_loop(), name="raftq-lease")
        hb_task = asyncio.create_task(self._heartbeat_loop(), name="raftq-heartbeat")
        lease_task.add_done_callback(self._on_lease_loop_done)
        undelivered: list[Key] = []
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
            self.outbox.deadline = time.monotonic() + (0.0 if self._forced else FLUSH_S)
            self._notify()
            await self._wait_until(lambda: not self.outbox, self.outbox.deadline)
            await self.outbox.close()
            undelivered = self.outbox.undelivered
            if undelivered:
                log.error(
                    "exiting with %d undelivered result(s) (the jobs will run again after their leases expire): %s",
                    len(undelivered), ", ".join(f"{i}#{a}" for i, a in undelivered),
                )
        finally:
            for task in (lease_task, hb_task, *self._tasks):
                task.cancel()
            await asyncio.gather(lease_task, hb_task, *self._tasks, return_exceptions=True)
            await self.outbox.close()
            self._pools.shutdown(self._runs.values())
            if self._own_client and self._client is not None:
                await _maybe_await(self._client.close())
        log.info("worker %s stopped: %s", cfg.name, self.stats)
        if self._refused is not None:
            log.error("%s", self._refused)  # the last line: what a supervisor shows
            return REFUSED_EXIT_CODE
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

    def _unsettled(self) -> list[Attempt]:
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
                self._refusals.accepted()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error: log, back off, retry
                if self._refusals.failed(exc):
                    self._give_up(exc)
                    return
                log.warning("lease failed (%s); retrying in %.1fs", brief(exc), backoff)
                await self._sleep(jitter(backoff), wake_on_stop=True)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            for job in jobs or []:
                self._start(job)
            if not jobs and time.monotonic() - polled_at < MIN_POLL_S:
                # An empty answer that came back at once (poll_wait_s=0, or a
                # node answering early): do not spin against the cluster.
                await self._sleep(MIN_POLL_S, wake_on_stop=True)

    def _give_up(self, exc: BaseException) -> None:
        """The cluster refused this worker for the whole window: a wrong token
        or setting, not an outage. Stop, and exit with REFUSED_EXIT_CODE."""
        self._refused = (f"worker {self.config.name}: the cluster refused it for {self._refusals.window_s:g}s "
                         f"({brief(exc)}); check its token (--token/RAFTQ_TOKEN: the worker role, its queues) "
                         f"and TLS settings; exiting with code {REFUSED_EXIT_CODE}")
        self._on_stop()

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
            lease_token = job["lease_token"]
        except (TypeError, KeyError, ValueError):
            log.error("ignoring malformed leased job from the cluster: %r", job)
            return
        if (jid, attempt) in self._runs or (jid, attempt) in self._waiting:
            log.error("ignoring a second delivery of job %s#%d, which is already running", jid, attempt)
            return
        self.stats["leased"] += 1
        self.hooks.on_leased(jid, attempt, jtype)
        jt = self.registry.get(jtype)
        timeout = job.get("timeout_s")
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
            timeout = jt.timeout_s if jt is not None else None
        ctx = JobContext(jid, attempt, job.get("args"), self._workdir(jid, attempt), type=jtype,
                         settings=self._settings)
        att = Attempt(job, jid, attempt, lease_token, jtype, ctx, float(timeout) if timeout else None)
        self.leases.hold(att)
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

    def _launch(self, att: Attempt, jt: JobType | None) -> None:
        self._runs[att.key] = att
        att.started = time.monotonic()
        log.debug("job %s#%d %s: started", att.id, att.attempt, att.type)
        self.hooks.on_started(att.id, att.attempt, att.type)
        task = asyncio.create_task(self._run_attempt(att, jt), name=f"raftq-job-{att.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- one attempt's life in the runner ---

    async def _run_attempt(self, att: Attempt, jt: JobType | None) -> None:
        try:
            if jt is None:
                known = ", ".join(self.registry.names()[:20]) or "none"
                self._settle(att, Outcome.failure(
                    f"unknown job type {att.type!r} (this worker runs: {known})", retryable=False))
                return
            assert self._pools is not None
            await att.run(jt, self._pools, self._settle)
        except Exception as exc:  # noqa: BLE001 - a worker-side failure must still settle the attempt
            log.exception("job %s#%d: worker error while running it", att.id, att.attempt)
            self._settle(att, Outcome.failure(f"worker error: {brief(exc)}", retryable=True))
        finally:
            self._release(att)

    def _settle(self, att: Attempt, outcome: Outcome | None, cancel_reason: str = "") -> None:
        """Record the attempt's single outcome (None: nothing to report) and hand it to the outbox."""
        if not att.mark_settled(cancel_reason):
            return
        self._notify()
        took = time.monotonic() - att.started
        self.hooks.on_finished(att.id, att.attempt, att.type, outcome, took)
        if outcome is None:
            self.leases.release(att.key)
            self.stats["dropped"] += 1
            return
        if outcome.ok:
            log.debug("job %s#%d %s: succeeded in %.3fs", att.id, att.attempt, att.type, took)
        else:
            log.debug("job %s#%d %s: failed in %.3fs (%s): %s", att.id, att.attempt, att.type, took,
                      "retryable" if outcome.retryable else "final", outcome.error)
        self.outbox.put(att, outcome)

    def _release(self, att: Attempt) -> None:
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

    def _abandon(self, key: Key, reason: str) -> None:
        """The lease book heard this attempt is no longer ours: stop it, report nothing."""
        waiting = self._waiting.pop(key, None)
        if waiting is not None:
            log.warning("job %s#%d: %s before it started; dropping it", key[0], key[1], reason)
            self.stats["dropped"] += 1
            return
        att = self._runs.get(key)
        if att is not None and not att.settled:
            log.warning("job %s#%d: %s; stopping it", key[0], key[1], reason)
            self._settle(att, None, reason)

    # --- heartbeats ---

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        reported = dict(self.stats)
        summary_at = time.monotonic() + SUMMARY_S
        while True:
            await asyncio.sleep(cfg.heartbeat_s)
            if time.monotonic() >= summary_at:
                # Per-job lines are DEBUG (at thousands of jobs/s they cost more than
                # the jobs): a periodic summary says the worker is making progress.
                summary_at = time.monotonic() + SUMMARY_S
                if self.stats != reported:
                    log.info("worker %s: last %gs: %s; running %d, unreported %d", cfg.name, SUMMARY_S,
                             ", ".join(f"{k} {self.stats[k] - reported.get(k, 0)}" for k in self.stats),
                             len(self._runs), len(self.outbox))
                    reported = dict(self.stats)
            await self.leases.heartbeat(self._client, cfg.name, cfg.lease_ttl_ms)


def _number_or_zero(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


def run_worker(config: WorkerConfig, registry: Registry | None = None) -> int:
    """Run a worker in this process until SIGTERM/SIGINT; returns the exit code.

    0: stopped cleanly with every finished result delivered; 1: results were
    left undelivered (those jobs run again after lease expiry); 2: a job
    module given in `config.imports` or a hook in `config.hooks` could not be loaded,
    or the metrics port (`config.metrics_port`) could not be had; 3
    (REFUSED_EXIT_CODE): the cluster refused the worker's token or
    configuration for `config.refused_retry_s` (worker/refusals.py).
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
        hooks = [load_hooks(ref) for ref in config.hooks]
    except (LoadError, HookLoadError) as exc:
        log.error("%s", exc)
        return 2
    metrics = None
    if config.metrics_port is not None:
        metrics = WorkerMetrics(config.threads)
        try:
            metrics.serve(config.metrics_host, config.metrics_port)
        except OSError as exc:
            log.error("cannot serve metrics on %s:%d: %s", config.metrics_host, config.metrics_port, exc)
            return 2
        log.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)
        hooks.append(metrics)
    the_worker = Worker(config, registry if registry is not None else default_registry, hooks=hooks)

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

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
            return loop_runner.run(main())
    finally:
        if metrics is not None:
            metrics.close()
