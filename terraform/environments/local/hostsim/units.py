"""systemd unit files, read the way systemd reads the parts a service needs.

The local environment has no systemd as PID 1 in its hosts, yet must run the
very unit files the render module wrote for the cloud. This module turns one
unit file into a `ServiceSpec`: the command line (with systemd's `$VAR` /
`${VAR}` expansion and `%i` specifiers), the environment (`Environment=`,
`EnvironmentFile=`), the user, the working directory, the limits and the
restart policy. Sandboxing directives (ProtectSystem=, PrivateTmp=, ...) are
kept in `unenforced` so the supervisor can say that it does not apply them:
on a real host systemd does.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RESTART_POLICIES = ("no", "on-failure", "always")
# Directives the supervisor applies itself; any other [Service] key is reported.
APPLIED = {"Type", "ExecStart", "Environment", "EnvironmentFile", "User", "Group", "WorkingDirectory",
           "LimitNOFILE", "NoNewPrivileges", "UMask", "Restart", "RestartSec", "TimeoutStopSec"}


class UnitError(ValueError):
    """A unit file this supervisor cannot run; the message names the unit and key."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    argv: tuple[str, ...]
    env: dict[str, str]
    user: str | None
    group: str | None
    working_directory: str | None
    nofile: tuple[int, int] | None
    no_new_privileges: bool
    umask: int | None
    restart: str
    restart_s: float
    stop_timeout_s: float
    wanted_by: tuple[str, ...] = ()
    unenforced: tuple[str, ...] = field(default_factory=tuple)


def parse_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """[Section] -> (key, value) pairs in file order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):  # systemd's line continuation
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        if not sep or current is None:
            raise UnitError(f"not a unit file line: {raw!r}")
        current.append((key.strip(), value.strip()))
    return sections


def unit_file_for(name: str, unit_dir: Path = UNIT_DIR) -> tuple[Path, str]:
    """The file that defines `name` and the instance (for `x@i.service`: x@.service, "i")."""
    if not name.endswith(".service"):
        name += ".service"
    base, at, rest = name.partition("@")
    if at:
        instance = rest[: -len(".service")]
        return unit_dir / f"{base}@.service", instance
    return unit_dir / name, ""


def specifiers(value: str, name: str, instance: str) -> str:
    table = {"i": instance, "I": instance, "n": name, "N": name.removesuffix(".service"), "%": "%"}

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in table:
            raise UnitError(f"{name}: specifier %{m.group(1)} is not supported here")
        return table[m.group(1)]
    return re.sub(r"%(.)", one, value)


def parse_env_assignments(value: str) -> dict[str, str]:
    """Environment="A=1" B=2: shell-like words of KEY=VALUE."""
    out = {}
    for word in shlex.split(value):
        key, sep, val = word.partition("=")
        if sep:
            out[key] = val
    return out


def read_env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, val = line.partition("=")
        if sep:
            val = val.strip()
            if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
                val = val[1:-1]
            out[key.strip()] = val
    return out


def expand_command(command: str, env: dict[str, str]) -> tuple[str, ...]:
    """systemd's ExecStart expansion: a word that is exactly $VAR becomes the
    value's words (none if empty); ${VAR} inside a word is replaced in place."""
    argv: list[str] = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if whole:
            argv.extend(env.get(whole.group(1), "").split())
            continue
        argv.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return tuple(argv)


def _seconds(value: str, key: str, name: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min)?", value)
    if not m:
        raise UnitError(f"{name}: {key}={value} is not a time span this supervisor reads (N, Ns, Nms, Nmin)")
    scale = {"ms": 0.001, "s": 1.0, None: 1.0, "min": 60.0}[m.group(2)]
    return float(m.group(1)) * scale


def _nofile(value: str, name: str) -> tuple[int, int]:
    soft, _, hard = value.partition(":")
    try:
        return int(soft), int(hard or soft)
    except ValueError:
        raise UnitError(f"{name}: LimitNOFILE={value} is not N or SOFT:HARD") from None


def load_service(name: str, unit_dir: Path = UNIT_DIR, root_env: dict[str, str] | None = None) -> ServiceSpec:
    """Read `name` (e.g. "raftq-node.service", "raftq-locust-worker@1.service")."""
    path, instance = unit_file_for(name, unit_dir)
    full_name = name if name.endswith(".service") else name + ".service"
    try:
        sections = parse_sections(path.read_text())
    except FileNotFoundError:
        raise UnitError(f"{full_name}: no unit file {path}") from None
    service = [(k, specifiers(v, full_name, instance)) for k, v in sections.get("Service", [])]
    env: dict[str, str] = {"PATH": DEFAULT_PATH, **(root_env or {})}
    file_env: dict[str, str] = {}  # systemd: EnvironmentFile= wins over Environment=
    command = None
    values: dict[str, str] = {}
    unenforced = []
    for key, value in service:
        if key == "Environment":
            env.update(parse_env_assignments(value))
        elif key == "EnvironmentFile":
            optional = value.startswith("-")
            env_path = Path(value.lstrip("-"))
            if env_path.exists():
                file_env.update(read_env_file(env_path))
            elif not optional:
                raise UnitError(f"{full_name}: EnvironmentFile {env_path} does not exist")
        elif key == "ExecStart":
            command = value.lstrip("-@+!")
        elif key in APPLIED:
            values[key] = value
        else:
            unenforced.append(f"{key}={value}")
    env.update(file_env)
    if not command:
        raise UnitError(f"{full_name}: no ExecStart")
    argv = expand_command(command, env)
    if not argv or not argv[0].startswith("/"):
        raise UnitError(f"{full_name}: ExecStart must start with an absolute path, got {command!r}")
    restart = values.get("Restart", "no")
    if restart not in RESTART_POLICIES:
        raise UnitError(f"{full_name}: Restart={restart} is not one of {', '.join(RESTART_POLICIES)}")
    wanted = tuple(v for k, v in sections.get("Install", []) if k == "WantedBy")
    return ServiceSpec(
        name=full_name,
        argv=argv,
        env=env,
        user=values.get("User"),
        group=values.get("Group"),
        working_directory=values.get("WorkingDirectory"),
        nofile=_nofile(values["LimitNOFILE"], full_name) if "LimitNOFILE" in values else None,
        no_new_privileges=values.get("NoNewPrivileges", "no").lower() in ("yes", "true", "1", "on"),
        umask=int(values["UMask"], 8) if "UMask" in values else None,
        restart=restart,
        restart_s=_seconds(values.get("RestartSec", "0.1"), "RestartSec", full_name),
        stop_timeout_s=_seconds(values.get("TimeoutStopSec", "90"), "TimeoutStopSec", full_name),
        wanted_by=wanted,
        unenforced=tuple(unenforced),
    )


def restarts_after(spec: ServiceSpec, returncode: int) -> bool:
    """systemd's rule: on-failure restarts after a non-zero exit or a signal
    other than the clean ones (SIGHUP, SIGINT, SIGTERM, SIGPIPE)."""
    if spec.restart == "always":
        return True
    if spec.restart == "on-failure":
        clean_signals = {-1, -2, -15, -13}
        return returncode != 0 and returncode not in clean_signals
    return False
