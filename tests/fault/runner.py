"""Run fault scenarios and the fault x workload matrix; print the table.

    python -m tests.fault.runner --faults all --workloads short,long --runs 5 --duration 15

One run (`run_one`): fresh namespaces and data; 3 nodes, workers, clients;
the nemesis alternates inject/heal while the clients submit for `duration`
seconds; then a final heal, a liveness probe (a write must succeed within
LIVENESS_S), a drain (every job final within DRAIN_S), quiescence (workers
stopped), replica digests, and the checker. Everything it started is torn down
in `finally`, and namespaces left by a dead earlier runner are removed first.

Every loop here is bounded in count and time. Exit status: 0 if no run found
a violation, 1 otherwise, 2 if the suite cannot run here (not root, no tools).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cluster.errors import RaftqError
from replication.model import FINAL_STATES
from tests.fault.checker import Verdict, check
from tests.fault.harness import FaultCluster, wait_until
from tests.fault.nemesis import FAULTS, NEMESES, heal_all, hold_for
from tests.fault.netns import can_run, cleanup_stale

WORKLOADS: dict[str, dict[str, Any]] = {
    # short jobs: many operations, many completions racing the faults
    "short": {"job_ms": (20, 200), "threads": 3, "count": 400},
    # long jobs: attempts span leases, pauses and partitions
    "long": {"job_ms": (500, 2500), "threads": 2, "count": 30},
    # fencing: attempts outlast a paused worker's lease (the skip_fencing bug test)
    "fence": {"job_ms": (3000, 5000), "threads": 2, "count": 30},
}
LIVENESS_S = 30.0   # after healing, a write must succeed within this
DRAIN_S = 90.0      # and every job must be final within this
REST_S = 3.0        # calm between two injections
WARMUP_S = 2.0


@dataclass
class RunResult:
    fault: str
    workload: str
    seed: int
    verdict: Verdict
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0
    root: str = ""


def run_one(fault: str, workload: str, seed: int, duration: float, workdir: Path,
            bug: str | None = None, keep: bool = False) -> RunResult:
    rng = random.Random(f"{fault}-{workload}-{seed}")
    root = Path(tempfile.mkdtemp(prefix=f"rqf-{__import__('os').getpid()}-{fault}-{workload}-{seed}-",
                                 dir=workdir))
    wl = WORKLOADS[workload]
    c = FaultCluster(root, bug=bug)
    nemesis = NEMESES[fault](rng)
    events: list[str] = []
    started = time.monotonic()
    liveness: list[str] = []
    final_jobs: dict[str, dict[str, Any]] | None = None
    digests: dict[int, tuple[str, int]] | None = None
    ok = False
    try:
        c.open()
        nemesis.setup(c)
        c.start_nodes()
        c.leader(timeout=30)
        for w in c.workers:
            c.start_worker(w)
        for i, name in enumerate(c.clients):
            c.start_client(name, duration=duration, seed=seed * 100 + i, threads=wl["threads"],
                           count=wl["count"], job_ms=wl["job_ms"])
        # Nemesis schedule, bounded by the load window.
        load_end = time.monotonic() + duration
        time.sleep(WARMUP_S)
        for _ in range(100):
            if time.monotonic() + 1.0 >= load_end:
                break
            t0 = time.monotonic()
            events.append(f"{t0 - started:6.1f}s inject: {nemesis.inject(c)}")
            time.sleep(max(min(hold_for(c, fault), load_end - time.monotonic()), 0.0))
            nemesis.heal(c)
            events.append(f"{time.monotonic() - started:6.1f}s heal")
            time.sleep(max(min(REST_S, load_end - time.monotonic()), 0.0))
        for name in c.clients:
            if not c.wait_exit(name, timeout=duration + 60):
                liveness.append(f"client {name} did not finish its bounded load")
                c.signal(name, signal.SIGKILL)
        nemesis.heal(c)
        heal_all(c)
        events.append(f"{time.monotonic() - started:6.1f}s final heal")

        # Liveness: a write within the bound, then the drain.
        t_heal = time.monotonic()
        try:
            c.call(lambda cl: cl.submit("fault.record", {"ms": 0}, id=f"probe-{seed}"), timeout_s=LIVENESS_S)
            events.append(f"probe write after {time.monotonic() - t_heal:.1f}s")
        except RaftqError as exc:
            liveness.append(f"no write succeeded within {LIVENESS_S:g}s of healing ({exc})")
        try:
            def drained() -> bool:
                nonlocal final_jobs
                final_jobs = c.all_jobs()
                return all(v["state"] in FINAL_STATES for v in final_jobs.values())
            wait_until(drained, DRAIN_S, "the drain", interval=0.5)
            events.append(f"drained after {time.monotonic() - t_heal:.1f}s")
        except TimeoutError as exc:
            liveness.append(str(exc))
            try:
                final_jobs = c.all_jobs()
            except RaftqError:
                final_jobs = None
        # Quiesce: no more worker traffic, then replicas at one applied index.
        for w in c.workers:
            c.signal(w, signal.SIGTERM)
        for w in c.workers:
            if not c.wait_exit(w, timeout=20):
                c.signal(w, signal.SIGKILL)
        digests, last_seen = _common_digests(c)
        if digests is None:
            events.append(f"replicas never at one applied index; last seen {last_seen}")
        ok = True
    except Exception as exc:  # noqa: BLE001 - a harness failure is reported, never hidden
        liveness.append(f"harness error: {type(exc).__name__}: {exc}")
    finally:
        c.close()
    verdict = check(c.records("client"), c.records("worker"), final_jobs, digests, liveness)
    result = RunResult(fault, workload, seed, verdict, events, time.monotonic() - started, str(root))
    (root / "verdict.json").write_text(json.dumps(asdict(result), indent=1, default=str))
    if ok and verdict.ok and not keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def _common_digests(c: FaultCluster) -> tuple[dict[int, tuple[str, int]] | None, Any]:
    """Digests of all replicas taken at one applied index (retried until they line up),
    else None and the last observation."""
    deadline = time.monotonic() + 30
    last: Any = None
    while time.monotonic() < deadline:
        try:
            d = c.digests()
        except RaftqError as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3)
            continue
        last = {i: (digest[:8], index) for i, (digest, index) in d.items()}
        if len({index for _, index in d.values()}) == 1:
            return d, last
        time.sleep(0.2)
    return None, last


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


COLUMNS = ["fault", "runs", "operations", "acknowledged", "lost", "duplicated", "fencing", "agreement",
           "liveness", "unexpected", "resurrected"]


def table(results: list[RunResult]) -> str:
    cells: dict[str, list[RunResult]] = {}
    for r in results:
        cells.setdefault(f"{r.fault}/{r.workload}", []).append(r)
    rows = [COLUMNS]
    for key, runs in cells.items():
        def total(name: str) -> int:
            return sum(len(getattr(r.verdict, name)) for r in runs)
        rows.append([key, str(len(runs)), str(sum(r.verdict.operations for r in runs)),
                     str(sum(r.verdict.acknowledged for r in runs)), str(total("lost")), str(total("duplicated")),
                     str(total("fencing")),
                     "ok" if not total("agreement") else f"{sum(1 for r in runs if r.verdict.agreement)} bad",
                     "ok" if not total("liveness") else f"{sum(1 for r in runs if r.verdict.liveness)} bad",
                     str(total("unexpected")), str(total("resurrected"))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="raftq fault-injection matrix")
    p.add_argument("--faults", default="all", help=f"comma list or 'all': {', '.join(FAULTS)}")
    p.add_argument("--workloads", default="short,long", help=f"comma list: {', '.join(WORKLOADS)}")
    p.add_argument("--runs", type=int, default=5, help="runs (seeds) per fault x workload cell")
    p.add_argument("--duration", type=float, default=15.0, help="seconds of load per run")
    p.add_argument("--seed", type=int, default=1, help="first seed")
    p.add_argument("--workdir", default=tempfile.gettempdir(), help="where run directories go")
    p.add_argument("--json", default=None, help="also write every run's verdict here")
    p.add_argument("--keep", action="store_true", help="keep the directories of passing runs too")
    args = p.parse_args(argv)
    # SIGTERM (CI timeout, kill) unwinds like Ctrl-C, so every run's `finally`
    # tears its namespaces and processes down.
    signal.signal(signal.SIGTERM, _terminate)
    reason = can_run()
    if reason:
        print(f"fault suite skipped: {reason}", file=sys.stderr)
        return 2
    faults = FAULTS if args.faults == "all" else [f.strip() for f in args.faults.split(",") if f.strip()]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for name in faults:
        if name not in NEMESES:
            p.error(f"unknown fault {name!r}; choose from {', '.join(FAULTS)}")
    for name in workloads:
        if name not in WORKLOADS:
            p.error(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if args.runs < 1 or not 1 <= args.duration <= 3600:
        p.error("--runs must be >= 1 and --duration between 1 and 3600 seconds")
    stale = cleanup_stale()
    if stale:
        print(f"removed stale fault-suite leftovers: {stale}")
    results: list[RunResult] = []
    t0 = time.monotonic()
    for run in range(args.runs):
        for fault in faults:
            for workload in workloads:
                seed = args.seed + run
                r = run_one(fault, workload, seed, args.duration, Path(args.workdir), keep=args.keep)
                results.append(r)
                status = "ok" if r.verdict.ok else f"VIOLATION (kept {r.root})"
                print(f"[{time.monotonic() - t0:7.1f}s] {fault}/{workload} seed {seed}: {status} "
                      f"in {r.seconds:.0f}s: {r.verdict.summary()}", flush=True)
                if not r.verdict.ok:
                    for e in r.events:
                        print(f"      {e}")
        if run + 1 < args.runs:  # a table after every pass, so a cut-short matrix still reports
            print(f"\n--- after {run + 1} pass(es) ---\n{table(results)}\n", flush=True)
    print()
    print(table(results))
    print(f"\n{len(results)} runs in {time.monotonic() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1, default=str))
    return 0 if all(r.verdict.ok for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
