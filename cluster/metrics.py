"""A node's Prometheus metrics: their definitions, the figures behind them, the collector.

`NODE_METRICS` declares every metric once (name, type, labels, meaning, who
exports it); the collector builds each family from its declaration and
docs/metrics.md's table is generated from the same list
(`python -m cluster.metrics --markdown`; tests/unit/test_metrics.py checks
the doc matches), so a metric cannot be exported without its row.

Nothing here runs on a hot path: the values are read at scrape time from
plain counters kept where things happen (`Node.requests`, `Node.errors`,
`Node.refusals`, `GroupCommitter.stats`, the journal's `sync_seconds`, the
replica's `figures()`) and from the replicated state (`job_figures`), and
prometheus_client renders them.

Job figures (scope "leader") are exported by the leader only, so a cluster
exports each once: sum them over nodes (`sum without (instance)`), whichever
node leads. Every replica counts the job events it applies
(replication/events.py), so a new leader's counters go on from its own
count; a restarted node starts from 0 (a counter reset, as Prometheus
expects). A queue's series exist from its first job on and stay, at 0, after
it empties. Labels are bounded: the first 50 queues, job types and schedule
names get their own label value, the rest share "other"; no job id is ever a
label.

`job_figures` is also what other readers of the same figures use (alerts,
`raftq top`): one computation, one meaning.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from replication.events import Distribution, JobEvents
from replication.model import STATES

if TYPE_CHECKING:
    from cluster.server import Node
    from replication.machine import JobMachine

LEADER = "leader"  # scope: exported by the leader only (job figures)
NODE = "node"      # scope: exported by every node (its own figures)

# Why a node refused or closed a connection it did not serve, and on which port.
REFUSAL_REASONS: dict[str, str] = {
    "node_limit": "client",             # at the node's connection cap (fd budget)
    "source_limit": "client",           # at max_connections_per_source
    "bad_token": "client",              # hello with a wrong token
    "hello_throttled": "client",        # a source with failed hellos, paced
    "hello_timeout": "client",          # no hello within hello_timeout_s
    "idle_timeout": "client",           # nothing for idle_timeout_s
    "unread_replies": "client",         # replies left unread for idle_timeout_s
    "no_client_certificate": "client",  # mutual TLS without a certificate
    "http_limit": "http",               # at HTTP_MAX_CONNECTIONS
    "http_unauthorized": "http",        # missing http_token or client certificate
    "raft_source": "raft",              # a host that is not a configured peer
    "raft_reaped": "raft",              # handshake deadline or silence
}


@dataclass(frozen=True)
class MetricDef:
    """One metric as scraped. `name` is the family name: a counter's samples
    end in _total, a histogram's in _bucket, _sum and _count."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    help: str
    scope: str = NODE

    def family(self) -> Metric:
        cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}
        return cls[self.kind](self.name, self.help, labels=list(self.labels))

    @property
    def sample_name(self) -> str:
        """The name queries use (a histogram's _bucket/_sum/_count are implied)."""
        return self.name + "_total" if self.kind == "counter" else self.name


