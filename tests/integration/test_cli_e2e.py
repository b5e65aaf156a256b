"""The `raftq` command line against real nodes and a real worker process."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from cli.dev import dev_token
from cluster.config import load_config
from tests.integration.harness import REPO, TOKEN, LocalCluster, WorkerProcess, free_ports, wait_until


def _free_dev_base() -> int:
    """A base port whose whole `raftq dev` layout (BASE+i, +100+i, +200+i) is free now."""
    for _ in range(50):
        base = free_ports(1)[0]
        if base + 210 > 65535:
            continue
        wanted = [base + off + i for off in (0, 100, 200) for i in range(3)]
        try:
            socks = []
            for port in wanted:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise AssertionError("no free port range for raftq dev")


def raftq(cluster: LocalCluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAFTQ_CLUSTER": cluster.client_addrs[0],
                                                "RAFTQ_TOKEN": TOKEN})


def test_submit_wait_status_list_cancel_stats(cluster: LocalCluster) -> None:
    worker = WorkerProcess(cluster, "cli")
    try:
        out = raftq(cluster, "submit", "text.wordcount", "--arg", "text=the cat and the hat", "--wait")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout.strip().splitlines()[-1])["words"] == 5

        out = raftq(cluster, "submit", "math.primes", "--arg-json", "n=1000", "--id", "primes-1000", "--priority", "5")
        assert out.returncode == 0 and out.stdout.strip() == "primes-1000"
        out = raftq(cluster, "result", "primes-1000", "--wait", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"]["count"] == 168
        status = json.loads(raftq(cluster, "status", "primes-1000", "--json").stdout)
        assert status["state"] == "succeeded" and status["priority"] == 5 and status["attempts"] == 1
        assert status["finished_at"] >= status["started_at"] >= status["created_at"] > 0

        out = raftq(cluster, "submit", "util.fail", "--arg", "message=boom", "--max-attempts", "1", "--wait")
        assert out.returncode != 0 and "boom" in out.stderr and "Traceback" not in out.stderr

        out = raftq(cluster, "submit", "util.noop", "--queue", "nobody-serves-this", "--id", "to-cancel")
        assert out.returncode == 0
        assert raftq(cluster, "cancel", "to-cancel").returncode == 0
        assert json.loads(raftq(cluster, "status", "to-cancel", "--json").stdout)["state"] == "cancelled"

        listed = json.loads(raftq(cluster, "list", "--state", "succeeded", "--json").stdout)
        jobs = listed["jobs"] if isinstance(listed, dict) else listed
        assert "primes-1000" in {j["id"] for j in jobs}
        stats = json.loads(raftq(cluster, "stats", "--json").stdout)
        assert stats["jobs"]["succeeded"] >= 2 and stats["jobs"]["cancelled"] == 1
        assert raftq(cluster, "stats").returncode == 0
        assert raftq(cluster, "list").returncode == 0
        assert raftq(cluster, "cluster", "status").returncode == 0
    finally:
        worker.stop()


def test_user_mistakes_print_one_line(cluster: LocalCluster) -> None:
    for args in (["status", "no-such-job"], ["submit", "util.noop", "--priority", "high"],
                 ["submit", "util.noop", "--args-json", "{nope"], ["cancel", "no-such-job"]):
        out = raftq(cluster, *args)
        assert out.returncode != 0, args
        assert "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, (args, out.stderr)
    out = subprocess.run([sys.executable, "-m", "cli.main", "status", "x", "--cluster", "127.0.0.1:1",
                          "--token", TOKEN], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_dev_starts_a_cluster_with_workers_and_recovers_on_rerun(tmp_path: Path) -> None:
    base = _free_dev_base()
    data = tmp_path / "dev"
    env = dict(os.environ)

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "cli.main", "dev", "--data-dir", str(data), "--port", str(base),
                                 "--workers", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", *args, "--cluster", f"127.0.0.1:{base}"],
                              cwd=REPO, capture_output=True, text=True, timeout=60, env=env)

    dev = start()
    try:
        # The producer credential raftq dev made; the rerun below must keep it.
        wait_until(lambda: (data / "cluster.toml").exists(), 60, "raftq dev to write its config")
        env["RAFTQ_TOKEN"] = dev_token(load_config(data / "cluster.toml"), "producer")
        try:
            wait_until(lambda: cli("cluster", "status", "--json").returncode == 0 and
                       json.loads(cli("cluster", "status", "--json").stdout)["leader"], 60,
                       "raftq dev to elect a leader")
        except AssertionError:
            dev.send_signal(signal.SIGINT)
            print(dev.communicate(timeout=40)[0])
            for log in sorted((data / "logs").glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")
            raise
        out = cli("submit", "math.factorial", "--arg-json", "n=20", "--id", "fact-20", "--wait")
        assert out.returncode == 0, out.stderr
        assert "2432902008176640000" in out.stdout
    finally:
        if dev.poll() is None:
            dev.send_signal(signal.SIGINT)
        output = dev.communicate(timeout=40)[0] or ""
    assert dev.returncode == 0, output
    assert f"127.0.0.1:{base}" in output
    assert f"RAFTQ_TOKEN={env['RAFTQ_TOKEN']}" in output  # how to use the producer credential

    dev = start()
    try:
        out = wait_until(lambda: (r := cli("status", "fact-20", "--json")).returncode == 0 and r, 60,
                         "the restarted dev cluster to answer")
        assert json.loads(out.stdout)["state"] == "succeeded"
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.communicate(timeout=40)
    assert dev.returncode == 0
