"""The cluster configuration file: one TOML file describes the whole cluster.

Every node of a cluster loads the same file and picks its own entry by id, so
the file is the single source of truth for addresses, the shared secret and the
client credentials (contracts.md §5).

Invariants of a loaded `ClusterConfig` (checked by `load_config` and by the
dataclass itself, so a hand-built config is held to the same rules):
- at least one node; node ids are unique positive integers;
- every address is "host:port" with port 1..65535, and no address (client,
  raft or http, across all nodes) is used twice;
- `secret` has at least 16 characters: the Raft password is derived from it
  (`raft_password`), and pysyncobj unpickles what arrives on the Raft port, so
  that port must never run without a strong password;
- at least one credential: the legacy `token` (every role) and/or
  `[[credentials]]` entries (name, token, roles, optional queues); names and
  tokens unique (`_validate_credentials`); a config read from a file also
  holds every token to the strength rule (`check_token_strength`);
- `data_dir` is absolute (a relative one in the file is resolved against the
  file's own directory, not the process's working directory);
- size and admission limits (docs/contracts.md, "Limits") are positive and
  nest: max_args_bytes and max_result_bytes + COMMAND_SLACK_BYTES <=
  max_entry_bytes, and max_entry_bytes + COMMAND_SLACK_BYTES <= max_frame_bytes,
  so a legal command always fits one Raft entry and one request frame;
- TLS (cluster/tls.py): `tls_cert` and `tls_key` come together and turn TLS
  on for the client and HTTP ports; `tls_client_ca` (mutual TLS on the client
  port) and `http_mtls` (on the HTTP port too) need them; every file is
  readable and the key matches the certificate (checked by building the
  contexts, so a node never starts with TLS it cannot serve). Relative paths
  are taken from the file's own directory, like data_dir;
- `http_token`, when set, is at least 16 printable characters without spaces
  (it is compared with the `Authorization: Bearer` header of every HTTP
  request).
- `[alerting]` (`AlertingConfig`, docs/alerting.md): `smtp_port` 1..65535,
  `from` one address, and positive `interval_s`, `timeout_s`, `retry_base_s`,
  `retry_max_s`; a file without the table gets the defaults and renders
  without it.

Every problem raises `ConfigError` with a one-line message naming the key, so
the CLI can print it as is.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets as _secrets
import ssl
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster import tls
from replication.model import MAX_LEASE_MS, MIN_LEASE_MS
from cluster.ops import ADMIN, PRODUCER, ROLES, WORKER

DURABILITIES = ("fsync", "none")
MIN_SECRET_CHARS = 16
# Room a command needs around its args or result (ids, type, queue, up to
# MAX_DEPS dependency ids of 200 characters: ~200 KiB), and a request frame
# around its command.
COMMAND_SLACK_BYTES = 256 * 1024
CONFIG_FILENAME = "cluster.toml"

# Domain separation: the Raft password must differ from the secret itself, so
# that the secret never travels or lands anywhere pysyncobj keeps its password.
_RAFT_PASSWORD_LABEL = b"raftq raft password v1"


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message is one line."""


@dataclass(frozen=True)
class NodeSpec:
    id: int
    client: str
    raft: str
    http: str | None = None

    def addresses(self) -> list[tuple[str, str]]:
        """(key name, address) for every address this node listens on."""
        out = [(f"nodes[id={self.id}].client", self.client), (f"nodes[id={self.id}].raft", self.raft)]
        if self.http is not None:
            out.append((f"nodes[id={self.id}].http", self.http))
        return out


