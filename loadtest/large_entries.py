"""Large entries against a fresh 3-node fsync cluster on loopback.

    python -m loadtest.large_entries [--n 200] [--arg-bytes 1048000]
                                     [--many-bytes 4000000] [--many-jobs 4] [--max-s 180]

Runs, one after the other and each bounded by `--max-s`:

  seq   `--n` sequential submits whose args hold `--arg-bytes` bytes: p50/p99 ms
  many  one submit_many of `--many-jobs` jobs, `--many-bytes` bytes of args in
        all (one Raft entry): ms to acknowledge, or the error

and after each the Raft term and leader, so churn shows as the term rising
(a stable leader keeps term and leader). Prints one JSON object; the figures
are in the closing note of issue 10.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.errors import RaftqError
from loadtest.load import percentile
from loadtest.localcluster import BenchCluster


def _status(cluster: BenchCluster) -> dict[str, Any]:
    with cluster.client(timeout_s=10.0) as c:
        st = c.cluster_status()
    return {"term": st.get("term"), "leader": st.get("leader")}


def seq(cluster: BenchCluster, n: int, arg_bytes: int, max_s: float) -> dict[str, Any]:
    before = _status(cluster)
    lat: list[float] = []
    errors: dict[str, int] = {}
    blob = "x" * arg_bytes
    deadline = time.monotonic() + max_s
    with cluster.client(timeout_s=30.0) as c:
        for i in range(n):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            try:
                c.submit("util.noop", {"blob": blob, "i": i}, queue="large")
            except RaftqError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            lat.append((time.perf_counter() - t) * 1000)
    done = len(lat)
    lat.sort()
    return {"submits": done, "errors": errors, "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99), "term_before": before["term"], "after": _status(cluster)}


def many(cluster: BenchCluster, total_bytes: int, jobs: int, max_s: float) -> dict[str, Any]:
    before = _status(cluster)
    blob = "y" * (total_bytes // jobs)
    specs = [{"type": "util.noop", "args": {"blob": blob, "i": i}, "queue": "large"} for i in range(jobs)]
    t = time.perf_counter()
    out: dict[str, Any] = {"term_before": before["term"]}
    try:
        with cluster.client(timeout_s=max_s) as c:
            ids = c.submit_many(specs)
        out["ms"] = (time.perf_counter() - t) * 1000
        out["ids"] = len(ids)
    except RaftqError as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    time.sleep(2.0)  # let a churn (if any) show in the term
    out["after"] = _status(cluster)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.large_entries")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--arg-bytes", type=int, default=1_048_000)
    p.add_argument("--many-bytes", type=int, default=4_000_000)
    p.add_argument("--many-jobs", type=int, default=4)
    p.add_argument("--max-s", type=float, default=180.0)
    p.add_argument("--only", default="seq,many")
    a = p.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="raftq-large-"))
    out: dict[str, Any] = {}
    try:
        with BenchCluster(root, durability="fsync") as cluster:
            cluster.start()
            only = set(a.only.split(","))
            if "seq" in only:
                out["seq"] = seq(cluster, a.n, a.arg_bytes, a.max_s)
            if "many" in only:
                out["many"] = many(cluster, a.many_bytes, a.many_jobs, a.max_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    json.dump(out, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
