"""Run a host's systemd units without systemd as PID 1, and a `systemctl` for it.

The supervisor lives in the host's boot process (hostsim.host boot). It starts
units from their files (hostsim.units), restarts them by their Restart= policy
and stops them (SIGTERM, then SIGKILL after TimeoutStopSec) when the host goes
down. A unix socket in the host's /run takes systemctl commands, so the
rendered runcmd lines (`systemctl enable --now ...`) and an operator's
`systemctl start --wait raftq-loadtest` work unchanged:

    python3 -m hostsim.supervisor systemctl start --wait raftq-loadtest.service

Supported: daemon-reload, enable [--now], start [--wait], stop, restart,
is-active, show -p MainPID --value, kill -s SIGNAL, status.
"""
from __future__ import annotations

import ctypes
import json
import os
import pwd
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostsim.units import UNIT_DIR, ServiceSpec, UnitError, load_service, restarts_after

RUN_DIR = Path("/run/hostsim")
CONTROL = RUN_DIR / "control.sock"
LOG_DIR = Path("/var/log/hostsim")
PR_SET_NO_NEW_PRIVS = 38


def log(msg: str) -> None:
    print(f"hostsim: {msg}", flush=True)


@dataclass
class Service:
    spec: ServiceSpec
    proc: subprocess.Popen[bytes] | None = None
    stopping: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    result: int | None = None
    starts: int = 0


def _preexec(spec: ServiceSpec, libc: ctypes.CDLL) -> Any:
    """Runs in the child between fork and exec: limits first (raising the hard
    limit needs root), then the user, then no_new_privs."""
    account = pwd.getpwnam(spec.user) if spec.user else None
    nofile = spec.nofile
    if nofile:
        # Raising the hard limit needs CAP_SYS_RESOURCE, which a container's
        # root may lack (systemd on a VM has it): keep within ours, and say so.
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if hard != resource.RLIM_INFINITY and nofile[1] > hard:
            log(f"{spec.name}: LimitNOFILE={nofile[1]} is above this machine's hard limit: {hard} instead")
            nofile = (min(nofile[0], hard), hard)

    def apply() -> None:
        if nofile:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        if spec.umask is not None:
            os.umask(spec.umask)
        if account is not None:
            gid = account.pw_gid
            if spec.group:
                import grp
                gid = grp.getgrnam(spec.group).gr_gid
            os.setgroups([])
            os.setgid(gid)
            os.setuid(account.pw_uid)
        if spec.no_new_privileges and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError("prctl(PR_SET_NO_NEW_PRIVS) failed")
    return apply


