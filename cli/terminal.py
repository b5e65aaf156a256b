"""A full-screen terminal session for live views (`raftq top`), with plain ANSI.

`FullScreen` switches to the alternate screen, hides the cursor and puts the
keyboard in cbreak mode (keys arrive one at a time, unechoed; Ctrl-C still
raises KeyboardInterrupt). Leaving it, by any path (return, exception,
SIGTERM), shows the cursor, leaves the alternate screen and restores the
terminal mode, so the shell gets back the screen it had.

Everything that should wake the view up — a key, a resize (SIGWINCH), a
SIGTERM, new data from a polling thread (`wake()`) — arrives through one
`select`, so the view never sleeps through a keypress or a stop request.
"""
from __future__ import annotations

import enum
import os
import re
import select
import shutil
import signal
import sys
import termios
import threading
import tty
from types import FrameType, TracebackType
from typing import Any, TextIO

ENTER_ALT_SCREEN = "\x1b[?1049h"
LEAVE_ALT_SCREEN = "\x1b[?1049l"
HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
CURSOR_HOME = "\x1b[H"
CLEAR_TO_LINE_END = "\x1b[K"
CLEAR_TO_SCREEN_END = "\x1b[J"


class Event(enum.Enum):
    KEY = "key"
    RESIZE = "resize"
    STOP = "stop"  # SIGTERM
    WAKE = "wake"  # wake() from another thread


# Bytes written to the wake pipe, one per event kind.
_PIPE_EVENTS = {b"r": Event.RESIZE, b"s": Event.STOP, b"w": Event.WAKE}


# C0 and C1 control characters: ESC starts an escape sequence, and the 8-bit
# CSI (0x9b) is one on some terminals.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character shown as `?`. Job ids, types,
    errors and progress messages come from whoever submitted or ran the job:
    written raw they could move the cursor, retitle or clear the operator's
    terminal."""
    return _CONTROL.sub("?", text)


def fit_line(line: str, width: int) -> str:
    """`line` cut to the screen: one column short of the edge, because a
    character in the last column leaves some terminals in a pending-wrap state
    where the following clear-to-end-of-line erases that character."""
    return line[:max(0, width - 1)]


class FullScreen:
    """The alternate screen in cbreak mode, for the duration of a `with` block."""

    def __init__(self, out: TextIO = sys.stdout, keys: TextIO = sys.stdin) -> None:
        self._out = out
        self._keys_fd = keys.fileno() if keys.isatty() else None
        self._saved_mode: list[Any] | None = None
        self._saved_handlers: dict[int, Any] = {}
        self._pipe_r, self._pipe_w = os.pipe()
        os.set_blocking(self._pipe_w, False)  # a signal handler must never block on a full pipe
        self._wake_lock = threading.Lock()
        self._closed = False
        self.pending_keys = ""

    def __enter__(self) -> FullScreen:
        if self._keys_fd is not None:
            self._saved_mode = termios.tcgetattr(self._keys_fd)
            tty.setcbreak(self._keys_fd)
        for signum, byte in ((signal.SIGWINCH, b"r"), (signal.SIGTERM, b"s")):
            self._saved_handlers[signum] = signal.signal(signum, self._on_signal(byte))
        self._out.write(ENTER_ALT_SCREEN + HIDE_CURSOR)
        self._out.flush()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._out.write(SHOW_CURSOR + LEAVE_ALT_SCREEN)
            self._out.flush()
        finally:
            if self._saved_mode is not None and self._keys_fd is not None:
                termios.tcsetattr(self._keys_fd, termios.TCSADRAIN, self._saved_mode)
            for signum, handler in self._saved_handlers.items():
                signal.signal(signum, handler)
            with self._wake_lock:  # a polling thread may still call wake(): never into a reused fd number
                self._closed = True
                os.close(self._pipe_r)
                os.close(self._pipe_w)

    def _on_signal(self, byte: bytes) -> Any:
        def handler(signum: int, frame: FrameType | None) -> None:
            self._poke(byte)
        return handler

    def _poke(self, byte: bytes) -> None:
        # No lock here: signal handlers call it on the main thread (only while
        # installed, so before the pipe is closed), and must not wait for a lock.
        try:
            os.write(self._pipe_w, byte)
        except BlockingIOError:
            pass  # the pipe is full of unread wake-ups: one more would say nothing new

    def wake(self) -> None:
        """Make `next_event` return WAKE; safe from any thread, also after the screen is left."""
        with self._wake_lock:
            if not self._closed:
                self._poke(b"w")

    def size(self) -> tuple[int, int]:
        """(columns, lines) of the terminal, read on every call: it may have been resized."""
        try:
            return tuple(os.get_terminal_size(self._out.fileno()))  # type: ignore[return-value]
        except OSError:
            return shutil.get_terminal_size()

    def next_event(self) -> Event:
        """Wait for a key, a signal or a wake-up; keys typed are appended to
        `pending_keys`. When several came at once, STOP wins, then KEY."""
        fds = [self._pipe_r] if self._keys_fd is None else [self._pipe_r, self._keys_fd]
        ready, _, _ = select.select(fds, [], [])
        events: set[Event] = set()
        if self._pipe_r in ready:
            events.update(_PIPE_EVENTS[bytes([b])] for b in os.read(self._pipe_r, 64))
        if self._keys_fd is not None and self._keys_fd in ready:
            data = os.read(self._keys_fd, 64)
            if not data:  # the terminal went away (hangup): nothing more to show
                return Event.STOP
            self.pending_keys += data.decode(errors="replace")
            events.add(Event.KEY)
        return next((e for e in (Event.STOP, Event.KEY, Event.RESIZE) if e in events), Event.WAKE)

    def draw(self, lines: list[str]) -> None:
        """Replace the screen's content by `lines` (already fitted to the size)
        in one write: home, each line cleared to its end, the rest cleared."""
        body = (CLEAR_TO_LINE_END + "\r\n").join(lines)
        self._out.write(CURSOR_HOME + body + CLEAR_TO_LINE_END + CLEAR_TO_SCREEN_END)
        self._out.flush()