@dataclass(frozen=True)
class Credential:
    """A token and what it may do: its roles (cluster/roles.py), and the queues
    it is confined to (None: every queue)."""

    name: str
    token: str
    roles: tuple[str, ...]
    queues: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AlertingConfig:
    """The `[alerting]` table: how the leader delivers alert notifications
    (cluster/alerting.py, docs/alerting.md)."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    sender: str = "raftq@localhost"   # `from` in the file
    interval_s: float = 1.0           # how often the leader evaluates the rules
    timeout_s: float = 10.0           # one webhook POST or SMTP session
    retry_base_s: float = 1.0         # first retry delay; doubles per failure
    retry_max_s: float = 60.0         # ... up to this

    def __post_init__(self) -> None:
        if not isinstance(self.smtp_host, str) or not self.smtp_host:
            raise ConfigError(f"alerting.smtp_host: must be a host name, got {self.smtp_host!r}")
        if not isinstance(self.smtp_port, int) or isinstance(self.smtp_port, bool) or not 1 <= self.smtp_port <= 65535:
            raise ConfigError(f"alerting.smtp_port: must be a port 1..65535, got {self.smtp_port!r}")
        if not isinstance(self.sender, str) or "@" not in self.sender or any(c.isspace() for c in self.sender):
            raise ConfigError(f"alerting.from: must be an email address, got {self.sender!r}")
        for key in ("interval_s", "timeout_s", "retry_base_s", "retry_max_s"):
            _positive_number(getattr(self, key), f"alerting.{key}")


_ALERTING_KEYS = {"smtp_host": "smtp_host", "smtp_port": "smtp_port", "from": "sender", "interval_s": "interval_s",
                  "timeout_s": "timeout_s", "retry_base_s": "retry_base_s", "retry_max_s": "retry_max_s"}


def _parse_alerting(raw: Any) -> AlertingConfig:
    if not isinstance(raw, dict):
        raise ConfigError("alerting: must be a table ([alerting])")
    unknown = sorted(set(raw) - set(_ALERTING_KEYS))
    if unknown:
        raise ConfigError(f"alerting.{unknown[0]}: unknown key (known: {', '.join(sorted(_ALERTING_KEYS))})")
    return AlertingConfig(**{_ALERTING_KEYS[k]: v for k, v in raw.items()})


def _alerting_lines(alerting: AlertingConfig) -> list[str]:
    if alerting == AlertingConfig():
        return []
    lines = ["", "[alerting]"]
    for key, attr in _ALERTING_KEYS.items():
        value = getattr(alerting, attr)
        lines.append(f"{key} = {_toml_str(value) if isinstance(value, str) else _toml_num(value)}")
    return lines


@dataclass(frozen=True)
class ClusterConfig:
    secret: str
    token: str | None   # the legacy single token: a credential with every role (None: none)
    data_dir: Path
    durability: str
    credentials: tuple[Credential, ...] = ()
    max_live_jobs: int = 1_000_000
    retention_s: float = 86400
    lease_ttl_s: float = 30
    max_frame_bytes: int = 8 * 1024 * 1024
    # -- size and admission limits (leader-side; docs/contracts.md "Limits") --
    max_args_bytes: int = 1024 * 1024            # encoded args of one job (TOO_LARGE)
    max_result_bytes: int = 1024 * 1024          # encoded result of one complete (TOO_LARGE)
    max_entry_bytes: int = 4 * 1024 * 1024       # one Raft entry: one command, or a batch (TOO_LARGE)
    max_held_jobs: int = 2_000_000               # jobs held in any state until purged (OVERLOADED)
    max_held_bytes: int = 1024 * 1024 * 1024     # their args + results + errors (OVERLOADED)
    min_schedule_interval_s: float = 1.0         # shortest every_ms a schedule may have (BAD_REQUEST)
    # -- client-port connection limits and loop fairness (cluster/server.py
    # ClientConnection; defaults and their reasons in docs/contracts.md §5) --
    hello_timeout_s: float = 5.0
    idle_timeout_s: float = 300.0
    max_connections: int = 10_000
    max_connections_per_source: int = 4096
    fd_reserve: int = 64
    conn_write_buffer_bytes: int = 1024 * 1024
    max_heavy_reads: int = 2
    max_heavy_reads_per_connection: int = 1
    max_pollers: int = 10_000
    max_pollers_per_connection: int = 512  # protocol.MAX_POLLS_PER_CONNECTION: the AsyncClient's own bound
    # -- TLS and the HTTP port's credentials (docs/security.md) --
    tls_cert: Path | None = None        # PEM certificate (chain) every node presents; with tls_key: TLS on
    tls_key: Path | None = None         # its unencrypted PEM private key
    tls_client_ca: Path | None = None   # clients must present a certificate this CA signed (mutual TLS)
    http_mtls: bool = False             # ... on the HTTP port too (off: probes need no client certificate)
    http_token: str | None = field(default=None, repr=False)  # /health and /metrics need "Bearer <it>"
    alerting: AlertingConfig = field(default_factory=AlertingConfig)
    nodes: tuple[NodeSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _validate(self)

    def node(self, node_id: int) -> NodeSpec:
        for spec in self.nodes:
            if spec.id == node_id:
                return spec
        known = ", ".join(str(n.id) for n in self.nodes)
        raise ConfigError(f"node id {node_id} is not in the config (known ids: {known})")

    @property
    def raft_password(self) -> str:
        return hmac.new(self.secret.encode(), _RAFT_PASSWORD_LABEL, hashlib.sha256).hexdigest()

    def node_data_dir(self, node_id: int) -> Path:
        self.node(node_id)  # unknown ids are an error, not a silently new directory
        return self.data_dir / f"node-{node_id}"

    def client_addresses(self) -> list[str]:
        return [n.client for n in self.nodes]

    def client_port_tls(self) -> ssl.SSLContext | None:
        """The client port's server context; None: plain TCP."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        try:
            return tls.server_context(self.tls_cert, self.tls_key, self.tls_client_ca)
        except tls.TlsFileError as exc:
            raise ConfigError(str(exc)) from None

    def http_port_tls(self) -> ssl.SSLContext | None:
        """The HTTP port's server context (client certificates only with http_mtls); None: plain HTTP."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        try:
            return tls.server_context(self.tls_cert, self.tls_key, self.tls_client_ca if self.http_mtls else None)
        except tls.TlsFileError as exc:
            raise ConfigError(str(exc)) from None
    def all_credentials(self) -> tuple[Credential, ...]:
        """The [[credentials]], and the legacy `token` as one with every role."""
        legacy = () if self.token is None else (Credential(name=LEGACY_TOKEN_NAME, token=self.token, roles=ROLES),)
        return legacy + self.credentials


def parse_address(value: Any, key: str) -> tuple[str, int]:
    """Split "host:port"; ConfigError naming `key` if it is not one."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected an address \"host:port\", got {value!r}")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{key}: expected an address \"host:port\", got {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: port must be 1..65535, got {port} in {value!r}")
    return host, port


