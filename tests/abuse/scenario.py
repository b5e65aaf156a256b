"""One attack's stage: a fresh real cluster, a legitimate client, the checks.

`Scenario` starts a fresh 3-node cluster (tests/integration/harness.py, real
node processes on loopback, fsync durability by default), runs a legitimate
client that submits one job at a time and times each call, samples the
leader's resident memory, and at the end checks what the abuse suite promises
(docs/abuse-testing.md):

- nothing acknowledged lost: every id the suite saw acknowledged is on the
  leader after the attack;
- replicas agree: every live node reports the same digest (polled until they
  converge; two different digests at one applied index is a definite split);
- node memory bounded: leader VmRSS peak - before <= RSS_GROWTH_MAX_MB;
- the legitimate client's p99 during the attack within P99_FACTOR_MAX of its
  baseline (or under P99_FLOOR_MS: the box has 2 shared cores);
- no election storm: term after - term before <= the attack's allowance.

The checks read only outcomes (wire codes, digests, /proc, exit codes), never
the node's internals, so the same suite judges main before and after the fixes.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cluster.client import Client
from cluster.errors import NotFound, RaftqError
from tests.integration.harness import TOKEN, LocalCluster, wait_until

# ---- thresholds (stated and argued in docs/abuse-testing.md) ---------------
RSS_GROWTH_MAX_MB = 200.0   # leader VmRSS peak minus before, during one attack
P99_FACTOR_MAX = 10.0       # legit p99 during / baseline ...
P99_FLOOR_MS = 50.0         # ... unless during-p99 is under this (2 shared cores)
MAX_ELECTIONS = 1           # term increase allowed during an attack (unless stated)
CLOSE_DEADLINE_S = 30.0     # unauthenticated / silent connections closed within this
AGREE_TIMEOUT_S = 30.0      # replicas must converge within this after the attack
LEADER_AFTER_S = 60.0       # and a leader be found within this
LEGIT_PERIOD_S = 0.02       # the legit client's think time between submits
LEGIT_CALL_TIMEOUT_S = 5.0  # one legit submit's budget (retries included)
LEGIT_QUEUE = "legit"


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class AbuseCluster(LocalCluster):
    """LocalCluster with the suite's views of a node (pid, data dir, log)."""

    def pid(self, node_id: int) -> int:
        return self.procs[node_id].pid

    def node_dir(self, node_id: int) -> Path:
        return self.root / "data" / f"node-{node_id}"

    def log_text(self, node_id: int) -> str:
        path = self.root / "logs" / f"node-{node_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def term(self, node_id: int) -> int:
        with self.node_client(node_id) as c:
            return int(c.cluster_status().get("term") or 0)


class RssSampler:
    """Samples one process's VmRSS every 100 ms in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_mb(pid) or 0.0
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            value = rss_mb(self.pid)
            if value is not None:
                self.peak = max(self.peak, value)

    def start(self) -> "RssSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=5)


class LegitClient:
    """A well-behaved producer: one submit at a time, each timed and labelled
    with the current phase; acknowledged ids are kept for the lost check."""

    def __init__(self, cluster: LocalCluster, name: str = "legit") -> None:
        self.cluster = cluster
        self.name = name
        self.phase = "baseline"
        self.samples: list[tuple[str, float, bool]] = []  # (phase, seconds, ok)
        self.acked: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=LEGIT_CALL_TIMEOUT_S + 10)

    def _client(self) -> Client:
        return Client(self.cluster.client_addrs, token=TOKEN, timeout_s=LEGIT_CALL_TIMEOUT_S)

    def _run(self) -> None:
        client = self._client()
        i = 0
        try:
            while not self._stop.is_set():
                job_id = f"{self.name}-{i}"
                i += 1
                phase = self.phase
                t0 = time.perf_counter()
                try:
                    client.submit("abuse.legit", {"i": i}, id=job_id, queue=LEGIT_QUEUE)
                except RaftqError:
                    self.samples.append((phase, time.perf_counter() - t0, False))
                    client.close()
                    client = self._client()
                else:
                    self.samples.append((phase, time.perf_counter() - t0, True))
                    self.acked.add(job_id)
                self._stop.wait(LEGIT_PERIOD_S)
        finally:
            client.close()

    def stats(self, phase: str) -> dict[str, Any]:
        """Calls, ok calls, p50/p99 in ms (a failed call counts with its elapsed time)."""
        lat = [s * 1000 for p, s, _ in self.samples if p == phase]
        ok = sum(1 for p, _, good in self.samples if p == phase and good)
        return {"calls": len(lat), "ok": ok,
                "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99)}


@dataclass
class Outcome:
    """One attack's row: what was measured and the violations found."""

    attack: str
    expected: str
    observed: str = ""
    acked: int = 0
    acked_lost: int | None = None
    replicas: str = "-"
    rss_before_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_after_mb: float | None = None
    base_p50_ms: float | None = None
    base_p99_ms: float | None = None
    during_p50_ms: float | None = None
    during_p99_ms: float | None = None
    during_calls: int = 0
    during_ok: int = 0
    term_before: int | None = None
    term_after: int | None = None
    seconds: float = 0.0
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def p99_factor(self) -> float | None:
        if self.base_p99_ms and self.during_p99_ms is not None:
            return self.during_p99_ms / self.base_p99_ms
        return None

    def violate(self, what: str) -> None:
        self.violations.append(what)


