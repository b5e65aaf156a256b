"""One leased attempt: run its handler, bound it by its timeout, stop it when
told, and turn what happened into the single Outcome to report.

Handlers run in a ThreadPoolExecutor (pool="thread") or each in its own child
process (pool="process", see worker/process.py; at most `processes` at once,
one io thread each). `Attempt.run` waits for the first of: the handler
returned/raised (its outcome), the per-job timeout (a retryable "timeout after
Ns"), or the attempt being settled elsewhere (cancel, lost lease, shutdown:
`settle` wakes it). Settling is the runner's (it decides where the outcome
goes); an attempt only records that it is settled, once, and stops its handler
if asked: a thread handler gets its context's cancel flag (it must poll it), a
process handler's child is terminated (SIGTERM, then SIGKILL). `run` returns
only once the handler has really returned, because its thread or process is
busy until then.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import msgpack

from cluster.errors import RaftqError
from worker.context import JobCancelled, JobContext, JobSettings
from worker.process import ProcessRun, StoppedBeforeStart
from worker.registry import BadArgument, JobError, JobType

log = logging.getLogger("raftq.worker")

MAX_ERROR_CHARS = 4000


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


# How the runner settles an attempt: (attempt, outcome or None, cancel reason).
Settle = Callable[["Attempt", "Outcome | None", str], None]


@dataclass
class Attempt:
    job: dict
    id: str
    attempt: int
    lease_token: str  # presented with every report and heartbeat of this lease
    type: str
    ctx: JobContext
    timeout_s: float | None
    started: float = field(default_factory=time.monotonic)
    settled: bool = False
    wake: Callable[[], None] | None = None  # set while run() waits; mark_settled calls it
    proc: ProcessRun | None = None  # set for pool="process" handlers
    own_workdir: bool = False  # thread handlers: _call_handler removes the workdir

    @property
    def key(self) -> tuple[str, int]:
        return (self.id, self.attempt)

    def mark_settled(self, cancel_reason: str = "") -> bool:
        """Record that the attempt is settled; False if it already was. With a
        reason, the handler is told to stop (a process cannot poll a flag: it is ended)."""
        if self.settled:
            return False
        self.settled = True
        if cancel_reason:
            self.ctx.cancel(cancel_reason)
            if self.proc is not None:
                self.proc.stop()
        if self.wake is not None:
            self.wake()
        return True

    async def run(self, jt: JobType, pools: Pools, settle: Settle) -> None:
        """Run the handler; settle with its outcome or the timeout unless settled
        first; return once the handler has returned."""
        fut = pools.submit(jt, self)
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
        self.wake = wake
        timer = loop.call_later(self.timeout_s, wake) if self.timeout_s else None
        if self.settled:
            wake()
        try:
            await woken
        finally:
            self.wake = None
            fut.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
        handler_done = fut.done()
        if handler_done and not self.settled:
            settle(self, self._outcome(fut), "")
        elif not self.settled:
            settle(self, Outcome.failure(f"timeout after {self.timeout_s:g}s", retryable=True),
                   f"timeout after {self.timeout_s:g}s")
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
                 self.id, self.attempt, self.ctx.cancel_reason or "settled")

    def _outcome(self, fut: asyncio.Future) -> Outcome:
        exc = fut.exception()
        if exc is None:
            result = fut.result()
            try:
                size = len(msgpack.packb(result, use_bin_type=True))
            except Exception as err:  # noqa: BLE001 - any encoding failure is the handler's
                return Outcome.failure(
                    f"{self.type}: result cannot be stored ({type(err).__name__}: {err}); "
                    "return None, bool, numbers, str, bytes, lists and maps", retryable=False)
            return Outcome(True, result=result, size=size)
        if isinstance(exc, BadArgument):
            return Outcome.failure(f"{self.type}: {exc}", retryable=False)
        if isinstance(exc, JobError):
            return Outcome.failure(f"{type(exc).__name__}: {exc}", retryable=exc.retryable)
        if isinstance(exc, StoppedBeforeStart):
            return Outcome.failure("stopped before it started", retryable=True)
        if isinstance(exc, JobCancelled) and self.ctx.cancelled:
            return Outcome.failure(f"cancelled: {exc}", retryable=True)
        log.warning("job %s#%d %s raised %s", self.id, self.attempt, self.type, brief(exc),
                    exc_info=(type(exc), exc, exc.__traceback__))
        return Outcome.failure(f"{type(exc).__name__}: {exc}", retryable=True)


class Pools:
    """Where handlers run: `threads` pool threads, and one io thread per
    running process job (start, wait, reap), which bounds the children."""

    def __init__(self, threads: int, processes: int, settings: JobSettings, preload: tuple[str, ...]) -> None:
        self._threads = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="raftq-job")
        self._processes = processes
        self._proc_io: concurrent.futures.ThreadPoolExecutor | None = None
        self.settings = settings
        self._preload = preload

    def submit(self, jt: JobType, att: Attempt) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if jt.pool == "process":
            att.ctx.workdir.mkdir(parents=True, exist_ok=True)
            spec = (att.id, att.attempt, att.type, str(att.ctx.workdir))
            att.proc = ProcessRun(jt.fn, att.ctx.args, spec, self.settings, on_progress=att.ctx.progress,
                                  preload=self._preload)
            return loop.run_in_executor(self._process_io(), att.proc.execute)
        att.own_workdir = True  # made (if used) and removed on the job's thread, not on the loop
        return loop.run_in_executor(self._threads, _call_handler, jt.fn, att.ctx.args, att.ctx)

    def _process_io(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._proc_io is None:
            self._proc_io = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._processes, thread_name_prefix="raftq-proc"
            )
        return self._proc_io

    def shutdown(self, running: Iterable[Attempt]) -> None:
        """Stop every running handler and the pools; waits for process children to be reaped."""
        for att in running:
            att.ctx.cancel(att.ctx.cancel_reason or "worker shutting down")
            if att.proc is not None:
                att.proc.stop()  # a process handler cannot be cancelled cooperatively: end it
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


def brief(exc: BaseException) -> str:
    """An error in one line: its code (raftq errors) or type, and its message."""
    code = getattr(exc, "code", None) if isinstance(exc, RaftqError) else None
    text = str(exc) or type(exc).__name__
    return f"{code}: {text}" if code and code not in text else f"{type(exc).__name__}: {text}"
