"""A lease belongs to the worker it was granted to, against real nodes.

A second client holding the same credential reads the running job (and so its
attempt number) and tries to complete, fail, extend or shorten the lease with
no token or a wrong one: every try is refused, the lease still holds, and the
real worker's own completion then wins. No read shows the lease token.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cluster.errors import BadRequest, LeaseLost
from replication.model import MIN_LEASE_MS
from tests.integration.harness import REPO, TOKEN, LocalCluster

QUEUE = "owned"
FORGED = "f" * 32


def _cli(cluster: LocalCluster, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "cli.main", *args, "--json"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "RAFTQ_CLUSTER": cluster.client_addrs[0],
                                                     "RAFTQ_TOKEN": TOKEN})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_only_the_leasing_worker_can_report_or_renew(cluster: LocalCluster) -> None:
    with cluster.client() as worker, cluster.client() as thief:
        job_id = worker.submit("util.noop", {}, id="owned-job", queue=QUEUE, max_attempts=3)
        [leased] = worker.lease("real-worker", [QUEUE], max=1, wait_s=5, lease_ms=60_000)
        token = leased["lease_token"]
        assert leased["id"] == job_id and len(token) == 32 and token != FORGED

        attempt = thief.get(job_id)["attempts"]  # the attempt number is no secret
        assert attempt == leased["attempt"]
        ref = {"id": job_id, "attempt": attempt}

        # No token at all: the node refuses the request itself.
        for op, args in [("complete", {**ref, "result": "forged"}),
                         ("fail", {**ref, "error": "forged", "retryable": False}),
                         ("complete_many", {"items": [{**ref, "result": "forged"}]}),
                         ("heartbeat", {"worker": "real-worker", "lease_ms": MIN_LEASE_MS, "leases": [ref]})]:
            with pytest.raises(BadRequest, match="lease_token"):
                thief.request(op, args)

        # A wrong token: the lease is not theirs.
        with pytest.raises(LeaseLost):
            thief.complete(job_id, attempt, "forged", lease_token=FORGED)
        with pytest.raises(LeaseLost):
            thief.fail(job_id, attempt, "forged", retryable=False, lease_token=FORGED)
        [answer] = thief.complete_many([{**ref, "lease_token": FORGED, "result": "forged"}])
        assert answer["error"] == "LEASE_LOST"
        # In the real worker's name, asking for the shortest lease: lost, nothing shortened.
        assert thief.heartbeat("real-worker", [{**ref, "lease_token": FORGED}], lease_ms=MIN_LEASE_MS) == \
            {"lost": [job_id], "cancel": []}

        # Had the lease been shortened, the job would be queued again and this poll would get it.
        assert thief.lease("thief", [QUEUE], max=1, wait_s=2, lease_ms=60_000) == []
        view = thief.get(job_id)
        assert (view["state"], view["attempts"], view["worker"], view["result"]) == \
            ("running", attempt, "real-worker", None)

        # Reads never carry the token: job views, listings, the worker registry, stats, the CLI.
        reads = [thief.get(job_id), thief.list(queue=QUEUE), thief.workers(), thief.stats()]
        assert token not in repr(reads) and "lease_token" not in repr(reads)
        for args in (("status", job_id), ("list", "--queue", QUEUE), ("workers",)):
            assert token not in _cli(cluster, *args)

        # The real worker renews and completes with its own token; its repeat is a duplicate.
        assert worker.heartbeat("real-worker", [{**ref, "lease_token": token}], lease_ms=60_000) == \
            {"lost": [], "cancel": []}
        assert worker.complete(job_id, attempt, {"by": "real-worker"}, lease_token=token) == "succeeded"
        assert worker.complete_many([{**ref, "lease_token": token, "result": {"by": "real-worker"}}]) == \
            [{"state": "succeeded", "duplicate": True}]
        with pytest.raises(LeaseLost):
            thief.complete(job_id, attempt, "forged", lease_token=FORGED)
        assert thief.get(job_id)["result"] == {"by": "real-worker"}
