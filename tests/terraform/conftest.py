"""Shared by the terraform tests: what is missing, said once at the end of the run."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "terraform" / ".tools"


def missing_terraform() -> str | None:
    if shutil.which("terraform") is None:
        return "terraform is not installed (.ci/run requires it)"
    return None


def missing_cloud_init() -> str | None:
    if shutil.which("cloud-init") is None:
        return "cloud-init is not installed (apt-get install cloud-init; make terraform-check does)"
    return None


def missing_image_python() -> str | None:
    ok = Path("/usr/bin/python3").exists() and subprocess.call(
        ["/usr/bin/python3", "-c", "import yaml"], stderr=subprocess.DEVNULL) == 0
    return None if ok else "/usr/bin/python3 with python3-yaml is missing (the local hosts' python)"


def missing_schema_provider() -> str | None:
    if not (TOOLS / "terraformrc").exists():
        return "the schema-only aws provider is not installed (make terraform-check installs it)"
    return None


@pytest.fixture(autouse=True)
def _nothing_missing_when_required() -> None:
    """`make terraform-check` sets RAFTQ_TERRAFORM_REQUIRED=1 after installing
    everything: there a missing tool fails the run instead of skipping."""
    if os.environ.get("RAFTQ_TERRAFORM_REQUIRED") == "1":
        reasons = [r for r in (missing_terraform(), missing_cloud_init(), missing_image_python(),
                               missing_schema_provider()) if r]
        if reasons:
            pytest.fail("; ".join(reasons))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reasons = [r for r in (missing_terraform(), missing_cloud_init(), missing_schema_provider()) if r]
    if reasons:
        terminalreporter.write_line("tests/terraform: some tests skipped: " + "; ".join(reasons))
