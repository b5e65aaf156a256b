"""Real raftq node and worker processes on loopback, for integration tests.

`LocalCluster` writes one cluster TOML, starts each node as `python -m cli.main
node`, and can kill (SIGKILL), stop (SIGTERM), pause and restart them by PID.
Every wait polls a condition with a deadline. Only the processes started here
are ever signalled.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from cluster.client import Client
from loadtest.localcluster import free_ports  # one definition for tests and benchmarks
from cluster.errors import RaftqError

REPO = Path(__file__).resolve().parents[2]
# Strong enough for the config-load rule (cluster/config.py check_token_strength);
# the legacy single token, so every test client holds every role.
TOKEN = "integration-test-token-7Qm2xVt9LpR4"


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (RaftqError, OSError) as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 3, durability: str = "none", lease_ttl_s: float = 30.0,
                 extra_config: str = "", nofile: int | None = None) -> None:
        """`nofile`: start the nodes with this RLIMIT_NOFILE, soft and hard (fd-exhaustion tests)."""
        self.root = root
        self.nofile = nofile
        root.mkdir(parents=True, exist_ok=True)
        self.n = nodes
        ports = free_ports(3 * nodes)
        self.client_addrs = [f"127.0.0.1:{ports[i]}" for i in range(nodes)]
        self.raft_addrs = [f"127.0.0.1:{ports[nodes + i]}" for i in range(nodes)]
        self.http_addrs = [f"127.0.0.1:{ports[2 * nodes + i]}" for i in range(nodes)]
        self.config_path = root / "cluster.toml"
        lines = [
            'secret = "integration-test-secret-0123456789"',
            f'token = "{TOKEN}"',
            f'data_dir = "{root / "data"}"',
            f'durability = "{durability}"',
            f"lease_ttl_s = {lease_ttl_s}",
            extra_config,
        ]
        for i in range(nodes):
            lines += ["", "[[nodes]]", f"id = {i + 1}", f'client = "{self.client_addrs[i]}"',
                      f'raft = "{self.raft_addrs[i]}"', f'http = "{self.http_addrs[i]}"']
        self.config_path.write_text("\n".join(lines) + "\n")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        (root / "logs").mkdir(parents=True, exist_ok=True)

    # ---- processes -------------------------------------------------------

    def start(self, node_id: int | None = None) -> None:
        ids = [node_id] if node_id is not None else list(range(1, self.n + 1))
        for i in ids:
            log = open(self.root / "logs" / f"node-{i}.log", "ab")
            self.procs[i] = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "node", "--config", str(self.config_path), "--id", str(i)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=None if self.nofile is None else self._limit_files)
            log.close()

    def _limit_files(self) -> None:  # in the child, before exec
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=20)

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def stop(self) -> None:
        for i, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def log_tail(self, node_id: int, lines: int = 40) -> str:
        path = self.root / "logs" / f"node-{node_id}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ---- clients ---------------------------------------------------------

    def client(self, node_ids: list[int] | None = None, timeout_s: float = 20.0) -> Client:
        addrs = [self.client_addrs[i - 1] for i in (node_ids or range(1, self.n + 1))]
        return Client(addrs, token=TOKEN, timeout_s=timeout_s)

    def node_client(self, node_id: int) -> Client:
        """A client pinned to one node (it may still follow redirects)."""
        return Client([self.client_addrs[node_id - 1]], token=TOKEN, timeout_s=5.0)

    def leader_id(self, timeout: float = 30.0, among: list[int] | None = None) -> int:
        candidates = among or self.alive()

        def find() -> int | None:
            for i in candidates:
                with self.node_client(i) as c:
                    status = c.cluster_status()
                leader = status.get("leader")
                if leader and leader in self.client_addrs:
                    lid = self.client_addrs.index(leader) + 1
                    if lid in candidates:
                        # Confirm with the leader itself.
                        with self.node_client(lid) as c2:
                            if c2.cluster_status().get("self") == lid and _role(c2.cluster_status(), lid) == "leader":
                                return lid
            return None

        return wait_until(find, timeout, "a leader")

    def digests(self, node_ids: list[int]) -> dict[int, tuple[str, int]]:
        out = {}
        for i in node_ids:
            with self.node_client(i) as c:
                d = c.digest()
            out[i] = (d["digest"], d["last_applied"])
        return out

    def wait_replicas_equal(self, node_ids: list[int], timeout: float = 30.0) -> str:
        def same() -> str | None:
            d = self.digests(node_ids)
            values = {v[0] for v in d.values()}
            return values.pop() if len(values) == 1 else None

        return wait_until(same, timeout, f"equal state digests on nodes {node_ids}", interval=0.2)


def _role(status: dict[str, Any], node_id: int) -> str | None:
    for n in status.get("nodes", []):
        if n.get("id") == node_id:
            return n.get("role")
    return None


class WorkerProcess:
    def __init__(self, cluster: LocalCluster, name: str, extra_args: list[str] | None = None) -> None:
        log = open(cluster.root / "logs" / f"worker-{name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker", "--cluster", ",".join(cluster.client_addrs),
             "--token", TOKEN, "--name", name, "--workdir", str(cluster.root / f"work-{name}"),
             *(extra_args or [])],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
