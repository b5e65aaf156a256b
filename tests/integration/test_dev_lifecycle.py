"""`raftq dev` takes its nodes and workers with it however it ends, and a
rerun clears what a crashed run left (cli/dev_run.py). Real processes: the
supervisor is started as a user would, then hung up on or SIGKILLed."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from cli.dev import dev_token, write_config
from cli.dev_run import RUN_RECORD, Proc, RunRecord, start_time
from cluster.config import CONFIG_FILENAME, dev_config, load_config
from tests.integration.harness import REPO, wait_until
from tests.integration.test_cli_e2e import _free_dev_base

GONE_WITHIN_S = 45  # bounded: idle workers and nodes stop in a second or two; slack for a loaded box


def _start_dev(data: Path, base: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "dev", "--data-dir", str(data), "--port", str(base),
                             "--durability", "none", *extra], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _children_once_up(dev: subprocess.Popen[str], data: Path, count: int) -> list[Proc]:
    """The children the run record lists once all `count` were started."""
    def recorded() -> list[Proc] | None:
        if dev.poll() is not None:
            raise AssertionError(f"raftq dev exited early:\n{dev.communicate()[0]}")
        record = RunRecord.load(data)
        mine = record is not None and record.supervisor.pid == dev.pid  # not a crashed run's
        return record.children if mine and len(record.children) == count else None
    children = wait_until(recorded, 90, f"raftq dev to start {count} children")
    assert all(c.running() for c in children)
    return children


def _cli(base: int, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    token = dev_token(load_config(data / CONFIG_FILENAME), "producer")
    return subprocess.run([sys.executable, "-m", "cli.main", *args, "--cluster", f"127.0.0.1:{base}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "RAFTQ_TOKEN": token})


def _assert_all_gone(children: list[Proc]) -> None:
    wait_until(lambda: not any(c.running() for c in children), GONE_WITHIN_S,
               "every node and worker of raftq dev to exit")


def _stop(dev: subprocess.Popen[str]) -> str:
    if dev.poll() is None:
        dev.send_signal(signal.SIGINT)
    return dev.communicate(timeout=60)[0] or ""


def test_sighup_stops_every_node_and_worker(tmp_path: Path) -> None:
    base, data = _free_dev_base(), tmp_path / "dev"
    dev = _start_dev(data, base)
    try:
        children = _children_once_up(dev, data, 5)  # 3 nodes, 2 workers
        assert len({os.getpgid(c.pid) for c in children}) == 1  # one process group...
        assert os.getpgid(children[0].pid) != os.getpgid(dev.pid)  # ...not the terminal's (the supervisor's)

        # A second run on the same data dir is refused while this one lives.
        second = subprocess.run([sys.executable, "-m", "cli.main", "dev", "--data-dir", str(data),
                                 "--port", str(base)], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip() == (f"error: raftq dev (pid {dev.pid}) is already running with this data "
                                         f"dir: stop it first (Ctrl-C in its terminal, or kill {dev.pid})")
        assert all(c.running() for c in children)  # and it touched nothing

        dev.send_signal(signal.SIGHUP)  # the terminal closed
        dev.wait(timeout=60)
        _assert_all_gone(children)
    finally:
        output = _stop(dev)
    assert dev.returncode == 0, output
    assert not (data / RUN_RECORD).exists()  # a clean stop leaves nothing for a rerun to clear


def test_sigkill_takes_the_children_and_a_rerun_recovers(tmp_path: Path) -> None:
    base, data = _free_dev_base(), tmp_path / "dev"
    dev = _start_dev(data, base)
    try:
        children = _children_once_up(dev, data, 5)
        dev.kill()  # no handler runs: the children's parent-death signal must do it
        dev.wait(timeout=30)
        _assert_all_gone(children)
    finally:
        _stop(dev)
    assert (data / RUN_RECORD).exists()  # the crashed run's record stays behind...

    dev = _start_dev(data, base)  # ...and the rerun starts on the same ports
    try:
        _children_once_up(dev, data, 5)
        wait_until(lambda: _cli(base, data, "cluster", "status").returncode == 0, 60, "the rerun to answer")
    finally:
        output = _stop(dev)
    assert dev.returncode == 0, output
    # Its children were gone already: nothing to stop, nothing refused.
    assert "left running" not in output and "already running" not in output and "in use" not in output


def test_a_rerun_stops_what_a_crashed_run_left_and_only_that(tmp_path: Path) -> None:
    """A crashed run whose node survived it (say it was stuck in the kernel, or
    the run predates the parent-death signal): the node holds the client port.
    Beside it, the record names a pid the kernel has since given to another
    program (its start time differs): that one must not be touched."""
    base, data = _free_dev_base(), tmp_path / "dev"
    cfg = dev_config(data, nodes=3, base_port=base, durability="none")
    write_config(cfg, data / CONFIG_FILENAME)
    left_node = subprocess.Popen([sys.executable, "-m", "cli.main", "node", "--config", str(data / CONFIG_FILENAME),
                                  "--id", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    dead_supervisor = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_supervisor.wait()
    try:
        wait_until(lambda: _port_taken(base), 60, "the leftover node to listen")
        record = RunRecord(data / RUN_RECORD, Proc("raftq dev", dead_supervisor.pid, 1))
        record.children = [Proc("node-1", left_node.pid, start_time(left_node.pid) or 0),
                           Proc("worker-1", stranger.pid, (start_time(stranger.pid) or 0) - 1)]
        record.save()

        dev = _start_dev(data, base, "--workers", "1")
        try:
            _children_once_up(dev, data, 4)
            left_node.wait(timeout=30)  # stopped by the rerun (it is our child: reap it here)
            wait_until(lambda: _cli(base, data, "cluster", "status").returncode == 0, 60, "the rerun to answer")
        finally:
            output = _stop(dev)
        assert dev.returncode == 0, output
        assert (f"raftq dev: stopped 1 process(es) an earlier run of {data} left running: "
                f"node-1 (pid {left_node.pid})") in output
        assert stranger.poll() is None  # a reused pid is never signalled
    finally:
        for proc in (left_node, stranger):
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def test_ports_held_by_another_program_are_refused_in_one_line(tmp_path: Path) -> None:
    base, data = _free_dev_base(), tmp_path / "dev"
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base))
        squatter.listen()
        out = subprocess.run([sys.executable, "-m", "cli.main", "dev", "--data-dir", str(data), "--port", str(base)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip() == (f"error: port {base} (nodes[id=1].client) is already in use by a process no "
                                  f"raftq dev run of {data} recorded: stop it, or pick other ports with --port")


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
