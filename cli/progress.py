"""Waiting for a job with its progress shown: `submit --wait`, `result --wait`.

`wait_for_final` returns the job's final JobView, as `Client.result` does,
and meanwhile shows the job's state and the progress its handler reports
(`ctx.progress(fraction, message)`, which reaches the JobView with the
worker's heartbeats) on stderr, so stdout carries only the result:
- on a terminal, one line redrawn in place (spinner, state, bar, percentage,
  message, elapsed time), cut to the terminal's width and erased at the end;
- otherwise (piped, a log file), one plain line per change of state or
  progress, and no escape sequences.

It long-polls `wait` in short chunks so a finished job is seen at once, and
reads the JobView between chunks for its progress.
"""
from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from cli.terminal import printable
from cluster.errors import Timeout, WaitTimeout
from replication.model import FINAL_STATES

if TYPE_CHECKING:
    from cluster.client import Client

# How long one `wait` long poll lasts (a job that ends is seen at once either
# way): on a terminal, the redraw period of the spinner and clock; piped, only
# progress changes are printed, and those come with heartbeats, seconds apart.
TERMINAL_POLL_S = 0.25
PIPED_POLL_S = 1.0
SPINNER = "|/-\\"
BAR_WIDTH = 20


def progress_of(view: dict[str, Any]) -> tuple[float, str] | None:
    """The (fraction 0..1, message) a running job last reported, if any."""
    progress = view.get("progress")
    if isinstance(progress, (list, tuple)) and len(progress) == 2 and isinstance(progress[0], (int, float)):
        return min(1.0, max(0.0, float(progress[0]))), printable(str(progress[1] or ""))
    return None


def describe(view: dict[str, Any]) -> str:
    """`state 42% message` (the progress part only while one is reported)."""
    state = printable(str(view.get("state")))
    progress = progress_of(view) if state == "running" else None
    if progress is None:
        return state
    fraction, message = progress
    return f"{state} {fraction * 100:.0f}% {message}".rstrip()


class PlainLines:
    """One line per change: for logs and pipes."""

    def __init__(self, stream: TextIO, job_id: str) -> None:
        self._stream, self._job_id = stream, job_id
        self._last: str | None = None

    def show(self, view: dict[str, Any]) -> None:
        line = describe(view)
        if line != self._last:
            self._last = line
            self._stream.write(f"{self._job_id} {line}\n")
            self._stream.flush()

    def close(self) -> None:
        pass


class StatusLine:
    """One line redrawn in place on a terminal, erased by close()."""

    def __init__(self, stream: TextIO, job_id: str) -> None:
        self._stream, self._job_id = stream, job_id
        self._started = time.monotonic()
        self._frames = 0

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except OSError:
            return 80

    def show(self, view: dict[str, Any]) -> None:
        state = printable(str(view.get("state")))
        spin = SPINNER[self._frames % len(SPINNER)]
        self._frames += 1
        progress = progress_of(view) if state == "running" else None
        middle = ""
        if progress is not None:
            fraction, message = progress
            filled = round(fraction * BAR_WIDTH)
            middle = f" [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}% {message}"
        line = f"{spin} {self._job_id} {state}{middle}  {time.monotonic() - self._started:.1f}s"
        # One column short of the edge: a full line would wrap, and \r would then redraw only its tail.
        self._stream.write("\r" + line[:max(0, self._width() - 1)] + "\x1b[K")
        self._stream.flush()

    def close(self) -> None:
        self._stream.write("\r\x1b[K")
        self._stream.flush()


def wait_for_final(client: Client, job_id: str, timeout: float, stream: TextIO | None = None) -> dict[str, Any]:
    """The job's JobView once it is final, showing its progress on `stream`
    (stderr) meanwhile; WaitTimeout (its `view`: the last JobView) if not final
    within `timeout` s."""
    stream = stream or sys.stderr
    on_terminal = stream.isatty()
    display = StatusLine(stream, job_id) if on_terminal else PlainLines(stream, job_id)
    poll_s = TERMINAL_POLL_S if on_terminal else PIPED_POLL_S
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return client.result(job_id, timeout=min(poll_s, max(0.0, deadline - time.monotonic())))
            except Timeout:
                pass  # not final yet: show where it is
            view = client.get(job_id)
            if view.get("state") in FINAL_STATES:
                return view
            display.show(view)
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} is not finished after {timeout:g}s (state: {view.get('state')})", view)
    finally:
        display.close()
