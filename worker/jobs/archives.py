"""archive.create / archive.extract: tar.gz and zip, under the data root.

Extraction treats every archive as hostile. Before a byte is written, every
entry is checked and the whole archive is refused (UnsafeInput, never retried)
when any entry:
- has an absolute path, a drive letter, or `..` that leaves the target;
- is a symlink or hard link whose target would resolve outside the target
  (zip symlinks are refused outright), or is a device, FIFO or socket;
- makes the archive exceed `max_entries`, `max_bytes` (total declared size) or
  `max_ratio` (declared size / archive file size: a zip bomb).
While writing, actual bytes are counted against the declared sizes too (a
lying header cannot get past the cap). Entries are extracted into a staging
directory next to the target and moved into place only when all succeeded, and
every final path is re-resolved to be inside the target (an existing symlink
in the target cannot redirect a write).

Creation stores regular files and directories; symlinks are skipped (listed
in the result) so an archive never smuggles out a file the link points to
outside the data root. CPU-bound: process pool.
"""
from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

from worker.context import JobContext
from worker.jobs.safety import UnsafeInput, atomic_output, in_root, rel
from worker.registry import BadArgument, check_keys, require

CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_RATIO = 200.0
FORMATS = ("tar.gz", "zip")


def detect_format(name: str, arg: str) -> str:
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if lower.endswith(".zip"):
        return "zip"
    raise BadArgument(f"{arg!r}: cannot tell the archive format of {name!r}; use a .tar.gz, .tgz or .zip "
                      "name or give 'format'")


def _format_arg(args: dict, name: str, arg: str) -> str:
    fmt = require(args, "format", str, default=None)
    if fmt is None:
        return detect_format(name, arg)
    if fmt not in FORMATS:
        raise BadArgument(f"'format' must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


# --- create ------------------------------------------------------------------------


def walk_files(source: Path, skip: Path | None = None) -> Iterator[tuple[Path, bool]]:
    """(path, is_dir) under source in sorted order; symlinks yielded as-is for the caller to skip."""
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        base = Path(dirpath)
        dirnames.sort()
        if skip is not None:
            dirnames[:] = [d for d in dirnames if (base / d) != skip]
        for d in dirnames:
            yield base / d, True
        for f in sorted(filenames):
            if skip is None or (base / f) != skip:
                yield base / f, False


def write_archive(source: Path, out: IO[bytes], fmt: str, ctx: JobContext,
                  skip: Path | None = None) -> dict[str, Any]:
    """Write `source` (a file or directory) as an archive into the open binary file `out`."""
    files = dirs = total = 0
    skipped: list[str] = []
    arc_root = source.name
    entries: list[tuple[Path, bool]] = [(source, source.is_dir())]
    if source.is_dir():
        entries += list(walk_files(source, skip))
    grand = sum(p.stat().st_size for p, d in entries if not d and not p.is_symlink()) or 1

    def arcname(p: Path) -> str:
        return str(PurePosixPath(arc_root, *p.relative_to(source).parts)) if p != source else arc_root

    tar = tarfile.open(fileobj=out, mode="w:gz") if fmt == "tar.gz" else None
    zf = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) if fmt == "zip" else None
    try:
        for p, is_dir in entries:
            ctx.check_cancelled()
            if p.is_symlink():
                skipped.append(rel(ctx, p))
                continue
            name = arcname(p)
            if is_dir:
                dirs += 1
                if tar is not None:
                    tar.add(p, arcname=name, recursive=False)
                elif zf is not None:
                    zf.writestr(zipfile.ZipInfo.from_file(p, name), b"")
                continue
            if not p.is_file():
                skipped.append(rel(ctx, p))  # sockets, FIFOs, devices
                continue
            files += 1
            total += p.stat().st_size
            if tar is not None:
                tar.add(p, arcname=name, recursive=False)
            elif zf is not None:
                zf.write(p, name)
            ctx.progress(min(0.99, total / grand), f"archived {files} files")
    finally:
        if tar is not None:
            tar.close()
        if zf is not None:
            zf.close()
    return {"files": files, "dirs": dirs, "bytes_in": total, "skipped": skipped}


def archive_create(args: dict, ctx: JobContext) -> dict:
    """Pack the file or directory `source` into `output` (.tar.gz or .zip)."""
    check_keys(args, ("source", "output", "format"))
    source = in_root(ctx, args.get("source"), "source")
    output = require(args, "output", str)
    fmt = _format_arg(args, output, "output")
    out = in_root(ctx, output, "output", want="file", must_exist=False)
    if out == source:
        raise BadArgument("'output' must differ from 'source'")
    with atomic_output(out) as fh:
        # An output inside the source directory is left out of its own archive.
        info = write_archive(source, fh, fmt, ctx, skip=out if out.is_relative_to(source) else None)
    ctx.progress(1.0, "done")
    return {"source": rel(ctx, source), "output": rel(ctx, out), "format": fmt, **info,
            "bytes_out": out.stat().st_size}


