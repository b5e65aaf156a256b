"""A worker's Prometheus metrics: a `WorkerHooks` observer and its /metrics port.

`raftq worker --metrics-port N` (WorkerConfig.metrics_port; on
`metrics_host`, loopback by default) serves them with prometheus_client's own
HTTP server on a thread of its own, so a scrape never waits for the worker's
loop. The figures are counted from the worker's events (worker/hooks.py), on
its loop, one library call each: a worker's per-job cost is its handler's,
not this.

Every metric is declared once in `WORKER_METRICS` (docs/metrics.md's worker
table is generated from it: `python -m worker.metrics --markdown`). The job
type label is bounded like the node's: the first 50 types get their own
value, later ones share "other".
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cluster.metrics import MetricDef, markdown_table
from replication.events import DURATION_BUCKETS_S, LabelBound
from worker.hooks import WorkerHooks

if TYPE_CHECKING:
    from worker.attempt import Outcome

WORKER_METRICS: tuple[MetricDef, ...] = (
    MetricDef("raftq_worker_running_jobs", "gauge", (), "Attempts whose handler is running"),
    MetricDef("raftq_worker_slots", "gauge", (), "Job slots (--threads): jobs it runs at once"),
    MetricDef("raftq_worker_free_slots", "gauge", (), "Slots free for another job"),
    MetricDef("raftq_worker_jobs_leased", "counter", ("type",), "Attempts leased"),
    MetricDef("raftq_worker_jobs", "counter", ("type", "outcome"),
              "Attempts settled: outcome succeeded, failed, or lost (lease lost or job cancelled: no report)"),
    MetricDef("raftq_worker_job_seconds", "histogram", ("type",), "Run time of settled attempts"),
    MetricDef("raftq_worker_lease_errors", "counter", ("reason",),
              "Lease trouble: heartbeat_failed (a heartbeat request failed), lease_lost, cancelled"),
    MetricDef("raftq_worker_report_errors", "counter", ("reason",),
              "Reports not accepted: dropped (refused for good, e.g. LEASE_LOST), undelivered (at stop)"),
)


class WorkerMetrics(WorkerHooks):
    """Counts the worker's events into its own registry (`registry`)."""

    def __init__(self, slots: int) -> None:
        self.registry = CollectorRegistry()
        metric = {m.name: _make(m, self.registry) for m in WORKER_METRICS}
        self._types = LabelBound()
        self._slots = slots
        self._running: set[tuple[str, int]] = set()  # (job id, attempt) started, not finished: at most `slots`
        self._server: Any = None
        metric["raftq_worker_slots"].set(slots)
        metric["raftq_worker_running_jobs"].set_function(lambda: len(self._running))
        metric["raftq_worker_free_slots"].set_function(lambda: max(0, self._slots - len(self._running)))
        self._leased = metric["raftq_worker_jobs_leased"]
        self._settled = metric["raftq_worker_jobs"]
        self._seconds = metric["raftq_worker_job_seconds"]
        self._lease_errors = metric["raftq_worker_lease_errors"]
        self._report_errors = metric["raftq_worker_report_errors"]
        for reason in ("heartbeat_failed", "lease_lost", "cancelled"):
            self._lease_errors.labels(reason)  # every reason's series exists, at 0, from the start
        for reason in ("dropped", "undelivered"):
            self._report_errors.labels(reason)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on host:port, on a thread, until `close()`. Raises
        OSError when the port cannot be had."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def on_leased(self, job_id: str, attempt: int, job_type: str) -> None:
        self._leased.labels(self._types(job_type)).inc()

    def on_started(self, job_id: str, attempt: int, job_type: str) -> None:
        self._running.add((job_id, attempt))

    def on_finished(self, job_id: str, attempt: int, job_type: str, outcome: Outcome | None,
                    duration_s: float) -> None:
        if (job_id, attempt) not in self._running:
            return  # handed back at shutdown before it started: nothing ran
        self._running.discard((job_id, attempt))
        label = self._types(job_type)
        result = "lost" if outcome is None else "succeeded" if outcome.ok else "failed"
        self._settled.labels(label, result).inc()
        self._seconds.labels(label).observe(duration_s)

    def on_report_dropped(self, job_id: str, attempt: int, reason: str) -> None:
        self._report_errors.labels("dropped").inc()

    def on_undelivered(self, job_id: str, attempt: int) -> None:
        self._report_errors.labels("undelivered").inc()

    def on_lease_lost(self, job_id: str, attempt: int, reason: str) -> None:
        self._lease_errors.labels("cancelled" if reason == "cancelled" else "lease_lost").inc()

    def on_heartbeat_error(self, error: BaseException, leases: int) -> None:
        self._lease_errors.labels("heartbeat_failed").inc()


def _make(m: MetricDef, registry: CollectorRegistry) -> Any:
    if m.kind == "histogram":
        return Histogram(m.name, m.help, list(m.labels), registry=registry, buckets=DURATION_BUCKETS_S)
    cls = {"counter": Counter, "gauge": Gauge}[m.kind]
    return cls(m.name, m.help, list(m.labels), registry=registry)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m worker.metrics --markdown")
    sys.stdout.write(markdown_table(WORKER_METRICS, scopes=False))
