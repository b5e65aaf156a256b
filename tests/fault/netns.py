"""Hosts as network namespaces on a private bridge, and the faults between them.

Layout of one run (prefix `rqf<runner pid>-`, so concurrent runs never meet):

    <prefix>br     a namespace holding bridge `br0` and one veth end per host
    <prefix><host> one namespace per host (n1..n3, w1.., c1.., ctl), with `lo`
                   and `eth0` = 10.213.0.<octet>/24, the other end on br0

No interface, route or rule is ever created in the root namespace, so traffic
between hosts cannot leave these namespaces. Partitions and packet loss are
iptables rules *inside* a host's namespace (INPUT / OUTPUT), removed by
flushing that namespace's tables.

Cleanup: `Net.destroy()` kills every process still inside our namespaces (they
are all ours: only this module starts processes there) and deletes them.
`cleanup_stale()` does the same for namespaces of an earlier run whose runner
pid is gone (a crash or a kill -9 of the runner).

`ThreadInNetns` gives the runner (which lives in the root namespace) a thread
whose sockets are created inside the `ctl` namespace (setns(2) changes only the
calling thread's network namespace), so the runner can talk to the cluster.
"""
from __future__ import annotations

import concurrent.futures
import ctypes
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, TypeVar

T = TypeVar("T")

PREFIX = "rqf"
SUBNET = "10.213.0"
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class NetError(RuntimeError):
    """A namespace/bridge/iptables command failed."""


def _run(args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def can_run() -> str | None:
    """None if this process can build the network, else the reason it cannot."""
    if os.geteuid() != 0:
        return "the fault suite needs root (network namespaces, iptables, tmpfs); run it as root"
    for tool in ("ip", "iptables", "nsenter"):
        if _run(["sh", "-c", f"command -v {tool}"], check=False).returncode != 0:
            return f"{tool} is not installed (apt-get install -y iproute2 iptables faketime util-linux)"
    return None


def _ns_pids(ns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def _delete_ns(ns: str) -> None:
    for _ in range(3):
        pids = _ns_pids(ns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_gone(pids)
    _run(["ip", "netns", "del", ns], check=False)


def _wait_gone(pids: list[int], timeout_s: float = 5.0) -> None:
    import time
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and _state(p) != "Z" for p in pids):
            return
        time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def cleanup_stale() -> list[str]:
    """Delete namespaces (and unmount tmpfs) left by runs whose runner is dead."""
    removed = []
    names = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    for line in names:
        name = line.split(" ")[0].strip()
        m = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _delete_ns(name)
            removed.append(name)
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        m = re.search(rf"/{PREFIX}-(\d+)-", parts[1]) if len(parts) > 1 else None
        if parts and parts[0] == "tmpfs" and m and not Path(f"/proc/{m.group(1)}").exists():
            _run(["umount", "-l", parts[1]], check=False)
            removed.append(parts[1])
    return removed


class Net:
    """One run's bridge and hosts. `hosts` maps a host name to its last address octet."""

    def __init__(self, hosts: dict[str, int]) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}-"
        self.bridge_ns = self.prefix + "br"
        self.hosts = dict(hosts)
        self.created: list[str] = []

    def ns(self, host: str) -> str:
        return self.prefix + host

    def ip(self, host: str) -> str:
        return f"{SUBNET}.{self.hosts[host]}"

    def create(self) -> None:
        try:
            self._add_ns(self.bridge_ns)
            br = ["ip", "netns", "exec", self.bridge_ns]
            _run(br + ["ip", "link", "add", "br0", "type", "bridge"])
            _run(br + ["ip", "link", "set", "br0", "up"])
            _run(br + ["ip", "link", "set", "lo", "up"])
            for host in self.hosts:
                ns = self.ns(host)
                self._add_ns(ns)
                _run(br + ["ip", "link", "add", f"v-{host}", "type", "veth", "peer", "name", "eth0", "netns", ns])
                _run(br + ["ip", "link", "set", f"v-{host}", "master", "br0"])
                _run(br + ["ip", "link", "set", f"v-{host}", "up"])
                inside = ["ip", "netns", "exec", ns]
                _run(inside + ["ip", "addr", "add", f"{self.ip(host)}/24", "dev", "eth0"])
                _run(inside + ["ip", "link", "set", "eth0", "up"])
                _run(inside + ["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.destroy()
            raise

    def _add_ns(self, ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        self.created.append(ns)

    def destroy(self) -> None:
        for ns in reversed(self.created):
            _delete_ns(ns)
        self.created.clear()

    def exec_args(self, host: str) -> list[str]:
        """Prefix that runs a command inside `host` (ip netns exec execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns(host)]

    # ---- faults -----------------------------------------------------------

    def iptables(self, host: str, *rule: str) -> None:
        _run(self.exec_args(host) + ["iptables", *rule])

    def block(self, host: str, peer: str, *, inbound: bool = True, outbound: bool = True) -> None:
        """Drop traffic between `host` and `peer` as seen from inside `host`."""
        if inbound:
            self.iptables(host, "-A", "INPUT", "-s", self.ip(peer), "-j", "DROP")
        if outbound:
            self.iptables(host, "-A", "OUTPUT", "-d", self.ip(peer), "-j", "DROP")

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        """Full two-way partition between two groups of hosts."""
        for a in side_a:
            for b in side_b:
                self.block(a, b)
                self.block(b, a)

    def lose(self, host: str, probability: float) -> None:
        """Drop a random fraction of the packets `host` receives (iptables statistic)."""
        self.iptables(host, "-A", "INPUT", "-i", "eth0", "-m", "statistic", "--mode", "random",
                      "--probability", f"{probability:.3f}", "-j", "DROP")

    def heal(self) -> None:
        for host in self.hosts:
            _run(self.exec_args(host) + ["iptables", "-F"], check=False)


class ThreadInNetns:
    """Run callables on one thread that lives in a namespace (its sockets do too)."""

    def __init__(self, ns: str) -> None:
        self._ns = ns
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(NETNS_DIR / self._ns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise NetError(f"setns({self._ns}) failed: errno {ctypes.get_errno()}")
        finally:
            os.close(fd)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
