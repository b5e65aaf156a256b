"""Open paths beneath a root directory fd, never following a symlink out.

A path check followed by a separate open by name is a race: between the two a
directory can be swapped for a symlink to /etc. So every file job resolves its
paths here, relative to an fd of the data root, and then works on the fd it
got back (os.fdopen, fstat, dir_fd-relative mkdir/rename/unlink).

Two ways to resolve, same rules (symlinks inside the root are followed when
they stay inside; an absolute symlink, or `..` above the root, is refused):
- openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS (Linux >= 5.6): the
  kernel does the walk atomically. Called through ctypes (`syscall(437)`, the
  same number on x86_64 and aarch64), probed once per process; a kernel or
  seccomp profile without it (ENOSYS, EPERM) selects the fallback.
- a component-by-component walk: each component opened with O_NOFOLLOW
  relative to the fd of its parent; a symlink is read with readlinkat and its
  (relative) target spliced into the walk; `..` pops our own stack of fds,
  never opens "..". At most MAX_LINKS symlinks per walk (a loop is ELOOP).

Errors: `Escape` (a ValueError) when the path would leave the root; OSError
otherwise (FileNotFoundError, NotADirectoryError, ...), for the caller to word.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import stat
from pathlib import PurePosixPath

MAX_LINKS = 40  # the kernel's own limit on symlinks followed in one lookup
_SYS_OPENAT2 = 437  # x86_64 and aarch64 (asm-generic) agree
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_BENEATH = 0x08
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class Escape(ValueError):
    """The path leaves the root (absolute symlink, `..` above it, a race)."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_syscall = None  # libc.syscall once probed and working; False when unavailable
force_walk = False  # tests set this to exercise the fallback walk on a kernel with openat2


def _openat2(dir_fd: int, path: str, flags: int, mode: int) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0,
                   _RESOLVE_BENEATH | _RESOLVE_NO_MAGICLINKS)
    for _ in range(8):  # EAGAIN: a concurrent rename somewhere; the kernel asks us to retry
        fd = _syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.EXDEV:
            raise Escape(path)
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, "the path kept changing while it was opened", path)


def have_openat2() -> bool:
    """Probe once: does this kernel (and seccomp profile) give us openat2?"""
    global _syscall
    if _syscall is None:
        _syscall = False
        if platform.system() == "Linux" and platform.machine() in ("x86_64", "amd64", "aarch64", "arm64"):
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.syscall
            fn.restype = ctypes.c_long
            fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
            root = os.open("/", _DIR_FLAGS)
            try:
                _syscall = fn
                os.close(_openat2(root, ".", _DIR_FLAGS, 0))
            except OSError:
                _syscall = False
            finally:
                os.close(root)
    return bool(_syscall) and not force_walk


def _parts(path: str | PurePosixPath) -> list[str]:
    text = str(path)
    if text.startswith("/"):
        raise Escape(text)
    return [p for p in text.split("/") if p not in ("", ".")]


def _walk(root_fd: int, parts: list[str], flags: int, mode: int, *, follow_last: bool,
          make_dirs: bool) -> int:
    """The fallback walk; the last component is opened with `flags`, the others as directories."""
    stack = [os.dup(root_fd)]
    todo = list(reversed(parts))
    links = made = 0
    try:
        if not todo:
            return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
        while todo:
            part = todo.pop()
            if part in ("", "."):
                if not todo:  # "a/." names a itself
                    return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
                continue
            if part == "..":
                if len(stack) == 1:
                    raise Escape("..")
                os.close(stack.pop())
                if not todo:
                    return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
                continue
            last = not todo
            want = (flags if last else _DIR_FLAGS) | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(part, want, mode, dir_fd=stack[-1])
                # O_PATH | O_NOFOLLOW opens a symlink itself instead of failing.
                if want & os.O_PATH and stat.S_ISLNK(os.fstat(fd).st_mode):
                    os.close(fd)
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part)
            except FileNotFoundError:
                # Only directories are made, and only a bounded number of times
                # (someone removing them as fast as we make them cannot spin us).
                made += 1
                if not make_dirs or not want & os.O_DIRECTORY or made > MAX_LINKS + len(parts):
                    raise
                try:
                    os.mkdir(part, dir_fd=stack[-1])
                except FileExistsError:
                    pass  # made by someone else meanwhile: open it on the next round
                todo.append(part)
                continue
            except OSError as exc:
                # O_NOFOLLOW on a symlink: ELOOP (or ENOTDIR with O_DIRECTORY).
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR) or (last and not follow_last):
                    raise
                try:
                    target = os.readlink(part, dir_fd=stack[-1])
                except OSError:
                    raise exc from None  # not a symlink: a plain ENOTDIR
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), part) from None
                if target.startswith("/"):
                    raise Escape(target) from None
                todo.extend(reversed(target.split("/")))
                continue
            if last:
                return fd
            stack.append(fd)
        raise AssertionError("unreachable")  # the loop returns at the last component
    finally:
        for fd in stack:
            os.close(fd)


def open_beneath(root_fd: int, path: str | PurePosixPath, flags: int, mode: int = 0o666, *,
                 follow_last: bool = True) -> int:
    """Open `path` (relative) beneath root_fd; returns a new fd.

    follow_last=False refuses a symlink as the last component (ELOOP), as
    O_NOFOLLOW does.
    """
    parts = _parts(path)
    if have_openat2():
        return _openat2(root_fd, "/".join(parts) or ".", flags | (0 if follow_last else os.O_NOFOLLOW), mode)
    return _walk(root_fd, parts, flags, mode, follow_last=follow_last, make_dirs=False)


def open_dir(root_fd: int, path: str | PurePosixPath, *, create: bool = False) -> int:
    """An fd of the directory `path` beneath root_fd; create=True makes missing ones (mkdir -p)."""
    parts = _parts(path)
    if have_openat2():
        try:
            return _openat2(root_fd, "/".join(parts) or ".", _DIR_FLAGS, 0)
        except FileNotFoundError:
            if not create:
                raise
    return _walk(root_fd, parts, _DIR_FLAGS, 0, follow_last=True, make_dirs=create)


def open_dir_nofollow(dir_fd: int, parts: tuple[str, ...], *, create: bool) -> int:
    """The directory `parts` below dir_fd, no symlink followed at all (stricter
    than open_dir: for trees a job writes into, e.g. archive staging).
    create=True makes missing directories. A symlink or file in the way is
    OSError ELOOP or ENOTDIR."""
    fd = os.dup(dir_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, dir_fd=fd)
            nfd = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_root(root: str | os.PathLike[str]) -> int:
    """An fd of the root directory itself (the caller closes it)."""
    return os.open(root, _DIR_FLAGS)
