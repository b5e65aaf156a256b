"""WorkerConfig: the one frozen, validated configuration of a worker process.

Each field is declared once, with how users set it (`option(...)`: help,
bounds, the default as shown); the `raftq worker` flags (env var
`RAFTQ_<FIELD>`), `raftq dev`'s pass-through and docs/worker-options.md are
generated from that (cli/worker_options.py). The CLI only parses types and
builds this object. Validation happens in `__post_init__` and
raises `ConfigError` (a ValueError) with a message naming the field, so a user
mistake never surfaces as a traceback. Derived defaults (`name`,
`heartbeat_s`, `workdir`, `processes`) are filled in there too, so the object
a Worker receives is always complete.
"""
from __future__ import annotations

import math
import os
import re
import socket
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cluster.tls import ClientTls
from replication.model import MAX_LEASE_MS, MIN_LEASE_MS
from worker.context import JobSettings

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ConfigError(ValueError):
    """A worker setting is invalid; the message says which and why."""


def _default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Option:
    """How one WorkerConfig field is offered to users: the `raftq worker` flag
    (cli/worker_options.py builds the click option, `raftq dev`'s pass-through
    and the docs table from it), its env var RAFTQ_<FIELD>, and its bounds,
    which __post_init__ checks (the CLI only parses types)."""

    help: str
    flag: str = ""  # "" = "--" + the field name with dashes
    lo: float | None = None
    lo_open: bool = False  # lo itself is refused
    hi: float | None = None
    shown: str | None = None  # the default as users read it; None = from the field's default
    metavar: str | None = None
    multiple: bool = False  # a repeatable flag (env var: space-separated)
    path: str = ""  # "dir" or "file" for Path fields
    dev: bool = True  # `raftq dev` passes it through to its workers (False: dev sets it itself)
    cli: bool = True  # False: no flag of its own (the shared --cluster/--token, or API-only)


def option(default: Any, help: str, **kw: Any) -> Any:
    """A WorkerConfig field with its user-facing declaration."""
    return field(default=default, repr=kw.pop("repr", True), metadata={"option": Option(help, **kw)})


GIB = 1 << 30

# The leases a worker asks for lie within what the cluster grants
# (replication.model). The shortest is twice the cluster's shortest, so that
# its default heartbeat period (a third of it) stays above heartbeat_s's floor.
MIN_LEASE_TTL_S = 2 * MIN_LEASE_MS / 1000
MAX_LEASE_TTL_S = MAX_LEASE_MS / 1000


