"""Quick raftq-only measurements for A/B work on the hot path.

    python -m loadtest.quick [--seq 400] [--conc 8] [--conns 1000] [--batch 1]
                             [--e2e 4000] [--e2e-batch 1] [--failover 0] [--only seq,conc,e2e,failover]

Starts a fresh 3-node cluster (durability=fsync) and runs, as asked:

  seq       one blocking Client, `--seq` submits back to back: p50/p99 ms, jobs/s
  conc      `--conns` AsyncClient connections over 2 load processes, `--conc`
            seconds of back-to-back submits (`--batch` jobs each): jobs/s, and
            the CPU seconds each node process used in that window
  e2e       2 `raftq worker` processes x 16 threads; 50 producers enqueue
            `--e2e` no-op jobs (`--e2e-batch` n: in submit_many calls of n):
            jobs/s from the first enqueue to the last completion
  drain     `--drain` no-op jobs queued first, then 2 `raftq worker`s: jobs/s
            over 5 s and the CPU us per job of every node and worker
  failover  `--failover` leader SIGKILLs under a sequential writer: the gap to
            the next acknowledged submit (each node restarts after)

Prints one JSON object. The full side-by-side table is `make bench`; this is
the tool behind the before/after figures in loadtest/README.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.bench import failover_gap, run_producers, wait_completed
from loadtest.load import percentile, run_submit
from loadtest.localcluster import TOKEN, BenchCluster
from loadtest.peers import ENQ_QUEUE, RUN_QUEUE, RaftqSystem


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks


def seq(cluster: BenchCluster, n: int) -> dict[str, Any]:
    lat: list[float] = []
    with cluster.client() as c:
        for _ in range(20):
            c.submit("util.noop", {}, queue=ENQ_QUEUE)
        t0 = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            c.submit("util.noop", {}, queue=ENQ_QUEUE)
            lat.append((time.perf_counter() - t) * 1000)
        elapsed = time.perf_counter() - t0
    lat.sort()
    return {"p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "jobs_per_s": n / elapsed}


def conc(cluster: BenchCluster, conns: int, duration: float, batch: int) -> dict[str, Any]:
    pids = {i: cluster.pid(i) for i in cluster.procs}
    leader = cluster.leader_id()
    # CPU of each node over the measured window only (load processes connect first).
    before: dict[int, float] = {}
    import threading
    warm = 3.0 + conns / 400
    timer = threading.Timer(warm, lambda: before.update({i: _proc_cpu_s(p) for i, p in pids.items()}))
    timer.start()
    r = run_submit(cluster.addrs, conns, 2, duration, batch=batch, warmup_s=3.0, token=TOKEN)
    after = {i: _proc_cpu_s(p) for i, p in pids.items()}
    timer.cancel()
    jobs = r["jobs_per_s"] * duration
    r["cpu_us_per_job"] = {("leader" if i == leader else f"node{i}"): round((after[i] - before.get(i, 0)) / jobs * 1e6, 1)
                           for i in pids} if jobs else {}
    r["loadgen_us_per_job"] = round(r["loadgen_cpu_s"] / jobs * 1e6, 1) if jobs else None
    return r


def e2e(cluster: BenchCluster, n: int, workdir: Path, batch: int = 1) -> dict[str, Any]:
    system = RaftqSystem(workdir, cluster.addrs, TOKEN)
    system.start_workers()
    try:
        run_producers("raftq", cluster.addrs, 1, 1, 1, mode="round_trip")  # workers are up
        base = system.completed()
        r = run_producers("raftq", cluster.addrs, n, 50, 2, mode="e2e_batch" if batch > 1 else "e2e", batch=batch)
        done_at = wait_completed(system, base + n + r["warm_jobs"], 300)
        rt = run_producers("raftq", cluster.addrs, 200, 1, 1, mode="round_trip")
        return {"jobs_per_s": n / (done_at - r["start_at"]), "enqueue_per_s": r["rate"],
                "rt_p50_ms": rt["p50"], "rt_p99_ms": rt["p99"]}
    finally:
        system.stop_workers()


def drain(cluster: BenchCluster, n: int, workdir: Path, window_s: float = 5.0) -> dict[str, Any]:
    """Fill the run queue with `n` no-op jobs, start 2 `raftq worker`s and
    measure over `window_s` (after a 3 s warm-up): jobs/s and the CPU us per
    completed job of every node and worker process."""
    with cluster.client() as c:
        for i in range(0, n, 500):
            c.submit_many([{"type": "util.noop", "args": {}, "queue": RUN_QUEUE} for _ in range(min(500, n - i))])
    system = RaftqSystem(workdir, cluster.addrs, TOKEN)
    system.start_workers()
    try:
        time.sleep(3.0)
        leader = cluster.leader_id()
        pids = {("leader" if i == leader else f"node{i}"): cluster.pid(i) for i in cluster.procs}
        pids.update({f"worker{k}": w.pid for k, w in enumerate(system.workers)})
        before = {k: _proc_cpu_s(p) for k, p in pids.items()}
        done0, t0 = system.completed(), time.monotonic()
        time.sleep(window_s)
        after = {k: _proc_cpu_s(p) for k, p in pids.items()}
        done1, t1 = system.completed(), time.monotonic()
    finally:
        system.stop_workers()
    jobs = done1 - done0
    if done1 >= n:
        raise RuntimeError(f"the queue ran dry inside the window: use a larger --drain than {n}")
    return {"jobs_per_s": jobs / (t1 - t0),
            "cpu_us_per_job": {k: round((after[k] - before[k]) / jobs * 1e6) for k in pids} if jobs else {}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.quick", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="seq,conc,e2e")
    p.add_argument("--seq", type=int, default=400)
    p.add_argument("--conc", type=float, default=8.0)
    p.add_argument("--conns", type=int, default=1000)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--e2e", type=int, default=4000)
    p.add_argument("--e2e-batch", type=int, default=1, help="producers enqueue with submit_many of this size")
    p.add_argument("--drain", type=int, default=40000, help="jobs pre-filled for the drain figure")
    p.add_argument("--failover", type=int, default=0)
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    if args.failover:
        only.add("failover")
    workdir = Path(tempfile.mkdtemp(prefix="raftq-quick-"))
    out: dict[str, Any] = {}
    cluster = BenchCluster(workdir / "raftq", durability="fsync")
    try:
        cluster.start()
        if "seq" in only:
            out["seq"] = seq(cluster, args.seq)
        if "conc" in only:
            out["conc"] = conc(cluster, args.conns, args.conc, args.batch)
        if "e2e" in only:
            out["e2e"] = e2e(cluster, args.e2e, workdir, args.e2e_batch)
        if "drain" in only:
            out["drain"] = drain(cluster, args.drain, workdir)
        if "failover" in only:
            gaps = [failover_gap(cluster) for _ in range(max(1, args.failover))]
            out["failover"] = {"gaps_s": [round(g, 3) for g in gaps], "median_s": statistics.median(gaps),
                               "max_s": max(gaps)}
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
