"""What applying the log did, counted for metrics: NOT replicated state.

`JobEvents` counts the job events the parts see while they apply entries
(finished jobs, retries, lease expiries, dead letters, schedule firings) and
the distributions of queue wait and run time. It lives beside the state
(`JobTable.events`) but is never part of it: no result, snapshot, digest or
invariant reads it, and `JobMachine.restore` carries the same object over to
the new state. So every replica counts the events it applies, a node's
counters start at 0 when its process starts, and the entries it replays at
start (those after its last snapshot) are counted again then.

Cost: every update is a dict lookup and an integer add, or a bisect into a
dozen bucket bounds (0.2 us, against 2 us for prometheus_client's
`Histogram.labels(...).observe`: apply runs on every replica for every
command, so the library's objects are built from these figures at scrape
time instead; cluster/metrics.py).

Label cardinality is bounded where the figures are recorded: the first
`MAX_LABELS` distinct queue names (and job types, and schedule names) get
their own key, later ones are all counted under `OTHER`. First seen, not
top-N by volume: a counter's key must never move once it has counted.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replication.model import Job

# Distinct queues (and types, and schedules) counted under their own name: at
# most 51 x 51 x 3 finished-job series per node.
MAX_LABELS = 50
OTHER = "other"    # the key of everything past the first MAX_LABELS

# Bucket upper bounds, in seconds. Waits and runs span milliseconds to hours.
DURATION_BUCKETS_S: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                          30.0, 60.0, 300.0, 900.0, 3600.0)

# fsync and commit latency, in seconds.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                         1.0, 2.5)
# Commands per group-commit entry (cluster/commit.py caps it at 4096).
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Distribution:
    """Observations counted into fixed buckets (a Prometheus histogram's data):
    `counts[i]` observations <= `bounds[i]` and above the bound before it, the
    last slot the ones above every bound; `total` their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations <= it) pairs ending with "+Inf": the
        shape prometheus_client's HistogramMetricFamily takes."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


class LabelBound:
    """Maps names to label values: the first `limit` distinct names stand for
    themselves, every later one for OTHER. `of` is the map so far (a hot path
    reads it with one `dict.get`, calling `add` only for a name it lacks)."""

    __slots__ = ("limit", "of", "own", "overflowed")

    def __init__(self, limit: int = MAX_LABELS) -> None:
        self.limit = limit
        self.of: dict[str, str] = {}
        self.own: list[str] = []  # the names that are their own label, first seen first
        self.overflowed = False   # some name was labelled OTHER

    def add(self, name: str) -> str:
        """The label of a name `of` lacks (remembered, up to a bound on memory)."""
        if len(self.own) < self.limit:
            self.own.append(name)
            label = name
        else:
            label = OTHER
            self.overflowed = True
        if len(self.of) < 16 * self.limit:
            self.of[name] = label
        return label

    def __call__(self, name: str) -> str:
        return self.of.get(name) or self.add(name)

    def labels(self) -> list[str]:
        """Every label value handed out so far, first seen first (OTHER last, once it was)."""
        return self.own + ([OTHER] if self.overflowed else [])


class JobEvents:
    """Counters and distributions of applied job events; see the module docstring.
    Keys are label values already bounded by `queues`, `types` and `schedules`.
    The methods run inside apply, once per event: each is a few dict lookups
    (no allocation but a new key's)."""

    def __init__(self, limit: int = MAX_LABELS) -> None:
        self.queues = LabelBound(limit)
        self.types = LabelBound(limit)
        self.schedules = LabelBound(limit)
        self.finished: dict[tuple[str, str, str], int] = {}    # (queue, type, outcome)
        self.retries: dict[str, int] = {}                      # queue
        self.lease_expiries: dict[str, int] = {}               # queue
        self.dead_letters: dict[str, int] = {}                 # queue
        self.firings: dict[str, int] = {}                      # schedule
        self.missed: dict[str, int] = {}                       # schedule
        self.queue_wait: dict[str, Distribution] = {}          # queue: submit (or run_at) -> first start
        self.run_time: dict[str, Distribution] = {}            # type: start -> complete or fail

    def started(self, job: Job, now_ms: int) -> None:
        """A lease granted `job`: its first attempt's wait since it was submitted
        (or since its run_at time, when later)."""
        if job.attempts != 1:
            return
        run_at = job.run_at_ms
        since = job.created_ms if run_at is None or run_at < job.created_ms else run_at
        queue = self.queues.of.get(job.queue) or self.queues.add(job.queue)
        dist = self.queue_wait.get(queue) or self.queue_wait.setdefault(queue, Distribution(DURATION_BUCKETS_S))
        wait_s = (now_ms - since) / 1000 if now_ms > since else 0.0
        dist.counts[bisect_left(DURATION_BUCKETS_S, wait_s)] += 1
        dist.total += wait_s

    def ran(self, job: Job, now_ms: int) -> None:
        """An attempt of `job` reported its outcome (complete or fail)."""
        started = job.started_ms
        if started is None:
            return
        job_type = self.types.of.get(job.type) or self.types.add(job.type)
        dist = self.run_time.get(job_type) or self.run_time.setdefault(job_type, Distribution(DURATION_BUCKETS_S))
        run_s = (now_ms - started) / 1000 if now_ms > started else 0.0
        dist.counts[bisect_left(DURATION_BUCKETS_S, run_s)] += 1
        dist.total += run_s

    def finished_job(self, job: Job, outcome: str) -> None:
        """`job` became final with `outcome` (succeeded, failed or cancelled)."""
        queue = self.queues.of.get(job.queue) or self.queues.add(job.queue)
        key = (queue, self.types.of.get(job.type) or self.types.add(job.type), outcome)
        finished = self.finished
        finished[key] = finished.get(key, 0) + 1
        if outcome == "failed":
            self.dead_letters[queue] = self.dead_letters.get(queue, 0) + 1

    def retried(self, job: Job) -> None:
        """A failed attempt of `job` will be retried (after its backoff)."""
        queue = self.queues(job.queue)
        self.retries[queue] = self.retries.get(queue, 0) + 1

    def lease_expired(self, job: Job) -> None:
        queue = self.queues(job.queue)
        self.lease_expiries[queue] = self.lease_expiries.get(queue, 0) + 1

    def fired(self, schedule: str, missed: bool) -> None:
        """A schedule fired (a job was submitted) or, with `missed`, the leader's
        admission refused the firing."""
        name = self.schedules(schedule)
        counts = self.missed if missed else self.firings
        counts[name] = counts.get(name, 0) + 1