NODE_METRICS: tuple[MetricDef, ...] = (
    # ---- jobs (the leader's replica) ----
    MetricDef("raftq_jobs", "gauge", ("queue", "state"), "Jobs held, by queue and state (final ones until "
              "retention purges them)", LEADER),
    MetricDef("raftq_queue_oldest_ready_age_seconds", "gauge", ("queue",),
              "Age of the oldest queued (ready) job: since its submit, or its run_at time when later; 0 when "
              "none is queued", LEADER),
    MetricDef("raftq_queue_workers", "gauge", ("queue",), "Registered workers taking jobs from the queue "
              "(a worker is dropped once unseen for a few leases)", LEADER),
    MetricDef("raftq_queue_wait_seconds", "histogram", ("queue",),
              "Submit (or run_at) to the start of the first attempt", LEADER),
    MetricDef("raftq_job_run_seconds", "histogram", ("type",),
              "Start of an attempt to its complete or fail report, by job type", LEADER),
    MetricDef("raftq_jobs_finished", "counter", ("queue", "type", "outcome"),
              "Jobs that became final: outcome succeeded, failed or cancelled", LEADER),
    MetricDef("raftq_job_retries", "counter", ("queue",), "Failed attempts that will be retried", LEADER),
    MetricDef("raftq_lease_expiries", "counter", ("queue",),
              "Leases that expired (worker lost or too slow to heartbeat)", LEADER),
    MetricDef("raftq_dead_letters", "counter", ("queue",),
              "Jobs that ended failed (attempts or lease expiries used up): the dead-letter set", LEADER),
    MetricDef("raftq_schedule_firings", "counter", ("schedule",), "Schedule firings that submitted a job",
              LEADER),
    MetricDef("raftq_schedule_missed_firings", "counter", ("schedule",),
              "Schedule firings refused by admission (counted as missed)", LEADER),
    # ---- Raft ----
    MetricDef("raftq_is_leader", "gauge", (), "1 if this node is the Raft leader"),
    MetricDef("raftq_raft_term", "gauge", (), "Current Raft term"),
    MetricDef("raftq_raft_commit_index", "gauge", (), "Raft commit index"),
    MetricDef("raftq_raft_last_applied", "gauge", (), "Last applied Raft index"),
    MetricDef("raftq_leader_changes", "counter", (), "Times this node saw a new leader"),
    MetricDef("raftq_follower_lag_entries", "gauge", ("peer",),
              "On the leader: log entries not yet known to be on the peer (by its Raft address)", LEADER),
    MetricDef("raftq_fsync_seconds", "histogram", (), "Journal fdatasync latency"),
    # ---- group commit ----
    MetricDef("raftq_commit_entries", "counter", (), "Raft entries proposed by group commit"),
    MetricDef("raftq_commit_commands", "counter", (), "Commands carried by those entries"),
    MetricDef("raftq_commit_failed_entries", "counter", (), "Entries that did not commit"),
    MetricDef("raftq_commit_batch_commands", "histogram", (), "Commands per group-commit entry"),
    MetricDef("raftq_commit_latency_seconds", "histogram", (), "Propose to committed and applied, per entry"),
    # ---- client port ----
    MetricDef("raftq_client_connections", "gauge", (), "Open client connections"),
    MetricDef("raftq_client_connection_cap", "gauge", (), "Client connections this node admits (fd budget)"),
    MetricDef("raftq_connection_refusals", "counter", ("port", "reason"),
              "Connections refused or closed unserved, by port and reason: "
              + ", ".join(f"{port} {reason}" for reason, port in REFUSAL_REASONS.items())),
    MetricDef("raftq_long_polls", "gauge", (), "lease/wait long polls in flight"),
    MetricDef("raftq_requests", "counter", ("op",), "Client requests by op"),
    MetricDef("raftq_errors", "counter", ("code",), "Error replies by code"),
)

METRICS_BY_NAME = {m.name: m for m in NODE_METRICS}


@dataclass
class JobFigures:
    """The job figures of one replica at one moment (see `job_figures`)."""

    queues: list[str]                      # label values, first seen first ("other" last)
    jobs: dict[tuple[str, str], int]       # (queue, state) -> count; every queue x state
    oldest_ready_age_s: dict[str, float]   # queue -> seconds; 0 when none is ready
    workers: dict[str, int]                # queue -> registered workers taking from it
    events: JobEvents                      # the applied-event counters (a copy)


