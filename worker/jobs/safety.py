"""Shared guards for built-in file job types: the data root and atomic outputs.

Invariants every file-touching handler keeps:
- Every path a job names goes through `in_root()`: relative paths are taken
  against the worker's data root and must lie lexically inside it. A path
  outside is a `BadArgument` (non-retryable: running it again cannot help).
- A path is only ever opened beneath an fd of the data root
  (worker/jobs/fsroot.py: openat2 RESOLVE_BENEATH, or a no-follow walk), by
  `open_in`, `stat_in`, `atomic_output` or fd-relative calls on the fds they
  return: checking a path and then opening it by name is a race a symlink
  swap wins. Symlinks that stay inside the root work; one leading out is a
  `BadArgument`.
- Outputs are written to a temporary name in the destination directory and
  renamed into place (`atomic_output`), so a job killed mid-write never leaves a
  half-written file under the expected name (jobs run at-least-once).

The network half (host allowlist, HTTP within it) is worker/jobs/netguard.py.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any, Iterator

from worker.context import JobContext
from worker.jobs import fsroot
from worker.registry import BadArgument, JobError, require

CHUNK = 1 << 16


class UnsafeInput(JobError):
    """The job's input would make it act outside its bounds (archive escaping
    its target, a bomb, a redirect to a host not allowed): never retried."""

    retryable = False


# --- data root -----------------------------------------------------------------


@contextlib.contextmanager
def root_fd(ctx: JobContext) -> Iterator[int]:
    """An fd of the data root for the fd-relative calls in worker/jobs/fsroot.py."""
    fd = fsroot.open_root(ctx.settings.data_root)
    try:
        yield fd
    finally:
        os.close(fd)


def root_rel(ctx: JobContext, path: Path) -> str:
    """`path` (from in_root) relative to the data root, for fd-relative calls."""
    return path.relative_to(ctx.settings.data_root.resolve()).as_posix()


@contextlib.contextmanager
def _beneath(value: str, arg: str) -> Iterator[None]:
    """Word the errors of an fd-relative lookup for the submitter."""
    try:
        yield
    except fsroot.Escape:
        raise BadArgument(f"{arg!r}: {value!r} leads outside the worker's data root "
                          "(through an absolute symlink or '..')") from None
    except FileNotFoundError:
        raise BadArgument(f"{arg!r}: {value!r} does not exist under the data root") from None
    except NotADirectoryError:
        raise BadArgument(f"{arg!r}: a parent of {value!r} is not a directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadArgument(f"{arg!r}: {value!r} is a symlink loop (or one where a file is required)") from None
        raise


def in_root(ctx: JobContext, value: Any, arg: str, *, want: str | None = None,
            must_exist: bool = True) -> Path:
    """A job's path argument as a path under the data root (lexically normalized).

    want: "file", "dir" or None (either). must_exist=False is for outputs (the
    parent directory is made when the output is written). The type checks
    here are for clear errors only: the open that follows (open_in,
    atomic_output, ...) resolves the path again beneath the root fd.
    """
    if not isinstance(value, str) or not value.strip():
        raise BadArgument(f"{arg!r} must be a path (a non-empty string), got {value!r}")
    if "\x00" in value:
        raise BadArgument(f"{arg!r} must not contain a NUL character")
    root = ctx.settings.data_root.resolve()
    raw = Path(value).expanduser()
    target = Path(os.path.normpath(raw if raw.is_absolute() else root / raw))
    if target != root and not target.is_relative_to(root):
        raise BadArgument(
            f"{arg!r}: {value!r} is outside the worker's data root {str(root)!r} (paths are relative to it)"
        )
    try:
        st: os.stat_result | None = stat_in(ctx, target, arg, value)
    except BadArgument:
        if must_exist:
            raise
        st = None  # a missing output (or one below a missing directory) is fine
    if must_exist and st is None:
        raise BadArgument(f"{arg!r}: {value!r} does not exist under the data root {str(root)!r}")
    if st is not None:
        if want == "file" and not stat.S_ISREG(st.st_mode):
            raise BadArgument(f"{arg!r}: {value!r} {'is' if must_exist else 'exists and is'} not a regular file")
        if want == "dir" and not stat.S_ISDIR(st.st_mode):
            raise BadArgument(f"{arg!r}: {value!r} {'is' if must_exist else 'exists and is'} not a directory")
    return target


def stat_in(ctx: JobContext, path: Path, arg: str = "path", value: str | None = None) -> os.stat_result:
    """fstat of `path` resolved beneath the data root (symlinks inside followed)."""
    with root_fd(ctx) as rfd, _beneath(value or rel(ctx, path), arg):
        fd = fsroot.open_beneath(rfd, root_rel(ctx, path), os.O_PATH)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def open_in(ctx: JobContext, path: Path, mode: str = "rb", arg: str = "path", **kwargs: Any) -> IO[Any]:
    """Open the regular file `path` for reading, beneath the data root."""
    if mode not in ("r", "rb"):
        raise ValueError(f"open_in reads only (outputs go through atomic_output), got mode {mode!r}")
    with root_fd(ctx) as rfd, _beneath(rel(ctx, path), arg):
        # O_NONBLOCK: a FIFO swapped in after in_root must not block the open.
        fd = fsroot.open_beneath(rfd, root_rel(ctx, path), os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BadArgument(f"{arg!r}: {rel(ctx, path)!r} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        raise


def capped(args: dict, key: str, worker_max: int | float, kind: type = int) -> Any:
    """A size/bomb limit: the worker setting, or the job's `key` when lower.

    A job asking for more than the worker allows is capped to the worker's
    value, not refused: the same job then runs on a generous and a strict
    worker alike, and the strict one still holds its limit.
    """
    value = require(args, key, kind, min=1, default=None)
    return worker_max if value is None else min(kind(value), worker_max)


def open_dir_in(ctx: JobContext, rfd: int, path: str, arg: str, create: bool = True) -> int:
    """fd of the directory `path` (relative to the root fd `rfd`), made when missing."""
    with _beneath(path, arg):
        return fsroot.open_dir(rfd, path, create=create)


def rel(ctx: JobContext, path: Path) -> str:
    """A path as the user would write it: relative to the data root."""
    root = ctx.settings.data_root.resolve()
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "wb", *, ctx: JobContext) -> Iterator[Any]:
    """Write to a temp file beside `path`, fsync, rename over `path` on success.

    The directory is opened (and made) beneath the data root fd and the temp
    file is created and renamed relative to that directory fd, so no symlink
    swapped in meanwhile can redirect the write. The file gets the usual
    umask-based permissions (0o666 & ~umask).
    """
    with root_fd(ctx) as rfd:
        dfd = open_dir_in(ctx, rfd, Path(root_rel(ctx, path)).parent.as_posix(), "output")
    try:
        with atomic_in_dir(dfd, path.name, mode) as fh:
            yield fh
    finally:
        os.close(dfd)


@contextlib.contextmanager
def atomic_in_dir(dfd: int, name: str, mode: str = "wb") -> Iterator[Any]:
    """atomic_output relative to the directory fd `dfd`: temp file created
    there (O_EXCL | O_NOFOLLOW), fsynced, renamed over `name` on success."""
    fd = None
    while fd is None:
        tmp = f".{name}.{secrets.token_hex(4)}.part"
        with contextlib.suppress(FileExistsError):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=dfd)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


