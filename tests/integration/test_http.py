"""HTTP /health and /metrics of a real node."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

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
