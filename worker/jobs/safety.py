"""Shared guards for built-in job types: the data root and the host allowlist.

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

Every network target (http.fetch, web.scrape, health.check, webhooks) goes
through `check_url()` / `check_host()`: the host must match the worker's
`allow_hosts` rules. Rule syntax:
  loopback        127.0.0.0/8, ::1 and the name "localhost" (the default)
  *               any host (an open fetcher: only on a trusted network)
  10.0.0.0/8      an IP network (CIDR) or a single address
  example.com     exactly that name
  *.example.com   any subdomain of example.com (not example.com itself)
A name is allowed by an IP rule only when every address it resolves to is
allowed. Redirects are checked the same way (see `http_get`). Proxies from the
environment are ignored, so an allowlisted URL is really fetched from that host.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import secrets
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

from worker.context import JobContext, JobSettings
from worker.jobs import fsroot
from worker.registry import BadArgument, JobError, require

USER_AGENT = "raftq-worker/0.1"
CHUNK = 1 << 16

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETS: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class HostRuleError(ValueError):
    """An allow_hosts rule is malformed."""


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
def atomic_output(path: Path, mode: str = "wb", ctx: JobContext | None = None) -> Iterator[Any]:
    """Write to a temp file beside `path`, fsync, rename over `path` on success.

    With ctx (every in-tree file job), the directory is opened (and made)
    beneath the data root fd and the temp file is created and renamed relative
    to that directory fd, so no symlink swapped in meanwhile can redirect the
    write. The file gets the usual umask-based permissions (0o666 & ~umask).
    """
    if ctx is None:  # a caller that has no data root: plain paths
        path.parent.mkdir(parents=True, exist_ok=True)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
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


# --- host allowlist ---------------------------------------------------------------


@dataclass(frozen=True)
class HostRules:
    any_host: bool
    names: frozenset[str]
    suffixes: tuple[str, ...]
    nets: tuple[IPNetwork, ...]

    def allows_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return self.any_host or host in self.names or any(host.endswith(s) for s in self.suffixes)

    def allows_ip(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return self.any_host or any(ip in net for net in self.nets)


def parse_allow_hosts(rules: Any) -> HostRules:
    if isinstance(rules, str):
        rules = [r for r in (x.strip() for x in rules.split(",")) if r]
    names: set[str] = set()
    suffixes: list[str] = []
    nets: list[IPNetwork] = []
    any_host = False
    for rule in rules:
        if not isinstance(rule, str) or not rule.strip():
            raise HostRuleError(f"empty or non-string rule {rule!r}")
        r = rule.strip().lower()
        if r == "*":
            any_host = True
        elif r == "loopback":
            names.add("localhost")
            nets.extend(LOOPBACK_NETS)
        elif r.startswith("*."):
            if len(r) < 3 or "*" in r[2:]:
                raise HostRuleError(f"bad wildcard {rule!r} (use *.example.com)")
            suffixes.append(r[1:])
        else:
            try:
                nets.append(ipaddress.ip_network(r, strict=False))
                continue
            except ValueError:
                pass
            if not all(part and all(c.isalnum() or c == "-" for c in part) for part in r.rstrip(".").split(".")):
                raise HostRuleError(
                    f"{rule!r} is not a host name, IP address, CIDR network, *.domain, 'loopback' or '*'"
                )
            names.add(r.rstrip("."))
    return HostRules(any_host, frozenset(names), tuple(suffixes), tuple(nets))


def check_host(settings: JobSettings, host: str, arg: str = "url") -> None:
    """Raise BadArgument unless `host` is allowed by the worker's allow_hosts."""
    rules = parse_allow_hosts(settings.allow_hosts)
    if not host:
        raise BadArgument(f"{arg!r}: no host given")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if rules.allows_ip(ip):
            return
    elif rules.allows_name(host):
        return
    elif rules.nets:
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            infos = []
        addrs = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos}
        if addrs and all(rules.allows_ip(a) for a in addrs):
            return
    raise BadArgument(
        f"{arg!r}: host {host!r} is not in the worker's allowlist ({', '.join(settings.allow_hosts)}); "
        "start the worker with --allow-host to permit it"
    )


def check_url(settings: JobSettings, url: Any, arg: str = "url") -> urllib.parse.SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise BadArgument(f"{arg!r} must be an http:// or https:// URL, got {url!r}")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadArgument(f"{arg!r} must be an http:// or https:// URL with a host, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise BadArgument(f"{arg!r}: bad port in {url!r}") from None
    check_host(settings, parts.hostname, arg)
    return parts


# --- HTTP GET within the rules ---------------------------------------------------------


@dataclass
class Response:
    url: str  # final URL after redirects
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed_ms: float

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def text(self) -> str:
        charset = "utf-8"
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most 5 redirects, each to an allowed http(s) host."""

    max_redirections = 5

    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        try:
            check_url(self.settings, newurl, "redirect")
        except BadArgument as exc:
            raise UnsafeInput(f"refused redirect to {newurl}: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def http_request(settings: JobSettings, url: str, *, timeout_s: float, max_bytes: int,
                 ctx: JobContext | None = None, method: str = "GET", data: bytes | None = None,
                 headers: dict[str, str] | None = None, arg: str = "url") -> Response:
    """One HTTP request to an allowed host; the body is capped at max_bytes.

    HTTP error statuses are returned, not raised. Network failures raise a
    retryable JobError; a body over the cap raises UnsafeInput.
    """
    check_url(settings, url, arg)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _CheckedRedirects(settings))
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"User-Agent": USER_AGENT, **(headers or {})})
    t0 = time.monotonic()
    try:
        resp = opener.open(req, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        resp = err  # a status >= 400 still has a body and headers
    except UnsafeInput:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JobError(f"cannot fetch {url}: {reason}", retryable=True) from None
    try:
        body = bytearray()
        while True:
            chunk = resp.read(CHUNK)
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                raise UnsafeInput(f"response from {url} is larger than max_bytes={max_bytes}")
            if ctx is not None:
                ctx.check_cancelled()
    except (OSError, ValueError) as exc:  # timeouts and resets mid-body
        raise JobError(f"cannot read {url}: {exc}", retryable=True) from None
    finally:
        resp.close()
    elapsed = (time.monotonic() - t0) * 1000
    return Response(resp.geturl(), int(resp.status), {k.lower(): v for k, v in resp.headers.items()},
                    bytes(body), elapsed)
