"""Does the state machine stay O(log n)? Submit and lease rates with 10k vs 1M jobs held.

`make bench-scale` (or `python -m loadtest.scale [--small 10000] [--large 1000000]`).
The machine is driven in-process through `apply_entry`, exactly as the Raft
adapter drives it, so the figures are the apply cost alone (no network, no
fsync). For each size the machine is first filled with that many queued jobs
(held: they stay queued in a queue nobody leases from), then measured:

- submit: entries of 100 submits each into a second queue;
- lease+complete: lease 100 jobs from that queue and complete each one.

Each measurement is the median of several rounds, and the sizes are
interleaved (small, large, small, large...) so machine noise hits both alike.
Prints one table with the large/small ratio; the issue's bar is >= 0.8.
"""
from __future__ import annotations

import argparse
import gc
import secrets
import statistics
import time

from replication.machine import JobMachine
from replication.model import LEASE_NONCE_BYTES

BATCH = 100


def _fill(machine: JobMachine, n: int, now_ms: int) -> int:
    for start in range(0, n, 1000):
        cmds = [{"op": "submit", "job": {"id": f"held-{i}", "type": "util.noop", "queue": "held"}}
                for i in range(start, min(n, start + 1000))]
        now_ms += 1
        machine.apply_entry({"v": 1, "now_ms": now_ms, "cmds": cmds})
    return now_ms


def _measure(machine: JobMachine, now_ms: int, tag: str, jobs: int) -> tuple[float, float, int]:
    """(submits/s, lease+complete jobs/s, new now_ms) for `jobs` jobs in batches of BATCH."""
    ids = [f"{tag}-{i}" for i in range(jobs)]
    t0 = time.perf_counter()
    for start in range(0, jobs, BATCH):
        now_ms += 1
        machine.apply_entry({"v": 1, "now_ms": now_ms, "cmds": [
            {"op": "submit", "job": {"id": j, "type": "util.noop", "queue": "work"}} for j in ids[start:start + BATCH]]})
    submit_rate = jobs / (time.perf_counter() - t0)

    t0 = time.perf_counter()
    done = 0
    while done < jobs:
        now_ms += 1
        leased = machine.apply_entry({"v": 1, "now_ms": now_ms, "cmds": [
            {"op": "lease", "worker": "bench", "queues": ["work"], "max": BATCH, "lease_ms": 60_000,
             "nonce": secrets.token_bytes(LEASE_NONCE_BYTES)}]})[0]["jobs"]
        now_ms += 1
        machine.apply_entry({"v": 1, "now_ms": now_ms, "cmds": [
            {"op": "complete", "id": j["id"], "attempt": j["attempt"], "lease_token": j["lease_token"],
             "result": None} for j in leased]})
        done += len(leased)
    lease_rate = jobs / (time.perf_counter() - t0)
    return submit_rate, lease_rate, now_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs submitted and leased per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    machines: dict[int, tuple[JobMachine, int]] = {}
    for size in (args.small, args.large):
        t0 = time.perf_counter()
        m = JobMachine()
        machines[size] = (m, _fill(m, size, 1_000_000))
        print(f"filled {size:>9,} held jobs in {time.perf_counter() - t0:.1f}s")
    gc.collect()
    gc.freeze()  # the held jobs are long-lived: keep the collector from rescanning them every round

    results: dict[int, list[tuple[float, float]]] = {args.small: [], args.large: []}
    for r in range(args.rounds):
        for size in (args.small, args.large):
            m, now = machines[size]
            s, l, now = _measure(m, now, f"r{r}", args.jobs)
            machines[size] = (m, now)
            results[size].append((s, l))

    def med(size: int, k: int) -> float:
        return statistics.median(x[k] for x in results[size])

    print(f"\n{'held jobs':>10}  {'submit/s':>10}  {'lease+complete/s':>17}")
    for size in (args.small, args.large):
        print(f"{size:>10,}  {med(size, 0):>10,.0f}  {med(size, 1):>17,.0f}")
    print(f"{'ratio':>10}  {med(args.large, 0) / med(args.small, 0):>10.2f}  "
          f"{med(args.large, 1) / med(args.small, 1):>17.2f}   (large / small; >= 0.80 means O(log n) holds)")


if __name__ == "__main__":
    main()
