"""What a running handler sees of its job: `JobContext`.

Threads: a context is created on the worker's event loop, handed to exactly one
handler thread, and read back by the heartbeat task. The two shared pieces are
thread-safe: cancellation is a `threading.Event` (set by the event loop when the
lease is lost, the job is cancelled, times out or the worker shuts down; read by
the handler), and progress is a (fraction, message) pair replaced under a lock
(written by the handler, read by the heartbeat).

Cancellation of a thread is cooperative: a long handler should test
`ctx.cancelled` (or call `ctx.check_cancelled()`, or sleep with `ctx.wait()`)
between steps. A process-pool handler runs in its own child process (see
worker/process.py): its progress is forwarded through a pipe, and it is stopped
by SIGTERM (raised in the handler as JobCancelled, so `finally` blocks run),
then SIGKILL if it does not end within a second.

`JobSettings` is the part of the worker's configuration that handlers read
(data root, HTTP allowlist and the cluster's own addresses, SMTP relay, size
limits). It is frozen plain data so it can be pickled into a process-pool child.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, MutableMapping


@dataclass(frozen=True)
class JobSettings:
    """What built-in handlers may touch: files under `data_root`, hosts in
    `allow_hosts` (see worker/jobs/netguard.py for the entry syntax), and the SMTP
    relay used by email.send and health.check alerts."""

    data_root: Path = field(default_factory=Path.cwd)
    allow_hosts: tuple[str, ...] = ("loopback",)
    node_addrs: tuple[str, ...] = ()  # the cluster's client addresses "host:port": jobs may not reach them
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 8025
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_from: str = "raftq@localhost"
    smtp_ca_file: str | None = None  # extra CA bundle to trust for STARTTLS/SSL
    smtp_timeout_s: float = 30.0
    # Bomb and size limits (worker settings; a job argument may only lower them):
    max_extract_bytes: int = 1 << 30  # archive.extract: total bytes written
    max_extract_entries: int = 10_000  # archive.extract: entries in one archive
    max_extract_ratio: float = 200.0  # archive.extract: expanded size / archive size
    max_header_bytes: int = 1 << 16  # tar long-name / pax header, refused before it is read
    max_output_bytes: int = 1 << 30  # file.decompress: bytes written


class JobCancelled(Exception):
    """Raised by `check_cancelled()` once the job must stop (reason in the message)."""


class _JobLogger(logging.LoggerAdapter):
    """Prefixes every line with the job id and attempt."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"[{extra.get('job_id')}#{extra.get('attempt')}] {msg}", kwargs


class JobContext:
    """Per-attempt handle passed to a handler as its second argument."""

    def __init__(
        self,
        id: str,  # noqa: A002 - the contract's field name
        attempt: int,
        args: Any,
        workdir: Path,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        *,
        type: str = "",  # noqa: A002
        cancel_event: threading.Event | None = None,
        settings: JobSettings | None = None,
    ) -> None:
        self.id = id
        self.attempt = attempt
        self.args = args
        self.type = type
        self._workdir = workdir
        self._workdir_made = False
        self._finished = False
        self.settings = settings if settings is not None else JobSettings()
        self.logger = logger or _JobLogger(
            logging.getLogger(f"raftq.job.{type or 'unknown'}"), {"job_id": id, "attempt": attempt}
        )
        self._cancel = cancel_event or threading.Event()
        self._cancel_reason = ""
        self._lock = threading.Lock()
        self._progress: tuple[float, str] | None = None

    # --- scratch directory ---

    @property
    def workdir(self) -> Path:
        """This attempt's scratch directory, created on first use: most handlers
        never need one, and an mkdir + rmdir per job was a sixth of a worker's
        time on tiny jobs. Removed (with its contents) when the attempt ends."""
        if not self._workdir_made and not self._finished:
            self._workdir.mkdir(parents=True, exist_ok=True)
            self._workdir_made = True
        return self._workdir

    @property
    def workdir_made(self) -> bool:
        return self._workdir_made

    def finish(self) -> Path | None:
        """The attempt is over: `workdir` no longer creates anything; returns the
        directory to remove, if one was made."""
        self._finished = True
        return self._workdir if self._workdir_made else None

    # --- progress (handler writes, heartbeat reads) ---

    def progress(self, fraction: float, message: str = "") -> None:
        """Record progress in [0, 1]; the next heartbeat carries the latest value."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or math.isnan(fraction):
            raise TypeError(f"progress fraction must be a number between 0 and 1, got {fraction!r}")
        if not isinstance(message, str):
            message = str(message)
        clamped = min(1.0, max(0.0, float(fraction)))
        with self._lock:
            self._progress = (clamped, message[:200])

    @property
    def last_progress(self) -> tuple[float, str] | None:
        with self._lock:
            return self._progress

    # --- cancellation (event loop sets, handler reads) ---

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def cancel_reason(self) -> str:
        return self._cancel_reason

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the job must stop; call it between steps."""
        if self._cancel.is_set():
            raise JobCancelled(self._cancel_reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking early on cancellation; True if cancelled."""
        return self._cancel.wait(max(0.0, seconds))

    def cancel(self, reason: str) -> None:
        """Ask the handler to stop (worker side). The first reason is kept."""
        if not self._cancel.is_set():
            self._cancel_reason = reason
            self._cancel.set()

    def __repr__(self) -> str:
        return f"JobContext(id={self.id!r}, attempt={self.attempt}, type={self.type!r})"
