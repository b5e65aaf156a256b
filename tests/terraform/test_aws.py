"""environments/aws, offline: validate and terraform test (mock_provider "aws")
against the published provider schema, served by the schema-only plugin that
`make terraform-check` installs (terraform/tools/aws_schema); and checkov
over every module, each finding fixed or justified in place."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.terraform.conftest import REPO, TOOLS, missing_schema_provider, missing_terraform

AWS = REPO / "terraform" / "environments" / "aws"
CHECKOV = TOOLS / "checkov-venv" / "bin" / "checkov"
pytestmark = pytest.mark.skipif(missing_terraform() is not None, reason=missing_terraform() or "")


def terraform(args: list[str], data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CLI_CONFIG_FILE": str(TOOLS / "terraformrc"), "TF_DATA_DIR": str(data_dir),
           "TF_IN_AUTOMATION": "1"}
    return subprocess.run(["terraform", f"-chdir={AWS}", *args, "-no-color"], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = missing_schema_provider()
    if reason:
        pytest.skip(reason)
    data = tmp_path_factory.mktemp("aws-tfdata")
    # `get`, not `init`: init would look the overridden provider up in the registry.
    proc = terraform(["get"], data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return data


def test_validate_against_the_provider_schema(data_dir: Path) -> None:
    proc = terraform(["validate"], data_dir)
    assert proc.returncode == 0 and "The configuration is valid" in proc.stdout, proc.stdout + proc.stderr


def test_terraform_test_with_mock_provider(data_dir: Path) -> None:
    proc = terraform(["test"], data_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout and "pass" in proc.stdout


def test_a_real_plan_fails_loudly(data_dir: Path) -> None:
    proc = terraform(["plan", "-input=false", "-lock=false", "-refresh=false",
                      "-var=wheel_path=tests/fixtures/raftq-0.0.0-py3-none-any.whl"], data_dir)
    assert proc.returncode != 0
    assert "schema-only AWS provider" in proc.stdout + proc.stderr


@pytest.mark.skipif(not CHECKOV.exists(), reason="checkov is not installed (make terraform-check installs it)")
def test_checkov_finds_nothing_unjustified() -> None:
    proc = subprocess.run([str(CHECKOV), "-d", str(REPO / "terraform"), "--framework", "terraform", "--skip-download",
                           "--compact", "--quiet", "--skip-path", r"\.tools", "--skip-path", r"\.run"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
