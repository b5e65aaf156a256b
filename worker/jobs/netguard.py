"""Guards for network job types: the host allowlist, and connections to exactly
the addresses it checked.

Every network target (http.fetch, web.scrape, health.check probes, webhooks)
goes through `check_url()` / `check_host()`: the host must match the worker's
`allow_hosts` rules. Rule syntax:
  loopback        127.0.0.0/8, ::1 and the name "localhost" (the default)
  *               any host (an open fetcher: only on a trusted network)
  10.0.0.0/8      an IP network (CIDR) or a single address
  127.0.0.1:7900  exactly that port of that address ([::1]:7900 for IPv6)
  example.com     exactly that name
  *.example.com   any subdomain of example.com (not example.com itself)
A name is allowed by an IP rule only when every address it resolves to is
allowed.

Invariants:
- A name is resolved once per connection; every address of the answer is
  checked, and the socket connects to one of those addresses, never to a new
  lookup of the name (a second lookup could answer differently: DNS
  rebinding). Host header, TLS SNI and certificate verification use the name.
- Guarded addresses are refused whatever the rules allow (`*`, a name rule,
  a wide CIDR), unless a rule names them at least as narrowly as the guard:
  link-local and cloud metadata addresses (GUARDED_NETS: an IP rule inside the
  guarded network), and the cluster's own ports (node client addresses, and
  the NODE_PORTS band on loopback and on the nodes' addresses: an ADDRESS:PORT
  rule). A job must not read the node's /metrics, talk to its client port or
  scan the raftq ports of the machine it runs on.
- Every redirect hop is resolved, checked and pinned like the first request;
  proxies from the environment are ignored, so an allowed URL is really
  fetched from the checked address.
"""
from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from worker.context import JobContext, JobSettings
from worker.jobs.safety import UnsafeInput
from worker.registry import BadArgument, JobError

USER_AGENT = "raftq-worker/0.1"
CHUNK = 1 << 16

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_NETS: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
# Addresses a connection to which lands on this machine, like loopback: Linux
# connects 0.0.0.0 (and ::) to the local host.
_LOCAL_NETS: tuple[IPNetwork, ...] = (*LOOPBACK_NETS, ipaddress.ip_network("0.0.0.0/8"), ipaddress.ip_network("::/128"))
# Link-local (the host's own segment, where cloud metadata services live) and
# the metadata services themselves (AWS/GCP/Azure/OpenStack 169.254.169.254,
# AWS IPv6 fd00:ec2::254, Alibaba 100.100.100.200): they hand out the machine's
# credentials to anyone who asks. Refused even under `*`.
GUARDED_NETS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "169.254.0.0/16", "fe80::/10", "169.254.169.254/32", "fd00:ec2::254/128", "100.100.100.200/32"))
# raftq's own ports in the default layout (`raftq dev`, the docs): client
# 7700+, Raft 7800+, HTTP (/metrics, /health) 7900+. Guarded on local
# addresses and on the cluster nodes' addresses.
NODE_PORTS = range(7700, 8000)

# name -> its addresses (as text); socket.getaddrinfo by default, a stub in tests.
Resolver = Callable[[str], list[str]]


class HostRuleError(ValueError):
    """An allow_hosts rule is malformed."""


