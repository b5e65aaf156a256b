"""archive.create / archive.extract: tar.gz and zip, under the data root.

Extraction treats every archive as hostile and cannot escape the target
however its entries are ordered. The archive is refused (UnsafeInput, never
retried) when any entry:
- has an absolute path, a drive letter or any `..` component;
- is a symlink whose target is absolute or has a `..` component (such a link
  only ever resolves downwards, through any other such links, so no later
  entry can turn it outwards), a zip symlink, a device, FIFO or socket;
- is a hard link to anything but a regular file this archive already wrote;
- would be written through a symlink or replace a directory;
- passes a size cap: `max_entries`, `max_bytes` (total size), `max_ratio`
  (size / archive file size: a bomb), each the worker's setting or lower if
  the job asks (worker/jobs/safety.py `capped`); a tar long-name/pax header
  over the worker's `max_header_bytes` is refused before it is read.
Python's tarfile `data` filter runs on every tar member as a floor under these
rules. Tar members are read lazily (stream mode), checked against the caps on
their declared size before a byte is read; zip sizes are checked from the
central directory before anything is written, and actual bytes are counted
against the declared sizes (a lying header cannot get past the cap).
Entries are written into a staging directory beside the target through
directory fds, every step O_NOFOLLOW; when all succeeded every link is
resolved against the final tree (none may lead out) and the tree is moved
into the target by fd-relative renames (an existing symlink in the target is
replaced, never written through).

Creation walks the source by directory fds (os.fwalk, no symlinks followed)
and stores regular files and directories; symlinks and special files are
skipped (listed in the result) so an archive never smuggles out a file a link
points to outside the data root. CPU-bound: process pool.
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

from worker.context import JobContext
from worker.jobs import fsroot
from worker.jobs.safety import (UnsafeInput, atomic_output, capped, in_root, open_dir_in, open_in, rel, root_fd,
                                root_rel, stat_in)
from worker.registry import BadArgument, parse_args

CHUNK = 1 << 20
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can record


def detect_format(name: str, arg: str) -> str:
    lower = name.lower()
    if lower.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if lower.endswith(".zip"):
        return "zip"
    raise BadArgument(f"{arg!r}: cannot tell the archive format of {name!r}; use a .tar.gz, .tgz or .zip "
                      "name or give 'format'")


def _format_arg(args: dict, name: str, arg: str) -> str:
    """The `format` parse_args checked, else the one `name` tells."""
    fmt = args.get("format")
    return detect_format(name, arg) if fmt is None else fmt


# --- create ------------------------------------------------------------------------


def walk_tree(src_fd: int, skip: PurePosixPath | None) -> Iterator[tuple[PurePosixPath, int, str, os.stat_result]]:
    """(path relative to the source, its directory's fd, name, lstat) for
    everything below the source directory fd, dirs before files, sorted; the
    walk never follows a symlink. `skip` (the archive being written) is left
    out, and so is its temp file (atomic_output's `.<name>.*.part`)."""

    def wanted(base: PurePosixPath, name: str) -> bool:
        return skip is None or not (base / name == skip or (
            base == skip.parent and name.startswith(f".{skip.name}.") and name.endswith(".part")))

    for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=src_fd, follow_symlinks=False):
        base = PurePosixPath(dirpath)
        dirnames[:] = sorted(d for d in dirnames if wanted(base, d))
        for name in dirnames + sorted(f for f in filenames if wanted(base, f)):
            with contextlib.suppress(FileNotFoundError):  # gone meanwhile: nothing to archive
                yield base / name, dirfd, name, os.stat(name, dir_fd=dirfd, follow_symlinks=False)


def write_archive(ctx: JobContext, source: Path, out: IO[bytes], fmt: str,
                  skip: Path | None = None) -> dict[str, Any]:
    """Write `source` (a file or directory under the data root) as an archive into `out`."""
    files = dirs = total = 0
    skipped: list[str] = []
    tar = tarfile.open(fileobj=out, mode="w:gz") if fmt == "tar.gz" else None
    zf = zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) if fmt == "zip" else None

    def add_dir(name: str, st: os.stat_result) -> None:
        if tar is not None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, stat.S_IMODE(st.st_mode), int(st.st_mtime)
            tar.addfile(info)
        elif zf is not None:
            zi = zipfile.ZipInfo(name + "/", max(_ZIP_EPOCH, time.localtime(st.st_mtime)[:6]))
            zi.external_attr = (st.st_mode & 0xFFFF) << 16 | 0x10  # 0x10: MS-DOS directory flag
            zf.writestr(zi, b"")

    def add_file(name: str, fh: IO[bytes]) -> int:
        st = os.fstat(fh.fileno())
        if tar is not None:
            tar.addfile(tar.gettarinfo(arcname=name, fileobj=fh), fh)
        elif zf is not None:
            zi = zipfile.ZipInfo(name, max(_ZIP_EPOCH, time.localtime(st.st_mtime)[:6]))
            zi.external_attr = (st.st_mode & 0xFFFF) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.file_size = st.st_size
            with zf.open(zi, "w", force_zip64=st.st_size > zipfile.ZIP64_LIMIT) as dst:
                shutil.copyfileobj(fh, dst, CHUNK)
        return st.st_size

    try:
        with root_fd(ctx) as rfd:
            if stat_in(ctx, source, "source").st_mode & stat.S_IFDIR != stat.S_IFDIR:
                with open_in(ctx, source, arg="source") as fh:
                    total = add_file(source.name, fh)
                return {"files": 1, "dirs": 0, "bytes_in": total, "skipped": []}
            src_fd = open_dir_in(ctx, rfd, root_rel(ctx, source), "source", create=False)
        try:
            skip_rel = PurePosixPath(skip.relative_to(source)) if skip is not None else None
            grand = sum(st.st_size for _, _, _, st in walk_tree(src_fd, skip_rel) if stat.S_ISREG(st.st_mode)) or 1
            add_dir(source.name, os.fstat(src_fd))
            dirs += 1
            for relpath, dirfd, name, st in walk_tree(src_fd, skip_rel):
                ctx.check_cancelled()
                arcname = str(PurePosixPath(source.name) / relpath)
                if stat.S_ISDIR(st.st_mode):
                    add_dir(arcname, st)
                    dirs += 1
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skipped.append(rel(ctx, source / relpath))  # symlinks, sockets, FIFOs, devices
                    continue
                try:  # O_NOFOLLOW: a file swapped for a symlink after the lstat is not read
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
                except OSError:
                    skipped.append(rel(ctx, source / relpath))
                    continue
                with os.fdopen(fd, "rb") as fh:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        skipped.append(rel(ctx, source / relpath))
                        continue
                    os.set_blocking(fd, True)
                    total += add_file(arcname, fh)
                files += 1
                ctx.progress(min(0.99, total / grand), f"archived {files} files")
        finally:
            os.close(src_fd)
    finally:
        if tar is not None:
            tar.close()
        if zf is not None:
            zf.close()
    return {"files": files, "dirs": dirs, "bytes_in": total, "skipped": skipped}


