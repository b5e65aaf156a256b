"""What a newcomer gets wrong, through the `raftq` command line against real
nodes: each mistake is one `error:` line and a non-zero exit that says which
(cli/exit_codes.py), never a traceback, a hang or a silent other meaning."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import exit_codes
from tests.integration.harness import REPO, TOKEN, LocalCluster, WorkerProcess, wait_until

# A documentation address (RFC 5737): on no host, so binding it must fail.
NOT_THIS_HOST = "192.0.2.1"


def raftq(cluster: LocalCluster, *args: str, node: int = 1, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "RAFTQ_CLUSTER": cluster.client_addrs[node - 1],
                                                "RAFTQ_TOKEN": TOKEN})


def one_error_line(out: subprocess.CompletedProcess[str], code: int, before: tuple[str, ...] = ()) -> str:
    """The single `error:` line of a command that exited `code`, after exactly the lines `before`."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and tuple(lines[:-1]) == before, out.stderr
    assert lines[-1].startswith("error: "), out.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def worker(module_cluster: LocalCluster) -> Iterator[WorkerProcess]:
    w = WorkerProcess(module_cluster, "mistakes")
    yield w
    w.stop()


# ------------------------------------------------------------ one meaning per flag, exit codes


def test_wait_timeout_returns_with_its_own_exit_code(module_cluster: LocalCluster) -> None:
    """The issue's command: nothing serves the queue, so the wait must give up
    after --wait-timeout (not the default hour) and say so with exit 4."""
    out = raftq(module_cluster, "submit", "util.noop", "--queue", "nobody", "--wait", "--wait-timeout", "3",
                "--id", "waits-for-nobody", timeout=60)
    line = one_error_line(out, exit_codes.NOT_FINISHED, before=("submitted waits-for-nobody, waiting...",
                                                                 "waits-for-nobody queued"))  # piped progress line
    assert "waits-for-nobody" in line and "still queued" in line and "--wait-timeout 3" in line
    status = json.loads(raftq(module_cluster, "status", "waits-for-nobody", "--json").stdout)
    assert status["state"] == "queued" and status.get("timeout_s") is None  # no run limit was set

    out = raftq(module_cluster, "result", "waits-for-nobody", "--wait", "--wait-timeout", "1")
    assert "still queued" in one_error_line(out, exit_codes.NOT_FINISHED, before=("waits-for-nobody queued",))
    out = raftq(module_cluster, "result", "waits-for-nobody")
    assert "not finished" in one_error_line(out, exit_codes.NOT_FINISHED)


def test_old_timeout_spellings_keep_working_with_a_note(module_cluster: LocalCluster) -> None:
    out = raftq(module_cluster, "submit", "util.noop", "--queue", "nobody", "--id", "old-timeout", "--timeout", "5")
    assert out.returncode == 0 and out.stdout.strip() == "old-timeout"
    assert out.stderr.strip().splitlines() == ["warning: `raftq submit --timeout` is deprecated; use --run-timeout"]
    assert json.loads(raftq(module_cluster, "status", "old-timeout", "--json").stdout)["timeout_s"] == 5

    out = raftq(module_cluster, "submit", "util.noop", "--queue", "nobody", "--id", "run-timeout",
                "--run-timeout", "7")
    assert out.returncode == 0 and out.stderr == ""
    assert json.loads(raftq(module_cluster, "status", "run-timeout", "--json").stdout)["timeout_s"] == 7

    both = raftq(module_cluster, "submit", "util.noop", "--timeout", "5", "--run-timeout", "7")
    assert "--run-timeout only" in one_error_line(both, exit_codes.USAGE)

    out = raftq(module_cluster, "result", "old-timeout", "--wait", "--timeout", "1")
    line = one_error_line(out, exit_codes.NOT_FINISHED,
                          before=("warning: `raftq result --timeout` is deprecated; use --wait-timeout",
                                  "old-timeout queued"))
    assert "still queued" in line

    out = raftq(module_cluster, "schedule", "add", "old-timeout", "util.noop", "--every", "3600", "--timeout", "9",
                "--queue", "nobody", "--json")
    assert out.returncode == 0 and "deprecated; use --run-timeout" in out.stderr
    [sched] = [s for s in json.loads(raftq(module_cluster, "schedule", "list", "--json").stdout)
               if s["name"] == "old-timeout"]
    assert sched["job"]["timeout_ms"] == 9000


def test_job_outcomes_have_distinct_exit_codes(module_cluster: LocalCluster, worker: WorkerProcess) -> None:
    out = raftq(module_cluster, "submit", "text.wordcount", "--arg", "text=a b c", "--wait", "--wait-timeout", "60")
    assert out.returncode == exit_codes.OK, out.stderr
    out = raftq(module_cluster, "submit", "util.fail", "--arg", "message=boom", "--max-attempts", "1",
                "--id", "fails", "--wait", "--wait-timeout", "60")
    assert out.returncode == exit_codes.JOB_NOT_SUCCEEDED and "boom" in out.stderr and "Traceback" not in out.stderr
    assert "boom" in one_error_line(raftq(module_cluster, "result", "fails"), exit_codes.JOB_NOT_SUCCEEDED)

    raftq(module_cluster, "submit", "util.noop", "--queue", "nobody", "--id", "to-cancel")
    assert raftq(module_cluster, "cancel", "to-cancel").returncode == 0
    out = raftq(module_cluster, "result", "to-cancel", "--wait")
    assert "cancelled" in one_error_line(out, exit_codes.JOB_NOT_SUCCEEDED)