def system_resolver(host: str) -> list[str]:
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _ip(text: str) -> IPAddress:
    """An address as text (IPv6 scope dropped), IPv4-mapped IPv6 unwrapped so a
    rule or guard on the IPv4 address also covers ::ffff:a.b.c.d."""
    ip = ipaddress.ip_address(text.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _is_local(ip: IPAddress) -> bool:
    return any(ip in net for net in _LOCAL_NETS)


# --- host allowlist ---------------------------------------------------------------


@dataclass(frozen=True)
class HostRules:
    any_host: bool
    names: frozenset[str]
    suffixes: tuple[str, ...]
    nets: tuple[IPNetwork, ...]
    ports: frozenset[tuple[IPAddress, int]]  # ADDRESS:PORT rules

    def allows_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return self.any_host or host in self.names or any(host.endswith(s) for s in self.suffixes)

    def allows_ip(self, ip: IPAddress, port: int | None) -> bool:
        return self.any_host or any(ip in net for net in self.nets) or (ip, port) in self.ports

    def guard(self, ip: IPAddress, port: int | None, node_addrs: frozenset[tuple[IPAddress, int]]) -> str | None:
        """Why `ip`:`port` is refused whatever else allows it, or None."""
        if (ip, port) in self.ports:
            return None  # named exactly: the user means it
        for guarded in GUARDED_NETS:
            if ip in guarded and not any(ip in net and net.version == guarded.version and net.subnet_of(guarded)
                                         for net in self.nets):  # type: ignore[arg-type] - versions match
                return f"{ip} is a link-local or cloud metadata address"
        if port is None:
            return None
        local = _is_local(ip)
        # A node listening on one local address may answer on all of them
        # (0.0.0.0 binds), so its ports are refused on every local address.
        if (ip, port) in node_addrs or (local and any(p == port and _is_local(a) for a, p in node_addrs)):
            return f"{ip}:{port} is a port of this raftq cluster"
        if port in NODE_PORTS and (local or any(ip == a for a, _ in node_addrs)):
            return f"{ip}:{port} is in raftq's port band {NODE_PORTS.start}-{NODE_PORTS.stop - 1}"
        return None


def parse_allow_hosts(rules: Any) -> HostRules:
    if isinstance(rules, str):
        rules = [r for r in (x.strip() for x in rules.split(",")) if r]
    names: set[str] = set()
    suffixes: list[str] = []
    nets: list[IPNetwork] = []
    ports: set[tuple[IPAddress, int]] = set()
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
        elif r.startswith("[") or r.count(":") == 1:
            ports.add(_address_port(rule, r))
        else:
            try:
                nets.append(ipaddress.ip_network(r, strict=False))
                continue
            except ValueError:
                pass
            if not all(part and all(c.isalnum() or c == "-" for c in part) for part in r.rstrip(".").split(".")):
                raise HostRuleError(
                    f"{rule!r} is not a host name, IP address, CIDR network, ADDRESS:PORT, *.domain, "
                    "'loopback' or '*'"
                )
            names.add(r.rstrip("."))
    return HostRules(any_host, frozenset(names), tuple(suffixes), tuple(nets), frozenset(ports))


def _address_port(rule: str, r: str) -> tuple[IPAddress, int]:
    """An ADDRESS:PORT rule (IPv6 in brackets). Only addresses: a name could
    resolve anywhere, and this form unlocks guarded ports."""
    host, _, port = r.rpartition(":")
    try:
        ip = _ip(host.removeprefix("[").removesuffix("]") if host.startswith("[") and host.endswith("]") else host)
    except ValueError:
        raise HostRuleError(f"{rule!r}: a port rule needs an IP address, like 127.0.0.1:7900 or [::1]:7900") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise HostRuleError(f"{rule!r}: bad port (1-65535)")
    return ip, int(port)


def _node_addrs(settings: JobSettings, resolver: Resolver) -> frozenset[tuple[IPAddress, int]]:
    """The cluster's own addresses (client, Raft, HTTP) as (ip, port); names
    resolved now, so a job naming a node by another name or by address is
    still recognised."""
    out: set[tuple[IPAddress, int]] = set()
    for addr in settings.node_addrs:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        try:
            ips = [_ip(host)]
        except ValueError:
            try:
                ips = [_ip(a) for a in resolver(host)]
            except (OSError, UnicodeError):
                continue  # a node name that does not resolve is not reachable either
        out.update((ip, int(port)) for ip in ips)
    return frozenset(out)


def check_host(settings: JobSettings, host: str, arg: str = "url", *, port: int | None = None,
               resolver: Resolver = system_resolver) -> list[IPAddress]:
    """The addresses to connect to for `host`: resolved once, every one checked.

    BadArgument when the host, or any of its addresses, is not allowed; a
    retryable JobError when an allowed name does not resolve (DNS may recover).
    port=None is argument validation before the job runs: port rules and
    guards do not apply, and a name that a name rule allows is not looked up
    (the empty list): connections always give the port, and that check
    resolves and guards.
    """
    rules = parse_allow_hosts(settings.allow_hosts)
    if not host:
        raise BadArgument(f"{arg!r}: no host given")
    host = host.strip("[]")
    refused = BadArgument(
        f"{arg!r}: host {host!r} is not in the worker's allowlist ({', '.join(settings.allow_hosts)}); "
        "start the worker with --allow-host to permit it"
    )
    try:
        addrs = [_ip(host)]
    except ValueError:
        by_name = rules.allows_name(host)
        if not by_name and not rules.nets and not rules.ports:
            raise refused from None
        if by_name and port is None:
            return []
        try:
            addrs = [_ip(a) for a in resolver(host)]
        except (OSError, UnicodeError) as exc:
            if by_name:
                raise JobError(f"{arg!r}: cannot resolve {host!r}: {exc}", retryable=True) from None
            raise refused from None
        if not addrs or not (by_name or all(rules.allows_ip(a, port) for a in addrs)):
            raise refused from None
    else:
        if not rules.allows_ip(addrs[0], port):
            raise refused
    node_addrs = _node_addrs(settings, resolver)
    for ip in addrs:
        why = rules.guard(ip, port, node_addrs)
        if why is not None:
            where = f"{host!r} ({ip})" if str(ip) != host else repr(host)
            raise BadArgument(f"{arg!r}: {where} is refused: {why}; only a rule naming it exactly "
                              "(--allow-host ADDRESS:PORT, or the address/CIDR) permits it")
    return addrs


@dataclass(frozen=True)
class Target:
    """A checked URL: the addresses its host resolved to, and its port."""

    url: urllib.parse.SplitResult
    port: int
    addrs: list[IPAddress]


def check_url(settings: JobSettings, url: Any, arg: str = "url", *,
              resolver: Resolver = system_resolver) -> Target:
    if not isinstance(url, str) or not url.strip():
        raise BadArgument(f"{arg!r} must be an http:// or https:// URL, got {url!r}")
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadArgument(f"{arg!r} must be an http:// or https:// URL with a host, got {url!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise BadArgument(f"{arg!r}: bad port in {url!r}") from None
    return Target(parts, port, check_host(settings, parts.hostname, arg, port=port, resolver=resolver))


def connect(addrs: list[IPAddress], port: int, timeout: float | None) -> socket.socket:
    """A TCP connection to the first of the checked `addrs` that answers: by
    address, so no further name lookup can redirect it."""
    last: OSError = OSError(f"no address to connect to on port {port}")
    for ip in addrs:
        sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((str(ip), port))
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last


def connect_host(settings: JobSettings, host: str, port: int, timeout: float, arg: str, *,
                 resolver: Resolver = system_resolver) -> socket.socket:
    """check_host + connect: a TCP connection to an allowed host:port."""
    return connect(check_host(settings, host, arg, port=port, resolver=resolver), port, timeout)


# --- HTTP within the rules ---------------------------------------------------------


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


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the addresses checked for this request; urllib still sends
    the URL's name in the Host header."""

    def __init__(self, host: str, *, addrs: list[IPAddress], **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.addrs = addrs

    def connect(self) -> None:
        self.sock = connect(self.addrs, self.port, self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As _PinnedHTTPConnection, then TLS with SNI and certificate hostname
    verification against the URL's name (not the pinned address)."""

    def __init__(self, host: str, *, addrs: list[IPAddress], context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(host, context=context, **kwargs)
        self.addrs = addrs
        self.tls = context

    def connect(self) -> None:
        sock = connect(self.addrs, self.port, self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


# Every request the opener sends carries the addresses checked for it
# (`checked_addrs`): set by http_request for the first, by _CheckedRedirects
# for each redirect hop.
class _PinnedHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: Any) -> Any:
        return self.do_open(partial(_PinnedHTTPConnection, addrs=req.checked_addrs), req)


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, tls: ssl.SSLContext) -> None:
        super().__init__(context=tls)
        self.tls = tls

    def https_open(self, req: Any) -> Any:
        return self.do_open(partial(_PinnedHTTPSConnection, addrs=req.checked_addrs, context=self.tls), req)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow at most 5 redirects, each to an allowed http(s) host, resolved,
    checked and pinned like the first request."""

    max_redirections = 5

    def __init__(self, settings: JobSettings, resolver: Resolver) -> None:
        self.settings = settings
        self.resolver = resolver

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        try:
            target = check_url(self.settings, newurl, "redirect", resolver=self.resolver)
        except JobError as exc:
            fp.close()  # urllib closes the redirect's response only when we return
            if isinstance(exc, BadArgument):
                raise UnsafeInput(f"refused redirect to {newurl}: {exc}") from None
            raise
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            new.checked_addrs = target.addrs
        return new


def http_request(settings: JobSettings, url: str, *, timeout_s: float, max_bytes: int,
                 ctx: JobContext | None = None, method: str = "GET", data: bytes | None = None,
                 headers: dict[str, str] | None = None, arg: str = "url",
                 resolver: Resolver = system_resolver, tls: ssl.SSLContext | None = None) -> Response:
    """One HTTP request to an allowed host; the body is capped at max_bytes.

    HTTP error statuses are returned, not raised. Network failures raise a
    retryable JobError; a body over the cap raises UnsafeInput. `tls` defaults
    to the system's trusted CAs with hostname verification.
    """
    target = check_url(settings, url, arg, resolver=resolver)
    tls = tls if tls is not None else ssl.create_default_context()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _PinnedHTTPHandler(),
                                         _PinnedHTTPSHandler(tls), _CheckedRedirects(settings, resolver))
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"User-Agent": USER_AGENT, **(headers or {})})
    req.checked_addrs = target.addrs  # type: ignore[attr-defined]
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
