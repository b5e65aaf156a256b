"""HTTP /health and /metrics of a real node."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from cluster.client import Client
from cluster.errors import Unauthorized
from tests.integration.harness import LocalCluster


def _get(addr: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_and_metrics(cluster: LocalCluster) -> None:
    leader = cluster.leader_id()
    with cluster.client() as c:
        for i in range(5):
            c.submit("util.noop", {}, queue="emails" if i % 2 else "default")
    code, body = _get(cluster.http_addrs[leader - 1], "/health")
    health = json.loads(body)
    assert code == 200 and health["role"] == "leader" and health["leader"] == cluster.client_addrs[leader - 1]
    code, text = _get(cluster.http_addrs[leader - 1], "/metrics")
    assert code == 200
    assert 'raftq_jobs{queue="emails",state="queued"} 2.0' in text
    assert 'raftq_jobs{queue="default",state="queued"} 3.0' in text
    assert "raftq_is_leader 1.0" in text
    assert 'raftq_requests_total{op="submit"} 5.0' in text
    assert _get(cluster.http_addrs[leader - 1], "/nope")[0] == 404


def test_job_figures_come_from_the_leader_and_refusals_are_counted(cluster: LocalCluster) -> None:
    leader = cluster.leader_id()
    follower = next(i for i in range(1, cluster.n + 1) if i != leader)
    with pytest.raises(Unauthorized):
        with Client([cluster.client_addrs[follower - 1]], token="a-wrong-token-0123456789abcdef") as c:
            c.stats()
    with cluster.client() as c:
        c.submit("util.noop", {})
    text = _get(cluster.http_addrs[follower - 1], "/metrics")[1]
    assert "raftq_jobs{" not in text and "raftq_is_leader 0.0" in text
    assert 'raftq_connection_refusals_total{port="client",reason="bad_token"} 1.0' in text
    assert 'raftq_connection_refusals_total{port="client",reason="node_limit"} 0.0' in text
    [changes] = [float(line.split()[1]) for line in text.splitlines() if line.startswith("raftq_leader_changes_total ")]
    assert changes >= 1  # it has seen the leader (more than one under an unlucky election)
    text = _get(cluster.http_addrs[leader - 1], "/metrics")[1]
    assert 'raftq_jobs{queue="default",state="queued"} 1.0' in text
    assert len([line for line in text.splitlines() if line.startswith("raftq_follower_lag_entries{")]) == 2
