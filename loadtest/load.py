"""raftq load generators, run as separate processes so the load competes with
the nodes like a real client would (and its CPU can be measured apart).

    python -m loadtest.load submit  --addrs A,B,C --conns 500 --duration 10 --start-at T [--batch 1]
    python -m loadtest.load drain   --addrs A,B,C --workers 8 --max 100 --count N --timeout 60

`submit`: `conns` AsyncClients (one TCP connection each, like 500 separate
programs), each submitting one job (or `--batch` jobs via submit_many) at a
time, back to back, from `start_at` (epoch s) for `duration` s. Prints one JSON
line: jobs and requests acknowledged inside the window, a sample of round-trip
latencies (ms) and the process CPU time.

`drain`: `workers` asyncio workers, each leasing up to `max` jobs and
completing them (pipelined on its connection) until `count` jobs completed.
Prints JSON with the completion count, elapsed time and CPU.

`spawn(...)` runs several such processes and merges their JSON; bench.py and
the profiling notes use it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cluster.client import AsyncClient
from cluster.errors import RaftqError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_EVERY = 7  # keep every 7th latency: plenty for p99, bounded memory


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _submitter(addrs: list[str], token: str, start_at: float, end_at: float, batch: int,
                     out: dict[str, Any], ready: asyncio.Event, connected: list[int]) -> None:
    async with AsyncClient(addrs, token=token, timeout_s=30.0) as c:
        await c.cluster_status()  # connect (and learn) before the clock starts
        connected[0] += 1
        await ready.wait()
        prefix = uuid.uuid4().hex[:12]
        n = 0
        while time.time() < end_at:
            t0 = time.perf_counter()
            try:
                if batch == 1:
                    await c.submit("noop", {}, id=f"{prefix}-{n}")
                else:
                    await c.submit_many([{"type": "noop", "args": {}, "id": f"{prefix}-{n}-{k}"}
                                         for k in range(batch)])
            except RaftqError as exc:
                out["errors"][exc.code] = out["errors"].get(exc.code, 0) + 1
                continue
            done = time.time()
            n += 1
            if start_at <= done <= end_at:
                out["requests"] += 1
                out["jobs"] += batch
                if n % SAMPLE_EVERY == 0:
                    out["lat_ms"].append((time.perf_counter() - t0) * 1000)


async def _submit_main(args: argparse.Namespace) -> dict[str, Any]:
    addrs = args.addrs.split(",")
    out: dict[str, Any] = {"jobs": 0, "requests": 0, "lat_ms": [], "errors": {}}
    ready = asyncio.Event()
    connected = [0]
    end_at = args.start_at + args.duration
    tasks = [asyncio.create_task(_submitter(addrs, args.token, args.start_at, end_at, args.batch,
                                            out, ready, connected)) for _ in range(args.conns)]
    while connected[0] < args.conns and time.time() < args.start_at:
        await asyncio.sleep(0.01)
    await asyncio.sleep(max(0.0, args.start_at - time.time()))
    ready.set()
    cpu0 = _cpu_s()
    await asyncio.gather(*tasks)
    out["cpu_s"] = _cpu_s() - cpu0
    out["connected"] = connected[0]
    return out


async def _drain_worker(addrs: list[str], token: str, max_jobs: int, state: dict[str, Any], target: int,
                        deadline: float) -> None:
    async with AsyncClient(addrs, token=token, timeout_s=30.0, role="worker") as c:
        name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        while state["completed"] < target and time.time() < deadline:
            jobs = await c.lease(name, ["default"], max=max_jobs, wait_s=0.5)
            if not jobs:
                continue
            if state["first"] is None:
                state["first"] = time.time()
            await asyncio.gather(*(c.complete(j["id"], j["attempt"], None, lease_token=j["lease_token"]) for j in jobs))
            state["completed"] += len(jobs)
            state["last"] = time.time()


async def _drain_main(args: argparse.Namespace) -> dict[str, Any]:
    addrs = args.addrs.split(",")
    state: dict[str, Any] = {"completed": 0, "first": None, "last": None}
    cpu0 = _cpu_s()
    deadline = time.time() + args.timeout
    await asyncio.gather(*(_drain_worker(addrs, args.token, args.max, state, args.count, deadline)
                           for _ in range(args.workers)))
    state["cpu_s"] = _cpu_s() - cpu0
    return state


def _run_children(argvs: list[list[str]], timeout_s: float) -> list[dict[str, Any]]:
    """Run load processes side by side; each writes its JSON result to its own file."""
    with tempfile.TemporaryDirectory(prefix="raftq-load-") as tmp:
        outs = [Path(tmp) / f"{i}.json" for i in range(len(argvs))]
        children = [subprocess.Popen([sys.executable, "-m", "loadtest.load", *argv, "--out", str(out)],
                                     cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    for argv, out in zip(argvs, outs)]
        for ch in children:
            _, err = ch.communicate(timeout=timeout_s)
            if ch.returncode != 0:
                raise RuntimeError(f"load process failed ({ch.returncode}): {err.decode(errors='replace')[-2000:]}")
        return [json.loads(out.read_text()) for out in outs]


def spawn(mode: str, addrs: list[str], procs: int, extra: list[str], token: str = "bench",
          timeout_s: float = 600.0) -> list[dict[str, Any]]:
    """Run `procs` load processes of `mode` and return their JSON results."""
    return _run_children([[mode, "--addrs", ",".join(addrs), "--token", token, *extra]] * procs, timeout_s)


def run_submit(addrs: list[str], conns: int, procs: int, duration_s: float, batch: int = 1,
               warmup_s: float = 3.0, token: str = "bench") -> dict[str, Any]:
    """`conns` concurrent submitters spread over `procs` processes; merged stats."""
    start_at = time.time() + warmup_s + conns / 400  # time to connect them all
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    parts = _run_children([["submit", "--addrs", ",".join(addrs), "--token", token, "--conns", str(n),
                            "--duration", str(duration_s), "--start-at", f"{start_at:.3f}", "--batch", str(batch)]
                           for n in per], duration_s + warmup_s + 120)
    lat = sorted(x for p in parts for x in p["lat_ms"])
    errors: dict[str, int] = {}
    for p in parts:
        for k, v in p["errors"].items():
            errors[k] = errors.get(k, 0) + v
    jobs = sum(p["jobs"] for p in parts)
    return {
        "jobs_per_s": jobs / duration_s,
        "requests_per_s": sum(p["requests"] for p in parts) / duration_s,
        "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99),
        "errors": errors, "loadgen_cpu_s": sum(p["cpu_s"] for p in parts),
        "connected": sum(p["connected"] for p in parts),
    }


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.load")
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("submit")
    s.add_argument("--conns", type=int, required=True)
    s.add_argument("--duration", type=float, required=True)
    s.add_argument("--start-at", type=float, required=True)
    s.add_argument("--batch", type=int, default=1)
    d = sub.add_parser("drain")
    d.add_argument("--workers", type=int, default=4)
    d.add_argument("--max", type=int, default=100)
    d.add_argument("--count", type=int, required=True)
    d.add_argument("--timeout", type=float, default=120.0)
    for q in (s, d):
        q.add_argument("--addrs", required=True)
        q.add_argument("--token", default="bench")
        q.add_argument("--out", help="write the JSON result to this file instead of stdout")
    args = p.parse_args(argv)
    import uvloop
    random.seed()
    result = uvloop.run(_submit_main(args) if args.mode == "submit" else _drain_main(args))
    if args.out:  # a file, not the pipe: uvloop leaves stdout non-blocking and cut results at 64 KiB
        Path(args.out).write_text(json.dumps(result))
    else:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