def archive_create(args: dict, ctx: JobContext) -> dict:
    """Pack the file or directory `source` into `output` (.tar.gz or .zip)."""
    a = parse_args("archive.create", args)
    source = in_root(ctx, a["source"], "source")
    output = a["output"]
    fmt = _format_arg(a, output, "output")
    out = in_root(ctx, output, "output", want="file", must_exist=False)
    if out == source:
        raise BadArgument("'output' must differ from 'source'")
    with atomic_output(out, ctx=ctx) as fh:
        # An output inside the source directory is left out of its own archive.
        info = write_archive(ctx, source, fh, fmt, skip=out if out.is_relative_to(source) else None)
    ctx.progress(1.0, "done")
    return {"source": rel(ctx, source), "output": rel(ctx, out), "format": fmt, **info,
            "bytes_out": stat_in(ctx, out).st_size}


# --- extract -----------------------------------------------------------------------

# Deeper than any real tree; bounds the recursion of _merge (and the fds it holds).
MAX_DEPTH = 256
_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_entries: int
    max_ratio: float
    max_header_bytes: int
    archive_size: int

    def check(self, total: int) -> None:
        """Refuse once the declared total passes max_bytes or max_ratio."""
        if total > self.max_bytes:
            raise UnsafeInput(f"refused: the archive expands to more than max_bytes={self.max_bytes}")
        if self.archive_size and total / self.archive_size > self.max_ratio and total > 1 << 20:
            raise UnsafeInput(f"refused: the archive expands more than max_ratio={self.max_ratio:g} times "
                              "its size (an archive bomb?)")


