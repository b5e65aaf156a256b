"""`make loadtest`: a fresh local cluster (like `raftq dev`), then Locust headless.

    python -m loadtest.run_locust [--users 1000] [--spawn-rate 200] [--run-time 60]
        [--kill-leader-at SECONDS] [--csv loadtest/results/locust] [--durability fsync]
        [-- extra locust args]

Starts 3 nodes and 2 `raftq worker` processes (so `result` calls see jobs
finish), runs `locust -f loadtest/locustfile.py --headless` against them and
writes Locust's CSV files (`<csv>_stats.csv`, `_failures.csv`, ...). With
`--kill-leader-at T` the leader is SIGKILLed T seconds into the run (and not
restarted): the SLO gate in the locustfile then shows that the clients'
retries rode through the failover. The exit code is Locust's, i.e. the gate's.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from loadtest.localcluster import TOKEN, BenchCluster
from loadtest.peers import RaftqSystem

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.run_locust", description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=int(os.environ.get("USERS", 1000)))
    p.add_argument("--spawn-rate", type=float, default=float(os.environ.get("SPAWN_RATE", 200)))
    p.add_argument("--run-time", type=int, default=int(os.environ.get("RUN_TIME", 60)), help="seconds")
    p.add_argument("--kill-leader-at", type=float, default=float(os.environ.get("KILL_LEADER_AT", 0)) or None,
                   help="SIGKILL the leader this many seconds into the run")
    p.add_argument("--csv", default=os.environ.get("CSV", str(REPO / "loadtest" / "results" / "locust")))
    p.add_argument("--durability", choices=["fsync", "none"], default="fsync")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slo-p95-ms", type=float, default=float(os.environ.get("SLO_P95_MS", 1000)))
    p.add_argument("--slo-fail-ratio", type=float, default=float(os.environ.get("SLO_FAIL_RATIO", 0.01)))
    p.add_argument("--slo-min-rps", type=float, default=float(os.environ.get("SLO_MIN_RPS", 100)))
    p.add_argument("locust_args", nargs="*", help="extra arguments for locust (after --)")
    args = p.parse_args(argv)
    if args.users < 1 or args.spawn_rate <= 0 or args.run_time < 1:
        p.error("--users, --spawn-rate and --run-time must be positive")
    if args.kill_leader_at is not None and not 0 < args.kill_leader_at < args.run_time:
        p.error("--kill-leader-at must fall inside the run time")
    Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="raftq-locust-"))
    cluster = BenchCluster(workdir / "cluster", durability=args.durability)
    workers = RaftqSystem(workdir, cluster.addrs, TOKEN)
    try:
        cluster.start()
        if args.workers:
            workers.start_workers(queue="default")  # the queue the locustfile submits to
        print(f"cluster up: {','.join(cluster.addrs)} (leader node {cluster.leader_id()}); "
              f"locust {args.users} users, spawn {args.spawn_rate:g}/s, {args.run_time}s", flush=True)
        cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless",
               "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.run_time}s",
               "--csv", args.csv, "--only-summary", "--stop-timeout", "10",
               "--raftq-nodes", ",".join(cluster.addrs), "--raftq-token", TOKEN,
               "--slo-p95-ms", str(args.slo_p95_ms), "--slo-fail-ratio", str(args.slo_fail_ratio),
               "--slo-min-rps", str(args.slo_min_rps), *args.locust_args]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO)
        killer = None
        if args.kill_leader_at is not None:
            # Spawning takes users/spawn_rate seconds; count the kill time from the start.
            def kill() -> None:
                while time.monotonic() - started < args.kill_leader_at:
                    if proc.poll() is not None:
                        return
                    time.sleep(0.05)
                leader = cluster.leader_id()
                print(f"\n*** SIGKILL leader node {leader} (pid {cluster.pid(leader)}) at "
                      f"t={time.monotonic() - started:.1f}s ***\n", flush=True)
                cluster.kill(leader)
                t0 = time.monotonic()
                new = cluster.leader_id()
                print(f"*** new leader node {new} after {time.monotonic() - t0:.2f}s ***", flush=True)
            killer = threading.Thread(target=kill, daemon=True)
            killer.start()
        rc = proc.wait()
        if killer is not None:
            killer.join(timeout=30)
        print(f"locust exit code {rc}; CSV: {args.csv}_stats.csv")
        return rc
    finally:
        workers.stop_workers()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
