"""Process-pool jobs: each attempt runs in its own child process that can be killed.

Why not concurrent.futures.ProcessPoolExecutor: it cannot stop one running
call. A job past its timeout, cancelled, or whose lease was lost must really
stop (its CPU and memory go back to the machine, and it must not keep writing
files), so every attempt gets its own `multiprocessing.Process` and a one-way
pipe for messages. Children come from a "forkserver" (a clean process forked
once, with the job modules preloaded), which makes a child cost milliseconds
and avoids forking our threaded event-loop process; where forkserver is not
available, "spawn" is used.

Messages child -> parent on the pipe:
  ("progress", fraction, message)   at most every PROGRESS_EVERY_S
  ("ok", result)                    the handler returned
  ("err", exception)                the handler raised (pickled; a stand-in
                                    RuntimeError when the exception cannot be)
EOF without "ok"/"err" means the child died (killed, crashed, out of memory).

Stopping (`ProcessRun.stop()`, thread-safe, idempotent): SIGTERM, which the
child turns into JobCancelled inside the handler so its `finally` blocks run
(temporary files are removed); SIGKILL after KILL_AFTER_S if it is still alive
(the io thread waiting on the pipe polls for that).
The parent always reaps the child before `execute()` returns, so when the
worker frees the job's slot the PID is gone.

Bounding: `execute()` is run in a thread pool of `processes` threads (see
worker/runner.py), so at most `processes` children exist at once; an attempt
stopped while still queued for a thread never starts a child.
"""
from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from worker.context import JobCancelled, JobContext, JobSettings
from worker.registry import JobError

KILL_AFTER_S = 1.0
POLL_S = 0.1  # how often a waiting io thread checks whether to escalate to SIGKILL
PROGRESS_EVERY_S = 0.1

_mp_lock = threading.Lock()
_mp_context: Any = None


class ProcessDied(JobError):
    """The job's child process ended without reporting (killed or crashed)."""


class StoppedBeforeStart(Exception):
    """stop() came before the child was started: nothing ran."""


def mp_context(preload: tuple[str, ...] = ()) -> Any:
    """The multiprocessing context for job children (created once per process)."""
    global _mp_context
    with _mp_lock:
        if _mp_context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                ctx = multiprocessing.get_context("forkserver")
                # Preloaded in the server, so each child starts with them imported.
                ctx.set_forkserver_preload(["worker.jobs", *preload])
            else:
                ctx = multiprocessing.get_context("spawn")
            _mp_context = ctx
        return _mp_context


class _ChildContext(JobContext):
    """The handler's context inside the child: progress goes up the pipe."""

    def __init__(self, conn: multiprocessing.connection.Connection, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn = conn
        self._last_sent = 0.0

    def progress(self, fraction: float, message: str = "") -> None:
        super().progress(fraction, message)
        now = time.monotonic()
        if now - self._last_sent >= PROGRESS_EVERY_S or fraction >= 1:
            self._last_sent = now
            value = self.last_progress
            if value is not None:
                try:
                    self._conn.send(("progress", value[0], value[1]))
                except OSError:
                    pass  # parent gone: the result send will fail too


def _child_main(conn: multiprocessing.connection.Connection, fn: Callable[[Any, JobContext], Any],
                args: Any, spec: tuple[str, int, str, str], settings: JobSettings) -> None:
    """Entry point of a job's child process."""
    jid, attempt, jtype, workdir = spec
    ctx = _ChildContext(conn, jid, attempt, args, Path(workdir), type=jtype, settings=settings)
    # Ctrl-C in a terminal signals the whole process group; the worker decides
    # what happens to jobs, so the child ignores SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_term(signum: int, frame: Any) -> None:
        ctx.cancel("terminated")
        raise JobCancelled("terminated by the worker")

    signal.signal(signal.SIGTERM, on_term)
    try:
        result = fn(args if args is not None else {}, ctx)
        message: tuple[Any, ...] = ("ok", result)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        message = ("err", exc)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        conn.send(message)
    except Exception as exc:  # noqa: BLE001 - unpicklable result or exception
        if message[0] == "err":
            err = message[1]
            conn.send(("err", RuntimeError(f"{type(err).__name__}: {err}")))
        else:
            conn.send(("err", JobError(f"result cannot be sent back from the child process: {exc}",
                                       retryable=False)))
    conn.close()


class ProcessRun:
    """One attempt of a pool="process" handler in its own child process."""

    def __init__(self, fn: Callable[[Any, JobContext], Any], args: Any, spec: tuple[str, int, str, str],
                 settings: JobSettings, on_progress: Callable[[float, str], None] | None = None,
                 preload: tuple[str, ...] = ()) -> None:
        self._fn = fn
        self._args = args
        self._spec = spec
        self._settings = settings
        self._on_progress = on_progress
        self._preload = preload
        self._lock = threading.Lock()
        self._stopped = False
        self._stop_at: float | None = None
        self._proc: Any = None
        self.pid: int | None = None
        self.exitcode: int | None = None

    def stop(self) -> None:
        """Ask the child to end (SIGTERM now, SIGKILL later from execute()). Thread-safe."""
        with self._lock:
            if not self._stopped:
                self._stop_at = time.monotonic()
            self._stopped = True
            proc = self._proc
        # No exitcode check here: with forkserver, polling it reads the pipe the
        # execute() thread is joining on. terminate() on an ended child is a no-op.
        if proc is not None:
            try:
                proc.terminate()
            except (OSError, ValueError):
                pass

    @property
    def stopped(self) -> bool:
        return self._stopped

    def execute(self) -> Any:
        """Start the child, wait for its answer, reap it. Blocking: call in a thread."""
        ctx = mp_context(self._preload)
        recv, send = ctx.Pipe(duplex=False)
        try:
            with self._lock:
                if self._stopped:
                    raise StoppedBeforeStart()
                proc = ctx.Process(target=_child_main, args=(send, self._fn, self._args, self._spec, self._settings),
                                   name=f"raftq-job-{self._spec[0]}", daemon=True)
                proc.start()
                self._proc = proc
                self.pid = proc.pid
            send.close()  # the child holds the only write end: EOF means it is gone
            try:
                return self._receive(recv)
            finally:
                self._reap(proc)
        finally:
            recv.close()
            if not send.closed:
                send.close()

    def _receive(self, recv: multiprocessing.connection.Connection) -> Any:
        killed = False
        while True:
            try:
                if not recv.poll(POLL_S):
                    # A child that ignores or outlasts SIGTERM gets SIGKILL.
                    stop_at = self._stop_at
                    if not killed and stop_at is not None and time.monotonic() - stop_at >= KILL_AFTER_S:
                        killed = True
                        self._proc.kill()
                    continue
                msg = recv.recv()
            except (EOFError, OSError):
                proc = self._proc
                proc.join(KILL_AFTER_S)
                code = proc.exitcode
                if self._stopped:
                    raise JobCancelled("process terminated") from None
                how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                raise ProcessDied(f"job process {self.pid} died ({how}) without a result", retryable=True) from None
            kind = msg[0]
            if kind == "progress":
                if self._on_progress is not None:
                    self._on_progress(msg[1], msg[2])
            elif kind == "ok":
                return msg[1]
            elif kind == "err":
                raise msg[1]

    def _reap(self, proc: Any) -> None:
        proc.join(KILL_AFTER_S if self._stopped else 5.0)
        if proc.exitcode is None:
            proc.terminate()
            proc.join(KILL_AFTER_S)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
        self.exitcode = proc.exitcode
        try:
            proc.close()
        except ValueError:
            pass


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists (and is not a zombie we own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
