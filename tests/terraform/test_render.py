"""The render module's documents, checked by the tools that will read them.

`terraform apply` of terraform/modules/render/examples/basic (no resources:
outputs only) renders one cloud-init document per host; then
- `cloud-init schema --config-file` validates every document (inline and ssm modes);
- hostsim's cloud-init runner writes each document's files under a temp root,
  and raftq's own config loader reads the cluster TOML from there;
- every unit file parses and names the venv's binaries and the service user.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster.config import load_config
from tests.terraform.conftest import REPO, missing_cloud_init, missing_image_python, missing_terraform

pytestmark = pytest.mark.skipif(missing_terraform() is not None, reason=missing_terraform() or "")

RENDER = REPO / "terraform" / "modules" / "render"
EXAMPLE = RENDER / "examples" / "basic"
LOCAL = REPO / "terraform" / "environments" / "local"


def terraform(args: list[str], workdir: Path, chdir: Path) -> subprocess.CompletedProcess[str]:
    (workdir / "terraformrc").touch()
    env = {**os.environ, "TF_DATA_DIR": str(workdir / "tfdata"), "TF_CLI_CONFIG_FILE": str(workdir / "terraformrc"),
           "TF_IN_AUTOMATION": "1"}
    return subprocess.run(["terraform", f"-chdir={chdir}", *args, "-no-color"], env=env, capture_output=True,
                          text=True, timeout=300)


def render(tmp: Path, secret_source: str) -> dict[str, Any]:
    for args in (["init", "-backend=false", "-input=false"],
                 ["apply", "-auto-approve", "-input=false", f"-state={tmp / 'tfstate'}",
                  f"-var=secret_source={secret_source}"]):
        proc = terraform(args, tmp, EXAMPLE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    out = terraform(["output", "-json", f"-state={tmp / 'tfstate'}", "hosts"], tmp, EXAMPLE)
    assert out.returncode == 0, out.stderr
    hosts: dict[str, Any] = json.loads(out.stdout)
    return hosts


@pytest.fixture(scope="module", params=["inline", "ssm"])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any], Path]:
    tmp = tmp_path_factory.mktemp(f"render-{request.param}")
    hosts = render(tmp, request.param)
    docs = tmp / "user-data"
    docs.mkdir()
    for name, host in hosts.items():
        (docs / name).write_text(host["user_data"])
    return request.param, hosts, docs


def test_fmt_is_clean(tmp_path: Path) -> None:
    proc = terraform(["fmt", "-check", "-recursive", "-diff"], tmp_path, REPO / "terraform")
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}"


def test_render_module_terraform_test(tmp_path: Path) -> None:
    assert terraform(["init", "-backend=false", "-input=false"], tmp_path, RENDER).returncode == 0
    proc = terraform(["test"], tmp_path, RENDER)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout


def test_one_document_per_host(rendered: tuple[str, dict[str, Any], Path]) -> None:
    _, hosts, _ = rendered
    assert sorted(hosts) == ["loadgen-1", "loadgen-2", "node-1", "node-2", "node-3", "worker-1", "worker-2"]
    assert {h["role"] for h in hosts.values()} == {"node", "worker", "loadgen-master", "loadgen"}


@pytest.mark.skipif(missing_cloud_init() is not None, reason=missing_cloud_init() or "")
def test_cloud_init_schema_accepts_every_document(rendered: tuple[str, dict[str, Any], Path]) -> None:
    _, hosts, docs = rendered
    for name in hosts:
        proc = subprocess.run(["cloud-init", "schema", "--config-file", str(docs / name)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, f"{name}: {proc.stdout}{proc.stderr}"


def write_files(doc: Path, root: Path) -> None:
    proc = subprocess.run(["/usr/bin/python3", "-m", "hostsim.cloud_init", "write-files", "--root", str(root), str(doc)],
                          env={**os.environ, "PYTHONPATH": str(LOCAL)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(missing_image_python() is not None, reason=missing_image_python() or "")
def test_nodes_get_a_config_raftq_loads(rendered: tuple[str, dict[str, Any], Path], tmp_path: Path) -> None:
    mode, hosts, docs = rendered
    for name in ("node-1", "node-2", "node-3"):
        root = tmp_path / name
        write_files(docs / name, root)
        toml = root / "etc" / "raftq" / "cluster.toml"
        assert oct(toml.stat().st_mode & 0o777) == "0o600"
        if mode == "ssm":
            text = toml.read_text()
            assert "@@RAFTQ_SECRET@@" in text and "example-secret" not in text
            asked = run_fill_secrets(root, toml)
            assert asked == ["/raftq/example/secret", "/raftq/example/producer-token",
                             "/raftq/example/worker-token", "/raftq/example/admin-token"]
        cfg = load_config(toml)
        assert [n.raft for n in cfg.nodes] == ["10.0.1.11:7800", "10.0.2.11:7800", "10.0.3.11:7800"]
        assert cfg.client_addresses() == ["10.0.1.11:7700", "10.0.2.11:7700", "10.0.3.11:7700"]
        assert cfg.secret == "example-secret-0123456789abcdef" and cfg.durability == "fsync"
        assert {c.name: (c.token, c.roles) for c in cfg.credentials} == {
            "producer": (SSM_VALUES["/raftq/example/producer-token"], ("producer",)),
            "worker": (SSM_VALUES["/raftq/example/worker-token"], ("worker",)),
            "admin": (SSM_VALUES["/raftq/example/admin-token"], ("admin", "producer")),
        } if mode == "ssm" else {c.name for c in cfg.credentials} == {"producer", "worker", "admin"}


# What the stand-in `aws` answers for `ssm get-parameter --name N`: the inline
# example's values, so that both modes must end in the same files.
SSM_VALUES = {
    "/raftq/example/secret": "example-secret-0123456789abcdef",
    "/raftq/example/producer-token": "example-producer-Qx7rT2mV9kLp4Zs8",
    "/raftq/example/worker-token": "example-worker-Vn3cH8yK1dRt6Fg2",
    "/raftq/example/admin-token": "example-admin-Lw9sE4bN7pXj2Uq5",
}


def run_fill_secrets(root: Path, *files: Path) -> list[str]:
    """Run the host's rendered raftq-fill-secrets on `files` with an `aws` on
    PATH that answers from SSM_VALUES (no AWS API here) and logs each name it
    was asked for; the names, in order."""
    bin_dir = root / "fake-bin"
    bin_dir.mkdir()
    log = root / "aws-asked"
    values = "\n".join(f'  {name}) echo "{value}" ;;' for name, value in SSM_VALUES.items())
    (bin_dir / "aws").write_text(f"""#!/bin/sh
