"""`raftq alert` without a cluster: its help, and bad input refused in one
line (exit 2) before any connection or credential is needed."""
from __future__ import annotations

import pytest
from click.testing import CliRunner, Result

from cli.main import raftq

HOOK = "http://127.0.0.1:9/hook"


def run(*args: str) -> Result:
    return CliRunner().invoke(raftq, list(args), env={"RAFTQ_TOKEN": ""}, prog_name="raftq")


@pytest.mark.parametrize("command", [["alert"], ["alert", "add"], ["alert", "list"], ["alert", "remove"]])
def test_help(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0 and "Usage: raftq " + " ".join(command) in result.output


@pytest.mark.parametrize("args, message", [
    (["--when", "depth(q) > lots", "--webhook", HOOK], "error: depth's threshold must be a number, got 'lots'"),
    (["--when", "frob(q)", "--webhook", HOOK], "error: alert condition must start with one of"),
    (["--when", "depth(q) > 1"], "error: an alert needs exactly one of --webhook URL and --email ADDRESS"),
    (["--when", "depth(q) > 1", "--webhook", HOOK, "--email", "a@b"], "error: an alert needs exactly one of"),
    (["--when", "depth(q) > 1", "--webhook", "ftp://h/x"], "error: webhook must be an http:// or https:// URL"),
    (["--when", "depth(q) > 1", "--email", "not-an-address"], "error: email must be one address"),
    (["--when", "depth(q) > 1", "--webhook", HOOK, "--for", "10"], "error: --for must be a number with a unit"),
    (["--webhook", HOOK], "error: Missing option '--when'"),
])
def test_bad_input_is_one_line_exit_2_before_any_connection(args: list[str], message: str) -> None:
    result = run("alert", "add", "name", *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_good_input_then_needs_a_credential() -> None:
    result = run("alert", "add", "name", "--when", "no_worker(q)", "--webhook", HOOK, "--for", "30s")
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: --token: no credential given")
