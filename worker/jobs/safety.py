"""Shared guards for built-in file job types: the data root and atomic outputs.

Invariants every file-touching handler keeps:
- Every path a job names goes through `in_root()`: relative paths are taken
  against the worker's data root, the result is fully resolved (symlinks
  included) and must lie inside the resolved root. A path outside is a
  `BadArgument` (non-retryable: running it again cannot help).
- Outputs are written to a temporary name in the destination directory and
  renamed into place (`atomic_output`), so a job killed mid-write never leaves a
  half-written file under the expected name (jobs run at-least-once).

The network half (host allowlist, HTTP within it) is worker/jobs/netguard.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from worker.context import JobContext
from worker.registry import BadArgument, JobError

CHUNK = 1 << 16


class UnsafeInput(JobError):
    """The job's input would make it act outside its bounds (archive escaping
    its target, a bomb, a redirect to a host not allowed): never retried."""

    retryable = False


# --- data root -----------------------------------------------------------------


def in_root(ctx: JobContext, value: Any, arg: str, *, want: str | None = None,
            must_exist: bool = True) -> Path:
    """Resolve a job's path argument inside the data root.

    want: "file", "dir" or None (either). must_exist=False is for outputs: the
    parent directory is created when it is inside the root.
    """
    if not isinstance(value, str) or not value.strip():
        raise BadArgument(f"{arg!r} must be a path (a non-empty string), got {value!r}")
    if "\x00" in value:
        raise BadArgument(f"{arg!r} must not contain a NUL character")
    root = ctx.settings.data_root.resolve()
    raw = Path(value).expanduser()
    target = (raw if raw.is_absolute() else root / raw).resolve()
    if target != root and not target.is_relative_to(root):
        raise BadArgument(
            f"{arg!r}: {value!r} is outside the worker's data root {str(root)!r} "
            "(paths are relative to it; symlinks are resolved)"
        )
    if must_exist:
        if not target.exists():
            raise BadArgument(f"{arg!r}: {value!r} does not exist under the data root {str(root)!r}")
        if want == "file" and not target.is_file():
            raise BadArgument(f"{arg!r}: {value!r} is not a regular file")
        if want == "dir" and not target.is_dir():
            raise BadArgument(f"{arg!r}: {value!r} is not a directory")
    elif target.exists() and want == "file" and not target.is_file():
        raise BadArgument(f"{arg!r}: {value!r} exists and is not a regular file")
    elif target.exists() and want == "dir" and not target.is_dir():
        raise BadArgument(f"{arg!r}: {value!r} exists and is not a directory")
    return target


def rel(ctx: JobContext, path: Path) -> str:
    """A path as the user would write it: relative to the data root."""
    root = ctx.settings.data_root.resolve()
    try:
        return str(path.relative_to(root)) or "."
    except ValueError:
        return str(path)


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "wb") -> Iterator[Any]:
    """Write to a temp file beside `path`, fsync, rename over `path` on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def sha256_file(path: Path, ctx: JobContext | None = None) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK * 4):
            h.update(chunk)
            size += len(chunk)
            if ctx is not None:
                ctx.check_cancelled()
    return h.hexdigest(), size