while [ "$1" != "--name" ]; do shift; done
echo "$2" >> {log}
case "$2" in
{values}
  *) exit 255 ;;
esac
""")
    (bin_dir / "aws").chmod(0o755)
    script = root / "usr" / "local" / "sbin" / "raftq-fill-secrets"
    proc = subprocess.run(["/bin/sh", str(script), *map(str, files)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    return log.read_text().split() if log.exists() else []


def test_each_host_reads_only_its_own_parameters(rendered: tuple[str, dict[str, Any], Path], tmp_path: Path) -> None:
    mode, hosts, docs = rendered
    if mode != "ssm":
        pytest.skip("inline mode reads no parameters")
    root = tmp_path / "worker-1"
    write_files(docs / "worker-1", root)
    env_file = root / "etc" / "raftq" / "worker.env"
    assert run_fill_secrets(root, env_file) == ["/raftq/example/worker-token"]
    assert "RAFTQ_TOKEN=example-worker-Vn3cH8yK1dRt6Fg2" in env_file.read_text().splitlines()
    root = tmp_path / "loadgen-1"
    write_files(docs / "loadgen-1", root)
    conf = root / "etc" / "raftq" / "loadtest.conf"
    assert run_fill_secrets(root, conf) == ["/raftq/example/producer-token"]
    assert "example-producer-Qx7rT2mV9kLp4Zs8" in conf.read_text() and "@@" not in conf.read_text()


@pytest.mark.skipif(missing_image_python() is not None, reason=missing_image_python() or "")
def test_units_run_the_venv_as_the_service_user(rendered: tuple[str, dict[str, Any], Path], tmp_path: Path) -> None:
    sys.path.insert(0, str(LOCAL))
    try:
        from hostsim.units import parse_sections
    finally:
        sys.path.remove(str(LOCAL))
    _, hosts, docs = rendered
    seen = set()
    for name in hosts:
        root = tmp_path / name
        write_files(docs / name, root)
        for unit in (root / "etc" / "systemd" / "system").iterdir():
            service = dict(parse_sections(unit.read_text())["Service"])
            assert service["ExecStart"].startswith("/opt/raftq/venv/bin/"), unit
            assert service["User"] == "raftq" and service["NoNewPrivileges"] == "yes", unit
            assert service["ProtectSystem"] == "strict" and service["LimitNOFILE"] == "65536", unit
            seen.add(unit.name)
    assert seen == {"raftq-node.service", "raftq-worker.service", "raftq-locust-worker@.service",
                    "raftq-loadtest.service"}
