"""hostsim.cloud_init: the local hosts' cloud-init does what the render module's
documents need, in cloud-init's order, and refuses what it does not do."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.terraform.conftest import REPO, missing_image_python

LOCAL = REPO / "terraform" / "environments" / "local"
sys.path.insert(0, str(LOCAL))
from hostsim.cloud_init import CloudInitError, run, run_commands, write_file  # noqa: E402

sys.path.pop(0)


def test_a_secret_file_never_exists_with_a_wider_mode(tmp_path: Path) -> None:
    old = os.umask(0)  # even with no umask to narrow it
    try:
        path = write_file({"path": "/etc/raftq/cluster.toml", "content": "secret = \"x\"\n", "permissions": "0600"},
                          root=tmp_path, chown=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path == tmp_path / "etc" / "raftq" / "cluster.toml" and path.read_text() == "secret = \"x\"\n"


def test_unknown_write_files_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CloudInitError, match="append"):
        write_file({"path": "/x", "content": "", "append": True}, root=tmp_path, chown=False)


def test_runcmd_stops_at_the_first_failure(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(CloudInitError, match=r"runcmd\[1\] exited 3"):
        run_commands([f"echo one >> {marker}", "exit 3", f"echo three >> {marker}"], env={"PATH": "/usr/bin:/bin"})
    assert marker.read_text() == "one\n"


def test_packages_are_refused_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(CloudInitError, match="installs no packages"):
        run({"packages": ["python3.11"], "runcmd": [f"touch {marker}"]}, env={"PATH": "/usr/bin:/bin"})
    assert not marker.exists()


@pytest.mark.skipif(missing_image_python() is not None, reason=missing_image_python() or "")
@pytest.mark.parametrize("doc,error", [
    ("#cloud-config\nbootcmd: [echo]\n", "not supported by hostsim: bootcmd"),
    ("users: []\n", "not a #cloud-config document"),
])
def test_documents_with_unsupported_parts_are_refused(tmp_path: Path, doc: str, error: str) -> None:
    (tmp_path / "ud").write_text(doc)
    proc = subprocess.run(["/usr/bin/python3", "-m", "hostsim.cloud_init", "write-files", "--root", str(tmp_path / "r"),
                           str(tmp_path / "ud")], env={**os.environ, "PYTHONPATH": str(LOCAL)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and error in proc.stderr
