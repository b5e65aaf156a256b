"""Hosts of the local environment: a network namespace and a fresh root each.

Called by terraform_data provisioners (terraform/environments/local/main.tf)
from the root namespace, as root:

    python3 -m hostsim.host net-up   --prefix P --subnet 10.213.13.0/24
    python3 -m hostsim.host up       --prefix P --run-dir D --name node-1 --address 10.213.13.11/24  (user_data in $HOSTSIM_USER_DATA)
    python3 -m hostsim.host down     --prefix P --run-dir D --name node-1
    python3 -m hostsim.host net-down --prefix P --subnet 10.213.13.0/24
    python3 -m hostsim.host exec      --prefix P --run-dir D --name loadgen-1 -- CMD...
    python3 -m hostsim.host systemctl --prefix P --run-dir D --name loadgen-1 -- start --wait raftq-loadtest
    python3 -m hostsim.host check-clean --prefix P --subnet S --run-dir D
    python3 -m hostsim.host purge       --prefix P --subnet S --run-dir D   (after a run killed mid-way)

Layout: namespace P-sw holds bridge br0; each host is namespace P-<name> with
`eth0` (its address) on that bridge, nothing in the root namespace but a
blackhole route for the subnet, so no packet of it can leave the machine.

A host boots like a new VM: `boot` runs inside the namespace in a private
mount namespace, mounts a tmpfs, lays an overlay over the machine's own root
(the "image", read only; writes land in the tmpfs), chroots into it, applies
the user_data (hostsim.cloud_init) and supervises the units it enabled
(hostsim.supervisor). Its root is fresh on every create, so cloud-init's
first-boot steps (runcmd) always run, and it vanishes with the mount
namespace when the host's last process exits.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LOCAL_ENV = Path(__file__).resolve().parents[1]   # terraform/environments/local (PYTHONPATH of hostsim)
REPO = Path(__file__).resolve().parents[4]
PYTHON = "/usr/bin/python3"  # the image's python: readable by the hosts' service users, has python3-yaml
BOOT_TIMEOUT_S = 180
STOP_TIMEOUT_S = 60


class HostError(RuntimeError):
    pass


def sh(args: list[str], check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise HostError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def switch_ns(prefix: str) -> str:
    return f"{prefix}-sw"


def host_ns(prefix: str, name: str) -> str:
    return f"{prefix}-{name}"


def host_dir(run_dir: Path, name: str) -> Path:
    return run_dir / "hosts" / name


def namespaces() -> list[str]:
    return [line.split()[0] for line in sh(["ip", "netns", "list"], check=False).stdout.splitlines() if line.strip()]


def ns_pids(ns: str) -> list[int]:
    return [int(p) for p in sh(["ip", "netns", "pids", ns], check=False).stdout.split() if p.isdigit()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- the network ---------------------------------------------------------------

def net_up(prefix: str, subnet: str) -> None:
    ipaddress.ip_network(subnet)  # a clear error for a typo, before anything is created
    sw = switch_ns(prefix)
    if sw in namespaces():
        raise HostError(f"namespace {sw} exists: another run with prefix {prefix!r} is up (or left over: net-down)")
    try:
        sh(["ip", "netns", "add", sw])
        sh(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", sw, "link", "set", "br0", "up"])
        # Nothing routes the subnet out of the machine, even if a later
        # mistake put an address of it in the root namespace.
        sh(["ip", "route", "add", "blackhole", subnet])
    except HostError:
        net_down(prefix, subnet)
        raise


def net_down(prefix: str, subnet: str) -> None:
    sw = switch_ns(prefix)
    if sw in namespaces():
        kill_ns(sw)
        sh(["ip", "netns", "del", sw], check=False)
    if subnet in sh(["ip", "route", "show", "type", "blackhole"], check=False).stdout.split():
        sh(["ip", "route", "del", "blackhole", subnet])


def kill_ns(ns: str) -> None:
    for _ in range(3):
        pids = ns_pids(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_gone(pids, 10)


# -- a host, from the root namespace ---------------------------------------------

def host_up(prefix: str, run_dir: Path, name: str, address: str, user_data: str) -> None:
    iface = ipaddress.ip_interface(address)
    ns, sw = host_ns(prefix, name), switch_ns(prefix)
    hdir = host_dir(run_dir, name)
    if ns in namespaces() or hdir.exists():
        raise HostError(f"host {name} exists already (namespace {ns} or {hdir})")
    veth = f"v-{name}"[:15]
    try:
        (hdir / "root").mkdir(parents=True)
        ud = hdir / "user-data"
        ud.touch(mode=0o600)
        ud.write_text(user_data)
        sh(["ip", "netns", "add", ns])
        sh(["ip", "-n", sw, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        sh(["ip", "-n", sw, "link", "set", veth, "master", "br0", "up"])
        sh(["ip", "-n", ns, "addr", "add", str(iface), "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        console = open(hdir / "console.log", "ab")
        # setsid and stdio on a file: the host outlives this provisioner, and
        # must not hold Terraform's output pipes open (the apply would hang).
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--mount", "--uts", "--propagation", "private",
             PYTHON, "-m", "hostsim.host", "boot", "--name", name, "--root-dir", str(hdir / "root"),
             "--user-data", str(ud)],
            stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "PYTHONPATH": str(LOCAL_ENV)},
        )
        console.close()
        (hdir / "pid").write_text(f"{proc.pid}\n")
        wait_booted(hdir, proc)
    except BaseException as exc:
        # A failed create runs no destroy provisioner: leave nothing behind here.
        tail = (hdir / "console.log").read_text(errors="replace")[-3000:] if (hdir / "console.log").exists() else ""
        host_down(prefix, run_dir, name)
        raise HostError(f"host {name} failed to boot: {exc}\n--- console ---\n{tail}") from None


def wait_booted(hdir: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    log = hdir / "console.log"
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "hostsim: boot finished" in text:
            return
        if "hostsim: boot failed" in text or proc.poll() is not None:
            raise HostError("boot failed")
        time.sleep(0.2)
    raise HostError(f"not booted after {BOOT_TIMEOUT_S}s")


def boot_pid(run_dir: Path, name: str) -> int | None:
    try:
        pid = int((host_dir(run_dir, name) / "pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # A recycled pid is someone else's process: only ours is signalled.
    return pid if b"hostsim.host" in cmdline and b"boot" in cmdline and alive(pid) else None


def host_down(prefix: str, run_dir: Path, name: str) -> None:
    ns = host_ns(prefix, name)
    pid = boot_pid(run_dir, name)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)  # the supervisor stops the units (TimeoutStopSec each)
        if not wait_gone([pid], STOP_TIMEOUT_S):
            print(f"hostsim: host {name} not down {STOP_TIMEOUT_S}s after SIGTERM: SIGKILL", file=sys.stderr)
    if ns in namespaces():
        kill_ns(ns)  # every process of the host lives in its namespace
        sh(["ip", "netns", "del", ns], check=False)  # takes eth0 and its veth peer with it
    shutil.rmtree(host_dir(run_dir, name), ignore_errors=True)


def enter_args(run_dir: Path, name: str) -> list[str]:
    pid = boot_pid(run_dir, name)
    if pid is None:
        raise HostError(f"host {name} is not running")
    return ["nsenter", "-t", str(pid), "-m", "-n", "-u", "-r", "-w", "--"]


def host_exec(run_dir: Path, name: str, cmd: list[str]) -> int:
    env = {**os.environ, "PYTHONPATH": str(LOCAL_ENV)}
    return subprocess.call(enter_args(run_dir, name) + cmd, env=env)


# -- the host itself (inside its namespaces) --------------------------------------

def boot(name: str, root_dir: Path, user_data: Path) -> int:
    from hostsim import cloud_init
    from hostsim.supervisor import RUN_DIR, Supervisor, log
    from hostsim.units import DEFAULT_PATH

    text = user_data.read_text()
    socket.sethostname(name)
    sh(["mount", "-t", "tmpfs", "-o", "mode=0755,size=1g", f"hostsim-{name}", str(root_dir)])
    for d in ("upper", "work", "merged"):
        (root_dir / d).mkdir()
    merged = root_dir / "merged"
    sh(["mount", "-t", "overlay", "overlay", "-o",
        f"lowerdir=/,upperdir={root_dir / 'upper'},workdir={root_dir / 'work'}", str(merged)])
    sh(["mount", "--rbind", "/dev", str(merged / "dev")])
    sh(["mount", "--rbind", "/sys", str(merged / "sys")])
    sh(["mount", "-t", "proc", "proc", str(merged / "proc")])
    sh(["mount", "-t", "tmpfs", "-o", "mode=0755", "run", str(merged / "run")])
    os.chroot(merged)
    os.chdir("/")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    supervisor = Supervisor()
    supervisor.serve()
    shim = RUN_DIR / "bin" / "systemctl"
    shim.parent.mkdir(parents=True, exist_ok=True)
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={LOCAL_ENV} exec {PYTHON} -m hostsim.supervisor systemctl \"$@\"\n")
    shim.chmod(0o755)
    env = {"PATH": f"{shim.parent}:{DEFAULT_PATH}", "HOME": "/root", "LANG": "C.UTF-8",
           "PYTHONPATH": str(LOCAL_ENV)}
    try:
        cloud_init.run(cloud_init.load(text), env)
    except (cloud_init.CloudInitError, OSError, subprocess.CalledProcessError) as exc:
        log(f"boot failed: {exc}")
        supervisor.shutdown()
        return 1
    log(f"boot finished: {name}")
    stop.wait()
    log("SIGTERM: stopping units")
    supervisor.shutdown()
    log("down")
    return 0


# -- the venv the hosts run raftq from ---------------------------------------------

def build_venv(run_dir: Path) -> None:
    """A wheel built from this checkout, installed with its `load` extra into
    run_dir/venv (the image's python, so the hosts' service users can run it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        _build_venv(run_dir)
    except BaseException:
        remove_run_dir(run_dir)  # a failed create runs no destroy provisioner
        raise


def _build_venv(run_dir: Path) -> None:
    venv = run_dir / "venv"
    with tempfile.TemporaryDirectory(prefix="raftq-wheel-") as tmp:
        # Build from a copy: setuptools leaves build/ and *.egg-info in the source tree.
        src = Path(tmp) / "src"
        src.mkdir()
        for item in ("pyproject.toml", "README.md", "replication", "cluster", "worker", "cli"):
            copy = shutil.copytree if (REPO / item).is_dir() else shutil.copy2
            copy(REPO / item, src / item)
        sh([PYTHON, "-m", "venv", str(venv)])
        sh([str(venv / "bin" / "pip"), "wheel", "-q", "--no-deps", "-w", str(run_dir / "dist"), str(src)],
           timeout_s=600)
    wheels = sorted((run_dir / "dist").glob("raftq-*.whl"))
    # From the package index on a fresh machine (Locust and its dependencies): minutes, not seconds.
    sh([str(venv / "bin" / "pip"), "install", "-q", f"{wheels[-1]}[load]"], timeout_s=900)
    os.chmod(run_dir, 0o755)


def remove_run_dir(run_dir: Path) -> None:
    """The venv and wheel, then the run directory itself once no host is left in it."""
    shutil.rmtree(run_dir / "venv", ignore_errors=True)
    shutil.rmtree(run_dir / "dist", ignore_errors=True)
    for d in (run_dir / "hosts", run_dir, run_dir.parent):
        try:
            d.rmdir()
        except OSError:
            break  # not empty (another prefix's run, or a host still up) or already gone


# -- leftovers ----------------------------------------------------------------------

def leftovers(prefix: str, subnet: str, run_dir: Path) -> list[str]:
    found = [f"namespace {ns}" for ns in namespaces() if ns.startswith(prefix + "-")]
    if subnet in sh(["ip", "route", "show", "type", "blackhole"], check=False).stdout.split():
        found.append(f"blackhole route {subnet}")
    needle = str(run_dir).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "cmdline").read_bytes():
                    found.append(f"process {proc.name}: {(proc / 'cmdline').read_bytes()[:120]!r}")
            except OSError:
                pass
    if any(str(run_dir) in line for line in Path("/proc/mounts").read_text().splitlines()):
        found.append(f"a mount below {run_dir}")
    if run_dir.exists():
        found.append(f"files in {run_dir}")
    return found


