"""`make bench`: raftq side by side with Celery and RQ on this machine.

    python -m loadtest.bench [--rounds 3] [--jobs 2000] [--producers 50] [--systems raftq,celery,rq]
                             [--json loadtest/results/bench.json]

Starts a fresh 3-node raftq cluster (durability=fsync) and one Redis
(Debian `redis-server`, apt-get installed if missing, on a private port with
no persistence, which is the peers' usual setup), then runs, per round and in
a rotating system order (interleaved, so drifting machine load hits every
system alike):

  enqueue_1     one producer, `--jobs` enqueues back to back: jobs/s, and the
                enqueue round trip p50/p99 (raftq: majority-fsync'd ack)
  enqueue_N     `--producers` producers (threads over 2 processes), 5 x `--jobs`
  e2e           the same producers enqueue 2 x `--jobs` no-op jobs while two
                worker processes run them: jobs/s from first enqueue to last
                completion
  e2e_batch     the same, 5 x `--jobs` jobs enqueued in batches of `--batch`
                with each system's batch call (raftq submit_many, RQ
                enqueue_many, Celery a group)
  round_trip    one job at a time, enqueue then wait for its result: p50/p99 ms
  failover      raftq only: SIGKILL the leader under a sequential writer; gap
                until the next acknowledged submit (then the node restarts)

Every figure is the median over `--rounds`. One table is printed (ratios are
raftq/peer for rates, peer/raftq for latencies: > 1 means raftq is better)
and the raw numbers are written as JSON. Producers run in their own processes
(`python -m loadtest.bench producer ...`), started before a common start time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from loadtest.localcluster import TOKEN, BenchCluster
from loadtest.load import percentile

REPO = Path(__file__).resolve().parents[1]
REDIS_PORT = 6399
SYSTEMS = ("raftq", "celery", "rq")
HIGHER_IS_BETTER = {"enqueue_1": True, "enqueue_N": True, "e2e": True, "e2e_batch": True, "submit_p50": False,
                    "submit_p99": False, "rt_p50": False, "rt_p99": False}


# ---------------------------------------------------------------- producer process

def _make_system(name: str, addrs: list[str], workdir: Path) -> Any:
    from loadtest import peers
    if name == "raftq":
        return peers.RaftqSystem(workdir, addrs, TOKEN)
    if name == "celery":
        return peers.CelerySystem(workdir)
    if name == "rq":
        return peers.RqSystem(workdir)
    raise SystemExit(f"unknown system {name!r}; pick from {', '.join(SYSTEMS)}")


def producer_main(args: argparse.Namespace) -> int:
    """Child process: `threads` producers, `count` jobs in all, from `start_at`."""
    system = _make_system(args.system, args.addrs.split(",") if args.addrs else [], Path(tempfile.gettempdir()))
    per = [args.count // args.threads + (1 if i < args.count % args.threads else 0) for i in range(args.threads)]
    from loadtest.peers import ENQ_QUEUE, RUN_QUEUE
    queue = ENQ_QUEUE if args.mode == "enqueue" else RUN_QUEUE
    batch = args.batch if args.mode == "e2e_batch" else 1
    if args.mode == "e2e":
        args.mode = "enqueue"
    producers = [system.producer(queue) for _ in range(args.threads)]
    lat: list[list[float]] = [[] for _ in producers]
    errors: list[str] = []

    def run(i: int) -> None:
        p = producers[i]
        if args.mode == "round_trip":
            op = lambda n: p.round_trip()  # noqa: E731
        elif batch > 1:
            op = p.enqueue_batch
        else:
            op = lambda n: p.enqueue()  # noqa: E731
        try:
            op(1)  # warm: connect, learn the leader (not timed)
            while time.time() < args.start_at:
                time.sleep(0.001)
            left = per[i]
            while left > 0:
                n = min(batch, left)
                t0 = time.perf_counter()
                op(n)
                lat[i].append((time.perf_counter() - t0) * 1000)
                left -= n
        except Exception as exc:  # reported to the parent, which fails the run
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.time()
    for p in producers:
        p.close()
    print(json.dumps({"end": end, "lat_ms": [x for part in lat for x in part], "errors": errors[:5],
                      "warm_jobs": args.threads, "jobs": sum(per)}))
    return 0


# ---------------------------------------------------------------- parent side

def run_producers(system: str, addrs: list[str], count: int, threads: int, procs: int,
                  mode: str = "enqueue", batch: int = 1) -> dict[str, Any]:
    start_at = time.time() + 2.0 + 0.02 * threads
    per = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    tpp = [max(1, threads // procs + (1 if i < threads % procs else 0)) for i in range(procs)]
    children = [subprocess.Popen(
        [sys.executable, "-m", "loadtest.bench", "producer", "--system", system, "--addrs", ",".join(addrs),
         "--count", str(per[i]), "--threads", str(tpp[i]), "--start-at", f"{start_at:.3f}", "--mode", mode,
         "--batch", str(batch)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(procs)]
    parts = []
    for ch in children:
        out, err = ch.communicate(timeout=900)
        if ch.returncode != 0 or not out.strip():
            raise RuntimeError(f"{system} producer failed: {err.decode(errors='replace')[-1500:]}")
        part = json.loads(out.decode().strip().splitlines()[-1])
        if part["errors"]:
            raise RuntimeError(f"{system} producer errors: {part['errors']}")
        parts.append(part)
    lat = sorted(x for p in parts for x in p["lat_ms"])
    elapsed = max(p["end"] for p in parts) - start_at
    return {"rate": sum(p["jobs"] for p in parts) / elapsed, "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "elapsed": elapsed, "start_at": start_at, "warm_jobs": sum(p["warm_jobs"] for p in parts)}


def wait_completed(sys_obj: Any, target: int, timeout_s: float) -> float:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if sys_obj.completed() >= target:
            return time.time()
        time.sleep(0.05)
    raise RuntimeError(f"{sys_obj.name}: only {sys_obj.completed()} of {target} jobs completed in {timeout_s}s")


def failover_gap(cluster: BenchCluster) -> float:
    """SIGKILL the leader while one client submits back to back; seconds from
    the kill to the first acknowledged submit after it. The node restarts."""
    from cluster.client import Client
    with Client(cluster.addrs, token=TOKEN, timeout_s=30.0) as c:
        for _ in range(20):
            c.submit("util.noop", {})
        leader = cluster.leader_id()
        stop = threading.Event()
        acks: list[float] = []

        def writer() -> None:
            with Client(cluster.addrs, token=TOKEN, timeout_s=30.0) as w:
                while not stop.is_set():
                    w.submit("util.noop", {})
                    acks.append(time.monotonic())

        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.5)
        killed_at = time.monotonic()
        cluster.kill(leader)
        deadline = time.monotonic() + 30
        while not any(a > killed_at for a in acks) and time.monotonic() < deadline:
            time.sleep(0.005)
        stop.set()
        t.join(timeout=60)
        after = [a for a in acks if a > killed_at]
        if not after:
            raise RuntimeError("no write acknowledged within 30 s of the leader kill")
        # Acks are appended after the reply arrives; the first after the kill is the gap.
        gap = after[0] - killed_at
    cluster.start(leader)
    cluster.leader_id()
    return gap


def node_rss_kib(cluster: BenchCluster) -> dict[int, int]:
    out = {}
    for i, p in cluster.procs.items():
        if p.poll() is None:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[i] = int(line.split()[1])
    return out


def ensure_redis(workdir: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("redis-server")
    if exe is None:
        print("bench: installing Debian redis-server (apt-get)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen([exe, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=open(workdir / "redis.log", "ab"), stderr=subprocess.STDOUT)
    import redis
    deadline = time.time() + 15
    while True:
        try:
            redis.Redis(port=REDIS_PORT).ping()
            return proc
        except redis.ConnectionError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}")
            time.sleep(0.1)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    systems = [s for s in args.systems.split(",") if s]
    workdir = Path(tempfile.mkdtemp(prefix="raftq-bench-"))
    os.environ["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{REDIS_PORT}"
    results: dict[str, dict[str, list[float]]] = {s: {} for s in systems}
    redis_proc = None
    cluster = BenchCluster(workdir / "raftq", durability="fsync")
    sysobjs: dict[str, Any] = {}
    try:
        cluster.start()
        if any(s != "raftq" for s in systems):
            redis_proc = ensure_redis(workdir)
        for s in systems:
            sysobjs[s] = _make_system(s, cluster.addrs, workdir)
        rss0 = node_rss_kib(cluster)
        raftq_jobs = 0
        for rnd in range(args.rounds):
            order = systems[rnd % len(systems):] + systems[:rnd % len(systems)]
            for s in order:
                r = results[s]
                addrs = cluster.addrs

                def add(key: str, value: float | None) -> None:
                    if value is not None:
                        r.setdefault(key, []).append(value)

                one = run_producers(s, addrs, args.jobs, 1, 1)
                add("enqueue_1", one["rate"]); add("submit_p50", one["p50"]); add("submit_p99", one["p99"])
                many = run_producers(s, addrs, 5 * args.jobs, args.producers, 2)
                add("enqueue_N", many["rate"])
                sysobjs[s].purge_enqueued()
                # Workers run only for the workloads that need them: idle peers'
                # workers would otherwise tax the enqueue-only runs of the others.
                sysobjs[s].start_workers()
                run_producers(s, addrs, 1, 1, 1, mode="round_trip")  # proves the workers are up
                n_e2e = 2 * args.jobs
                base = sysobjs[s].completed()
                e2e = run_producers(s, addrs, n_e2e, args.producers, 2, mode="e2e")
                # warm-up enqueues (one per producer thread) also complete
                done_at = wait_completed(sysobjs[s], base + n_e2e + e2e["warm_jobs"], 300)
                add("e2e", n_e2e / (done_at - e2e["start_at"]))
                n_batch = 5 * args.jobs
                base = sysobjs[s].completed()
                e2eb = run_producers(s, addrs, n_batch, args.producers, 2, mode="e2e_batch", batch=args.batch)
                done_at = wait_completed(sysobjs[s], base + n_batch + e2eb["warm_jobs"], 300)
                add("e2e_batch", n_batch / (done_at - e2eb["start_at"]))
                rt = run_producers(s, addrs, args.rt_jobs, 1, 1, mode="round_trip")
                add("rt_p50", rt["p50"]); add("rt_p99", rt["p99"])
                sysobjs[s].stop_workers()
                if s == "raftq":
                    raftq_jobs += 13 * args.jobs + args.rt_jobs + 4 + args.producers * 3 + 20
                    add("failover_s", failover_gap(cluster))
                print(f"round {rnd + 1}/{args.rounds} {s}: " + ", ".join(
                    f"{k}={v[-1]:.1f}" for k, v in r.items()), flush=True)
        rss1 = node_rss_kib(cluster)
    finally:
        for o in sysobjs.values():
            o.stop_workers()
        cluster.stop()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    medians = {s: {k: statistics.median(v) for k, v in r.items()} for s, r in results.items()}
    if "raftq" in systems and raftq_jobs:
        # RSS growth over the jobs the cluster now holds (all retained: retention 24 h).
        per_job = [(rss1[i] - rss0.get(i, rss1[i])) * 1024 / raftq_jobs for i in rss1]
        medians["raftq"]["bytes_per_job"] = max(per_job) if per_job else None
    shutil.rmtree(workdir, ignore_errors=True)
    return {"machine": machine(), "args": dict(vars(args)), "median": medians, "runs": results}


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "kernel": platform.release(), "load_avg_at_end": os.getloadavg()}


def render(report: dict[str, Any]) -> str:
    med = report["median"]
    systems = list(med)
    peers = [s for s in systems if s != "raftq"]
    rows = [("enqueue_1", "1 producer enqueue (jobs/s)"), ("enqueue_N", f"{report['args']['producers']} producers enqueue (jobs/s)"),
            ("e2e", "end to end no-op (jobs/s)"),
            ("e2e_batch", f"end to end, batches of {report['args'].get('batch', 100)} (jobs/s)"),
            ("submit_p50", "enqueue ack p50 (ms)"),
            ("submit_p99", "enqueue ack p99 (ms)"), ("rt_p50", "round trip p50 (ms)"),
            ("rt_p99", "round trip p99 (ms)"), ("failover_s", "leader kill -> next ack (s)"),
            ("bytes_per_job", "RSS per retained job per node (B)")]
    head = ["workload"] + systems + [f"raftq/{p}" for p in peers]
    lines = [head]
    for key, label in rows:
        row = [label]
        for s in systems:
            v = med[s].get(key)
            row.append("n/a" if v is None else f"{v:,.1f}" if v < 100 else f"{v:,.0f}")
        for p in peers:
            a, b = med.get("raftq", {}).get(key), med[p].get(key)
            if a is None or b is None or key not in HIGHER_IS_BETTER:
                row.append("")
            else:
                ratio = a / b if HIGHER_IS_BETTER[key] else b / a
                row.append(f"{ratio:.2f}x")
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
           for r in lines]
    out.insert(1, "-" * len(out[0]))
    m = report["machine"]
    out.append(f"(medians of {report['args']['rounds']} interleaved rounds; ratios > 1x mean raftq is better; "
               f"{m['cpus']} CPUs {m['cpu']}, Python {m['python']})")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["producer"]:
        p = argparse.ArgumentParser(prog="python -m loadtest.bench producer")
        p.add_argument("--system", required=True)
        p.add_argument("--addrs", default="")
        p.add_argument("--count", type=int, required=True)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--start-at", type=float, required=True)
        p.add_argument("--mode", choices=["enqueue", "e2e", "e2e_batch", "round_trip"], default="enqueue")
        p.add_argument("--batch", type=int, default=1)
        return producer_main(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", 3)))
    p.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", 2000)))
    p.add_argument("--producers", type=int, default=int(os.environ.get("PRODUCERS", 50)))
    p.add_argument("--rt-jobs", type=int, default=300)
    p.add_argument("--batch", type=int, default=int(os.environ.get("BATCH", 100)),
                   help="jobs per batch call in the e2e_batch workload")
    p.add_argument("--systems", default=os.environ.get("SYSTEMS", ",".join(SYSTEMS)))
    p.add_argument("--json", type=Path, default=REPO / "loadtest" / "results" / "bench.json")
    args = p.parse_args(argv)
    for name, lo in (("rounds", 1), ("jobs", 10), ("producers", 2), ("rt_jobs", 10), ("batch", 2)):
        if getattr(args, name) < lo:
            p.error(f"--{name.replace('_', '-')} must be >= {lo}")
    bad = [s for s in args.systems.split(",") if s and s not in SYSTEMS]
    if bad:
        p.error(f"unknown system(s) {', '.join(bad)}; pick from {', '.join(SYSTEMS)}")
    if any(s in ("celery", "rq") for s in args.systems.split(",")):
        try:
            import celery, redis, rq  # noqa: F401,E401
        except ImportError as exc:
            p.error(f"{exc.name} is missing: pip install -e '.[bench]' (make bench does it)")
    report = bench(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report["args"]["json"] = str(args.json)
    args.json.write_text(json.dumps(report, indent=2, default=str))
    print(render(report))
    print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
