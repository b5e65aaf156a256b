"""`raftq top` on a real pseudo-terminal against a real 3-node cluster."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator

import pytest

from cli.terminal import (CLEAR_TO_LINE_END, CLEAR_TO_SCREEN_END, CURSOR_HOME, ENTER_ALT_SCREEN, HIDE_CURSOR,
                          LEAVE_ALT_SCREEN, SHOW_CURSOR)
from tests.integration.harness import REPO, TOKEN, LocalCluster, WorkerProcess
from tests.integration.pty_process import PtyProcess


def _env(cluster: LocalCluster) -> dict[str, str]:
    return {**os.environ, "RAFTQ_CLUSTER": ",".join(cluster.client_addrs), "RAFTQ_TOKEN": TOKEN, "TERM": "xterm"}


@pytest.fixture
def top(module_cluster: LocalCluster) -> Iterator[PtyProcess]:
    proc = PtyProcess(["top", "--interval", "0.3"], _env(module_cluster))
    try:
        yield proc
    finally:
        proc.close()


def _nodes_drawn(proc: PtyProcess, cluster: LocalCluster) -> None:
    """Wait for a frame naming every node, one of them the leader."""
    for addr in cluster.client_addrs:
        proc.read_until(re.escape(addr) + r"\s+(leader|follower)\s+\d+\s+\d+\s+\d+\s+0", timeout=30)


def _assert_terminal_restored(proc: PtyProcess) -> None:
    out = proc.output
    assert out.startswith(ENTER_ALT_SCREEN + HIDE_CURSOR)
    # The last frame is followed by the way out: cursor shown, alternate screen left.
    last_frame = out.rindex(CURSOR_HOME)
    assert out.index(SHOW_CURSOR + LEAVE_ALT_SCREEN, last_frame) > last_frame
    assert out.endswith(SHOW_CURSOR + LEAVE_ALT_SCREEN)
    lflag = proc.terminal_mode()[3]
    assert lflag & termios.ICANON and lflag & termios.ECHO, "cbreak mode not undone"


def test_top_draws_nodes_and_queue_depth_redraws_fits_a_resize_and_quits_on_q(module_cluster: LocalCluster,
                                                                  top: PtyProcess) -> None:
    _nodes_drawn(top, module_cluster)
    top.read_until(r"no queues yet|QUEUE\s+QUEUED", timeout=30)
    frames_before = top.output.count(CURSOR_HOME)

    with module_cluster.client() as client:
        for _ in range(3):  # nothing leases from this queue: its depth stays 3
            client.submit("util.noop", queue="top-depth")
    # Redrawn in place (cursor home, not scrolled) with the new depth: QUEUED 3.
    top.read_until(r"top-depth\s+3\s+0\s+0\s+0", timeout=30)
    assert top.output.count(CURSOR_HOME) > frames_before

    # Resized smaller, the terminal gets frames that fit it.
    top.resize(columns=60, lines=20)
    deadline, since = time.monotonic() + 30, len(top.output)
    while True:
        end = top.read_until(re.escape(CLEAR_TO_SCREEN_END), timeout=30, since=since).end()
        frame = top.output[top.output.rindex(CURSOR_HOME, 0, end) + len(CURSOR_HOME):end - len(CLEAR_TO_SCREEN_END)]
        since = end
        rows = re.split(re.escape(CLEAR_TO_LINE_END) + r"\r*\n", frame.removesuffix(CLEAR_TO_LINE_END))
        if len(rows) <= 20 and max(map(len, rows)) < 60:
            break
        assert time.monotonic() < deadline, f"no frame fitting 60x20 after the resize; the last: {rows}"
    assert rows[0].startswith("raftq top") and "NODES" in rows and "QUEUES" in rows, rows

    top.type("q")
    assert top.wait(timeout=30) == 0
    _assert_terminal_restored(top)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_top_exits_cleanly_on_ctrl_c_and_sigterm(module_cluster: LocalCluster, top: PtyProcess, how: str) -> None:
    _nodes_drawn(top, module_cluster)
    if how == "ctrl-c":
        top.type("\x03")  # the line discipline turns it into SIGINT: cbreak mode keeps signals on
    else:
        os.kill(top.pid, signal.SIGTERM)
    assert top.wait(timeout=30) == 0
    _assert_terminal_restored(top)
    assert "Traceback" not in top.output


def test_top_piped_prints_one_plain_snapshot(module_cluster: LocalCluster) -> None:
    with module_cluster.client() as client:
        client.submit("util.noop", queue="top-piped")
        client.submit("util.noop", queue="top-piped")
    out = subprocess.run([sys.executable, "-m", "cli.main", "top"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=_env(module_cluster))
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout
    for addr in module_cluster.client_addrs:
        assert re.search(re.escape(addr) + r"\s+(leader|follower)\s", out.stdout), out.stdout
    assert re.search(r"^top-piped\s+2\s+0\s+0\s+0\s+-\s+-\s+-$", out.stdout, re.M), out.stdout

    once = subprocess.run([sys.executable, "-m", "cli.main", "top", "--once"], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=_env(module_cluster))
    assert once.returncode == 0 and "\x1b" not in once.stdout and "NODES" in once.stdout, once.stderr


def test_top_shows_an_unreachable_node_and_failures_newest_first(make_cluster: Callable[..., LocalCluster]) -> None:
    cluster = make_cluster()
    worker = WorkerProcess(cluster, "top-fail")
    try:
        with cluster.client() as client:
            for message in ("older boom", "newer boom"):
                job = client.submit("util.fail", {"message": message, "retryable": False}, max_attempts=1)
                assert client.result(job, timeout=60)["state"] == "failed"
    finally:
        worker.stop()
    follower = next(i for i in (1, 2, 3) if i != cluster.leader_id())
    cluster.kill(follower)

    out = subprocess.run([sys.executable, "-m", "cli.main", "top"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env=_env(cluster))
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^{follower}\s+{re.escape(cluster.client_addrs[follower - 1])}\s+unreachable\s", out.stdout,
                     re.M), out.stdout
    assert "RECENT FAILURES (dead letters: 2)" in out.stdout
    assert out.stdout.index("newer boom") < out.stdout.index("older boom"), out.stdout