def _validate(cfg: ClusterConfig) -> None:
    if not isinstance(cfg.secret, str) or not cfg.secret:
        raise ConfigError("secret: must be a non-empty string")
    if len(cfg.secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"secret: must be at least {MIN_SECRET_CHARS} characters (the Raft password is derived from it)")
    _validate_credentials(cfg)
    if cfg.durability not in DURABILITIES:
        raise ConfigError(f"durability: must be \"fsync\" or \"none\", got {cfg.durability!r}")
    if not isinstance(cfg.data_dir, Path) or not cfg.data_dir.is_absolute():
        raise ConfigError(f"data_dir: must be an absolute path, got {str(cfg.data_dir)!r}")
    _positive_int(cfg.max_live_jobs, "max_live_jobs")
    _positive_int(cfg.max_frame_bytes, "max_frame_bytes")
    _positive_number(cfg.retention_s, "retention_s")
    _positive_number(cfg.lease_ttl_s, "lease_ttl_s")
    if not MIN_LEASE_MS <= cfg.lease_ttl_s * 1000 <= MAX_LEASE_MS:  # the default lease a worker gets
        raise ConfigError(f"lease_ttl_s: must be {MIN_LEASE_MS / 1000:g}..{MAX_LEASE_MS / 1000:g} seconds, "
                          f"got {cfg.lease_ttl_s!r}")
    _validate_limits(cfg)
    _validate_connection_limits(cfg)
    _validate_tls(cfg)
    if not cfg.nodes:
        raise ConfigError("nodes: at least one [[nodes]] entry is required")
    seen_ids: set[int] = set()
    seen_addrs: dict[tuple[str, int], str] = {}
    for spec in cfg.nodes:
        if not isinstance(spec.id, int) or isinstance(spec.id, bool) or spec.id < 1:
            raise ConfigError(f"nodes.id: must be a positive integer, got {spec.id!r}")
        if spec.id in seen_ids:
            raise ConfigError(f"nodes.id: duplicate node id {spec.id}")
        seen_ids.add(spec.id)
        for key, addr in spec.addresses():
            parsed = parse_address(addr, key)
            if parsed in seen_addrs:
                raise ConfigError(f"{key}: address {addr!r} is already used by {seen_addrs[parsed]}")
            seen_addrs[parsed] = key


