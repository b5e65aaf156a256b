"""A worker the cluster refuses exits non-zero (code 3) after its retry window,
so a supervisor restarts and reports it; a worker that cannot reach the
cluster keeps retrying (worker/refusals.py). Real node, real worker processes."""
from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.conftest import clusters
from tests.integration.harness import REPO, TOKEN, LocalCluster, free_ports, wait_until
from tests.integration.test_tls import pki, tls_cluster  # noqa: F401 - fixtures: a cluster speaking TLS
from worker.refusals import REFUSED_EXIT_CODE

PRODUCER_TOKEN = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    producer = f'[[credentials]]\nname = "producer"\ntoken = "{PRODUCER_TOKEN}"\nroles = ["producer"]\n'
    for make in clusters(tmp_path_factory.mktemp("refused")):
        yield make(nodes=1, extra_config=producer)


def _worker(addrs: list[str], token: str, workdir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--cluster", ",".join(addrs),
                             "--name", "refused", "--workdir", str(workdir), *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAFTQ_TOKEN": token})


@pytest.mark.parametrize("token, code", [("not-a-token-of-this-cluster-0123456789", "UNAUTHORIZED"),
                                         (PRODUCER_TOKEN, "FORBIDDEN")])  # a credential without the worker role
def test_a_refused_worker_exits_with_code_3_and_says_why(cluster: LocalCluster, tmp_path: Path,
                                                          token: str, code: str) -> None:
    worker = _worker(cluster.client_addrs, token, tmp_path, "--refused-retry", "1")
    try:
        _, stderr = worker.communicate(timeout=90)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == REFUSED_EXIT_CODE, stderr
    last = stderr.strip().splitlines()[-1]
    assert f"raftq.worker ERROR worker refused: the cluster refused it for 1s ({code}: " in last, stderr
    assert last.endswith("check its token (--token/RAFTQ_TOKEN: the worker role, its queues) and TLS settings; "
                         "exiting with code 3")
    assert "Traceback" not in stderr


def test_a_plaintext_worker_against_tls_nodes_exits_with_code_3(tls_cluster: LocalCluster, tmp_path: Path) -> None:
    worker = _worker(tls_cluster.client_addrs, TOKEN, tmp_path, "--refused-retry", "1")
    try:
        _, stderr = worker.communicate(timeout=90)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == REFUSED_EXIT_CODE, stderr
    last = stderr.strip().splitlines()[-1]
    assert "the cluster refused it for 1s (UNAVAILABLE: " in last and "TLS" in last, last


def test_an_unreachable_cluster_is_retried_not_given_up(tmp_path: Path) -> None:
    """An outage is no refusal: even a zero window does not end the worker."""
    nobody = [f"127.0.0.1:{port}" for port in free_ports(1)]
    worker = _worker(nobody, "a-token-nobody-checks-0123456789", tmp_path, "--refused-retry", "0")
    failures: list[str] = []
    try:
        assert worker.stderr is not None

        def failed_three_times() -> bool:
            line = worker.stderr.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"the worker exited ({worker.wait()}) after: {failures}")
            if "lease failed" in line:
                failures.append(line)
            return len(failures) >= 3
        wait_until(failed_three_times, 90, "three failed leases", interval=0)
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0
