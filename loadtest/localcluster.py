"""A fresh local raftq cluster for benchmarks and load tests.

`BenchCluster` writes a `raftq dev`-style config (loopback, one data dir) with
ports that were free a moment ago, starts one `raftq node` process per node
and can SIGKILL the leader by PID. Only the processes it started are ever
signalled. Used by `loadtest/bench.py` and `loadtest/run_locust.py`; the tests
have their own harness (tests/integration/harness.py).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cluster.client import Client
from cluster.config import ClusterConfig, NodeSpec, render_config
from cluster.errors import RaftqError

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-H6t2Ry9QwX4kT8"  # passes the config-load strength rule


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


class BenchCluster:
    """N raftq node processes on loopback, started and stopped by PID."""

    def __init__(self, root: Path, nodes: int = 3, durability: str = "fsync",
                 max_live_jobs: int = 2_000_000, extra_env: dict[str, str] | None = None) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        ports = free_ports(3 * nodes)
        specs = tuple(NodeSpec(id=i + 1, client=f"127.0.0.1:{ports[i]}", raft=f"127.0.0.1:{ports[nodes + i]}",
                               http=f"127.0.0.1:{ports[2 * nodes + i]}") for i in range(nodes))
        self.cfg = ClusterConfig(secret=os.urandom(24).hex(), token=TOKEN, data_dir=self.root / "data",
                                 durability=durability, max_live_jobs=max_live_jobs, nodes=specs)
        self.config_path = self.root / "cluster.toml"
        self.config_path.write_text(render_config(self.cfg))
        self.addrs = [s.client for s in specs]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}

    def start(self, node_id: int | None = None, timeout_s: float = 30.0) -> None:
        (self.root / "logs").mkdir(exist_ok=True)
        for i in [node_id] if node_id else [s.id for s in self.cfg.nodes]:
            with open(self.root / "logs" / f"node-{i}.log", "ab") as log:
                self.procs[i] = subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "node", "--config", str(self.config_path), "--id", str(i)],
                    cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        if node_id is None:
            self.leader_id(timeout_s)

    def client(self, timeout_s: float = 20.0) -> Client:
        return Client(list(self.addrs), token=TOKEN, timeout_s=timeout_s)

    def leader_id(self, timeout_s: float = 30.0) -> int:
        """Poll until a live node reports itself leader; return its id."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, proc in self.procs.items():
                if proc.poll() is not None:
                    continue
                try:
                    with Client([self.addrs[i - 1]], token=TOKEN, timeout_s=1.0) as c:
                        st = c.cluster_status()
                except (RaftqError, OSError):
                    continue
                if st.get("leader") == self.addrs[i - 1]:
                    return i
            time.sleep(0.05)
        raise RuntimeError(f"no leader within {timeout_s}s; logs in {self.root / 'logs'}")

    def pid(self, node_id: int) -> int:
        return self.procs[node_id].pid

    def kill(self, node_id: int) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=20)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __enter__(self) -> "BenchCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