def purge(prefix: str, subnet: str, run_dir: Path) -> list[str]:
    """Everything of a prefix, whatever Terraform's state says (a run killed
    mid-apply): its hosts, its switch, its route, its run directory."""
    removed = []
    for ns in namespaces():
        if ns.startswith(prefix + "-") and ns != switch_ns(prefix):
            host_down(prefix, run_dir, ns[len(prefix) + 1:])
            removed.append(ns)
    if switch_ns(prefix) in namespaces() or subnet in sh(["ip", "route", "show", "type", "blackhole"],
                                                          check=False).stdout.split():
        net_down(prefix, subnet)
        removed.append(f"{switch_ns(prefix)} and the blackhole route {subnet}")
    if run_dir.exists():
        shutil.rmtree(run_dir / "hosts", ignore_errors=True)
        remove_run_dir(run_dir)
        removed.append(str(run_dir))
    return removed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m hostsim.host", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=["net-up", "net-down", "up", "down", "boot", "exec", "systemctl",
                                       "build-venv", "remove-run-dir", "check-clean", "purge"])
    p.add_argument("--prefix", default="rqtf")
    p.add_argument("--subnet", default="10.213.13.0/24")
    p.add_argument("--run-dir", type=Path)
    p.add_argument("--name")
    p.add_argument("--address")
    p.add_argument("--root-dir", type=Path)
    p.add_argument("--user-data", type=Path)
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is the command for the host, untouched by argparse.
    rest = argv[argv.index("--") + 1:] if "--" in argv else []
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.rest = rest
    try:
        if args.command == "net-up":
            net_up(args.prefix, args.subnet)
        elif args.command == "net-down":
            net_down(args.prefix, args.subnet)
        elif args.command == "up":
            user_data = os.environ.get("HOSTSIM_USER_DATA")
            if not user_data:
                raise HostError("HOSTSIM_USER_DATA (the host's cloud-init user_data) is not set")
            host_up(args.prefix, args.run_dir, args.name, args.address, user_data)
        elif args.command == "down":
            host_down(args.prefix, args.run_dir, args.name)
        elif args.command == "boot":
            return boot(args.name, args.root_dir, args.user_data)
        elif args.command == "exec":
            return host_exec(args.run_dir, args.name, args.rest)
        elif args.command == "systemctl":
            return host_exec(args.run_dir, args.name, [PYTHON, "-m", "hostsim.supervisor", "systemctl", *args.rest])
        elif args.command == "build-venv":
            build_venv(args.run_dir)
        elif args.command == "remove-run-dir":
            remove_run_dir(args.run_dir)
        elif args.command == "purge":
            for item in purge(args.prefix, args.subnet, args.run_dir):
                print(f"purged: {item}")
        elif args.command == "check-clean":
            found = leftovers(args.prefix, args.subnet, args.run_dir)
            for item in found:
                print(f"left behind: {item}", file=sys.stderr)
            return 1 if found else 0
    except (HostError, subprocess.SubprocessError) as exc:
        print(f"hostsim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