class Supervisor:
    def __init__(self, unit_dir: Path = UNIT_DIR) -> None:
        self.unit_dir = unit_dir
        self.services: dict[str, Service] = {}
        self.order: list[str] = []
        self.enabled: set[str] = set()
        self.lock = threading.Lock()
        self.libc = ctypes.CDLL(None, use_errno=True)

    # -- lifecycle of one unit ------------------------------------------------

    def _spawn(self, spec: ServiceSpec) -> subprocess.Popen[bytes]:
        env = dict(spec.env)
        if spec.user:
            account = pwd.getpwnam(spec.user)
            env.setdefault("HOME", account.pw_dir)
            env.setdefault("USER", spec.user)
            env.setdefault("LOGNAME", spec.user)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        out = open(LOG_DIR / f"{spec.name}.log", "ab")
        try:
            return subprocess.Popen(
                spec.argv, env=env, cwd=spec.working_directory or "/", stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_preexec(spec, self.libc),
            )
        finally:
            out.close()

    def _watch(self, svc: Service) -> None:
        spec = svc.spec
        while True:
            try:
                svc.proc = self._spawn(spec)
            except (OSError, subprocess.SubprocessError) as exc:
                log(f"{spec.name}: cannot start: {exc}")
                svc.result = 1
                break
            svc.starts += 1
            rc = svc.proc.wait()
            svc.result = rc
            if svc.stopping.is_set():
                log(f"{spec.name}: stopped (exit {rc})")
                break
            if not restarts_after(spec, rc):
                log(f"{spec.name}: exited {rc}; Restart={spec.restart}: not restarted")
                break
            log(f"{spec.name}: exited {rc}; Restart={spec.restart}: again in {spec.restart_s:g}s")
            if svc.stopping.wait(spec.restart_s):
                break
        svc.finished.set()

    def start(self, name: str) -> Service:
        with self.lock:
            svc = self.services.get(name)
            if svc is not None and not svc.finished.is_set():
                return svc  # already running: systemctl start is a no-op then
            spec = load_service(name, self.unit_dir)
            if spec.unenforced:
                log(f"{spec.name}: not enforced without systemd: {', '.join(spec.unenforced)}")
            svc = Service(spec)
            self.services[spec.name] = svc
            if spec.name not in self.order:
                self.order.append(spec.name)
        threading.Thread(target=self._watch, args=(svc,), name=spec.name, daemon=True).start()
        log(f"{spec.name}: started: {' '.join(spec.argv)}")
        return svc

    def stop(self, name: str) -> None:
        svc = self.services.get(name)
        if svc is None or svc.finished.is_set():
            return
        svc.stopping.set()
        proc = svc.proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=svc.spec.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log(f"{name}: still running {svc.spec.stop_timeout_s:g}s after SIGTERM: SIGKILL")
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        svc.finished.wait(timeout=10)

    def shutdown(self) -> None:
        for name in reversed(self.order):
            self.stop(name)

    # -- systemctl ------------------------------------------------------------

    def systemctl(self, argv: list[str]) -> tuple[int, str]:
        flags = {a for a in argv if a.startswith("-") and "=" not in a}
        props = [a.split("=", 1)[1] for a in argv if a.startswith("--property=")]
        words = []
        skip = False
        for i, a in enumerate(argv):
            if skip:
                skip = False
                continue
            if a in ("-p", "--property", "-s", "--signal"):
                skip = True
                if a in ("-p", "--property") and i + 1 < len(argv):
                    props.append(argv[i + 1])
                continue
            if not a.startswith("-"):
                words.append(a)
        if not words:
            return 1, "systemctl: no command"
        command, units = words[0], [u if u.endswith(".service") else u + ".service" for u in words[1:]]
        try:
            return self._command(command, units, flags, props, argv)
        except UnitError as exc:
            return 1, str(exc)

    def _command(self, command: str, units: list[str], flags: set[str], props: list[str],
                 argv: list[str]) -> tuple[int, str]:
        if command == "daemon-reload":
            return 0, ""  # unit files are read at every start
        if command == "enable":
            for unit in units:
                load_service(unit, self.unit_dir)  # refuse a unit that would not start
                self.enabled.add(unit)
            if "--now" in flags:
                for unit in units:
                    self.start(unit)
            return 0, ""
        if command in ("start", "restart"):
            started = []
            for unit in units:
                if command == "restart":
                    self.stop(unit)
                started.append(self.start(unit))
            if "--wait" in flags:
                for svc in started:
                    svc.finished.wait()
                failed = [s.spec.name for s in started if s.result != 0]
                if failed:
                    return 1, f"unit(s) failed: {', '.join(failed)} (exit {started[-1].result})"
            return 0, ""
        if command == "stop":
            for unit in units:
                self.stop(unit)
            return 0, ""
        if command == "is-active":
            active = all(self._active(u) for u in units)
            return (0, "active") if active else (3, "inactive")
        if command == "show":
            svc = self.services.get(units[0]) if units else None
            pid = svc.proc.pid if svc and svc.proc and svc.proc.poll() is None else 0
            values = {"MainPID": str(pid), "ActiveState": "active" if pid else "inactive",
                      "NRestarts": str(max(0, svc.starts - 1) if svc else 0)}
            wanted = props or list(values)
            if "--value" in flags:
                return 0, "\n".join(values.get(p, "") for p in wanted)
            return 0, "\n".join(f"{p}={values.get(p, '')}" for p in wanted)
        if command == "kill":
            sig = signal.SIGTERM
            if "-s" in argv:
                sig = signal.Signals[_signal_name(argv[argv.index("-s") + 1])]
            for unit in units:
                svc = self.services.get(unit)
                if svc and svc.proc and svc.proc.poll() is None:
                    os.kill(svc.proc.pid, sig)
            return 0, ""
        if command in ("status", "list-units"):
            lines = [f"{n}: {'active' if self._active(n) else 'inactive'} (starts {s.starts}, last exit {s.result})"
                     for n, s in self.services.items() if not units or n in units]
            return 0, "\n".join(lines)
        return 1, f"systemctl: {command} is not supported by hostsim"

    def _active(self, unit: str) -> bool:
        svc = self.services.get(unit)
        return bool(svc and svc.proc and svc.proc.poll() is None and not svc.finished.is_set())

    def serve(self) -> None:
        """Answer systemctl clients on CONTROL, one thread per connection."""
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(CONTROL))
        os.chmod(CONTROL, 0o600)
        srv.listen(16)

        def one(conn: socket.socket) -> None:
            with conn, conn.makefile("rwb") as f:
                argv = json.loads(f.readline())
                rc, out = self.systemctl(argv)
                f.write(json.dumps({"rc": rc, "out": out}).encode() + b"\n")
                f.flush()

        def loop() -> None:
            while True:
                conn, _ = srv.accept()
                threading.Thread(target=one, args=(conn,), daemon=True).start()
        threading.Thread(target=loop, name="control", daemon=True).start()


def _signal_name(value: str) -> str:
    value = value.upper()
    return value if value.startswith("SIG") else "SIG" + value


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def systemctl_client(argv: list[str]) -> int:
    """The `systemctl` of a hostsim host: forward to the supervisor."""
    deadline = time.monotonic() + 10
    while True:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(str(CONTROL))
            break
        except OSError as exc:
            conn.close()
            if time.monotonic() > deadline:
                print(f"systemctl: hostsim supervisor not reachable at {CONTROL}: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    with conn, conn.makefile("rwb") as f:
        f.write(json.dumps(argv).encode() + b"\n")
        f.flush()
        reply = json.loads(f.readline())
    if reply["out"]:
        print(reply["out"], file=sys.stdout if reply["rc"] == 0 else sys.stderr)
    return int(reply["rc"])


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "systemctl":
        sys.exit("usage: python3 -m hostsim.supervisor systemctl COMMAND [UNIT...]")
    sys.exit(systemctl_client(sys.argv[2:]))