def job_figures(machine: JobMachine, now_ms: int | None = None) -> JobFigures:
    """The job figures of `machine` at `now_ms` (default: the wall clock).
    Call inside the replica's `reading()`; the result is a copy, safe after."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    events = machine.events
    label = events.queues
    held = machine.stats()["queues"]
    for queue in held:
        label(queue)  # a queue's series exist from its first job on, and stay
    queues = label.labels()
    jobs = {(q, s): 0 for q in queues for s in STATES}
    for queue, states in held.items():
        q = label(queue)
        for state, count in states.items():
            jobs[(q, state)] = jobs.get((q, state), 0) + count
    oldest = dict.fromkeys(queues, 0.0)
    for queue, since in machine.ready_since().items():
        q = label(queue)
        oldest[q] = max(oldest.get(q, 0.0), max(0, now_ms - since) / 1000)
    workers = dict.fromkeys(queues, 0)
    for worker in machine.workers():
        for queue in {label(q) for q in worker["queues"]}:
            workers[queue] = workers.get(queue, 0) + 1
    return JobFigures(queues=label.labels(), jobs=jobs, oldest_ready_age_s=oldest, workers=workers,
                      events=_copy_events(events))


def _copy_events(events: JobEvents) -> JobEvents:
    copy = JobEvents()
    copy.queues, copy.types, copy.schedules = events.queues, events.types, events.schedules
    for name in ("finished", "retries", "lease_expiries", "dead_letters", "firings", "missed"):
        setattr(copy, name, dict(getattr(events, name)))
    for name in ("queue_wait", "run_time"):
        setattr(copy, name, {k: _copy_distribution(d) for k, d in getattr(events, name).items()})
    return copy


def _copy_distribution(dist: Distribution) -> Distribution:
    copy = Distribution(dist.bounds)
    copy.counts = list(dist.counts)
    copy.total = dist.total
    return copy


def _histogram(family: Metric, labels: list[str], dist: Distribution | None) -> None:
    if dist is None:
        return
    family.add_metric(labels, dist.cumulative(), dist.total)  # type: ignore[attr-defined]


class NodeCollector(Collector):
    """Reads one node's figures at scrape time."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        status = node.raft.status()
        leader = status.get("role") == "leader"
        fam = {m.name: m.family() for m in NODE_METRICS if leader or m.scope == NODE}
        if leader:
            with node.raft.reading() as machine:
                figures = job_figures(machine)
            self._jobs(fam, figures)
        replication = node.raft.figures()
        fam["raftq_is_leader"].add_metric([], 1 if leader else 0)
        fam["raftq_raft_term"].add_metric([], status.get("term") or 0)
        fam["raftq_raft_commit_index"].add_metric([], status.get("commit_index") or 0)
        fam["raftq_raft_last_applied"].add_metric([], status.get("last_applied") or 0)
        fam["raftq_leader_changes"].add_metric([], replication.leader_changes)
        if leader:
            for peer, match in sorted(replication.follower_match.items()):
                fam["raftq_follower_lag_entries"].add_metric([peer], max(0, replication.last_index - match))
        _histogram(fam["raftq_fsync_seconds"], [], replication.fsync_seconds)

        commit = node.committer.stats
        fam["raftq_commit_entries"].add_metric([], commit.entries)
        fam["raftq_commit_commands"].add_metric([], commit.commands)
        fam["raftq_commit_failed_entries"].add_metric([], commit.failed_entries)
        _histogram(fam["raftq_commit_batch_commands"], [], commit.batch_commands)
        _histogram(fam["raftq_commit_latency_seconds"], [], commit.seconds)

        fam["raftq_client_connections"].add_metric([], node.connections)
        fam["raftq_client_connection_cap"].add_metric([], node.conn_limits.cap)
        fam["raftq_long_polls"].add_metric([], node.pollers)
        refusals = dict(node.refusals)
        refusals["raft_source"] = status.get("port_refused", 0)
        refusals["raft_reaped"] = status.get("port_reaped", 0)
        for reason, port in REFUSAL_REASONS.items():
            fam["raftq_connection_refusals"].add_metric([port, reason], refusals.get(reason, 0))
        for op, count in sorted(node.requests.items()):
            fam["raftq_requests"].add_metric([op], count)
        for code, count in sorted(node.errors.items()):
            fam["raftq_errors"].add_metric([code], count)
        yield from fam.values()

    @staticmethod
    def _jobs(fam: dict[str, Metric], figures: JobFigures) -> None:
        for (queue, state), count in figures.jobs.items():
            fam["raftq_jobs"].add_metric([queue, state], count)
        for queue in figures.queues:
            fam["raftq_queue_oldest_ready_age_seconds"].add_metric([queue], figures.oldest_ready_age_s.get(queue, 0))
            fam["raftq_queue_workers"].add_metric([queue], figures.workers.get(queue, 0))
        events = figures.events
        for queue in figures.queues:
            for name, counts in (("raftq_job_retries", events.retries), ("raftq_lease_expiries", events.lease_expiries),
                                 ("raftq_dead_letters", events.dead_letters)):
                fam[name].add_metric([queue], counts.get(queue, 0))
            _histogram(fam["raftq_queue_wait_seconds"], [queue], events.queue_wait.get(queue))
        for (queue, job_type, outcome), count in sorted(events.finished.items()):
            fam["raftq_jobs_finished"].add_metric([queue, job_type, outcome], count)
        for job_type, dist in events.run_time.items():
            _histogram(fam["raftq_job_run_seconds"], [job_type], dist)
        for schedule in events.schedules.labels():
            fam["raftq_schedule_firings"].add_metric([schedule], events.firings.get(schedule, 0))
            fam["raftq_schedule_missed_firings"].add_metric([schedule], events.missed.get(schedule, 0))


def markdown_table(metrics: tuple[MetricDef, ...], *, scopes: bool = True) -> str:
    """The docs/metrics.md table of `metrics` (`scopes`: with the "exported by" column)."""
    head = "| name | type | labels | exported by | meaning |" if scopes else "| name | type | labels | meaning |"
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for m in metrics:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "-"
        who = f" {'the leader' if m.scope == LEADER else 'every node'} |" if scopes else ""
        lines.append(f"| `{m.sample_name}` | {m.kind} | {labels} |{who} {m.help} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m cluster.metrics --markdown")
    sys.stdout.write(markdown_table(NODE_METRICS))