def _validate_limits(cfg: ClusterConfig) -> None:
    for key in ("max_args_bytes", "max_result_bytes", "max_entry_bytes", "max_held_jobs", "max_held_bytes"):
        _positive_int(getattr(cfg, key), key)
    _positive_number(cfg.min_schedule_interval_s, "min_schedule_interval_s")
    for key in ("max_args_bytes", "max_result_bytes"):
        if getattr(cfg, key) + COMMAND_SLACK_BYTES > cfg.max_entry_bytes:
            raise ConfigError(f"{key}: {getattr(cfg, key)} leaves no room in max_entry_bytes = {cfg.max_entry_bytes} "
                              f"(needs {key} + {COMMAND_SLACK_BYTES} <= max_entry_bytes)")
    if cfg.max_entry_bytes + COMMAND_SLACK_BYTES > cfg.max_frame_bytes:
        raise ConfigError(f"max_frame_bytes: {cfg.max_frame_bytes} is too small for max_entry_bytes = "
                          f"{cfg.max_entry_bytes}: a legal submit_many would not fit one request frame "
                          f"(needs max_entry_bytes + {COMMAND_SLACK_BYTES} <= max_frame_bytes)")
# The token travels in `hello`, which must fit the small pre-hello frame
# (protocol.HELLO_MAX_FRAME_BYTES, 4 KiB).
MAX_TOKEN_CHARS = 1024
CONNECTION_KEYS = ("hello_timeout_s", "idle_timeout_s", "max_connections", "max_connections_per_source",
                   "fd_reserve", "conn_write_buffer_bytes", "max_heavy_reads", "max_heavy_reads_per_connection",
                   "max_pollers", "max_pollers_per_connection")


def _validate_connection_limits(cfg: ClusterConfig) -> None:
    for key in CONNECTION_KEYS:
        if key.endswith("_s"):
            _positive_number(getattr(cfg, key), key)
        else:
            _positive_int(getattr(cfg, key), key)
    if cfg.conn_write_buffer_bytes < 4096:
        raise ConfigError(f"conn_write_buffer_bytes: must be at least 4096, got {cfg.conn_write_buffer_bytes}")


MIN_HTTP_TOKEN_CHARS = 16
TLS_PATH_KEYS = ("tls_cert", "tls_key", "tls_client_ca")


def _validate_tls(cfg: ClusterConfig) -> None:
    for key in TLS_PATH_KEYS:
        value = getattr(cfg, key)
        if value is not None and (not isinstance(value, Path) or not value.is_absolute()):
            raise ConfigError(f"{key}: must be an absolute path, got {str(value)!r}")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("tls_cert and tls_key go together: give both (TLS on) or neither (plain TCP)")
    if cfg.tls_client_ca is not None and cfg.tls_cert is None:
        raise ConfigError("tls_client_ca: mutual TLS needs TLS: set tls_cert and tls_key too")
    if not isinstance(cfg.http_mtls, bool):
        raise ConfigError(f"http_mtls: must be true or false, got {cfg.http_mtls!r}")
    if cfg.http_mtls and cfg.tls_client_ca is None:
        raise ConfigError("http_mtls: client certificates on the HTTP port need tls_client_ca (and TLS)")
    token = cfg.http_token
    if token is not None and (not isinstance(token, str) or len(token) < MIN_HTTP_TOKEN_CHARS
                              or len(token) > MAX_TOKEN_CHARS or not token.isprintable() or " " in token):
        raise ConfigError(f"http_token: must be {MIN_HTTP_TOKEN_CHARS}..{MAX_TOKEN_CHARS} printable characters "
                          "without spaces")
    cfg.client_port_tls()  # reads every file: a missing one or a key that does not match is refused here
    cfg.http_port_tls()
