"""Guards for network job types: the host allowlist and HTTP within it.

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

import ipaddress
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from worker.context import JobContext, JobSettings
from worker.jobs.safety import UnsafeInput
from worker.registry import BadArgument, JobError

USER_AGENT = "raftq-worker/0.1"
CHUNK = 1 << 16

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETS: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class HostRuleError(ValueError):
    """An allow_hosts rule is malformed."""


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