@dataclass(frozen=True)
class WorkerConfig:
    # node client addresses "host:port" (any one suffices); auth token presented in hello
    cluster: tuple[str, ...] = field(metadata={"option": Option("Node address(es) host:port", cli=False)})
    token: str = option("dev", "Client token of the cluster", cli=False)
    # TLS to the nodes (--tls-ca/--tls-cert/--tls-key, shared with every cluster command); None = plain TCP
    tls: ClientTls | None = field(default=None, metadata={"option": Option("TLS to the nodes", cli=False)})
    queues: tuple[str, ...] = option(("default",), "Comma-separated queues to take jobs from")
    # job slots: at most this many jobs run at once (any pool)
    threads: int = option(4, "Jobs run at once", lo=1, hi=1024)
    # process-pool size for pool="process" handlers; None = CPU count
    processes: int | None = option(None, "Process-pool size for CPU-bound job types", lo=1, hi=1024,
                                   shown="CPU count")
    # worker name recorded on leases; None = "<hostname>-<pid>"
    name: str | None = option(None, "Worker name shown on its leases", shown="host-pid", dev=False)
    lease_ttl_s: float = option(30.0, "Seconds a lease lasts without a heartbeat", flag="--lease-ttl",
                                lo=MIN_LEASE_TTL_S, hi=MAX_LEASE_TTL_S)
    heartbeat_s: float | None = option(None, "Seconds between heartbeats", lo=0.05, hi=86400.0,
                                       shown="lease_ttl_s / 3", cli=False)
    poll_wait_s: float = option(5.0, "Lease long-poll duration", lo=0.0, hi=300.0, cli=False)
    grace_s: float = option(30.0, "On SIGTERM, seconds running jobs get to finish", flag="--grace",
                            lo=0.0, hi=86400.0)
    # worker/refusals.py: a wrong setting ends the worker (systemd restarts and reports it); an outage does not
    refused_retry_s: float = option(30.0, "Seconds the worker retries while the nodes refuse its token or settings "
                                    "(UNAUTHORIZED, FORBIDDEN, BAD_REQUEST, TLS); then it exits with code 3",
                                    flag="--refused-retry", lo=0.0, hi=86400.0)
    # per-job scratch dirs live below; None = <tmp>/raftq-worker-<name>
    workdir: Path | None = option(None, "Directory for per-job scratch dirs", path="dir",
                                  shown="<tmp>/raftq-worker-NAME", dev=False)
    imports: tuple[str, ...] = option((), "Module defining @job handlers; repeatable", flag="--import",
                                      metavar="MODULE", multiple=True)
    # observers of the worker's events (worker/hooks.py)
    hooks: tuple[str, ...] = option((), "Worker hooks (a worker.hooks.WorkerHooks instance or class) as "
                                    "module:attribute; repeatable", flag="--hook", metavar="MODULE:ATTR",
                                    multiple=True)
    # What built-in job types may touch (handed to handlers as ctx.settings):
    data_root: Path | None = option(None, "File job types read and write only below this directory; job "
                                    "paths are relative to it; refused if it holds cluster state",
                                    path="dir", shown="the current directory", dev=False)
    allow_hosts: tuple[str, ...] = option(
        ("loopback",), "Hosts http.fetch/web.scrape/health.check may reach: name, *.domain, IP, CIDR, "
        "ADDRESS:PORT, 'loopback' or '*' (link-local, metadata and the cluster's own ports only when named); "
        "repeatable", flag="--allow-host", metavar="RULE", multiple=True)
    smtp_host: str = option("127.0.0.1", "SMTP relay for email.send and alerts")
    smtp_port: int = option(8025, "SMTP relay port", lo=1, hi=65535)
    smtp_starttls: bool = option(False, "Upgrade the SMTP connection with STARTTLS", shown="")
    smtp_ssl: bool = option(False, "Implicit TLS (SMTPS, usually port 465)", shown="")
    smtp_user: str | None = option(None, "SMTP login")
    smtp_password: str | None = option(None, "SMTP password; prefer the env var to the flag", repr=False,
                                       dev=False)  # dev: set the env var; argv is visible to every user
    smtp_from: str = option("raftq@localhost", "From address of sent mail")
    smtp_ca_file: Path | None = option(None, "Extra CA certificates to trust for SMTP TLS", path="file")
    # Bomb and size limits of file jobs (a job argument may only lower them; see
    # docs/job-types.md). Defaults: what a small worker host survives.
    # archive.extract total output
    max_extract_bytes: int = option(GIB, "archive.extract: most bytes one archive may write; jobs may only "
                                    "lower it", lo=1, hi=1 << 50, shown="1 GiB")
    # archive.extract entries (one inode each)
    max_extract_entries: int = option(10_000, "archive.extract: most entries in one archive", lo=1, hi=10_000_000)
    # expanded/archive size; deflate of real data rarely passes 20
    max_extract_ratio: float = option(200.0, "archive.extract: most expanded size / archive size", lo=1, hi=1e6)
    # tar long-name/pax header: names are < 4 KiB (PATH_MAX)
    max_header_bytes: int = option(1 << 16, "archive.extract: largest tar long-name/pax header", lo=1, hi=1 << 30)
    max_output_bytes: int = option(GIB, "file.decompress: most bytes written; jobs may only lower it",
                                   lo=1, hi=1 << 50, shown="1 GiB")
    # Capacity offered when leasing (jobs declaring `resources` must fit what is free):
    cpu: float | None = option(None, "CPUs offered to jobs declaring resources", lo=0, lo_open=True, hi=4096,
                               shown="one per free job slot")
    mem_mb: int | None = option(None, "Memory (MB) offered to jobs declaring resources", lo=1, hi=1 << 30,
                                shown="no limit")
    # Prometheus /metrics of this worker (worker/metrics.py): running jobs, slots, durations, errors.
    # dev: its workers would all want the one port.
    metrics_port: int | None = option(None, "Serve Prometheus /metrics on this port", lo=1, hi=65535,
                                      shown="off", dev=False)
    metrics_host: str = option("127.0.0.1", "Address the metrics port listens on (loopback: this host only)",
                               dev=False)

    def __post_init__(self) -> None:
        set_ = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731 - frozen
        set_("cluster", _addresses(self.cluster))
        if not isinstance(self.token, str) or not self.token:
            raise ConfigError("token must be a non-empty string")
        if self.tls is not None and not isinstance(self.tls, ClientTls):
            raise ConfigError(f"tls must be a cluster.tls.ClientTls, got {self.tls!r}")
        set_("queues", _names("queues", self.queues, min_count=1))
        set_("threads", _int("threads", self.threads, *_bounds("threads")))
        procs = self.processes if self.processes is not None else (os.cpu_count() or 1)
        set_("processes", _int("processes", procs, *_bounds("processes")))
        name = self.name if self.name is not None else _default_name()
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ConfigError(f"name must be a non-empty string of at most 200 characters, got {name!r}")
        set_("name", name)
        ttl = _num("lease_ttl_s", self.lease_ttl_s, *_bounds("lease_ttl_s"))
        set_("lease_ttl_s", ttl)
        hb = self.heartbeat_s if self.heartbeat_s is not None else ttl / 3
        hb = _num("heartbeat_s", hb, *_bounds("heartbeat_s"))
        if hb >= ttl:
            raise ConfigError(
                f"heartbeat_s ({hb:g}) must be shorter than lease_ttl_s ({ttl:g}); ttl/3 is a good choice"
            )
        set_("heartbeat_s", hb)
        set_("poll_wait_s", _num("poll_wait_s", self.poll_wait_s, *_bounds("poll_wait_s")))
        set_("grace_s", _num("grace_s", self.grace_s, *_bounds("grace_s")))
        set_("refused_retry_s", _num("refused_retry_s", self.refused_retry_s, *_bounds("refused_retry_s")))
        workdir = self.workdir if self.workdir is not None else (
            Path(tempfile.gettempdir()) / f"raftq-worker-{_safe(name)}"
        )
        if not isinstance(workdir, (str, os.PathLike)):
            raise ConfigError(f"workdir must be a path, got {workdir!r}")
        set_("workdir", Path(workdir))
        imports = _names("imports", self.imports, min_count=0)
        for mod in imports:
            if not _MODULE_RE.match(mod):
                raise ConfigError(f"imports: {mod!r} is not a dotted module name like 'myapp.jobs'")
        set_("imports", imports)
        hooks = _names("hooks", self.hooks, min_count=0)
        for ref in hooks:
            module, sep, attr = ref.partition(":")
            if not sep or not _MODULE_RE.match(module) or not attr.isidentifier():
                raise ConfigError(f"hooks: {ref!r} is not module:attribute like 'myapp.metrics:WorkerMetrics'")
        set_("hooks", hooks)
        root = self.data_root if self.data_root is not None else Path.cwd()
        if not isinstance(root, (str, os.PathLike)):
            raise ConfigError(f"data_root must be a directory path, got {root!r}")
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"data_root {str(root)!r} is not an existing directory")
        check_data_root(root)
        set_("data_root", root)
        for limit in ("max_extract_bytes", "max_extract_entries", "max_header_bytes", "max_output_bytes"):
            set_(limit, _int(limit, getattr(self, limit), *_bounds(limit)))
        ratio = self.max_extract_ratio
        lo, hi = _bounds("max_extract_ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not lo <= ratio <= hi:
            raise ConfigError(f"max_extract_ratio must be a number between {lo:g} and {hi:.0f}, got {ratio!r}")
        set_("max_extract_ratio", float(ratio))
        from worker.jobs.netguard import HostRuleError, parse_allow_hosts  # late: jobs import config-free modules

        try:
            rules = _split("allow_hosts", self.allow_hosts)
            parse_allow_hosts(rules)
        except HostRuleError as exc:
            raise ConfigError(f"allow_hosts: {exc}") from None
        set_("allow_hosts", tuple(rules))
        if not isinstance(self.smtp_host, str) or not self.smtp_host.strip():
            raise ConfigError(f"smtp_host must be a host name or address, got {self.smtp_host!r}")
        set_("smtp_port", _int("smtp_port", self.smtp_port, *_bounds("smtp_port")))
        for flag in ("smtp_starttls", "smtp_ssl"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.smtp_starttls and self.smtp_ssl:
            raise ConfigError("smtp_starttls and smtp_ssl exclude each other (STARTTLS upgrades a plain connection)")
        if (self.smtp_user is None) != (self.smtp_password is None):
            raise ConfigError("smtp_user and smtp_password go together: give both or neither")
        if not isinstance(self.smtp_from, str) or "@" not in self.smtp_from:
            raise ConfigError(f"smtp_from must be an e-mail address, got {self.smtp_from!r}")
        if self.cpu is not None:
            lo, hi = _bounds("cpu")  # lo_open: a worker offers some CPU or leaves --cpu unset
            if isinstance(self.cpu, bool) or not isinstance(self.cpu, (int, float)) or not lo < self.cpu <= hi:
                raise ConfigError(f"cpu must be a number of CPUs between {lo:g} and {hi:g}, got {self.cpu!r}")
            set_("cpu", float(self.cpu))
        if self.mem_mb is not None:
            set_("mem_mb", _int("mem_mb", self.mem_mb, *_bounds("mem_mb")))
        if self.metrics_port is not None:
            set_("metrics_port", _int("metrics_port", self.metrics_port, *_bounds("metrics_port")))
        if not isinstance(self.metrics_host, str) or not self.metrics_host.strip():
            raise ConfigError(f"metrics_host must be a host name or address, got {self.metrics_host!r}")
        if self.smtp_ca_file is not None:
            ca = Path(self.smtp_ca_file)
            if not ca.is_file():
                raise ConfigError(f"smtp_ca_file {str(ca)!r} is not a readable file")
            set_("smtp_ca_file", ca)

    @property
    def job_settings(self) -> JobSettings:
        """The handler-facing part of this config (picklable into process jobs)."""
        assert self.data_root is not None
        return JobSettings(
            data_root=self.data_root, allow_hosts=self.allow_hosts, smtp_host=self.smtp_host,
            smtp_port=self.smtp_port, smtp_starttls=self.smtp_starttls, smtp_ssl=self.smtp_ssl,
            smtp_user=self.smtp_user, smtp_password=self.smtp_password, smtp_from=self.smtp_from,
            smtp_ca_file=str(self.smtp_ca_file) if self.smtp_ca_file else None,
            node_addrs=self.cluster,  # jobs may not reach the cluster's own ports
            max_extract_bytes=self.max_extract_bytes, max_extract_entries=self.max_extract_entries,
            max_extract_ratio=self.max_extract_ratio, max_header_bytes=self.max_header_bytes,
            max_output_bytes=self.max_output_bytes,
        )

    @property
    def lease_ttl_ms(self) -> int:
        return int(round(self.lease_ttl_s * 1000))


# Files and directories that hold a cluster's state: a data root containing one
# would let any job read the cluster secret or write next to the Raft journal.
CLUSTER_FILES = frozenset({"cluster.toml", "raft.journal", "raft.meta", "raft.dump"})
_NODE_DIR_RE = re.compile(r"^node-\d+$")
SCAN_DEPTH = 3  # <root>/.raftq/dev/cluster.toml is depth 2; deeper trees are user data
SCAN_ENTRIES = 20_000  # directory entries looked at, so a huge data root starts in well under a second


def _holds_state(d: Path) -> str | None:
    """A cluster file directly in `d` (a cluster or node data dir holds one): a few stats, no listing."""
    return next((str(d / n) for n in sorted(CLUSTER_FILES) if (d / n).is_file()), None)


def check_data_root(root: Path) -> None:
    """ConfigError if `root` holds cluster state (a cluster file, or a node-N
    dir with one, at most SCAN_DEPTH levels and SCAN_ENTRIES directory entries
    down) or lies inside a directory holding a cluster file."""
    hint = "give workers a directory of their own (--data-root)"
    for parent in root.parents:
        found = _holds_state(parent)
        if found:
            raise ConfigError(f"data_root {str(root)!r} is inside a cluster data dir ({found}); {hint}")
    seen = 0
    level = [root]
    for _depth in range(SCAN_DEPTH + 1):
        below: list[Path] = []
        for d in level:
            try:
                with os.scandir(d) as it:
                    for entry in it:
                        seen += 1
                        if seen > SCAN_ENTRIES:
                            return
                        is_dir = entry.is_dir(follow_symlinks=False)
                        found = (entry.path if entry.name in CLUSTER_FILES and not is_dir else
                                 _holds_state(Path(entry.path)) if is_dir and _NODE_DIR_RE.match(entry.name) else None)
                        if found:
                            raise ConfigError(f"data_root {str(root)!r} holds cluster state ({found}); {hint}")
                        if is_dir:
                            below.append(Path(entry.path))
            except OSError:
                continue  # unreadable: the worker cannot serve it either
        level = below


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100]


def _split(field: str, value: Any) -> list[str]:
    """Accept a comma-separated string or a sequence of strings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{field} must be strings, got {list(value)!r}")
        return [v.strip() for v in value]
    raise ConfigError(f"{field} must be a list of strings or a comma-separated string, got {value!r}")


def _names(field: str, value: Any, *, min_count: int) -> tuple[str, ...]:
    items = _split(field, value)
    if len(items) < min_count:
        raise ConfigError(f"{field} must name at least {min_count}, got none")
    for item in items:
        if not item or len(item) > 200:
            raise ConfigError(f"{field}: each entry must be 1-200 characters, got {item!r}")
    dups = sorted({i for i in items if items.count(i) > 1})
    if dups:
        raise ConfigError(f"{field}: duplicate entries {', '.join(dups)}")
    return tuple(items)


def _addresses(value: Any) -> tuple[str, ...]:
    items = _split("cluster", value)
    if not items:
        raise ConfigError("cluster must list at least one node address host:port")
    for addr in items:
        host, sep, port = addr.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"cluster: {addr!r} is not a host:port address (port 1-65535)")
    return tuple(items)


OPTIONS: dict[str, Option] = {f.name: f.metadata["option"] for f in fields(WorkerConfig)}


def _bounds(name: str) -> tuple[Any, Any]:
    spec = OPTIONS[name]
    return spec.lo, spec.hi


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{field} must be an integer between {lo} and {hi}, got {value!r}")
    return value


def _num(field: str, value: Any, lo: float, hi: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise ConfigError(f"{field} must be a number of seconds between {lo:g} and {hi:g}, got {value!r}")
    return float(value)
