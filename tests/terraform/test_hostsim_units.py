"""hostsim.units: the local environment reads unit files the way systemd does."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.terraform.conftest import REPO

sys.path.insert(0, str(REPO / "terraform" / "environments" / "local"))
from hostsim.units import UnitError, expand_command, load_service, restarts_after  # noqa: E402

sys.path.pop(0)


def write_unit(unit_dir: Path, name: str, service: str) -> None:
    unit_dir.mkdir(parents=True, exist_ok=True)
    (unit_dir / name).write_text(f"[Unit]\nDescription=t\n\n[Service]\n{service}\n[Install]\nWantedBy=multi-user.target\n")


def test_dollar_word_splits_and_braces_substitute_in_place() -> None:
    env = {"FLAGS": "--rejoin --x", "EMPTY": "", "T": "40"}
    assert expand_command("/bin/raftq node --id 2 $FLAGS", env) == ("/bin/raftq", "node", "--id", "2", "--rejoin", "--x")
    assert expand_command("/bin/raftq node $EMPTY", env) == ("/bin/raftq", "node")
    assert expand_command("/bin/locust --run-time ${T}s", env) == ("/bin/locust", "--run-time", "40s")


def test_environment_file_wins_over_environment(tmp_path: Path) -> None:
    (tmp_path / "env").write_text("# comment\nA=from-file\nB=\"quoted\"\n")
    write_unit(tmp_path / "units", "x.service",
               f"Environment=A=inline C=3\nEnvironmentFile={tmp_path / 'env'}\nExecStart=/bin/echo $A $B $C\nUser=raftq\n")
    spec = load_service("x.service", tmp_path / "units")
    assert spec.argv == ("/bin/echo", "from-file", "quoted", "3")
    assert spec.user == "raftq" and spec.wanted_by == ("multi-user.target",)


def test_template_instance_and_limits(tmp_path: Path) -> None:
    write_unit(tmp_path, "w@.service", "ExecStart=/bin/w --name w-%i\nLimitNOFILE=4096\nRestart=always\n"
                                       "RestartSec=500ms\nTimeoutStopSec=1min\nUMask=0077\nProtectSystem=strict\n")
    spec = load_service("w@3.service", tmp_path)
    assert spec.argv == ("/bin/w", "--name", "w-3")
    assert spec.nofile == (4096, 4096) and spec.restart_s == 0.5 and spec.stop_timeout_s == 60 and spec.umask == 0o077
    assert spec.unenforced == ("ProtectSystem=strict",)  # reported, not silently dropped


def test_missing_environment_file_is_an_error_unless_optional(tmp_path: Path) -> None:
    write_unit(tmp_path, "a.service", "EnvironmentFile=/nonexistent/env\nExecStart=/bin/true\n")
    write_unit(tmp_path, "b.service", "EnvironmentFile=-/nonexistent/env\nExecStart=/bin/true\n")
    with pytest.raises(UnitError, match="does not exist"):
        load_service("a.service", tmp_path)
    assert load_service("b.service", tmp_path).argv == ("/bin/true",)


def test_relative_exec_start_is_refused(tmp_path: Path) -> None:
    write_unit(tmp_path, "r.service", "ExecStart=raftq node\n")
    with pytest.raises(UnitError, match="absolute path"):
        load_service("r.service", tmp_path)


@pytest.mark.parametrize("policy,returncode,restarts", [
    ("on-failure", 1, True), ("on-failure", -9, True), ("on-failure", 0, False), ("on-failure", -15, False),
    ("always", 0, True), ("no", 1, False),
])
def test_restart_policy_follows_systemd(tmp_path: Path, policy: str, returncode: int, restarts: bool) -> None:
    write_unit(tmp_path, "p.service", f"ExecStart=/bin/true\nRestart={policy}\n")
    assert restarts_after(load_service("p.service", tmp_path), returncode) is restarts