# ---- credentials (who may connect, with which roles; cluster/roles.py) ----

LEGACY_TOKEN_NAME = "token"  # how the single top-level token is named in messages
MIN_TOKEN_BITS = 128
# A long run of few characters ("aaaa...", "abababab...") is no secret however
# its length scores; a random token of 20+ characters has far more (32 hex
# digits fall under 8 distinct about once in a million).
MIN_TOKEN_DISTINCT_CHARS = 8
TOKEN_RECIPE = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CREDENTIAL_KEYS = {"name", "token", "roles", "queues"}
# The alphabet an attacker must search per character, by the classes a token uses.
_CHAR_CLASSES = ((frozenset(string.ascii_lowercase), 26), (frozenset(string.ascii_uppercase), 26),
                 (frozenset(string.digits), 10))
_OTHER_CLASS_SIZE = 33  # ASCII punctuation and space; anything else is counted as one of these


def _validate_credentials(cfg: ClusterConfig) -> None:
    """Shapes, unique names and tokens, and at least one credential."""
    if cfg.token is not None:
        _check_token(cfg.token, "token")
    if not isinstance(cfg.credentials, tuple):
        raise ConfigError("credentials: must be a tuple of Credential")
    if cfg.token is None and not cfg.credentials:
        raise ConfigError(f"credentials: none configured; add a [[credentials]] entry (or the legacy "
                          f"all-roles 'token'), token from: {TOKEN_RECIPE}")
    names: dict[str, int] = {}
    tokens: dict[str, str] = {} if cfg.token is None else {cfg.token: "token"}
    for i, cred in enumerate(cfg.credentials):
        key = f"credentials[{i}]"
        if not isinstance(cred, Credential):
            raise ConfigError(f"{key}: must be a Credential")
        if not isinstance(cred.name, str) or not _NAME_RE.fullmatch(cred.name):
            raise ConfigError(f"{key}.name: 1-64 letters, digits, '.', '_' or '-' (starting with a letter or "
                              f"digit), got {cred.name!r}")
        if cred.name in names or cred.name == LEGACY_TOKEN_NAME:
            raise ConfigError(f"{key}.name: {cred.name!r} is already used"
                              + (f" by credentials[{names[cred.name]}]" if cred.name in names else ""))
        names[cred.name] = i
        _check_token(cred.token, f"{key}.token")
        if cred.token in tokens:
            raise ConfigError(f"{key}.token: the same token as {tokens[cred.token]}; each credential needs its own")
        tokens[cred.token] = key
        if (not isinstance(cred.roles, tuple) or not cred.roles
                or not all(isinstance(r, str) and r in ROLES for r in cred.roles)
                or len(set(cred.roles)) != len(cred.roles)):
            raise ConfigError(f"{key}.roles: a non-empty list of distinct roles out of {', '.join(ROLES)}, "
                              f"got {list(cred.roles) if isinstance(cred.roles, tuple) else cred.roles!r}")
        if cred.queues is not None and (
                not isinstance(cred.queues, tuple) or not cred.queues
                or not all(isinstance(q, str) and q for q in cred.queues)
                or len(set(cred.queues)) != len(cred.queues)):
            raise ConfigError(f"{key}.queues: a non-empty list of distinct queue names (leave it out for every "
                              f"queue), got {list(cred.queues) if isinstance(cred.queues, tuple) else cred.queues!r}")


def _check_token(token: Any, key: str) -> None:
    if not isinstance(token, str) or not token:
        raise ConfigError(f"{key}: must be a non-empty string")
    if len(token) > MAX_TOKEN_CHARS:
        raise ConfigError(f"{key}: at most {MAX_TOKEN_CHARS} characters (it must fit the pre-hello frame)")


def token_bits(token: str) -> float:
    """Estimated random bits: length x log2(the alphabet of the character
    classes it uses: lowercase 26, uppercase 26, digits 10, anything else 33).
    An upper bound for a human-chosen token, a fair count for a random one."""
    chars = set(token)
    alphabet = sum(size for members, size in _CHAR_CLASSES if chars & members)
    if any(not any(c in members for members, _ in _CHAR_CLASSES) for c in chars):
        alphabet += _OTHER_CLASS_SIZE
    return len(token) * math.log2(alphabet) if alphabet > 1 else 0.0