def test_help_documents_the_exit_codes() -> None:
    for command in ("submit", "result"):
        out = subprocess.run([sys.executable, "-m", "cli.main", command, "--help"], cwd=REPO, capture_output=True,
                             text=True, timeout=60)
        for code, meaning in exit_codes.TABLE:
            assert f"{code}  {meaning}" in out.stdout
    assert exit_codes.markdown() in (REPO / "README.md").read_text()


# ------------------------------------------------------------ a reused --id


def test_reused_id_with_another_spec_is_a_conflict_naming_the_job(module_cluster: LocalCluster,
                                                                   worker: WorkerProcess) -> None:
    out = raftq(module_cluster, "submit", "text.wordcount", "--arg", "text=one two", "--id", "reused", "--wait",
                "--wait-timeout", "60")
    assert out.returncode == 0, out.stderr
    # The trap: another type under the same id used to print the old job's result and exit 0.
    out = raftq(module_cluster, "submit", "util.sleep", "--arg-json", "seconds=1", "--id", "reused", "--wait")
    line = one_error_line(out, exit_codes.ERROR)
    assert "'reused'" in line and "text.wordcount" in line and "succeeded" in line and "type" in line
    line = one_error_line(raftq(module_cluster, "submit", "text.wordcount", "--arg", "text=other", "--id", "reused"),
                          exit_codes.ERROR)
    assert "args" in line and "text.wordcount" in line
    # the very same submit again is a repeat: the job it made
    again = raftq(module_cluster, "submit", "text.wordcount", "--arg", "text=one two", "--id", "reused", "--wait")
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["words"] == 2


# ------------------------------------------------------------ errors that used to be INTERNAL or a traceback


def test_a_cron_that_never_fires_is_bad_input(module_cluster: LocalCluster) -> None:
    out = raftq(module_cluster, "schedule", "add", "never", "util.noop", "--cron", "0 0 31 2 *")
    line = one_error_line(out, exit_codes.ERROR)
    assert "no next fire time" in line and "INTERNAL" not in line and "internal" not in line


def test_help_ranges_are_the_servers(module_cluster: LocalCluster) -> None:
    assert raftq(module_cluster, "list", "--limit", "1000", "--json").returncode == 0
    out = raftq(module_cluster, "list", "--limit", "10000")
    assert "1<=x<=1000" in one_error_line(out, exit_codes.USAGE)
    assert "x>=0" in one_error_line(raftq(module_cluster, "list", "--cursor", "-1"), exit_codes.USAGE)


def test_a_node_started_twice_or_on_another_hosts_address(module_cluster: LocalCluster, tmp_path: Path) -> None:
    config = str(module_cluster.config_path)
    out = raftq(module_cluster, "node", "--config", config, "--id", "1")
    line = one_error_line(out, exit_codes.ERROR)
    assert "node 1 refuses to start: already running" in line and "node-1" in line
    assert module_cluster.alive() == [1, 2, 3]  # and the running one is untouched

    # The same addresses under another data dir: the ports are taken.
    other_dir = module_cluster.config_path.read_text().replace(str(module_cluster.root / "data"), str(tmp_path))
    (tmp_path / "other.toml").write_text(other_dir)
    out = raftq(module_cluster, "node", "--config", str(tmp_path / "other.toml"), "--id", "1")
    assert "port in use" in one_error_line(out, exit_codes.ERROR)

    # The README's kind of config, on a host that lacks its addresses.
    foreign = module_cluster.config_path.read_text().replace("127.0.0.1", NOT_THIS_HOST)
    foreign = foreign.replace(str(module_cluster.root / "data"), str(tmp_path / "foreign"))
    (tmp_path / "foreign.toml").write_text(foreign)
    out = raftq(module_cluster, "node", "--config", str(tmp_path / "foreign.toml"), "--id", "2")
    line = one_error_line(out, exit_codes.ERROR)
    assert f"cannot bind {NOT_THIS_HOST}:" in line and "address not available on this host" in line


# ------------------------------------------------------------ quorum loss


def test_quorum_loss_is_reported_as_such(make_cluster) -> None:  # type: ignore[no-untyped-def]
    cluster = make_cluster()
    out = raftq(cluster, "cluster", "status", "--json")
    assert {n["role"] for n in json.loads(out.stdout)["nodes"]} <= {"leader", "follower"}

    leader = cluster.leader_id()
    survivor = next(i for i in (1, 2, 3) if i != leader)
    for i in (1, 2, 3):
        if i != survivor:
            cluster.kill(i, signal.SIGKILL)

    def reported() -> str | None:
        out = raftq(cluster, "status", "any-job", "--request-timeout", "3", node=survivor)
        line = one_error_line(out, exit_codes.ERROR)
        return line if "no quorum" in line else None

    line = wait_until(reported, 60, "a no-quorum error", interval=0.5)
    assert f"no quorum: 1 of 3 nodes reachable (node {survivor}: no leader, term " in line
    assert "Connection refused" not in line
    dead = [cluster.client_addrs[i - 1] for i in (1, 2, 3) if i != survivor]
    assert all(addr in line for addr in dead)  # named as unreachable

    status = json.loads(raftq(cluster, "cluster", "status", "--json", node=survivor).stdout)
    assert status["leader"] is None
    roles = {n["id"]: n["role"] for n in status["nodes"]}
    assert roles[survivor] != "leader" and all(roles[i] == "unreachable" for i in (1, 2, 3) if i != survivor)
    table = raftq(cluster, "cluster", "status", node=survivor).stdout
    assert table.count("unreachable") == 2 and f"no quorum: 1 of 3 nodes reachable from node {survivor}" in table
