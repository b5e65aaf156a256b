"""Must-show: a leader SIGKILLed under load loses no acknowledged job.

50 client threads submit 5,000 jobs; the leader is killed with SIGKILL once a
fifth of them are acknowledged. Test threads then act as workers through the
real client (lease, complete), so every accepted completion is observed here.
Checked: every acknowledged job exists on the survivors and reaches
`succeeded`; no job's completion is accepted twice; the replicas agree.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

from cluster.errors import LeaseLost, RaftqError
from replication.model import FINAL_STATES
from tests.integration.harness import LocalCluster, wait_until

CLIENTS = 50
JOBS = 5000


def test_leader_sigkill_under_concurrent_submits(make_cluster) -> None:
    cluster: LocalCluster = make_cluster(durability="fsync")
    leader = cluster.leader_id()
    acked: set[str] = set()
    unknown: set[str] = set()
    lock = threading.Lock()
    per_client = JOBS // CLIENTS
    latencies: list[float] = []

    def submitter(n: int) -> None:
        with cluster.client(timeout_s=30) as c:
            for k in range(per_client):
                job_id = f"j-{n}-{k}-{uuid.uuid4().hex[:6]}"
                t0 = time.perf_counter()
                try:
                    c.submit("util.noop", {}, id=job_id, max_attempts=5)
                except RaftqError:
                    with lock:
                        unknown.add(job_id)
                    continue
                with lock:
                    acked.add(job_id)
                    latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(CLIENTS)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= JOBS // 5, 60, "a fifth of the jobs acknowledged")
    cluster.kill(leader)
    killed_at = time.perf_counter()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.perf_counter() - started
    assert not any(t.is_alive() for t in threads)
    survivors = cluster.alive()
    new_leader = cluster.leader_id(among=survivors)
    assert new_leader != leader
    print(f"\nsubmitted {len(acked)} acked, {len(unknown)} unknown in {elapsed:.1f}s "
          f"({len(acked) / elapsed:.0f}/s incl. failover); kill at +{killed_at - started:.1f}s")
    assert len(acked) >= JOBS * 0.9, "the clients should ride out one failover"

    # Drain: test threads lease and complete everything, recording accepted completions.
    accepted: Counter[str] = Counter()
    done = threading.Event()

    def worker(name: str) -> None:
        with cluster.client(survivors, timeout_s=30) as c:
            while not done.is_set():
                try:
                    jobs = c.lease(name, ["default"], max=50, wait_s=0.5)
                except RaftqError:
                    continue
                for job in jobs:
                    try:
                        c.complete(job["id"], job["attempt"], {"ok": True}, lease_token=job["lease_token"])
                    except LeaseLost:
                        continue
                    with lock:
                        accepted[job["id"]] += 1

    workers = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for w in workers:
        w.start()
    try:
        with cluster.client(survivors) as c:
            def all_done() -> bool:
                stats = c.stats()
                live = sum(n for s, n in stats["jobs"].items() if s not in FINAL_STATES)
                return live == 0
            wait_until(all_done, 120, "every job finished")
    finally:
        done.set()
        for w in workers:
            w.join(timeout=30)

    with cluster.client(survivors) as c:
        missing = []
        for job_id in sorted(acked):
            view = c.get(job_id)
            if view["state"] != "succeeded":
                missing.append((job_id, view["state"]))
        assert not missing, f"acknowledged jobs not succeeded: {missing[:10]}"
    twice = {j: n for j, n in accepted.items() if n > 1}
    assert not twice, f"completions accepted twice: {list(twice.items())[:10]}"
    assert acked <= set(accepted), "every acknowledged job was completed by a worker here"
    cluster.wait_replicas_equal(survivors)