class Scenario:
    """A fresh cluster for one attack; use as a context manager (always torn down)."""

    def __init__(self, attack: str, expected: str, root: Path, *, nofile: int | None = None,
                 extra_config: str = "", durability: str = "fsync") -> None:
        self.started = time.monotonic()
        self.out = Outcome(attack, expected)
        self.cluster = AbuseCluster(root, nofile=nofile, durability=durability, extra_config=extra_config)
        self.legit = LegitClient(self.cluster)
        self.acked: dict[str, set[str]] = {}  # queue -> ids the suite saw acknowledged
        self.leader = 0
        self._sampler: RssSampler | None = None

    def __enter__(self) -> "Scenario":
        self.cluster.start()
        try:
            self.leader = self.cluster.leader_id(timeout=45)
        except BaseException:
            self.cluster.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.legit.stop()
        if self._sampler is not None:
            self._sampler.stop()
        self.cluster.stop()
        self.out.seconds = time.monotonic() - self.started

    def client(self, timeout_s: float = 20.0) -> Client:
        return self.cluster.client(timeout_s=timeout_s)

    def wait_caught_up(self, nodes: list[int], leader: int, timeout_s: float = 30.0) -> bool:
        """Have `nodes` applied everything `leader` had applied when asked? (Digests
        are never equal at one instant while the legit client keeps writing.)"""
        try:
            with self.cluster.node_client(leader) as c:
                target = int(c.digest()["last_applied"])
            wait_until(lambda: all(index >= target for _, index in self.cluster.digests(nodes).values()),
                       timeout_s, f"nodes {nodes} to apply index {target}", interval=0.2)
            return True
        except (AssertionError, RaftqError, OSError):
            return False

    def ack(self, queue: str, ids: Any) -> None:
        self.acked.setdefault(queue, set()).update(ids)

    # ---- phases -------------------------------------------------------

    def baseline(self, seconds: float) -> None:
        """Start the legit client and let it measure its undisturbed latency."""
        self.legit.start()
        time.sleep(seconds)

    @contextmanager
    def attack(self) -> Iterator[RssSampler]:
        """The attack window: legit samples labelled 'attack' and the term read
        before it. The leader's RSS is sampled from here until `finish` has let
        the node settle, so work the attack left queued counts too."""
        self.out.term_before = self.cluster.term(self.leader)
        self._sampler = RssSampler(self.cluster.pid(self.leader)).start()
        self.legit.phase = "attack"
        try:
            yield self._sampler
        finally:
            self.legit.phase = "after"

    # ---- checks -------------------------------------------------------

    def finish(self, *, judge_p99: bool = True, judge_rss: bool = True,
               max_elections: int | None = MAX_ELECTIONS, settle_s: float = 2.0) -> Outcome:
        """Stop the legit client and run every end-of-attack check."""
        time.sleep(settle_s)
        self.legit.stop()
        out = self.out
        if self._sampler is not None:
            self._sampler.stop()
            out.rss_before_mb, out.rss_peak_mb = self._sampler.before, self._sampler.peak
        base, during = self.legit.stats("baseline"), self.legit.stats("attack")
        out.base_p50_ms, out.base_p99_ms = base["p50_ms"], base["p99_ms"]
        out.during_p50_ms, out.during_p99_ms = during["p50_ms"], during["p99_ms"]
        out.during_calls, out.during_ok = during["calls"], during["ok"]
        self.ack(LEGIT_QUEUE, self.legit.acked)
        if out.rss_after_mb is None and self.leader in self.cluster.alive():
            out.rss_after_mb = rss_mb(self.cluster.pid(self.leader))
        live = self.cluster.alive()
        try:
            leader = self.cluster.leader_id(timeout=LEADER_AFTER_S, among=live)
        except AssertionError:
            out.violate(f"no leader among the live nodes {LEADER_AFTER_S:.0f} s after the attack")
            return out
        if out.term_before is not None:
            out.term_after = self.cluster.term(leader)
            if max_elections is not None and out.term_after - out.term_before > max_elections:
                out.violate(f"term {out.term_before} -> {out.term_after} during the attack "
                            f"(allowed +{max_elections})")
        self._check_acked(leader)
        self._check_replicas(live)
        if judge_rss and out.rss_peak_mb is not None and out.rss_before_mb is not None:
            growth = out.rss_peak_mb - out.rss_before_mb
            if growth > RSS_GROWTH_MAX_MB:
                out.violate(f"leader RSS grew {growth:.0f} MB (limit {RSS_GROWTH_MAX_MB:.0f})")
        if judge_p99 and during["calls"]:
            if during["ok"] == 0:
                out.violate(f"legit client: 0 of {during['calls']} submits succeeded during the attack")
            allowed = max(P99_FACTOR_MAX * (out.base_p99_ms or 0.0), P99_FLOOR_MS)
            if out.during_p99_ms is not None and out.during_p99_ms > allowed:
                out.violate(f"legit p99 {out.during_p99_ms:.0f} ms > allowed {allowed:.0f} ms")
        return out

    def _check_acked(self, leader: int) -> None:
        """Every acknowledged id must be on the leader: queues with many ids are
        listed page by page, the others fetched one by one."""
        lost: list[str] = []
        with self.cluster.node_client(leader) as c:
            c.timeout_s = 30.0
            for queue, ids in self.acked.items():
                if len(ids) > 300:
                    present: set[str] = set()
                    cursor = None
                    for _ in range(10_000):
                        page = c.list(queue=queue, limit=500, cursor=cursor)
                        present.update(j["id"] for j in page["jobs"])
                        cursor = page["cursor"]
                        if cursor is None:
                            break
                    lost += sorted(ids - present)
                else:
                    for job_id in sorted(ids):
                        try:
                            c.get(job_id)
                        except NotFound:
                            lost.append(job_id)
        self.out.acked = sum(len(v) for v in self.acked.values())
        self.out.acked_lost = len(lost)
        if lost:
            self.out.violate(f"{len(lost)} acknowledged job(s) lost, e.g. {lost[:3]}")

    def _check_replicas(self, live: list[int]) -> None:
        split: list[str] = []

        def agree() -> bool:
            d = self.cluster.digests(live)
            by_index: dict[int, set[str]] = {}
            for digest, index in d.values():
                by_index.setdefault(index, set()).add(digest)
            split.extend(f"differ at applied index {i}" for i, v in by_index.items() if len(v) > 1)
            if len({v[0] for v in d.values()}) == 1:
                self.out.replicas = f"agree ({len(live)} @ {next(iter(d.values()))[1]})"
                return True
            return False

        try:
            wait_until(agree, AGREE_TIMEOUT_S, "replica digests to converge", interval=0.3)
        except AssertionError:
            self.out.replicas = "DIFFER" if split else "not converged"
            self.out.violate(f"replicas {self.out.replicas} after {AGREE_TIMEOUT_S:.0f} s"
                             + (f" ({split[-1]})" if split else ""))


def tracebacks(cluster: AbuseCluster) -> int:
    return sum(cluster.log_text(i).count("Traceback") for i in cluster.procs)
