"""The processes of one `raftq dev` run: tied to their supervisor, and recorded.

However the supervisor ends, its nodes and workers must end with it (a dev
cluster left behind holds the ports, so the next `make run` fails):

- Ctrl-C, SIGTERM, SIGHUP (the terminal closed): the supervisor stops its
  children itself (cli/dev.py);
- SIGKILL, a crash: nothing runs in the supervisor any more, so each child
  asks the kernel for a parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`)
  right after the fork, before it execs. The kernel sends it when the THREAD
  that forked the child exits, not the process: the supervisor starts every
  child from its main thread, which lives as long as the process. A parent
  that died between the fork and the prctl is caught by comparing
  `getppid()` with the supervisor's pid after it;
- all children share one process group (the first child's pid), apart from
  the terminal's foreground group, so the terminal's Ctrl-C reaches only the
  supervisor, and one `killpg` reaches every child and what it forked;
- whatever survived anyway (a child stuck in the kernel, a run of a version
  without all this) is found by the next run through the run record,
  `<data-dir>/run.json`: the supervisor's and every child's pid with its start
  time (/proc/<pid>/stat), written before the supervisor waits on anything.
  A pid is signalled only while the process holding it started at the
  recorded time, so a pid the kernel gave to another program since is never
  touched. A clean stop removes the record.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

RUN_RECORD = "run.json"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# What a child gets when the supervisor dies: the same graceful stop as a
# Ctrl-C (workers hand back their jobs, nodes close their files); the next
# run SIGKILLs whatever is still there.
PARENT_DEATH_SIGNAL = signal.SIGTERM
LEFTOVER_GRACE_S = 10.0  # a leftover's time to stop on SIGTERM before it gets SIGKILL


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl, resolved in the parent (a forked child should not load libraries)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not Linux: Ctrl-C/SIGTERM/SIGHUP still stop the children
        return None


_prctl = _load_prctl()


def child_setup(parent_pid: int, group: int) -> Callable[[], None]:
    """The `preexec_fn` of a child: join process group `group` (0: lead a new
    one) and die with the supervisor `parent_pid`. Runs in the child between
    fork and exec: no allocation-heavy work, no locks."""
    def setup() -> None:
        try:
            os.setpgid(0, group)
        except OSError:  # the group emptied meanwhile (its children exited): lead a new one
            os.setpgid(0, 0)
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, int(PARENT_DEATH_SIGNAL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the supervisor died before the prctl took effect
            os._exit(1)
    return setup


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot), or None if no live
    process has that pid (a zombie has exited: only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields
    # after its closing one. State is field 3, start time field 22.
    fields = stat[stat.rindex(b")") + 2:].split()
    try:
        return None if fields[0] in (b"Z", b"X") else int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass
class Proc:
    name: str
    pid: int
    started: int  # start_time(pid) when it was recorded

    def running(self) -> bool:
        """The recorded process is still alive (not just some process with its pid)."""
        return start_time(self.pid) == self.started


@dataclass
class RunRecord:
    """`<data-dir>/run.json`: the supervisor and the children of one run."""

    path: Path
    supervisor: Proc
    children: list[Proc] = field(default_factory=list)

    @classmethod
    def begin(cls, data_dir: Path) -> RunRecord:
        pid = os.getpid()
        record = cls(data_dir / RUN_RECORD, Proc("raftq dev", pid, start_time(pid) or 0))
        record.save()
        return record

    def add(self, name: str, pid: int) -> None:
        """Record a child just started (before anything waits on it)."""
        self.children.append(Proc(name, pid, start_time(pid) or 0))
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"supervisor": asdict(self.supervisor),
                                   "children": [asdict(c) for c in self.children]}), "utf-8")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @classmethod
    def load(cls, data_dir: Path) -> RunRecord | None:
        """The record an earlier run left, or None (none, or unreadable: then
        nothing can be told about its processes, and nothing is signalled)."""
        path = data_dir / RUN_RECORD
        try:
            raw = json.loads(path.read_text("utf-8"))
            return cls(path, Proc(**raw["supervisor"]), [Proc(**c) for c in raw["children"]])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError):
            path.unlink(missing_ok=True)
            return None

    def leftovers(self) -> list[Proc]:
        return [c for c in self.children if c.running()]


class AlreadyRunning(Exception):
    """A live `raftq dev` (`pid`) owns this data dir."""

    def __init__(self, pid: int) -> None:
        super().__init__(f"raftq dev (pid {pid}) is already running with this data dir")
        self.pid = pid


def clear_leftovers(data_dir: Path, grace_s: float = LEFTOVER_GRACE_S) -> list[Proc]:
    """Stop what an earlier run of this data dir left running; return it.

    Raises AlreadyRunning if that run's supervisor is still alive: its
    children are not leftovers. Each leftover gets SIGTERM, then SIGKILL
    after `grace_s`; the record is removed once none is left."""
    record = RunRecord.load(data_dir)
    if record is None:
        return []
    if record.supervisor.pid != os.getpid() and record.supervisor.running():
        raise AlreadyRunning(record.supervisor.pid)
    left = record.leftovers()
    for proc in left:
        _signal(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(p.running() for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in left:
        _kill(proc)
    deadline = time.monotonic() + 5.0  # SIGKILL is final; the kernel still has to tear down
    while any(p.running() for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    record.remove()
    return left


def _kill(proc: Proc) -> None:
    """SIGKILL `proc`, and its whole process group if it leads one (what the
    run's children forked, e.g. a worker's pool processes)."""
    if not proc.running():
        return
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _signal(proc: Proc, sig: int) -> None:
    # Checked right before: a pid freed and reused meanwhile belongs to someone else.
    if proc.running():
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
