"""A raftq cluster spread over network namespaces: nodes, workers, clients.

Hosts: n1..n3 (10.213.0.11-13) run `python -m cli.main node` (or, with a bug
injected, `python -m tests.fault.buggy_node BUG node`), w1..wK
(10.213.0.21..) run `python -m cli.main worker --import tests.fault.jobs`,
c1..cM (10.213.0.31..) run tests/fault/client.py, and `ctl` (10.213.0.2) is
where the runner's own requests come from (a thread in that namespace, see
netns.ThreadInNetns). Each process is started with `ip netns exec`, which
execs it, so the Popen pid is the node/worker itself and signals reach it
directly. Only processes started here are ever signalled.

A node may be started with a skewed wall clock (tests/fault/skewed.py) and with its data dir on
a small tmpfs (disk full); `FaultCluster.close()` stops everything, unmounts,
and deletes the namespaces, whatever state the run ended in.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cluster.client import Client
from cluster.errors import RaftqError
from tests.fault.netns import Net, ThreadInNetns, _run

REPO = Path(__file__).resolve().parents[2]
TOKEN = "fault-suite-token-K3v8Wq2ZmP5n"  # passes the config-load strength rule
CLIENT_PORT, RAFT_PORT, HTTP_PORT = 7700, 7800, 7900


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except (RaftqError, OSError) as exc:
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}" + (f" (last error: {last})" if last else ""))


class FaultCluster:
    def __init__(self, root: Path, workers: int = 2, clients: int = 2, lease_ttl_s: float = 2.0,
                 bug: str | None = None) -> None:
        self.root = root
        self.n = 3
        hosts = {"ctl": 2}
        hosts.update({f"n{i}": 10 + i for i in range(1, self.n + 1)})
        hosts.update({f"w{i}": 20 + i for i in range(1, workers + 1)})
        hosts.update({f"c{i}": 30 + i for i in range(1, clients + 1)})
        self.net = Net(hosts)
        self.workers = [f"w{i}" for i in range(1, workers + 1)]
        self.clients = [f"c{i}" for i in range(1, clients + 1)]
        self.lease_ttl_s = lease_ttl_s
        self.bug = bug
        self.client_addrs = [f"{self.net.ip(f'n{i}')}:{CLIENT_PORT}" for i in range(1, self.n + 1)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.skew: dict[int, str] = {}  # node id -> clock offset in seconds ("+40") for its next start
        self.mounts: list[Path] = []
        self.ctl: ThreadInNetns | None = None
        (root / "logs").mkdir(parents=True, exist_ok=True)
        (root / "records").mkdir(parents=True, exist_ok=True)
        self.config_path = root / "cluster.toml"
        lines = ['secret = "fault-suite-secret-0123456789abcdef"', f'token = "{TOKEN}"',
                 f'data_dir = "{root / "data"}"', 'durability = "fsync"', f"lease_ttl_s = {lease_ttl_s}"]
        for i in range(1, self.n + 1):
            ip = self.net.ip(f"n{i}")
            lines += ["", "[[nodes]]", f"id = {i}", f'client = "{ip}:{CLIENT_PORT}"',
                      f'raft = "{ip}:{RAFT_PORT}"', f'http = "{ip}:{HTTP_PORT}"']
        self.config_path.write_text("\n".join(lines) + "\n")

    # ---- lifecycle ---------------------------------------------------------

    def open(self) -> None:
        self.net.create()
        self.ctl = ThreadInNetns(self.net.ns("ctl"))

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None
        self.net.destroy()
        for mount in self.mounts:
            _run(["umount", "-l", str(mount)], check=False)
        self.mounts.clear()

    def data_dir(self, node_id: int) -> Path:
        return self.root / "data" / f"node-{node_id}"

    def mount_small_disk(self, node_id: int, size_mb: int) -> Path:
        """Put node `node_id`'s data dir on its own tmpfs of `size_mb` (before it starts)."""
        path = self.data_dir(node_id)
        path.mkdir(parents=True, exist_ok=True)
        _run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)])
        self.mounts.append(path)
        return path

    def _spawn(self, key: str, host: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / "logs" / f"{key}.log", "ab")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        prefix = self.net.exec_args(host)
        self.procs[key] = subprocess.Popen(prefix + argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                           env=full_env)
        log.close()

    def start_node(self, node_id: int) -> None:
        """Start node `node_id`: `raftq node`, or one of its test-only wrappers
        when its clock is skewed or a bug is injected (either, not both)."""
        args = ["node", "--config", str(self.config_path), "--id", str(node_id)]
        skew = self.skew.get(node_id)
        if skew and self.bug:
            raise ValueError(f"node {node_id}: a skewed clock and an injected bug ({self.bug}) do not combine")
        if skew:  # seconds, e.g. "+40" (see tests/fault/skewed.py for why not libfaketime)
            argv = [sys.executable, "-m", "tests.fault.skewed", skew] + args
        elif self.bug:  # the node with a known bug the checker must catch
            argv = [sys.executable, "-m", "tests.fault.buggy_node", self.bug] + args
        else:
            argv = [sys.executable, "-m", "cli.main"] + args
        self._spawn(f"n{node_id}", f"n{node_id}", argv)

    def start_nodes(self) -> None:
        for i in range(1, self.n + 1):
            self.start_node(i)

    def start_worker(self, name: str) -> None:
        argv = [sys.executable, "-m", "cli.main", "worker", "--cluster", ",".join(self.client_addrs),
                "--token", TOKEN, "--name", name, "--import", "tests.fault.jobs",
                "--hook", "tests.fault.jobs:FaultRecorder",
                "--lease-ttl", str(self.lease_ttl_s), "--grace", "1", "--threads", "4",
                "--workdir", str(self.root / f"work-{name}")]
        env = {"RAFTQ_FAULT_LOG": str(self.root / "records" / f"worker-{name}.jsonl"), "RAFTQ_FAULT_WORKER": name}
        self._spawn(name, name, argv, env)

    def start_client(self, name: str, *, duration: float, seed: int, threads: int, count: int,
                     job_ms: tuple[int, int]) -> None:
        argv = [sys.executable, "-m", "tests.fault.client", "--nodes", ",".join(self.client_addrs),
                "--token", TOKEN, "--name", name, "--out", str(self.root / "records" / f"client-{name}.jsonl"),
                "--threads", str(threads), "--count", str(count), "--duration", str(duration),
                "--job-ms", f"{job_ms[0]},{job_ms[1]}", "--seed", str(seed)]
        self._spawn(name, name, argv)

    def pid(self, key: str) -> int:
        return self.procs[key].pid

    def alive(self, key: str) -> bool:
        proc = self.procs.get(key)
        return proc is not None and proc.poll() is None

    def signal(self, key: str, sig: int) -> None:
        proc = self.procs[key]
        if proc.poll() is None:
            proc.send_signal(sig)
            if sig == signal.SIGKILL:
                proc.wait(timeout=20)

    def wait_exit(self, key: str, timeout: float) -> bool:
        try:
            self.procs[key].wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    # ---- talking to the cluster (from the ctl namespace) --------------------

    def call(self, fn: Callable[[Client], Any], nodes: list[int] | None = None, timeout_s: float = 5.0) -> Any:
        addrs = [self.client_addrs[i - 1] for i in (nodes or range(1, self.n + 1))]
        assert self.ctl is not None

        def run() -> Any:
            with Client(addrs, token=TOKEN, timeout_s=timeout_s) as c:
                return fn(c)

        return self.ctl.call(run)

    def leader(self, timeout: float = 30.0) -> int:
        """The node that says it leads, confirmed by itself."""
        def find() -> int | None:
            for i in range(1, self.n + 1):
                if not self.alive(f"n{i}"):
                    continue
                try:
                    st = self.call(lambda c: c.cluster_status(), [i], timeout_s=1.0)
                except RaftqError:
                    continue
                if any(n.get("id") == i and n.get("role") == "leader" for n in st.get("nodes", [])):
                    return i
            return None

        return wait_until(find, timeout, "a leader", interval=0.2)

    def digests(self) -> dict[int, tuple[str, int]]:
        out = {}
        for i in range(1, self.n + 1):
            d = self.call(lambda c: c.digest(), [i], timeout_s=2.0)
            out[i] = (d["digest"], d["last_applied"])
        return out

    def all_jobs(self) -> dict[str, dict[str, Any]]:
        def read(c: Client) -> dict[str, dict[str, Any]]:
            jobs: dict[str, dict[str, Any]] = {}
            cursor = None
            for _ in range(10_000):
                page = c.list(limit=1000, cursor=cursor)
                for view in page["jobs"]:
                    jobs[view["id"]] = view
                cursor = page.get("cursor")
                if cursor is None:
                    return jobs
            raise RuntimeError("listing did not end")

        return self.call(read, timeout_s=10.0)

    # ---- records -------------------------------------------------------------

    def records(self, prefix: str) -> list[dict[str, Any]]:
        out = []
        for path in sorted((self.root / "records").glob(f"{prefix}-*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line torn by kill -9
        return out

    def log_tail(self, key: str, lines: int = 30) -> str:
        path = self.root / "logs" / f"{key}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
