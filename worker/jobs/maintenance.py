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

Both refuse a dest inside the source (or the reverse for sync): that would
archive or copy the output into itself. Process pool for backup (compression),
thread pool for sync (hashing and copying release the GIL).
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from worker.context import JobContext
from worker.jobs.archives import write_archive
from worker.jobs.safety import atomic_output, in_root, rel, sha256_file
from worker.registry import BadArgument, check_keys, require

_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def _backup_name_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-\d{{8}}T\d{{6}}(\d{{6}})?Z\.tar\.gz$")


def maintenance_backup(args: dict, ctx: JobContext) -> dict:
    """Archive `source` into `dest` as <prefix>-<timestamp>.tar.gz and keep the newest `keep`."""
    check_keys(args, ("source", "dest", "keep", "prefix"))
    source = in_root(ctx, args.get("source"), "source", want="dir")
    dest = in_root(ctx, args.get("dest", "backups"), "dest", want="dir", must_exist=False)
    if dest == source or dest.is_relative_to(source):
        raise BadArgument("'dest' must not be inside 'source' (the backup would contain itself)")
    keep = require(args, "keep", int, min=1, max=10_000, default=7)
    prefix = require(args, "prefix", str, default=source.name or "backup")
    if not _PREFIX_RE.match(prefix):
        raise BadArgument(f"'prefix' must be 1-100 letters, digits, '.', '_' or '-', got {prefix!r}")
    dest.mkdir(parents=True, exist_ok=True)
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now * 1e6) % 1_000_000:06d}Z"
    archive = dest / f"{prefix}-{stamp}.tar.gz"
    with atomic_output(archive) as fh:
        info = write_archive(source, fh, "tar.gz", ctx)
    pattern = _backup_name_re(prefix)
    # Timestamps are fixed-width UTC, so name order is time order.
    backups = sorted(p for p in dest.iterdir() if p.is_file() and not p.is_symlink() and pattern.match(p.name))
    removed = []
    for old in backups[:-keep]:
        old.unlink()
        removed.append(rel(ctx, old))
    ctx.progress(1.0, "done")
    return {"source": rel(ctx, source), "archive": rel(ctx, archive), "files": info["files"],
            "bytes_in": info["bytes_in"], "bytes_out": archive.stat().st_size, "skipped": info["skipped"],
            "removed": removed, "kept": [rel(ctx, p) for p in backups[-keep:]]}


def _same(a: Path, b: Path, ctx: JobContext) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    return sha256_file(a, ctx)[0] == sha256_file(b, ctx)[0]


def maintenance_sync(args: dict, ctx: JobContext) -> dict:
    """Make `dest` a copy of `source` by content (copy new/changed files; `delete` extras)."""
    check_keys(args, ("source", "dest", "delete", "dry_run"))
    source = in_root(ctx, args.get("source"), "source", want="dir")
    dest = in_root(ctx, args.get("dest"), "dest", want="dir", must_exist=False)
    if dest == source or dest.is_relative_to(source) or source.is_relative_to(dest):
        raise BadArgument("'source' and 'dest' must not contain one another")
    delete = require(args, "delete", bool, default=False)
    dry_run = require(args, "dry_run", bool, default=False)
    copied: list[str] = []
    updated: list[str] = []
    deleted: list[str] = []
    skipped: list[str] = []
    unchanged = 0
    bytes_copied = 0
    wanted: set[Path] = set()
    wanted_dirs: set[Path] = set()
    files = [(Path(dp), f) for dp, dns, fns in os.walk(source) for f in sorted(fns)]
    n = len(files) or 1
    for i, (dirpath, name) in enumerate(files):
        ctx.check_cancelled()
        src = dirpath / name
        relpath = src.relative_to(source)
        if src.is_symlink() or not src.is_file():
            skipped.append(str(relpath))
            continue
        wanted.add(relpath)
        wanted_dirs.update(relpath.parents)
        dst = dest / relpath
        # resolve() follows links in the existing part of the path: a symlinked
        # directory inside dest cannot send a copy elsewhere.
        if not dst.parent.resolve().is_relative_to(dest.resolve()):
            raise BadArgument(f"'dest': {rel(ctx, dst.parent)!r} resolves outside the destination")
        if dst.is_symlink() or (dst.exists() and not dst.is_file()):
            skipped.append(str(relpath))
            continue
        if dst.exists():
            if _same(src, dst, ctx):
                unchanged += 1
                continue
            updated.append(str(relpath))
        else:
            copied.append(str(relpath))
        if not dry_run:
            with open(src, "rb") as fin, atomic_output(dst) as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
            shutil.copystat(src, dst)
        bytes_copied += src.stat().st_size
        ctx.progress((i + 1) / n * (0.9 if delete else 1.0), f"{i + 1} of {n} files")
    if delete and dest.exists():
        for dirpath, dirnames, filenames in os.walk(dest, topdown=False):
            base = Path(dirpath)
            for name in filenames:
                relpath = (base / name).relative_to(dest)
                if relpath not in wanted and str(relpath) not in skipped:
                    deleted.append(str(relpath))
                    if not dry_run:
                        (base / name).unlink()
            for name in dirnames:
                d = base / name
                relpath = d.relative_to(dest)
                if relpath not in wanted_dirs and not d.is_symlink():
                    if dry_run or not any(d.iterdir()):
                        if not dry_run:
                            d.rmdir()
                        deleted.append(str(relpath) + "/")
    ctx.progress(1.0, "done")
    return {"source": rel(ctx, source), "dest": rel(ctx, dest), "dry_run": dry_run, "copied": sorted(copied),
            "updated": sorted(updated), "deleted": sorted(deleted), "unchanged": unchanged,
            "skipped": sorted(skipped), "bytes_copied": bytes_copied}


JOBS: dict[str, tuple[Any, str]] = {
    "maintenance.backup": (maintenance_backup, "process"),
    "maintenance.sync": (maintenance_sync, "thread"),
}
