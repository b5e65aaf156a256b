"""Gate for the fault suite: namespace tests run only when asked, and only as root.

Tests marked `fault` build network namespaces, iptables rules and tmpfs
mounts; they are skipped unless RAFTQ_FAULT=1 (`make chaos` and `.ci/run` set
it), and skipped with the reason when this user cannot build the network. The
pure checker tests in this directory always run.
"""
from __future__ import annotations

import os

import pytest

from tests.fault.netns import can_run, cleanup_stale


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fault: builds network namespaces (needs root and RAFTQ_FAULT=1)")


@pytest.fixture(autouse=True)
def _fault_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("fault") is None:
        return
    if os.environ.get("RAFTQ_FAULT") != "1":
        pytest.skip("fault suite: set RAFTQ_FAULT=1 to run it (make chaos does)")
    reason = can_run()
    if reason:
        pytest.skip(f"fault suite: {reason}")
    cleanup_stale()
