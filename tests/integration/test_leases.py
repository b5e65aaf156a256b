"""Leases and fencing against real nodes: expiry, re-lease, stale tokens, worker crash."""
from __future__ import annotations

import signal

import pytest

from cluster.errors import LeaseLost
from tests.integration.harness import LocalCluster, WorkerProcess, wait_until


def test_expired_lease_is_granted_again_and_the_old_token_is_rejected(cluster: LocalCluster) -> None:
    with cluster.client() as c:
        job_id = c.submit("util.noop", {}, id="fenced", max_attempts=3)
        first = c.lease("stalled-worker", ["default"], max=1, wait_s=2, lease_ms=500)
        assert [j["id"] for j in first] == [job_id] and first[0]["attempt"] == 1
        # No heartbeat: the leader's ticker expires the lease in log time and requeues the job.
        second = wait_until(lambda: c.lease("healthy-worker", ["default"], max=1, wait_s=1), 20,
                            "the job to be leased again")
        assert second[0]["id"] == job_id and second[0]["attempt"] == 2
        stale, healthy = first[0]["lease_token"], second[0]["lease_token"]
        with pytest.raises(LeaseLost):
            c.complete(job_id, 1, {"from": "stale worker"}, lease_token=stale)
        assert c.complete(job_id, 2, {"from": "healthy worker"}, lease_token=healthy) == "succeeded"
        # A retry of the accepted completion (e.g. after a lost reply) is harmless...
        assert c.complete(job_id, 2, {"from": "healthy worker"}, lease_token=healthy) == "succeeded"
        # ...but the stale holder still cannot record an outcome.
        with pytest.raises(LeaseLost):
            c.fail(job_id, 1, "stale failure", lease_token=stale)
        view = c.get(job_id)
        assert view["state"] == "succeeded" and view["attempts"] == 2
        assert view["result"] == {"from": "healthy worker"}


def test_worker_killed_mid_job_is_leased_again_and_completes_once(cluster: LocalCluster) -> None:
    slow = WorkerProcess(cluster, "doomed", ["--lease-ttl", "2"])
    try:
        with cluster.client() as c:
            job_id = c.submit("util.sleep", {"seconds": 3}, id="survives-worker-crash", max_attempts=3)
            wait_until(lambda: c.get(job_id)["state"] == "running", 30, "the job to start on the first worker")
            assert c.get(job_id)["attempts"] == 1
            slow.kill(signal.SIGKILL)
            slow.proc.wait(timeout=10)
            rescuer = WorkerProcess(cluster, "rescuer", ["--lease-ttl", "2"])
            try:
                view = c.result(job_id, timeout=60)
            finally:
                rescuer.stop()
            assert view["state"] == "succeeded"
            assert view["attempts"] == 2, "the job ran again only after the dead worker's lease expired"
            with pytest.raises(LeaseLost):  # whatever token it would present
                c.complete(job_id, 1, {"late": "result from the dead worker"}, lease_token="0" * 32)
    finally:
        slow.kill()
