"""maintenance.backup and maintenance.sync: directory upkeep under the data root.

maintenance.backup  `source` directory -> `dest`/<prefix>-<UTC timestamp>.tar.gz,
                    then keep only the newest `keep` backups with that prefix.
                    The archive is written under a temporary name and renamed
                    when complete, so a killed backup never counts in rotation
                    (and never deletes a good one). Symlinks are skipped.
maintenance.sync    one-way: make `dest` hold the same files as `source`.
                    A file is copied when missing or when size or SHA-256
                    differ (not by mtime: clocks and copies lie); `delete`
                    removes files in dest that source lacks; `dry_run` only
                    reports. Copies are atomic per file. Symlinks are skipped.

Both work through directory fds (worker/jobs/safety.py): the source is walked
without following symlinks, and every directory written in dest is opened
O_NOFOLLOW, so a symlink swapped into dest cannot redirect a copy or delete.
Both refuse a dest inside the source (or the reverse for sync): that would
archive or copy the output into itself. Process pool for backup (compression),
thread pool for sync (hashing and copying release the GIL).
"""
from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import time
from pathlib import PurePosixPath
from typing import IO, Any

from worker.context import JobContext
from worker.jobs import fsroot
from worker.jobs.archives import walk_tree, write_archive
from worker.jobs.safety import atomic_in_dir, in_root, open_dir_in, rel, root_fd, root_rel
from cluster.jobargs import BACKUP_PREFIX_RE
from worker.registry import BadArgument, parse_args



def _backup_name_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-\d{{8}}T\d{{6}}(\d{{6}})?Z\.tar\.gz$")


def maintenance_backup(args: dict, ctx: JobContext) -> dict:
    """Archive `source` into `dest` as <prefix>-<timestamp>.tar.gz and keep the newest `keep`."""
    a = parse_args("maintenance.backup", args)
    source = in_root(ctx, a["source"], "source", want="dir")
    dest = in_root(ctx, a["dest"], "dest", want="dir", must_exist=False)
    if dest == source or dest.is_relative_to(source):
        raise BadArgument("'dest' must not be inside 'source' (the backup would contain itself)")
    keep = a["keep"]
    prefix = a.get("prefix", source.name or "backup")
    if not BACKUP_PREFIX_RE.fullmatch(prefix):
        raise BadArgument(f"'prefix' must be 1-100 letters, digits, '.', '_' or '-', got {prefix!r}")
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 1_000_000:06d}Z"
    archive = dest / f"{prefix}-{stamp}.tar.gz"
    with root_fd(ctx) as rfd:
        dfd = open_dir_in(ctx, rfd, root_rel(ctx, dest), "dest")
    try:
        with atomic_in_dir(dfd, archive.name) as fh:
            info = write_archive(ctx, source, fh, "tar.gz")
        bytes_out = os.stat(archive.name, dir_fd=dfd, follow_symlinks=False).st_size
        pattern = _backup_name_re(prefix)
        # Timestamps are fixed-width UTC, so name order is time order.
        backups = sorted(e.name for e in os.scandir(dfd) if e.is_file(follow_symlinks=False) and pattern.match(e.name))
        removed = []
        for old in backups[:-keep]:
            os.unlink(old, dir_fd=dfd)
            removed.append(rel(ctx, dest / old))
    finally:
        os.close(dfd)
    ctx.progress(1.0, "done")
    return {"source": rel(ctx, source), "archive": rel(ctx, archive), "files": info["files"],
            "bytes_in": info["bytes_in"], "bytes_out": bytes_out, "skipped": info["skipped"],
            "removed": removed, "kept": [rel(ctx, dest / p) for p in backups[-keep:]]}


