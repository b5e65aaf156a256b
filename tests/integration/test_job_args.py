"""Job arguments through the `raftq` command line, as a user types them, on
real nodes and a real worker: `--arg` keeps strings, `--arg-json` types them,
a built-in type's bad args are refused before anything is queued, and the
files a job writes get normal permissions."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.integration.harness import REPO, TOKEN, LocalCluster, WorkerProcess


def raftq(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=90, env={**os.environ, "RAFTQ_CLUSTER": ",".join(cluster.client_addrs),
                                           "RAFTQ_TOKEN": TOKEN})


def one_error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_bad_args_of_a_builtin_type_are_one_line_and_nothing_is_queued(module_cluster: LocalCluster) -> None:
    c = module_cluster
    line = one_error_line(raftq(c, "submit", "math.primes", "--arg", "n=1000"))
    assert line == ("error: math.primes: 'n' must be an integer between 0 and 50000000, got '1000' "
                    "(--arg always gives a string: use --arg-json n=1000)")
    line = one_error_line(raftq(c, "submit", "math.primes", "--arg-json", "n=1000", "--arg-json", "lst=true"))
    assert line == "error: math.primes: unknown argument 'lst' (expected: list, n)"
    assert "missing required argument 'text'" in one_error_line(raftq(c, "submit", "text.wordcount", "--wait"))
    assert "'seconds' must be a number between 0 and 3600, got 4000" in one_error_line(
        raftq(c, "submit", "util.sleep", "--arg-json", "seconds=4000", "--id", "too-long"))
    assert "'seconds' must be a number" in one_error_line(
        raftq(c, "schedule", "add", "nap", "util.sleep", "--every", "60", "--arg", "seconds=soon"))
    assert "--arg-json 'n=ten': 'ten' is not valid JSON" in one_error_line(
        raftq(c, "submit", "math.primes", "--arg-json", "n=ten"))

    listed = raftq(c, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["jobs"] == []
    schedules = raftq(c, "schedule", "list", "--json")
    assert schedules.returncode == 0 and json.loads(schedules.stdout) in ([], {"schedules": []}), schedules.stdout
    # A type of the user's own is not checked by the node.
    assert raftq(c, "submit", "mine.thumbnail", "--arg", "size=5", "--queue", "nobody").returncode == 0


def test_arg_strings_stay_strings_and_outputs_get_normal_modes(cluster: LocalCluster, tmp_path: Path) -> None:
    root = tmp_path / "data-root"
    root.mkdir()
    (root / "in.txt").write_text("five 5\n" * 100)
    old = os.umask(0o002)  # the worker inherits it; 0o664 is neither 0600 nor a fixed 0644
    try:
        worker = WorkerProcess(cluster, "args", ["--data-root", str(root)])
    finally:
        os.umask(old)
    try:
        out = raftq(cluster, "submit", "text.wordcount", "--arg", "text=5", "--wait", "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"] == {"words": 1, "lines": 1, "chars": 1, "top": [["5", 1]]}

        out = raftq(cluster, "submit", "math.primes", "--arg-json", "n=100", "--arg-json", "list=false", "--wait",
                    "--json")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["result"] == {"n": 100, "count": 25}

        # One output from a process-pool handler, one from a thread-pool one.
        for args in (["file.compress", "--arg", "path=in.txt", "--arg", "output=out/in.txt.gz"],
                     ["text.convert", "--arg", "op=upper", "--arg", "path=in.txt", "--arg", "output=out/up.txt"]):
            out = raftq(cluster, "submit", *args, "--wait")
            assert out.returncode == 0, out.stderr
        for name in ("in.txt.gz", "up.txt"):
            assert stat.S_IMODE((root / "out" / name).stat().st_mode) == 0o664, name
        assert stat.S_IMODE((root / "out").stat().st_mode) == 0o775
    finally:
        worker.stop()
