"""The command line without a cluster: help, input errors, one-line failures,
and the `raftq dev` supervisor driven with real (tiny) child processes.

Real-cluster CLI tests live in tests/integration/test_cli_e2e.py.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli import output
from cli.dev import Supervisor
from cli.dev_run import RunRecord
from cli.main import build_args, raftq
from cli.output import InputError
from cluster.config import dev_config, render_config

REPO = Path(__file__).resolve().parents[2]

COMMANDS = [
    [], ["node"], ["worker"], ["submit"], ["status"], ["result"], ["list"], ["cancel"], ["retry"],
    ["stats"], ["cluster"], ["cluster", "status"], ["dev"],
]


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(raftq, list(args), env=env, prog_name="raftq")


def assert_one_error_line(result: Result, exit_code: int) -> str:
    assert result.exit_code == exit_code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def wait_until(cond: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def free_port(span: int = 0) -> int:
    """A free loopback port p such that p..p+span fit below 65536."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span <= 65535:
            return port
    raise AssertionError("no usable free port")


# ---------------------------------------------------------------- help and input


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "raftq")
def test_help_of_every_command(path: list[str]) -> None:
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: raftq {' '.join(path)}".rstrip())


def test_client_commands_share_cluster_token_and_json_options() -> None:
    for path in (["submit"], ["status"], ["result"], ["list"], ["cancel"], ["retry"], ["stats"], ["cluster", "status"]):
        text = run(*path, "--help").output
        for option in ("--cluster", "RAFTQ_CLUSTER", "--token", "RAFTQ_TOKEN", "--json"):
            assert option in text, (path, option)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--arg", "novalue"], "--arg 'novalue': expected KEY=VALUE"),
        (["--arg", "=5"], "--arg '=5': expected KEY=VALUE"),
        (["--args-json", "{nope"], "--args-json: not valid JSON"),
        (["--args-json", "NaN"], "--args-json: not valid JSON: NaN is not allowed"),
        (["--args-json", "[1, 2]", "--arg", "a=1"], "--arg cannot be combined with --args-json"),
        (["--priority", "high"], "'high' is not a valid integer"),
        (["--max-attempts", "0"], "--max-attempts"),
        (["--cluster", "nohost"], "--cluster: expected an address"),
    ],
)
def test_bad_submit_input_is_one_line_exit_2(args: list[str], fragment: str) -> None:
    # Nothing listens on port 1: reaching the network at all would be a bug here.
    line = assert_one_error_line(run("submit", "util.noop", "--cluster", "127.0.0.1:1", *args), 2)
    assert fragment in line


def test_a_client_command_without_a_credential_is_one_line_exit_2_after_its_input() -> None:
    for path in (["status", "x"], ["worker"]):
        line = assert_one_error_line(run(*path, "--cluster", "127.0.0.1:1", env={"RAFTQ_TOKEN": ""}), 2)
        assert "no credential given; set RAFTQ_TOKEN or pass --token" in line
    bad_input = run("submit", "util.noop", "--arg", "novalue", "--cluster", "127.0.0.1:1", env={"RAFTQ_TOKEN": ""})
    assert "--arg 'novalue': expected KEY=VALUE" in assert_one_error_line(bad_input, 2)


def test_usage_errors_are_one_line_with_a_help_hint() -> None:
    assert "(see 'raftq status --help')" in assert_one_error_line(run("status"), 2)
    assert "No such command 'bogus'" in assert_one_error_line(run("bogus"), 2)
    assert "'nope' is not one of" in assert_one_error_line(run("list", "--state", "nope"), 2)


def test_build_args_keeps_arg_strings_and_types_arg_json() -> None:
    pairs = ("n=5", "f=1.5", "yes=true", "xs=[1,2]", "name=hello world", "eq=a=b", "empty=", "quoted=\"5\"", "nan=NaN")
    assert build_args(pairs, (), None) == {
        "n": "5", "f": "1.5", "yes": "true", "xs": "[1,2]", "name": "hello world", "eq": "a=b", "empty": "",
        "quoted": "\"5\"", "nan": "NaN",
    }
    assert build_args((), ("n=5", "f=1.5", "yes=true", "xs=[1,2]", "quoted=\"5\""), None) == {
        "n": 5, "f": 1.5, "yes": True, "xs": [1, 2], "quoted": "5"}
    assert build_args(("b=2",), (), '{"a": 1, "b": 1}') == {"a": 1, "b": "2"}
    assert build_args((), (), "[1, 2]") == [1, 2]
    assert build_args((), (), None) == {}
    with pytest.raises(InputError):
        build_args(("x",), (), None)


# ---------------------------------------------------------------- failures at run time


def test_status_with_nothing_listening_is_one_line_exit_1() -> None:
    port = free_port()  # bound and closed again: nothing listens there now
    result = run("status", "X", "--cluster", f"127.0.0.1:{port}", "--request-timeout", "1", "--token", "t")
    line = assert_one_error_line(result, 1)
    assert f"127.0.0.1:{port}" in line
    assert_one_error_line(run("status", "X", "--cluster", "127.0.0.1:1", "--request-timeout", "1", "--token", "t"), 1)


def test_real_entry_point_prints_one_line_and_exits_1() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "status", "X", "--cluster", "127.0.0.1:1", "--request-timeout", "1",
         "--token", "offline-test-token"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr


def test_node_with_missing_config_or_unknown_id(tmp_path: Path) -> None:
    assert "does not exist" in assert_one_error_line(run("node", "--config", str(tmp_path / "no.toml"), "--id", "1"), 1)
    path = tmp_path / "cluster.toml"
    path.write_text(render_config(dev_config(tmp_path, nodes=3, base_port=20000)))
    line = assert_one_error_line(run("node", "--config", str(path), "--id", "9"), 1)
    assert "node id 9 is not in the config" in line
    bad = tmp_path / "bad.toml"
    bad.write_text(render_config(dev_config(tmp_path)).replace('durability = "fsync"', 'durability = "maybe"'))
    assert "durability" in assert_one_error_line(run("node", "--config", str(bad), "--id", "1"), 1)


def test_worker_config_errors_are_one_line() -> None:
    line = assert_one_error_line(run("worker", "--cluster", "127.0.0.1:1", "--token", "t", "--lease-ttl", "0"), 1)
    assert "lease_ttl_s" in line
    env_line = assert_one_error_line(run("worker", "--cluster", "127.0.0.1:1",
                                         env={"RAFTQ_LEASE_TTL_S": "-3", "RAFTQ_TOKEN": "t"}), 1)
    assert "lease_ttl_s" in env_line
    assert "RAFTQ_TOKEN" in assert_one_error_line(run("worker", "--cluster", "127.0.0.1:1"), 2)


def test_dev_refuses_a_busy_port_before_starting_anything(tmp_path: Path) -> None:
    # Other processes on this shared box may take a port of the span between our
    # probe and the run: then the error names that port; try another base.
    line, base = "", 0
    for _ in range(5):
        base = free_port(span=202)
        with socket.socket() as busy:
            try:
                busy.bind(("127.0.0.1", base + 101))  # node 2's raft port
            except OSError:  # taken since the probe: try another base
                continue
            busy.listen()
            line = assert_one_error_line(run("dev", "--data-dir", str(tmp_path), "--port", str(base)), 1)
        if f"port {base + 101} " in line:
            break
    assert f"port {base + 101} (nodes[id=2].raft) is already in use" in line
    assert not (tmp_path / "cluster.toml").exists() and not (tmp_path / "logs").exists()


# ---------------------------------------------------------------- the dev supervisor


def child_script(tmp_path: Path, name: str, on_term: str) -> list[str]:
    """A child that says it is ready, then sleeps; on SIGTERM it runs `on_term`."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        def term(signum, frame):
            with open({str(tmp_path / "order")!r}, "a") as f:
                f.write({name!r} + "\\n")
            {on_term}
        signal.signal(signal.SIGTERM, term)
        open({str(tmp_path / (name + ".ready"))!r}, "w").close()
        time.sleep(120)
    """)
    return [sys.executable, "-c", code]


def test_supervisor_stops_workers_before_nodes_and_kills_leftovers(tmp_path: Path) -> None:
    sup = Supervisor(log_dir=tmp_path / "logs", record=RunRecord.begin(tmp_path))
    node = sup.start("node-1", child_script(tmp_path, "node-1", "sys.exit(0)"), stop_phase=1)
    worker = sup.start("worker-1", child_script(tmp_path, "worker-1", "sys.exit(0)"), stop_phase=0)
    stubborn = sup.start("worker-2", child_script(tmp_path, "worker-2", "pass  # ignores SIGTERM"), stop_phase=0)
    try:
        for name in ("node-1", "worker-1", "worker-2"):
            wait_until(lambda: (tmp_path / f"{name}.ready").exists(), 30, f"{name} to start")
        assert sup.newly_exited() == []
        started = time.monotonic()
        sup.stop(grace_s=2.0)
        elapsed = time.monotonic() - started
    finally:
        for child in sup.children:
            if child.alive():
                child.proc.kill()
                child.proc.wait()
    assert not sup.any_alive()
    order = (tmp_path / "order").read_text().split()
    # Workers are told first; the node only once the worker phase is over.
    assert order.index("worker-1") < order.index("node-1") and order.index("worker-2") < order.index("node-1")
    assert worker.proc.returncode == 0 and node.proc.returncode == 0
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert 1.9 <= elapsed < 10, elapsed
    assert (tmp_path / "logs" / "node-1.log").read_text().startswith("=== ")


def test_supervisor_reports_each_exit_once(tmp_path: Path) -> None:
    sup = Supervisor(log_dir=tmp_path / "logs", record=RunRecord.begin(tmp_path))
    quitter = sup.start("node-2", [sys.executable, "-c", "import sys; print('bye'); sys.exit(3)"])
    stayer = sup.start("worker-1", child_script(tmp_path, "worker-1", "sys.exit(0)"))
    try:
        exited = wait_until(sup.newly_exited, 30, "node-2 to exit")
        assert exited == [quitter] and quitter.proc.returncode == 3
        assert sup.newly_exited() == [] and sup.any_alive()
        assert "bye" in quitter.log_path.read_text()
    finally:
        sup.stop(grace_s=5.0)
    assert stayer.proc.returncode is not None and not sup.any_alive()


# ---------------------------------------------------------------- output helpers


def test_tables_align_and_keep_one_line_per_row() -> None:
    text = output.render_table(["ID", "STATE"], [["a", "queued"], ["long-id", "multi\nline"], ["c", None]])
    assert text.splitlines() == ["ID       STATE", "a        queued", "long-id  multi line", "c        -"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (12.34, "12.3s"), (245, "4m05s"), (7380, "2h03m"), (273600, "3d04h"), (-1, "0ms"), (None, "-")],
)
def test_durations(seconds: float | None, text: str) -> None:
    assert output.format_duration(seconds) == text


def test_json_output_survives_bytes() -> None:
    assert output.to_json({"b": b"\x00\xff"}, indent=None) == '{"b": "AP8="}'
    assert os.linesep not in output.to_json([1, 2], indent=None)