def _open_file(name: str, dir_fd: int) -> IO[bytes]:
    """A regular file in dir_fd, opened without following a symlink."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, "not a regular file", name)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _sha256(fh: IO[bytes], ctx: JobContext) -> str:
    h = hashlib.sha256()
    while chunk := fh.read(1 << 20):
        h.update(chunk)
        ctx.check_cancelled()
    return h.hexdigest()


def maintenance_sync(args: dict, ctx: JobContext) -> dict:
    """Make `dest` a copy of `source` by content (copy new/changed files; `delete` extras)."""
    a = parse_args("maintenance.sync", args)
    source = in_root(ctx, a["source"], "source", want="dir")
    dest = in_root(ctx, a["dest"], "dest", want="dir", must_exist=False)
    if dest == source or dest.is_relative_to(source) or source.is_relative_to(dest):
        raise BadArgument("'source' and 'dest' must not contain one another")
    delete, dry_run = a["delete"], a["dry_run"]
    copied: list[str] = []
    updated: list[str] = []
    deleted: list[str] = []
    skipped: list[str] = []
    unchanged = 0
    bytes_copied = 0
    wanted: set[PurePosixPath] = set()
    wanted_dirs: set[PurePosixPath] = set()
    with root_fd(ctx) as rfd:
        src_fd = open_dir_in(ctx, rfd, root_rel(ctx, source), "source", create=False)
        dst_fd = open_dir_in(ctx, rfd, root_rel(ctx, dest), "dest")
    try:
        n = sum(1 for *_, st in walk_tree(src_fd, None) if not stat.S_ISDIR(st.st_mode)) or 1
        i = 0
        for relpath, dirfd, name, st in walk_tree(src_fd, None):
            ctx.check_cancelled()
            if stat.S_ISDIR(st.st_mode):
                continue
            i += 1
            if not stat.S_ISREG(st.st_mode):
                skipped.append(str(relpath))
                continue
            wanted.add(relpath)
            wanted_dirs.update(relpath.parents)
            try:  # every directory of the copy opened O_NOFOLLOW: a symlink in dest cannot send it elsewhere
                ddfd = fsroot.open_dir_nofollow(dst_fd, relpath.parts[:-1], create=not dry_run)
            except FileNotFoundError:  # dry run, directory not made yet
                ddfd = None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise BadArgument(f"'dest': {str(relpath.parent)!r} is a symlink or a file in the "
                                      "destination") from None
                raise
            try:
                try:
                    dst_st = os.stat(name, dir_fd=ddfd, follow_symlinks=False) if ddfd is not None else None
                except FileNotFoundError:
                    dst_st = None
                if dst_st is not None and not stat.S_ISREG(dst_st.st_mode):
                    skipped.append(str(relpath))
                    continue
                with _open_file(name, dirfd) as fin:
                    src_st = os.fstat(fin.fileno())
                    if dst_st is not None:
                        if dst_st.st_size == src_st.st_size:
                            with _open_file(name, ddfd) as other:  # type: ignore[arg-type]
                                same = _sha256(fin, ctx) == _sha256(other, ctx)
                            if same:
                                unchanged += 1
                                continue
                            fin.seek(0)
                        updated.append(str(relpath))
                    else:
                        copied.append(str(relpath))
                    if not dry_run and ddfd is not None:
                        with atomic_in_dir(ddfd, name) as fout:
                            shutil.copyfileobj(fin, fout, 1 << 20)
                            fout.flush()
                            os.utime(fout.fileno(), ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
                            os.fchmod(fout.fileno(), stat.S_IMODE(src_st.st_mode))
                    bytes_copied += src_st.st_size
            finally:
                if ddfd is not None:
                    os.close(ddfd)
            ctx.progress(i / n * (0.9 if delete else 1.0), f"{i} of {n} files")
        if delete:
            extra_dirs = []
            for relpath, dirfd, name, st in walk_tree(dst_fd, None):
                if stat.S_ISDIR(st.st_mode):
                    if relpath not in wanted_dirs:
                        extra_dirs.append(relpath)
                elif relpath not in wanted and str(relpath) not in skipped:
                    deleted.append(str(relpath))
                    if not dry_run:
                        os.unlink(name, dir_fd=dirfd)
            for d in sorted(extra_dirs, key=lambda p: len(p.parts), reverse=True):  # deepest first
                if dry_run:
                    deleted.append(str(d) + "/")
                    continue
                pfd = fsroot.open_dir_nofollow(dst_fd, d.parts[:-1], create=False)
                try:
                    os.rmdir(d.name, dir_fd=pfd)
                    deleted.append(str(d) + "/")
                except OSError:
                    pass  # not empty: something in it is kept (or skipped)
                finally:
                    os.close(pfd)
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    ctx.progress(1.0, "done")
    return {"source": rel(ctx, source), "dest": rel(ctx, dest), "dry_run": dry_run, "copied": sorted(copied),
            "updated": sorted(updated), "deleted": sorted(deleted), "unchanged": unchanged,
            "skipped": sorted(skipped), "bytes_copied": bytes_copied}


JOBS: dict[str, tuple[Any, str]] = {
    "maintenance.backup": (maintenance_backup, "process"),
    "maintenance.sync": (maintenance_sync, "thread"),
}