# --- extract -----------------------------------------------------------------------


def _safe_name(name: str) -> PurePosixPath:
    """The entry's path relative to the target, or UnsafeInput."""
    clean = name.replace("\\", "/")
    p = PurePosixPath(clean)
    if p.is_absolute() or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeInput(f"refused: entry {name!r} has an absolute path")
    parts = [part for part in p.parts if part not in ("", ".")]
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 1
        if depth < 0:
            raise UnsafeInput(f"refused: entry {name!r} would be written outside the target directory")
    if not parts:
        return PurePosixPath(".")
    return PurePosixPath(os.path.normpath(PurePosixPath(*parts)))


def _link_inside(entry: PurePosixPath, link_target: str, *, hard: bool) -> bool:
    if not link_target or link_target.startswith("/") or (len(link_target) > 1 and link_target[1] == ":"):
        return False
    base = PurePosixPath() if hard else entry.parent
    joined = os.path.normpath(str(base / link_target))
    return not (joined == ".." or joined.startswith("../") or joined.startswith("/"))


class _Plan:
    """The validated entries of an archive, before anything is written."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, PurePosixPath, str]] = []  # (member, name, kind: dir|file|symlink|hardlink)
        self.total = 0


def _plan_tar(tar: tarfile.TarFile, limits: dict[str, Any]) -> _Plan:
    plan = _Plan()
    for member in tar:
        if len(plan.entries) >= limits["max_entries"]:
            raise UnsafeInput(f"refused: more than max_entries={limits['max_entries']} entries")
        name = _safe_name(member.name)
        if member.isdir():
            kind = "dir"
        elif member.isreg():
            kind = "file"
            plan.total += member.size
        elif member.issym() or member.islnk():
            kind = "symlink" if member.issym() else "hardlink"
            if not _link_inside(name, member.linkname, hard=member.islnk()):
                raise UnsafeInput(f"refused: link {member.name!r} -> {member.linkname!r} points outside the target")
            if member.islnk():
                _safe_name(member.linkname)
        else:
            raise UnsafeInput(f"refused: entry {member.name!r} is a device, FIFO or other special file")
        _check_totals(plan.total, limits)
        plan.entries.append((member, name, kind))
    return plan


def _plan_zip(zf: zipfile.ZipFile, limits: dict[str, Any]) -> _Plan:
    plan = _Plan()
    for info in zf.infolist():
        if len(plan.entries) >= limits["max_entries"]:
            raise UnsafeInput(f"refused: more than max_entries={limits['max_entries']} entries")
        name = _safe_name(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeInput(f"refused: entry {info.filename!r} is a symlink (not extracted from zip files)")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded
            raise UnsafeInput(f"refused: entry {info.filename!r} is a special file")
        kind = "dir" if info.is_dir() else "file"
        plan.total += info.file_size
        _check_totals(plan.total, limits)
        plan.entries.append((info, name, kind))
    return plan


def _check_totals(total: int, limits: dict[str, Any]) -> None:
    if total > limits["max_bytes"]:
        raise UnsafeInput(f"refused: the archive expands to more than max_bytes={limits['max_bytes']}")
    if limits["archive_size"] and total / limits["archive_size"] > limits["max_ratio"] and total > 1 << 20:
        raise UnsafeInput(f"refused: the archive expands more than max_ratio={limits['max_ratio']:g} times "
                          "its size (an archive bomb?)")


def _copy_capped(src: IO[bytes], dst: IO[bytes], declared: int, budget: list[int], name: str,
                 ctx: JobContext) -> int:
    n = 0
    while chunk := src.read(CHUNK):
        n += len(chunk)
        budget[0] -= len(chunk)
        if n > declared or budget[0] < 0:
            raise UnsafeInput(f"refused: entry {name!r} holds more data than its header declares")
        dst.write(chunk)
        ctx.check_cancelled()
    return n


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def archive_extract(args: dict, ctx: JobContext) -> dict:
    """Extract the archive `path` into the directory `target` (refusing unsafe archives)."""
    check_keys(args, ("path", "target", "format", "max_bytes", "max_entries", "max_ratio"))
    src = in_root(ctx, args.get("path"), "path", want="file")
    fmt = _format_arg(args, src.name, "path")
    default_target = str(src.parent / src.name.split(".")[0]) if "target" not in args else args["target"]
    target = in_root(ctx, default_target, "target", want="dir", must_exist=False)
    limits = {
        "max_bytes": require(args, "max_bytes", int, min=1, max=1 << 40, default=DEFAULT_MAX_BYTES),
        "max_entries": require(args, "max_entries", int, min=1, max=1_000_000, default=DEFAULT_MAX_ENTRIES),
        "max_ratio": require(args, "max_ratio", float, min=1, max=1e6, default=DEFAULT_MAX_RATIO),
        "archive_size": src.stat().st_size,
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        if fmt == "tar.gz":
            try:
                with tarfile.open(src, "r:gz") as tar:
                    plan = _plan_tar(tar, limits)
                    counts = _extract_entries(plan, staging, ctx, lambda m: tar.extractfile(m))
            except (tarfile.TarError, EOFError, OSError) as exc:
                if isinstance(exc, (FileNotFoundError, PermissionError)):
                    raise
                raise BadArgument(f"'path': {args['path']!r} is not a valid tar.gz archive ({exc})") from None
        else:
            try:
                with zipfile.ZipFile(src) as zf:
                    plan = _plan_zip(zf, limits)
                    counts = _extract_entries(plan, staging, ctx, lambda info: zf.open(info))
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
                raise BadArgument(f"'path': {args['path']!r} is not a valid zip archive ({exc})") from None
        _move_into(staging, target, ctx)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    ctx.progress(1.0, "done")
    return {"path": rel(ctx, src), "target": rel(ctx, target), "format": fmt, **counts}


def _extract_entries(plan: _Plan, staging: Path, ctx: JobContext, opener: Any) -> dict[str, int]:
    budget = [plan.total]
    files = dirs = links = 0
    written = 0
    n = len(plan.entries) or 1
    for i, (member, name, kind) in enumerate(plan.entries):
        dest = staging / name
        if not _inside(dest.parent.resolve(), staging.resolve()) and kind != "dir":
            raise UnsafeInput(f"refused: entry {str(name)!r} would be written through a link")
        if kind == "dir":
            dest.mkdir(parents=True, exist_ok=True)
            dirs += 1
        elif kind == "file":
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink():
                dest.unlink()
            declared = member.size if isinstance(member, tarfile.TarInfo) else member.file_size
            with opener(member) as fin, open(dest, "wb") as fout:
                written += _copy_capped(fin, fout, declared, budget, str(name), ctx)
            files += 1
        elif kind == "symlink":
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(member.linkname, dest)
            # The lexical check in _plan_tar cannot see links earlier entries
            # made; resolving the real link catches a chain that escapes.
            if not _inside(dest.resolve(), staging.resolve()):
                raise UnsafeInput(f"refused: link {member.name!r} -> {member.linkname!r} resolves outside the target")
            links += 1
        else:  # hard link: copy the already-extracted file it names
            source = staging / _safe_name(member.linkname)
            if not source.is_file() or source.is_symlink():
                raise UnsafeInput(f"refused: hard link {str(name)!r} names {member.linkname!r}, not an extracted file")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            links += 1
        ctx.progress(0.95 * (i + 1) / n, f"extracted {i + 1} of {n} entries")
    return {"files": files, "dirs": dirs, "links": links, "bytes": written}


def _move_into(staging: Path, target: Path, ctx: JobContext) -> None:
    """Move the staged tree into target, never writing through a symlink in target."""
    if not target.exists():
        os.replace(staging, target)
        staging.mkdir()  # so the caller's rmtree has something to remove
        return
    real_target = target.resolve()
    for dirpath, dirnames, filenames in os.walk(staging):
        rel_dir = Path(dirpath).relative_to(staging)
        out_dir = target / rel_dir
        if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
            raise UnsafeInput(f"refused: {rel(ctx, out_dir)!r} exists in the target and is not a directory")
        out_dir.mkdir(parents=True, exist_ok=True)
        if not _inside(out_dir.resolve(), real_target):
            raise UnsafeInput(f"refused: {rel(ctx, out_dir)!r} resolves outside the target")
        for f in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            final = out_dir / f
            if final.is_dir() and not final.is_symlink():
                raise UnsafeInput(f"refused: {rel(ctx, final)!r} is a directory in the target")
            os.replace(Path(dirpath) / f, final)


JOBS: dict[str, tuple[Any, str]] = {
    "archive.create": (archive_create, "process"),
    "archive.extract": (archive_extract, "process"),
}