def _capped_tarinfo(max_header_bytes: int) -> type[tarfile.TarInfo]:
    """A TarInfo class that refuses a long-name/pax header larger than the cap
    BEFORE tarfile reads it into memory (it reads such headers whole), and
    old GNU sparse members (their chained extension headers have no bound)."""

    class CappedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
            if self.type == tarfile.GNUTYPE_SPARSE:
                raise UnsafeInput(f"refused: entry {self.name!r} is a GNU sparse file")
            if self.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE,
                             tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE) and self.size > max_header_bytes:
                raise UnsafeInput(f"refused: a {self.size}-byte tar header is larger than "
                                  f"max_header_bytes={max_header_bytes}")
            return super()._proc_member(tarfile_)  # type: ignore[misc]

    return CappedTarInfo


def _safe_name(name: str) -> PurePosixPath:
    """The entry's path relative to the target, or UnsafeInput.

    `..` is refused outright (not only when it climbs out): real archives never
    need it, and a name that goes up through a directory an earlier entry made
    a symlink is how extraction escapes.
    """
    clean = name.replace("\\", "/")
    p = PurePosixPath(clean)
    if p.is_absolute() or (len(clean) > 1 and clean[1] == ":"):
        raise UnsafeInput(f"refused: entry {name!r} has an absolute path")
    parts = [part for part in p.parts if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeInput(f"refused: entry {name!r} would be written outside the target directory "
                          "('..' is not allowed in entry names)")
    if len(parts) > MAX_DEPTH:
        raise UnsafeInput(f"refused: entry {name!r} is nested deeper than {MAX_DEPTH} directories")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _symlink_target(entry: str, target: str) -> str:
    """A symlink target that stays below the link's own directory whatever the
    tree around it becomes: relative and without `..`. Every later resolution
    of such a link (through other such links, in any order) only descends, so
    no ordering of entries can make it point out."""
    parts = target.replace("\\", "/").split("/")
    if not target or target.startswith(("/", "\\")) or (len(target) > 1 and target[1] == ":") or ".." in parts:
        raise UnsafeInput(f"refused: link {entry!r} -> {target!r} points outside the target "
                          "(absolute and '..' link targets are not extracted)")
    return target


class _Staging:
    """Writes entries below a staging directory fd, never through a symlink."""

    def __init__(self, fd: int, limits: Limits, ctx: JobContext) -> None:
        self.fd = fd
        self.limits = limits
        self.ctx = ctx
        self.entries = 0
        self.declared = 0  # sum of the declared sizes of regular files so far
        self.written = 0
        self.files: set[PurePosixPath] = set()  # regular files this archive wrote (hard-link sources)
        self.symlinks: list[PurePosixPath] = []
        self.counts = {"files": 0, "dirs": 0, "links": 0}

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise UnsafeInput(f"refused: more than max_entries={self.limits.max_entries} entries")

    def _dir(self, parts: tuple[str, ...], name: str) -> int:
        """fd of the directory `parts`, made as needed, every step O_NOFOLLOW."""
        try:
            return fsroot.open_dir_nofollow(self.fd, parts, create=True)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeInput(f"refused: entry {name!r} would be written through a link or below a file") from None
            raise

    def _clear(self, dfd: int, leaf: str, name: PurePosixPath) -> None:
        """Make room for a non-directory entry: a later duplicate replaces an
        earlier file or link (as tar does), never a directory."""
        try:
            st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeInput(f"refused: entry {str(name)!r} would replace a directory")
        os.unlink(leaf, dir_fd=dfd)
        self.files.discard(name)

    def mkdir(self, name: PurePosixPath) -> None:
        if name.parts:
            os.close(self._dir(name.parts, str(name)))
        self.counts["dirs"] += 1

    def file(self, name: PurePosixPath, declared: int, src: IO[bytes]) -> None:
        # Sizes are checked against the caps before a byte is read.
        self.declared += declared
        self.limits.check(self.declared)
        dfd = self._dir(name.parts[:-1], str(name))
        try:
            self._clear(dfd, name.name, name)
            fd = os.open(name.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=dfd)
        finally:
            os.close(dfd)
        with os.fdopen(fd, "wb") as dst:
            n = 0
            while chunk := src.read(CHUNK):
                n += len(chunk)
                self.written += len(chunk)
                # A lying header: more data than declared, or past the total cap.
                if n > declared or self.written > self.limits.max_bytes:
                    raise UnsafeInput(f"refused: entry {str(name)!r} holds more data than its header declares")
                dst.write(chunk)
                self.ctx.check_cancelled()
        self.files.add(name)
        self.counts["files"] += 1

    def symlink(self, name: PurePosixPath, target: str) -> None:
        target = _symlink_target(str(name), target)
        dfd = self._dir(name.parts[:-1], str(name))
        try:
            self._clear(dfd, name.name, name)
            os.symlink(target, name.name, dir_fd=dfd)
        finally:
            os.close(dfd)
        self.symlinks.append(name)
        self.counts["links"] += 1

    def hardlink(self, name: PurePosixPath, linkname: str) -> None:
        source = _safe_name(linkname)
        if source not in self.files:
            raise UnsafeInput(f"refused: hard link {str(name)!r} names {linkname!r}, which is not a regular "
                              "file extracted earlier from this archive")
        sfd = self._dir(source.parts[:-1], linkname)
        dfd = self._dir(name.parts[:-1], str(name))
        try:
            if not stat.S_ISREG(os.stat(source.name, dir_fd=sfd, follow_symlinks=False).st_mode):
                raise UnsafeInput(f"refused: hard link {str(name)!r} names {linkname!r}, not a regular file")
            self._clear(dfd, name.name, name)
            os.link(source.name, name.name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
        finally:
            os.close(sfd)
            os.close(dfd)
        self.files.add(name)
        self.counts["links"] += 1

    def check_links(self) -> None:
        """Resolve every link against the final tree: none may lead out."""
        for name in self.symlinks:
            try:
                os.close(fsroot.open_beneath(self.fd, name, os.O_PATH))
            except fsroot.Escape:
                raise UnsafeInput(f"refused: link {str(name)!r} resolves outside the target") from None
            except OSError:
                pass  # dangling or a loop: stays inside, points nowhere


def _extract_tar(fh: IO[bytes], staging: _Staging, staging_path: str) -> None:
    # Stream mode ("r|gz"): members are read lazily, one at a time, in order.
    with tarfile.open(fileobj=fh, mode="r|gz", tarinfo=_capped_tarinfo(staging.limits.max_header_bytes)) as tar:
        while (member := tar.next()) is not None:
            tar.members.clear()  # stream mode would keep every header read in memory
            staging.count_entry()
            name = _safe_name(member.name)
            if member.issym():
                _symlink_target(member.name, member.linkname)
            elif member.islnk():
                _safe_name(member.linkname)
            elif not (member.isreg() or member.isdir()):
                raise UnsafeInput(f"refused: entry {member.name!r} is a device, FIFO or other special file")
            try:  # Python's own rules as a floor under ours
                tarfile.data_filter(member, staging_path)
            except tarfile.FilterError as exc:
                raise UnsafeInput(f"refused: {exc}") from None
            if member.isdir():
                staging.mkdir(name)
            elif member.isreg():
                src = tar.extractfile(member)
                assert src is not None  # a regular member always has a reader
                staging.file(name, member.size, src)
            elif member.issym():
                staging.symlink(name, member.linkname)
            else:
                staging.hardlink(name, member.linkname)
            staging.ctx.progress(0.95 * min(1.0, fh.tell() / (staging.limits.archive_size or 1)),
                                 f"extracted {staging.entries} entries")


def _extract_zip(fh: IO[bytes], staging: _Staging) -> None:
    with zipfile.ZipFile(fh) as zf:
        infos = zf.infolist()
        # The central directory is read first: refuse on declared sizes before writing.
        plan = []
        total = 0
        for info in infos:
            staging.count_entry()
            name = _safe_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeInput(f"refused: entry {info.filename!r} is a symlink (not extracted from zip files)")
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded
                raise UnsafeInput(f"refused: entry {info.filename!r} is a special file")
            if not info.is_dir():
                total += info.file_size
                staging.limits.check(total)
            plan.append((info, name))
        for i, (info, name) in enumerate(plan):
            if info.is_dir():
                staging.mkdir(name)
            else:
                with zf.open(info) as src:
                    staging.file(name, info.file_size, src)
            staging.ctx.progress(0.95 * (i + 1) / len(plan), f"extracted {i + 1} of {len(plan)} entries")


def _dir_nofollow(name: str, dir_fd: int, refusal: str) -> int:
    """Make directory `name` under `dir_fd` if missing and open it without
    following a symlink; a symlink or a file there is UnsafeInput(`refusal`)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=dir_fd)
    try:
        return os.open(name, _DIR_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeInput(refusal) from None
        raise


def _merge(src_fd: int, dst_fd: int, where: PurePosixPath) -> None:
    """Move the staged tree into the target, never writing through a symlink in it."""
    for entry in sorted(os.scandir(src_fd), key=lambda e: e.name):
        here = where / entry.name
        if entry.is_dir(follow_symlinks=False):
            sub_dst = _dir_nofollow(entry.name, dst_fd,
                                    f"refused: {str(here)!r} exists in the target and is not a directory")
            sub_src = os.open(entry.name, _DIR_NOFOLLOW, dir_fd=src_fd)
            try:
                _merge(sub_src, sub_dst, here)
            finally:
                os.close(sub_src)
                os.close(sub_dst)
        else:
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISDIR(os.stat(entry.name, dir_fd=dst_fd, follow_symlinks=False).st_mode):
                    raise UnsafeInput(f"refused: {str(here)!r} is a directory in the target")
            # rename replaces a symlink in the target itself, never what it points to
            os.rename(entry.name, entry.name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def archive_extract(args: dict, ctx: JobContext) -> dict:
    """Extract the archive `path` into the directory `target` (refusing unsafe archives)."""
    args = parse_args("archive.extract", args)
    src = in_root(ctx, args["path"], "path", want="file")
    fmt = _format_arg(args, src.name, "path")
    default_target = str(src.parent / src.name.split(".")[0]) if "target" not in args else args["target"]
    target = in_root(ctx, default_target, "target", want="dir", must_exist=False)
    if target == ctx.settings.data_root.resolve():
        raise BadArgument("'target' must be a directory below the data root, not the root itself")
    s = ctx.settings
    with open_in(ctx, src) as fh, root_fd(ctx) as rfd:
        limits = Limits(max_bytes=capped(args, "max_bytes", s.max_extract_bytes),
                        max_entries=capped(args, "max_entries", s.max_extract_entries),
                        max_ratio=capped(args, "max_ratio", s.max_extract_ratio, float),
                        max_header_bytes=s.max_header_bytes, archive_size=os.fstat(fh.fileno()).st_size)
        parent = Path(root_rel(ctx, target)).parent.as_posix()
        parent_fd = open_dir_in(ctx, rfd, parent, "target")
        staging_name = f".{target.name}.extract-{secrets.token_hex(4)}"
        os.mkdir(staging_name, 0o700, dir_fd=parent_fd)
        try:
            sfd = os.open(staging_name, _DIR_NOFOLLOW, dir_fd=parent_fd)
            try:
                staging = _Staging(sfd, limits, ctx)
                if fmt == "tar.gz":
                    try:
                        _extract_tar(fh, staging, str(target.parent / staging_name))
                    except (tarfile.TarError, EOFError, zlib.error) as exc:
                        raise BadArgument(f"'path': {args['path']!r} is not a valid tar.gz archive ({exc})") from None
                else:
                    try:
                        _extract_zip(fh, staging)
                    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
                        raise BadArgument(f"'path': {args['path']!r} is not a valid zip archive ({exc})") from None
                staging.check_links()
                tfd = _dir_nofollow(target.name, parent_fd,
                                    f"refused: the target {rel(ctx, target)!r} is a symlink or a file")
                try:
                    _merge(sfd, tfd, PurePosixPath(rel(ctx, target)))
                finally:
                    os.close(tfd)
            finally:
                os.close(sfd)
        finally:
            shutil.rmtree(staging_name, dir_fd=parent_fd, ignore_errors=True)  # fd-based: never follows links
            os.close(parent_fd)
    ctx.progress(1.0, "done")
    return {"path": rel(ctx, src), "target": rel(ctx, target), "format": fmt, **staging.counts,
            "bytes": staging.written}


JOBS: dict[str, tuple[Any, str]] = {
    "archive.create": (archive_create, "process"),
    "archive.extract": (archive_extract, "process"),
}
