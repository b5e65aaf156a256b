"""`raftq dev`: a whole cluster on this machine, in the foreground.

It writes <data-dir>/cluster.toml (keeping the secret of an earlier run, so the
nodes can read back the journals written under its Raft password, and its
credentials, one per role, so the shells using them keep working), starts one
`raftq node` process per node, waits until they elect a leader, starts the
workers, and then supervises.

Supervision rules:
- a child that exits on its own is reported on stderr, once, and never
  respawned: a dev cluster that silently heals would hide the bugs it is for;
- Ctrl-C, SIGTERM or SIGHUP (the terminal closed) stops everything: SIGTERM
  to the workers first (they hand back or finish jobs while the nodes are
  still up), then to the nodes, within one grace period; whatever is left is
  SIGKILLed with the children's process group (their own pool processes too).
  A second signal skips the grace period;
- a SIGKILLed or crashed supervisor takes its children with it too: each has
  a parent-death signal, and a rerun clears whatever survived
  (cli/dev_run.py: one process group, the run record <data-dir>/run.json);
- only processes this command started are signalled, by PID (checked against
  their recorded start time) or by their process group, which is not the
  terminal's: the terminal's Ctrl-C reaches only the supervisor.

Each child's stdout and stderr go to <data-dir>/logs/<name>.log (appended).

The workers' data root (what file jobs may read and write) is a directory of
its own, <data-dir>-files (.raftq/dev-files by default), never the working
directory or the data dir: those hold cluster.toml (the secret) and the Raft
files, and `raftq worker` refuses a data root that does. On first use the
repo's ./examples is copied into it, so the README's job examples
(`path=examples/...`) run as written.

With --tls a throwaway CA signs a node certificate (for the loopback address)
and a client certificate, all new on every start, under <data-dir>/tls; the
nodes require TLS and client certificates (mutual TLS), the workers use the
client certificate, and the banner prints the RAFTQ_TLS_* environment for
other shells.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import click

from cli.dev_run import AlreadyRunning, RunRecord, child_setup, clear_leftovers
from cli.output import CliError, emit_table
from cli.worker_options import config_kwargs, dev_click_options, worker_argv
from cluster.config import (CONFIG_FILENAME, DEV_CREDENTIAL_ROLES, ClusterConfig, dev_config, parse_address,
                            render_config)
from cluster.errors import RaftqError
from cluster.tls import ClientTls, DevCerts, make_dev_certs
from worker.config import WorkerConfig

POLL_INTERVAL_S = 0.2
LOG_TAIL_LINES = 15
STOP_GRACE_S = 10.0
EXAMPLE_JOB = "text.wordcount"


@dataclass
class Child:
    """One process started by the supervisor."""

    name: str
    argv: list[str]
    log_path: Path
    stop_phase: int  # lower phases are stopped first (workers 0, nodes 1)
    proc: subprocess.Popen[bytes]
    reported: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Supervisor:
    """Starts children, reports the ones that exit, stops them all by PID."""

    log_dir: Path
    record: RunRecord
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    children: list[Child] = field(default_factory=list)
    group: int = 0  # the children's process group: the first child's pid (0: none started yet)

    def start(self, name: str, argv: Sequence[str], stop_phase: int = 0,
              env: dict[str, str] | None = None) -> Child:
        """`env`: set for this child on top of the supervisor's environment.
        Call from the main thread only: the child's parent-death signal fires
        when the thread that forked it ends (cli/dev_run.py)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} raftq dev starts: {' '.join(argv)}\n".encode())
            log.flush()
            # The child keeps its own copy of the log descriptor; ours can close.
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**self.env, **(env or {}), "PYTHONUNBUFFERED": "1"},
                preexec_fn=child_setup(os.getpid(), self.group),
            )
        self.group = self.group or proc.pid
        self.record.add(name, proc.pid)
        child = Child(name=name, argv=list(argv), log_path=log_path, stop_phase=stop_phase, proc=proc)
        self.children.append(child)
        return child

    def newly_exited(self) -> list[Child]:
        """Children that exited since the last call (each reported once)."""
        out = []
        for child in self.children:
            if not child.reported and not child.alive():
                child.reported = True
                out.append(child)
        return out

    def any_alive(self) -> bool:
        return any(c.alive() for c in self.children)

    def stop(self, grace_s: float = 10.0, hurry: threading.Event | None = None) -> None:
        """SIGTERM phase by phase within grace_s, then SIGKILL what is left.

        `hurry`, once set (a second Ctrl-C), cuts the grace period short.
        """
        deadline = time.monotonic() + grace_s
        phases = sorted({c.stop_phase for c in self.children})
        for i, phase in enumerate(phases):
            members = [c for c in self.children if c.stop_phase == phase and c.alive()]
            for child in members:
                _signal(child, signal.SIGTERM)
            # Each phase may use its share of the grace period; the last gets the rest.
            phase_deadline = deadline - grace_s * (len(phases) - 1 - i) / len(phases)
            _wait_until(lambda: not any(c.alive() for c in members), phase_deadline, hurry)
        _wait_until(lambda: not self.any_alive(), deadline, hurry)
        if self.any_alive():
            self._kill_group()
        for child in self.children:
            if child.alive():
                child.reported = True
                _signal(child, signal.SIGKILL)
        for child in self.children:
            try:
                child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # unkillable (D state); nothing more we can do
                pass

    def _kill_group(self) -> None:
        """SIGKILL the children's process group: every child and what it forked.
        Called only while a child is alive: a live member keeps the group's
        number from being given to anyone else."""
        if not self.group:
            return
        try:
            os.killpg(self.group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # every member gone; the per-child SIGKILL below covers the rest


def _signal(child: Child, sig: int) -> None:
    try:
        child.proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _wait_until(cond: Callable[[], bool], deadline: float, hurry: threading.Event | None = None) -> bool:
    while not cond():
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (hurry is not None and hurry.is_set()):
            return False
        time.sleep(min(0.05, remaining))
    return True


class StopRequests:
    """SIGINT/SIGTERM/SIGHUP handling: the first sets `stop`, the second sets `hurry`.

    SIGHUP is the terminal closing: the children, in a process group of their
    own, get nothing from it, so the supervisor stops them as for a Ctrl-C."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.hurry = threading.Event()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            self.hurry.set()
        self.stop.set()

    @contextmanager
    def installed(self) -> Iterator[StopRequests]:
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def check_ports_free(cfg: ClusterConfig) -> None:
    """Fail early, naming the port, if something already listens on one we need."""
    for spec in cfg.nodes:
        for key, addr in spec.addresses():
            host, port = parse_address(addr, key)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                # Same option as the servers: a port in TIME_WAIT is free for them too.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, port))
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        # What an earlier run of this data dir recorded was stopped before.
                        raise CliError(
                            f"port {port} ({key}) is already in use by a process no raftq dev run of "
                            f"{cfg.data_dir} recorded: stop it, or pick other ports with --port"
                        ) from None
                    raise


def write_config(cfg: ClusterConfig, path: Path) -> None:
    """Write the config atomically, readable by this user only (it holds the secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render_config(cfg))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _say(message: str) -> None:
    try:
        click.echo(f"raftq dev: {message}", err=True)
    except OSError:  # the terminal is gone (SIGHUP): stopping the children matters more
        pass


def wait_for_leader(cfg: ClusterConfig, sup: Supervisor, deadline_s: float, stop: threading.Event,
                    tls: ClientTls | None = None) -> str | None:
    """Poll cluster_status until some node names a leader; its client address.

    None if a stop was requested meanwhile. A node that exits during startup
    fails the whole start, with the end of its log.
    """
    from cluster.client import Client

    deadline = time.monotonic() + deadline_s
    last_error = "no answer yet"
    with Client(cfg.client_addresses(), dev_token(cfg, "producer"), timeout_s=1.0, tls=tls) as client:
        while True:
            for child in sup.children:
                if not child.alive():
                    tail = _tail(child.log_path)
                    if tail:
                        _say(f"last lines of {child.log_path}:")
                        click.echo(tail, err=True)
                    raise CliError(
                        f"{child.name} exited with code {child.proc.returncode} during startup; see {child.log_path}"
                    )
            if stop.is_set():
                return None
            try:
                status = client.cluster_status()
                if status.get("leader"):
                    return str(status["leader"])
                last_error = "nodes answer but no leader is elected yet"
            except (RaftqError, OSError) as exc:
                last_error = str(exc) or type(exc).__name__
            if time.monotonic() >= deadline:
                raise CliError(f"no leader elected within {deadline_s:g}s ({last_error}); see the logs in {sup.log_dir}")
            stop.wait(POLL_INTERVAL_S)


def dev_token(cfg: ClusterConfig, role: str) -> str:
    """The token of the dev credential for `role` (DEV_CREDENTIAL_ROLES)."""
    name = dict((r, n) for n, r in DEV_CREDENTIAL_ROLES)[role]
    return next(c.token for c in cfg.credentials if c.name == name)


def prepare_files_dir(data_dir: Path) -> Path:
    """The dev workers' data root, beside (not inside) the cluster's data dir,
    seeded with ./examples when there is one and it was not copied before."""
    files_dir = data_dir.parent / f"{data_dir.name}-files"
    files_dir.mkdir(parents=True, exist_ok=True)
    examples = Path("examples")
    if examples.is_dir() and not (files_dir / "examples").exists():
        shutil.copytree(examples, files_dir / "examples", symlinks=True)
    return files_dir


def with_dev_tls(cfg: ClusterConfig) -> tuple[ClusterConfig, DevCerts]:
    """`cfg` with mutual TLS from a new throwaway PKI under <data_dir>/tls."""
    hosts = sorted({parse_address(n.client, "client")[0] for n in cfg.nodes})
    certs = make_dev_certs(cfg.data_dir / "tls", hosts)
    return dataclasses.replace(cfg, tls_cert=certs.node_cert, tls_key=certs.node_key, tls_client_ca=certs.ca), certs


def tls_args(certs: DevCerts | None) -> list[str]:
    if certs is None:
        return []
    return ["--tls-ca", str(certs.ca), "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]


def path_hint() -> str | None:
    """The line that puts `raftq` on another shell's PATH, or None when it is
    there anyway. From a virtualenv (`make run`'s .venv) it is not: a new shell
    has not activated it."""
    if sys.prefix != sys.base_prefix:
        activate = Path(sys.prefix) / "bin" / "activate"
        if activate.is_file():
            return f". {shlex.quote(str(activate))}    # puts raftq on PATH"
    if shutil.which("raftq") is None:
        return f"export PATH={shlex.quote(str(Path(sys.executable).parent))}:$PATH    # puts raftq on PATH"
    return None


def _print_banner(cfg: ClusterConfig, sup: Supervisor, leader: str, config_path: Path, recovered: bool,
                  files_dir: Path, certs: DevCerts | None) -> None:
    click.echo(f"raftq dev cluster is up ({'recovered existing state' if recovered else 'new state'})")
    click.echo(f"  config: {config_path}")
    click.echo(f"  logs:   {sup.log_dir}/<name>.log")
    click.echo(f"  files:  {files_dir} (the workers' data root: job paths are relative to it)")
    click.echo()
    pids = {c.name: c.pid for c in sup.children}
    emit_table(
        ["NODE", "CLIENT", "RAFT", "HTTP", "PID"],
        [[str(n.id), n.client, n.raft, n.http or "-", str(pids.get(f"node-{n.id}", "-"))] for n in cfg.nodes],
    )
    workers = [c for c in sup.children if c.name.startswith("worker-")]
    if workers:
        click.echo(f"workers: {', '.join(f'{c.name} (pid {c.pid})' for c in workers)}")
    click.echo(f"leader: {leader}")
    click.echo()
    click.echo("credentials (kept in the config across runs; a command takes one from --token or RAFTQ_TOKEN):")
    emit_table(["ROLE", "MAY", "TOKEN"],
               [["producer", "submit, read, wait, cancel", dev_token(cfg, "producer")],
                ["worker", "lease, heartbeat, complete, fail (the dev workers use it)", dev_token(cfg, "worker")],
                ["admin", "queue limits, dead letters, retry, schedules, read", dev_token(cfg, "admin")]])
    click.echo()
    click.echo("in another shell:")
    hint = path_hint()
    if hint:
        click.echo(f"  {hint}")
    cluster = "" if cfg.client_addresses()[0] == "127.0.0.1:7700" else f"RAFTQ_CLUSTER={','.join(cfg.client_addresses())} "
    click.echo(f"  export {cluster}RAFTQ_TOKEN={shlex.quote(dev_token(cfg, 'producer'))}")
    if certs is not None:
        click.echo(f"  export RAFTQ_TLS_CA={shlex.quote(str(certs.ca))} RAFTQ_TLS_CERT={shlex.quote(str(certs.client_cert))} "
                   f"RAFTQ_TLS_KEY={shlex.quote(str(certs.client_key))}")
    for example in (
        f"raftq submit {EXAMPLE_JOB} --arg text='hello raft' --wait",
        "raftq list",
        "raftq stats",
        "raftq cluster status",
        f"RAFTQ_TOKEN={shlex.quote(dev_token(cfg, 'admin'))} raftq dlq requeue --queue default",
    ):
        click.echo(f"  {example}")
    click.echo()
    click.echo("Ctrl-C stops the cluster; rerun with the same --data-dir to recover its jobs.")


@click.command()
@click.option("--nodes", type=click.IntRange(min=1, max=9), default=3, show_default=True, help="Queue nodes.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="Worker processes.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".raftq/dev"),
              show_default=True, envvar="RAFTQ_DEV_DATA_DIR", help="Config, journals and logs [env RAFTQ_DEV_DATA_DIR].")
@click.option("--port", "base_port", type=click.IntRange(min=1, max=65335), default=7700, show_default=True,
              help="Client ports BASE.., Raft ports BASE+100.., HTTP ports BASE+200..")
@click.option("--durability", type=click.Choice(["fsync", "none"]), default="fsync", show_default=True)
@click.option("--startup-timeout", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds to wait for a leader.")
@click.option("--tls", is_flag=True,
              help="Mutual TLS on every port, with a throwaway CA and certificates under <data-dir>/tls.")
@dev_click_options
def dev(nodes: int, workers: int, data_dir: Path, base_port: int, durability: str,
        startup_timeout: float, tls: bool, **worker_options: Any) -> None:
    """Run a local cluster (nodes + workers) in the foreground; Ctrl-C stops it.

    Closing its terminal or killing it (kill -9 too) stops the nodes and
    workers as well; a run after a crash stops what the crashed one left.
    It makes one credential per role (producer, worker, admin) and prints them.
    The worker options given are passed through to every worker."""
    cfg = dev_config(data_dir, nodes=nodes, base_port=base_port, durability=durability)
    certs = None
    if tls:
        cfg, certs = with_dev_tls(cfg)
    # A bad worker option fails here, before anything starts, not in every
    # worker's log (an empty stand-in data root: the real one is made below).
    with tempfile.TemporaryDirectory() as empty:
        try:
            WorkerConfig(cluster=tuple(cfg.client_addresses()), token=dev_token(cfg, "worker"),
                         data_root=Path(empty), **config_kwargs(worker_options))
        except ValueError as exc:  # worker.config.ConfigError: names the field
            raise CliError(str(exc)) from None
    clear_crashed_run(cfg.data_dir)
    check_ports_free(cfg)
    files_dir = prepare_files_dir(cfg.data_dir)
    config_path = cfg.data_dir / CONFIG_FILENAME
    recovered = any(cfg.data_dir.glob("node-*"))
    write_config(cfg, config_path)
    sup = Supervisor(log_dir=cfg.data_dir / "logs", record=RunRecord.begin(cfg.data_dir))
    stops = StopRequests()
    with stops.installed():
        try:
            _say(f"starting {nodes} node(s); logs in {sup.log_dir}")
            for spec in cfg.nodes:
                sup.start(f"node-{spec.id}", [sys.executable, "-m", "cli.main", "node",
                                              "--config", str(config_path), "--id", str(spec.id)], stop_phase=1)
            client_tls = None if certs is None else ClientTls(certs.ca, certs.client_cert, certs.client_key)
            leader = wait_for_leader(cfg, sup, startup_timeout, stops.stop, client_tls)
            if leader is None:
                return  # stopped during startup: the finally below stops the nodes
            addrs = ",".join(cfg.client_addresses())
            for i in range(1, workers + 1):
                workdir = cfg.data_dir / "work" / f"worker-{i}"
                workdir.mkdir(parents=True, exist_ok=True)
                own = {"name": f"dev-worker-{i}", "workdir": workdir, "data_root": files_dir}
                # The token goes in the environment: a command line is visible to every local user.
                sup.start(f"worker-{i}", [sys.executable, "-m", "cli.main", "worker", "--cluster", addrs,
                                          *worker_argv({**worker_options, **own}), *tls_args(certs)],
                          stop_phase=0, env={"RAFTQ_TOKEN": dev_token(cfg, "worker")})
            _print_banner(cfg, sup, leader, config_path, recovered, files_dir, certs)
            exit_code = _supervise(sup, stops)
        finally:
            # Also on errors and exceptions: never leave a child running behind us.
            _stop_and_report(sup, stops)
    if exit_code:
        sys.exit(exit_code)


def clear_crashed_run(data_dir: Path) -> None:
    """Stop what an earlier run of `data_dir` left running (cli/dev_run.py)."""
    try:
        left = clear_leftovers(data_dir)
    except AlreadyRunning as exc:
        raise CliError(f"{exc}: stop it first (Ctrl-C in its terminal, or kill {exc.pid})") from None
    if left:
        _say(f"stopped {len(left)} process(es) an earlier run of {data_dir} left running: "
             + ", ".join(f"{p.name} (pid {p.pid})" for p in left))


def _stop_and_report(sup: Supervisor, stops: StopRequests) -> None:
    if sup.any_alive():
        _say("stopping (Ctrl-C again to kill at once)")
        sup.stop(grace_s=STOP_GRACE_S, hurry=stops.hurry)
        _say("stopped")
    else:
        sup.stop(grace_s=0)
    if not sup.any_alive():
        sup.record.remove()  # nothing left for a rerun to clear


def _supervise(sup: Supervisor, stops: StopRequests) -> int:
    """Report exits until asked to stop; 0 on a requested stop, 1 if all children died."""
    while not stops.stop.is_set():
        for child in sup.newly_exited():
            _say(f"{child.name} (pid {child.pid}) exited unexpectedly with code {child.proc.returncode}; "
                 f"not restarting it; see {child.log_path}")
        if not sup.any_alive():
            _say("every node and worker has exited; nothing left to supervise")
            return 1
        stops.stop.wait(0.5)
    return 0
