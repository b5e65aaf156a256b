"""`submit --wait` / `result --wait` show the job's own progress: redrawn in
place on a real pseudo-terminal, plain lines when piped; the result is unchanged."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.harness import REPO, TOKEN, LocalCluster, WorkerProcess
from tests.integration.pty_process import PtyProcess

# util.sleep reports "slept Xs of Ns" as it goes; a lease TTL of 1.5 s makes
# the worker heartbeat (and so publish that progress) every 0.5 s.
SLEEP_S = 4


@pytest.fixture(scope="module")
def worker(module_cluster: LocalCluster) -> Iterator[WorkerProcess]:
    w = WorkerProcess(module_cluster, "progress", ["--lease-ttl", "1.5"])
    try:
        yield w
    finally:
        w.stop()


def _env(cluster: LocalCluster) -> dict[str, str]:
    return {**os.environ, "RAFTQ_CLUSTER": ",".join(cluster.client_addrs), "RAFTQ_TOKEN": TOKEN, "TERM": "xterm"}


def _raftq(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=_env(cluster))


@pytest.mark.usefixtures("worker")
def test_submit_wait_on_a_terminal_redraws_the_progress_line_then_clears_it(module_cluster: LocalCluster) -> None:
    proc = PtyProcess(["submit", "util.sleep", "--arg-json", f"seconds={SLEEP_S}", "--wait"], _env(module_cluster),
                      columns=100)
    try:
        # The job's own message, drawn in place: carriage return, bar, percentage, message.
        proc.read_until(rf"\r. \w+ running \[#*\.*\] +\d+% slept \d\.\ds of {SLEEP_S}s", timeout=60)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.close()
    out = proc.output
    drawn = re.findall(r"\r([^\r\n]*)\x1b\[K", out)
    progress = [d for d in drawn if "% slept" in d]
    assert len(progress) >= 2, drawn  # redrawn as the job went on, not printed once
    assert all(len(d) < 100 for d in drawn)  # kept inside the terminal's width: no wrapping
    # Cleared before the result, which is printed as without a terminal.
    clear = out.rindex("\r\x1b[K")
    assert json.loads(out[clear:].replace("\r\x1b[K", "").strip())["slept"] >= SLEEP_S


@pytest.mark.usefixtures("worker")
def test_wait_piped_prints_plain_lines_on_change_and_the_unchanged_result(module_cluster: LocalCluster) -> None:
    out = _raftq(module_cluster, "submit", "util.sleep", "--arg-json", f"seconds={SLEEP_S}", "--wait")
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stderr and "\r" not in out.stderr
    assert set(json.loads(out.stdout)) == {"slept"}  # stdout: the result alone, as before
    job_id = re.match(r"submitted (\w+), waiting", out.stderr).group(1)  # type: ignore[union-attr]
    lines = out.stderr.splitlines()[1:]
    assert all(line.startswith(f"{job_id} ") for line in lines), lines
    progress = [line for line in lines if re.fullmatch(rf"{job_id} running \d+% slept \d\.\ds of {SLEEP_S}s", line)]
    assert len(progress) >= 2, lines
    assert len(lines) == len(set(lines)), "a line repeated: printed without a change"

    # result --wait of the same (finished) job: no progress lines, the same --json document as before.
    again = _raftq(module_cluster, "result", job_id, "--wait", "--json")
    assert again.returncode == 0 and again.stderr == ""
    assert json.loads(again.stdout)["state"] == "succeeded"


@pytest.mark.usefixtures("worker")
def test_result_wait_piped_shows_progress_of_a_running_job(module_cluster: LocalCluster) -> None:
    with module_cluster.client() as client:
        job_id = client.submit("util.sleep", {"seconds": SLEEP_S})
    out = _raftq(module_cluster, "result", job_id, "--wait")
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^{job_id} running \d+% slept \d\.\ds of {SLEEP_S}s$", out.stderr, re.M), out.stderr
    assert json.loads(out.stdout)["slept"] >= SLEEP_S


def test_wait_that_runs_out_shows_the_state_then_one_error_line(module_cluster: LocalCluster) -> None:
    out = _raftq(module_cluster, "submit", "util.noop", "--queue", "nobody-serves-this", "--wait",
                 "--wait-timeout", "1")
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.splitlines()
    job_id = re.match(r"submitted (\w+), waiting", lines[0]).group(1)  # type: ignore[union-attr]
    assert lines[1:-1] == [f"{job_id} queued"], lines  # the state, once
    assert lines[-1].startswith("error: ") and job_id in lines[-1] and "queued" in lines[-1], lines
