"""Worker metrics (worker/metrics.py): counted from a real Worker's events on a
real node (tests/unit/worker_node.py) and read over its own HTTP port."""
from __future__ import annotations

import socket
import threading
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from worker.context import JobContext
from worker.metrics import WORKER_METRICS, WorkerMetrics
from worker.registry import Registry
from worker.runner import Worker
from tests.unit.worker_node import WorkerNode, scenario, until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_a_worker_serves_its_running_jobs_slots_durations_and_errors(tmp_path: Path) -> None:
    release = threading.Event()
    reg = Registry()

    @reg.job("t.ok")
    def ok(args: dict, ctx: JobContext) -> int:
        return 1

    @reg.job("t.bad")
    def bad(args: dict, ctx: JobContext) -> int:
        raise ValueError("nope")

    @reg.job("t.gated")
    def gated(args: dict, ctx: JobContext) -> int:
        release.wait(10)
        return 2

    metrics = WorkerMetrics(slots=2)
    port = _free_port()
    metrics.serve("127.0.0.1", port)
    seen: dict[str, dict] = {}

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit("t.ok", id="ok")
        await node.submit("t.bad", id="bad", max_attempts=1)
        await until(lambda: node.state("ok") == "succeeded" and node.state("bad") == "failed", what="reports")
        await node.submit("t.gated", id="gated")
        await until(lambda: worker.free_slots == 1, what="gated running")
        seen["running"] = _scrape(port)
        release.set()
        await until(lambda: node.state("gated") == "succeeded", what="gated done")

    try:
        code, _, _ = scenario(tmp_path, body, reg, hooks=[metrics])
        after = _scrape(port)
    finally:
        metrics.close()
    assert code == 0
    running = seen["running"]
    assert running[("raftq_worker_running_jobs", ())] == 1
    assert running[("raftq_worker_free_slots", ())] == 1
    assert running[("raftq_worker_slots", ())] == 2
    assert after[("raftq_worker_running_jobs", ())] == 0
    assert after[("raftq_worker_jobs_total", (("outcome", "succeeded"), ("type", "t.ok")))] == 1
    assert after[("raftq_worker_jobs_total", (("outcome", "failed"), ("type", "t.bad")))] == 1
    assert after[("raftq_worker_jobs_leased_total", (("type", "t.gated"),))] == 1
    assert after[("raftq_worker_job_seconds_count", (("type", "t.gated"),))] == 1
    assert after[("raftq_worker_lease_errors_total", (("reason", "heartbeat_failed"),))] == 0  # kept at 0
    assert after[("raftq_worker_report_errors_total", (("reason", "dropped"),))] == 0
    exported = {name for name, _ in after}
    for m in WORKER_METRICS:
        assert m.sample_name in exported or m.name + "_count" in exported, m.name


def test_a_cancelled_job_and_a_dropped_report_are_counted(tmp_path: Path) -> None:
    release = threading.Event()
    reg = Registry()

    @reg.job("t.gated")
    def gated(args: dict, ctx: JobContext) -> int:
        release.wait(10)
        return 2

    @reg.job("t.wait")
    def wait(args: dict, ctx: JobContext) -> int:
        while not ctx.cancelled:
            ctx.wait(0.02)
        return 3

    metrics = WorkerMetrics(slots=2)
    registry = metrics.registry

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        # Cancelled while it runs, heartbeats refused: its report is then fenced (dropped).
        with node.refuse("heartbeat"):
            await node.submit("t.gated", id="fenced")
            await until(lambda: worker.free_slots == 1, what="started")
            await node.cancel("fenced")
            release.set()
            await until(lambda: registry.get_sample_value("raftq_worker_report_errors_total",
                                                          {"reason": "dropped"}) == 1, what="dropped")
        # Cancelled while it runs, heartbeats answered: the heartbeat says so.
        await node.submit("t.wait", id="cancelled")
        await until(lambda: worker.free_slots == 1, what="started")
        await node.cancel("cancelled")
        await until(lambda: worker.free_slots == 2, what="slot released")

    code, _, _ = scenario(tmp_path, body, reg, hooks=[metrics])
    assert code == 0
    assert registry.get_sample_value("raftq_worker_lease_errors_total", {"reason": "cancelled"}) == 1
    assert registry.get_sample_value("raftq_worker_jobs_total", {"type": "t.wait", "outcome": "lost"}) == 1
    assert registry.get_sample_value("raftq_worker_jobs_total", {"type": "t.gated", "outcome": "succeeded"}) == 1
