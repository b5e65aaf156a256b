"""Must-show: SIGKILL of all three nodes, then a restart, loses no acknowledged job."""
from __future__ import annotations

import signal

from tests.integration.harness import LocalCluster, wait_until


def test_whole_cluster_sigkill_and_restart(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(durability="fsync")
    with cluster.client() as c:
        ids = [c.submit("util.noop", {"n": i}, id=f"restart-{i}") for i in range(300)]
        more = c.submit_many([{"type": "util.noop", "args": {}, "id": f"batch-{i}"} for i in range(200)])
        ids += more
        leased = c.lease("w-before", ["default"], max=10, wait_s=1)
        assert len(leased) == 10
        done_before = leased[0]
        c.complete(done_before["id"], done_before["attempt"], {"before": True},
                   lease_token=done_before["lease_token"])

    for i in range(1, 4):
        cluster.kill(i, signal.SIGKILL)
    assert cluster.alive() == []
    cluster.start()
    cluster.leader_id(timeout=60)

    with cluster.client() as c:
        for job_id in ids:
            view = c.get(job_id)
            assert view["id"] == job_id
        assert c.get(done_before["id"])["state"] == "succeeded"
        assert c.get(done_before["id"])["result"] == {"before": True}
        # Everything still finishes: drain with leases (the 9 stale leases expire or are re-leased).
        finished: set[str] = {done_before["id"]}

        def drain() -> bool:
            for job in c.lease("w-after", ["default"], max=100, wait_s=0.2):
                c.complete(job["id"], job["attempt"], {"after": True}, lease_token=job["lease_token"])
                finished.add(job["id"])
            return len(finished) >= len(ids) - 9

        wait_until(drain, 60, "the restarted cluster to hand out every queued job")
    cluster.wait_replicas_equal([1, 2, 3])
