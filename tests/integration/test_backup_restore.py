"""The README's backup and restore (Operations), as written: a stopped
follower's data dir copied with tar, the cluster later lost, every node
restored from that one archive. Real nodes, the real tar."""
from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from cluster.errors import NotFound
from tests.integration.harness import LocalCluster


def tar(*args: str) -> None:
    subprocess.run(["tar", *args], check=True, capture_output=True, timeout=60)


def test_a_follower_backup_restores_the_whole_cluster(make_cluster, tmp_path: Path) -> None:
    cluster: LocalCluster = make_cluster(durability="fsync")
    data = cluster.root / "data"  # the config's data_dir
    leader = cluster.leader_id()
    follower = next(i for i in (1, 2, 3) if i != leader)
    with cluster.client() as c:
        before = [c.submit("util.noop", {"n": i}, id=f"before-{i}") for i in range(5)]
    cluster.wait_replicas_equal([1, 2, 3])  # the follower has them (the README: a just-acked job may not be there)

    # Backup: stop the follower (SIGTERM), tar its data dir, start it again.
    cluster.kill(follower, signal.SIGTERM)
    assert cluster.procs[follower].returncode == 0
    backup = tmp_path / "raftq-backup.tar.gz"
    tar("-C", str(data), "-czf", str(backup), f"node-{follower}")
    cluster.start(follower)
    with cluster.client() as c:
        after = [c.submit("util.noop", {}, id=f"after-{i}") for i in range(3)]

    # Every node lost; each restored from the one archive under its own node-N.
    cluster.stop()
    shutil.move(str(data), str(tmp_path / "data.lost"))
    for n in (1, 2, 3):
        data.mkdir(parents=True, exist_ok=True)
        tar("-C", str(data), "-xzf", str(backup))
        if n != follower:
            (data / f"node-{follower}").rename(data / f"node-{n}")
    cluster.start()
    cluster.leader_id()
    cluster.wait_replicas_equal([1, 2, 3])
    with cluster.client() as c:
        assert [c.get(job_id)["state"] for job_id in before] == ["queued"] * 5
        for job_id in after:  # submitted after the backup: gone with the lost cluster
            with pytest.raises(NotFound):
                c.get(job_id)
        # ...and the restored cluster takes new work.
        c.submit("util.noop", {}, id="after-restore")
        assert c.get("after-restore")["state"] == "queued"