def check_token_strength(token: str, key: str) -> None:
    """ConfigError unless `token` scores MIN_TOKEN_BITS and has
    MIN_TOKEN_DISTINCT_CHARS distinct characters."""
    bits = token_bits(token)
    distinct = len(set(token))
    if bits < MIN_TOKEN_BITS or distinct < MIN_TOKEN_DISTINCT_CHARS:
        why = (f"{distinct} distinct characters, need {MIN_TOKEN_DISTINCT_CHARS}" if bits >= MIN_TOKEN_BITS
               else f"about {bits:.0f} random bits, need {MIN_TOKEN_BITS}")
        raise ConfigError(f"{key}: too weak ({why}); generate one with: {TOKEN_RECIPE}")


def _parse_credentials(raw: Any) -> tuple[Credential, ...]:
    """[[credentials]] tables as Credentials; shapes the dataclass cannot see
    (a string where a list belongs) are named here."""
    if not isinstance(raw, list):
        raise ConfigError("credentials: must be an array of tables ([[credentials]])")
    out = []
    for i, entry in enumerate(raw):
        key = f"credentials[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}: must be a table ([[credentials]])")
        extra = sorted(set(entry) - _CREDENTIAL_KEYS)
        if extra:
            raise ConfigError(f"{key}.{extra[0]}: unknown key (known: {', '.join(sorted(_CREDENTIAL_KEYS))})")
        for field_name in ("name", "token", "roles"):
            if field_name not in entry:
                raise ConfigError(f"{key}.{field_name}: required key is missing")
        for field_name in ("roles", "queues"):
            if field_name in entry and not isinstance(entry[field_name], list):
                raise ConfigError(f"{key}.{field_name}: must be a list of strings, got {entry[field_name]!r}")
        queues = entry.get("queues")
        out.append(Credential(name=entry["name"], token=entry["token"], roles=tuple(entry["roles"]),
                              queues=None if queues is None else tuple(queues)))
    return tuple(out)


def _credential_lines(cfg: ClusterConfig) -> list[str]:
    lines: list[str] = []
    for cred in cfg.credentials:
        lines += ["", "[[credentials]]", f"name = {_toml_str(cred.name)}", f"token = {_toml_str(cred.token)}",
                  f"roles = [{', '.join(_toml_str(r) for r in cred.roles)}]"]
        if cred.queues is not None:
            lines.append(f"queues = [{', '.join(_toml_str(q) for q in cred.queues)}]")
    return lines


