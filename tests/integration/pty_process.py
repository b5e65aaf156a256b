"""Run a `raftq` command on a real pseudo-terminal and read what it draws.

The child gets the pty as its controlling terminal (stdin, stdout and stderr),
of a given size, so it sees what a person at a terminal would: isatty() true,
keys typed one at a time, Ctrl-C from the line discipline. Everything it
writes is kept raw, escape sequences included, so tests can check them.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from collections.abc import Mapping

from tests.integration.harness import REPO

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class PtyProcess:
    def __init__(self, args: list[str], env: Mapping[str, str], columns: int = 160, lines: int = 50) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: size its terminal before anything reads it, then become raftq
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
                os.chdir(REPO)
                os.execve(sys.executable, [sys.executable, "-m", "cli.main", *args], {**env})
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = ""
        self.returncode: int | None = None

    def read_until(self, predicate: re.Pattern[str] | str, timeout: float, since: int = 0) -> re.Match[str]:
        """Read until `predicate` matches the output from offset `since` on;
        AssertionError (with the screen so far) at the timeout or EOF."""
        pattern = re.compile(predicate) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        while True:
            found = pattern.search(self.output, since)
            if found:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not self._read_some(left):
                raise AssertionError(f"{pattern.pattern!r} not seen within {timeout}s; output:\n{self.plain()[-3000:]}")

    def _read_some(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], min(timeout, 0.5))
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError as exc:  # EIO: the child closed the terminal (exited)
            if exc.errno != errno.EIO:
                raise
            return False
        if not data:
            return False
        self.output += data.decode(errors="replace")
        return True

    def resize(self, columns: int, lines: int) -> None:
        """Resize the terminal: the kernel sends the child SIGWINCH."""
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float) -> int:
        """The exit status (negative: killed by that signal), reading the output meanwhile."""
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout}s; output:\n{self.plain()[-3000:]}")
            self._read_some(0.05)
        while self._read_some(0.05) and select.select([self.fd], [], [], 0)[0]:
            pass  # drain what it wrote last
        return self.returncode

    def terminal_mode(self) -> list[object]:
        """The pty's termios settings (shared by both ends)."""
        return termios.tcgetattr(self.fd)

    def plain(self) -> str:
        return ANSI.sub("", self.output)

    def close(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.returncode = -signal.SIGKILL
        os.close(self.fd)