def _positive_int(value: Any, key: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{key}: must be a positive integer, got {value!r}")


def _positive_number(value: Any, key: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"{key}: must be a positive number, got {value!r}")


_TOP_KEYS = {
    "secret", "token", "data_dir", "durability", "max_live_jobs",
    "retention_s", "lease_ttl_s", "max_frame_bytes", "nodes",
    "max_args_bytes", "max_result_bytes", "max_entry_bytes", "max_held_jobs", "max_held_bytes",
    "min_schedule_interval_s", *CONNECTION_KEYS, *TLS_PATH_KEYS, "http_mtls", "http_token",
    "min_schedule_interval_s", "credentials", *CONNECTION_KEYS, "alerting",
}
_NODE_KEYS = {"id", "client", "raft", "http"}


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster TOML file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(data, base_dir=path.resolve().parent)


def config_from_dict(data: dict[str, Any], base_dir: Path) -> ClusterConfig:
    """Build a config from parsed TOML; relative data_dir is taken from base_dir."""
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
    for key in ("secret", "data_dir", "durability"):
        if key not in data:
            raise ConfigError(f"{key}: required key is missing")
    for key in ("secret", "token", "data_dir", "durability"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{key}: must be a string, got {data[key]!r}")
    data_dir = Path(data["data_dir"]).expanduser()
    if not data_dir.is_absolute():
        data_dir = (base_dir / data_dir).resolve()

    raw_nodes = data.get("nodes", [])
    if not isinstance(raw_nodes, list):
        raise ConfigError("nodes: must be an array of tables ([[nodes]])")
    nodes = []
    for i, entry in enumerate(raw_nodes):
        if not isinstance(entry, dict):
            raise ConfigError(f"nodes[{i}]: must be a table ([[nodes]])")
        extra = sorted(set(entry) - _NODE_KEYS)
        if extra:
            raise ConfigError(f"nodes[{i}].{extra[0]}: unknown key (known: client, http, id, raft)")
        for key in ("id", "client", "raft"):
            if key not in entry:
                raise ConfigError(f"nodes[{i}].{key}: required key is missing")
        node_id = entry["id"]
        if not isinstance(node_id, int) or isinstance(node_id, bool) or node_id < 1:
            raise ConfigError(f"nodes[{i}].id: must be a positive integer, got {node_id!r}")
        for key in ("client", "raft", "http"):
            if key in entry:
                parse_address(entry[key], f"nodes[{i}].{key}")
        nodes.append(NodeSpec(id=node_id, client=entry["client"], raft=entry["raft"], http=entry.get("http")))

    kwargs: dict[str, Any] = {}
    for key in TLS_PATH_KEYS:
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise ConfigError(f"{key}: must be a file path, got {data[key]!r}")
            kwargs[key] = (base_dir / Path(data[key]).expanduser()).resolve()
    for key in ("http_mtls", "http_token"):
        if key in data:
            kwargs[key] = data[key]
    for key in ("max_live_jobs", "retention_s", "lease_ttl_s", "max_frame_bytes",
                "max_args_bytes", "max_result_bytes", "max_entry_bytes", "max_held_jobs", "max_held_bytes",
                "min_schedule_interval_s", *CONNECTION_KEYS):
        if key in data:
            kwargs[key] = data[key]
    cfg = ClusterConfig(
        secret=data["secret"],
        token=data.get("token"),
        data_dir=data_dir,
        durability=data["durability"],
        credentials=_parse_credentials(data.get("credentials", [])),
        alerting=_parse_alerting(data.get("alerting", {})),
        nodes=tuple(nodes),
        **kwargs,
    )
    # Here, not in the dataclass: the rule guards what operators write, and
    # every node loads its file through this function; in-process test
    # configs keep short tokens.
    if cfg.token is not None:
        check_token_strength(cfg.token, "token")
    for i, cred in enumerate(cfg.credentials):
        check_token_strength(cred.token, f"credentials[{i}].token")
    return cfg


def _toml_str(value: str) -> str:
    """A TOML basic string: escape the quote, backslash and control characters.

    Not json.dumps: JSON leaves U+007F bare (TOML forbids it) and, with
    ensure_ascii, writes surrogate pairs (TOML rejects surrogate escapes).
    """
    out = []
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_num(value: int | float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def render_config(cfg: ClusterConfig) -> str:
    """The config as TOML text; `load_config` of it gives back an equal config."""
    lines = [
        "# raftq cluster configuration (every node loads this same file)",
        f"secret = {_toml_str(cfg.secret)}",
        *([f"token = {_toml_str(cfg.token)}  # legacy: every role"] if cfg.token is not None else []),
        f"data_dir = {_toml_str(str(cfg.data_dir))}",
        f"durability = {_toml_str(cfg.durability)}",
        f"max_live_jobs = {_toml_num(cfg.max_live_jobs)}",
        f"retention_s = {_toml_num(cfg.retention_s)}",
        f"lease_ttl_s = {_toml_num(cfg.lease_ttl_s)}",
        f"max_frame_bytes = {_toml_num(cfg.max_frame_bytes)}",
        f"max_args_bytes = {_toml_num(cfg.max_args_bytes)}",
        f"max_result_bytes = {_toml_num(cfg.max_result_bytes)}",
        f"max_entry_bytes = {_toml_num(cfg.max_entry_bytes)}",
        f"max_held_jobs = {_toml_num(cfg.max_held_jobs)}",
        f"max_held_bytes = {_toml_num(cfg.max_held_bytes)}",
        f"min_schedule_interval_s = {_toml_num(cfg.min_schedule_interval_s)}",
        *(f"{key} = {_toml_num(getattr(cfg, key))}" for key in CONNECTION_KEYS),
        *(f"{key} = {_toml_str(str(getattr(cfg, key)))}" for key in TLS_PATH_KEYS if getattr(cfg, key) is not None),
    ]
    if cfg.http_mtls:
        lines.append("http_mtls = true")
    if cfg.http_token is not None:
        lines.append(f"http_token = {_toml_str(cfg.http_token)}")
    lines += _alerting_lines(cfg.alerting)
    for spec in cfg.nodes:
        lines += ["", "[[nodes]]", f"id = {spec.id}", f"client = {_toml_str(spec.client)}", f"raft = {_toml_str(spec.raft)}"]
        if spec.http is not None:
            lines.append(f"http = {_toml_str(spec.http)}")
    lines += _credential_lines(cfg)
    return "\n".join(lines) + "\n"


# `raftq dev`'s credentials: one per role, named after it.
DEV_CREDENTIAL_ROLES: tuple[tuple[str, str], ...] = (("dev-producer", PRODUCER), ("dev-worker", WORKER),
                                                     ("dev-admin", ADMIN))


def dev_config(
    data_dir: Path,
    nodes: int = 3,
    base_port: int = 7700,
    durability: str = "fsync",
) -> ClusterConfig:
    """A loopback cluster: client ports BASE+i, raft BASE+100+i, http BASE+200+i,
    and one random credential per role (DEV_CREDENTIAL_ROLES).

    The secret and the credentials are random, except that an existing
    <data_dir>/cluster.toml keeps them: the nodes' journals were written under
    that Raft password, and a rerun must recover them, not start a cluster
    nobody can join; the credentials stay valid in the shells that use them.
    """
    if not isinstance(nodes, int) or nodes < 1:
        raise ConfigError(f"nodes: must be at least 1, got {nodes!r}")
    if base_port < 1 or base_port + 200 + nodes - 1 > 65535:
        raise ConfigError(f"port: base port {base_port} leaves no room for {nodes} nodes (needs BASE..BASE+{200 + nodes - 1} <= 65535)")
    data_dir = Path(data_dir).expanduser().resolve()
    path = data_dir / CONFIG_FILENAME
    previous = _previous_dev_config(path)
    secret = _existing_secret(previous, path) or _secrets.token_hex(32)
    specs = tuple(
        NodeSpec(
            id=i + 1,
            client=f"127.0.0.1:{base_port + i}",
            raft=f"127.0.0.1:{base_port + 100 + i}",
            http=f"127.0.0.1:{base_port + 200 + i}",
        )
        for i in range(nodes)
    )
    return ClusterConfig(secret=secret, token=None, data_dir=data_dir, durability=durability,
                         credentials=_dev_credentials(previous), nodes=specs)


def _previous_dev_config(path: Path) -> dict[str, Any] | None:
    """The parsed config of a previous dev run, or None if there is none.

    A file that exists but cannot be read is an error rather than a new secret:
    silently replacing it would orphan the journals written under the old one.
    """
    if not path.exists():
        return None
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot reuse the secret of the existing config: {exc}") from None


def _existing_secret(previous: dict[str, Any] | None, path: Path) -> str | None:
    """The secret of a previous dev config, or None if there is none to reuse."""
    if previous is None:
        return None
    secret = previous.get("secret")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"{path}: secret: the existing config has no usable secret; fix or delete the file")
    return secret


def _dev_credentials(previous: dict[str, Any] | None) -> tuple[Credential, ...]:
    """One credential per role; a previous run's token for a name is kept
    while it is still strong (a dev dir from before roles gets new ones)."""
    kept: dict[str, str] = {}
    entries = previous.get("credentials") if previous is not None else None
    for entry in entries if isinstance(entries, list) else ():
        token = entry.get("token") if isinstance(entry, dict) else None
        if isinstance(token, str):
            try:
                check_token_strength(token, "token")
            except ConfigError:
                continue
            kept[str(entry.get("name"))] = token
    return tuple(Credential(name=name, token=kept.get(name) or _secrets.token_urlsafe(24), roles=(role,))
                 for name, role in DEV_CREDENTIAL_ROLES)
