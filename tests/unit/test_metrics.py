"""Node metrics: the events counted on apply (replication/events.py), the
figures and the collector (cluster/metrics.py) on a real Node over a
LocalReplica, and docs/metrics.md against the metric definitions."""
from __future__ import annotations

import asyncio
import functools
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster.config import ClusterConfig, NodeSpec
from cluster.metrics import LEADER, NODE_METRICS, NodeCollector, job_figures, markdown_table
from cluster.server import Node
from replication.events import OTHER, JobEvents
from replication.local import LocalReplica
from replication.machine import JobMachine
from tests.unit.test_machine import Driver
from worker.metrics import WORKER_METRICS

REPO = Path(__file__).resolve().parents[2]


def test_apply_counts_job_events_by_queue_type_and_outcome() -> None:
    d = Driver()
    d.submit("a", queue="q1")
    d.submit("b", queue="q1", max_attempts=2, backoff_ms=0)
    d.submit("c", queue="q2", type="other.type", max_attempts=1)
    d.advance(2_000)
    leased = {j["id"]: j for j in d.lease(["q1", "q2"], n=3, lease_ms=1_000)}
    d.advance(500)
    d.complete("a", leased["a"]["attempt"])
    d.fail("b", leased["b"]["attempt"])      # retried (attempts left)
    d.advance(1_000)
    d.tick()                                 # c's lease expired; no attempts left: failed
    events = d.m.events
    assert events.finished == {("q1", "t", "succeeded"): 1, ("q2", "other.type", "failed"): 1}
    assert events.retries == {"q1": 1}
    assert events.lease_expiries == {"q2": 1}
    assert events.dead_letters == {"q2": 1}
    buckets = dict(events.queue_wait["q1"].cumulative())
    assert (buckets["1.0"], buckets["2.5"], buckets["+Inf"]) == (0, 2, 2)
    assert events.queue_wait["q1"].total == 4.0     # two jobs waited 2 s each
    assert events.run_time["t"].total == 1.0        # a and b ran 0.5 s each
    assert "other.type" not in events.run_time      # an expired lease reports no run time
    # The re-leased attempt 2 of b is no first start: no second wait observation.
    d.lease(["q1"])
    assert events.queue_wait["q1"].count == 2


def test_events_are_not_state_and_survive_a_restore() -> None:
    d = Driver()
    d.submit("a")
    d.lease()
    plain = Driver()
    plain.submit("a")
    plain.lease()
    plain.m.events.finished[("x", "y", "z")] = 7   # counts differ, state does not
    assert d.m.digest() == plain.m.digest()
    events = d.m.events
    d.m.restore(d.m.to_snapshot())
    assert d.m.events is events


def test_labels_past_the_bound_are_counted_as_other() -> None:
    events = JobEvents(limit=2)
    assert [events.queues(q) for q in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]
    assert events.queues.labels() == ["a", "b", OTHER]


def test_ready_since_is_the_oldest_queued_job_of_each_queue() -> None:
    d = Driver(now_ms=10_000)
    d.submit("old", priority=0)
    d.advance(1_000)
    d.submit("urgent", priority=9)
    d.submit("later", queue="q2", delay_ms=5_000)
    assert d.m.ready_since() == {"default": 10_000}   # not the heap top (urgent), the oldest
    d.advance(6_000)
    d.tick()
    assert d.m.ready_since() == {"default": 10_000, "q2": 16_000}  # q2's since its run_at time
    figures = job_figures(d.m, now_ms=20_000)
    assert figures.oldest_ready_age_s == {"default": 10.0, "q2": 4.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(node: Node) -> dict[str, list[Any]]:
    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    text = generate_latest(registry).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list[Any], name: str, **labels: str) -> float:
    [value] = [s.value for s in samples if s.name == name and s.labels == labels]
    return float(value)


def test_the_leader_exports_every_metric_and_an_emptied_queue_reads_zero() -> None:
    async def go() -> None:
        spec = NodeSpec(1, f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}")
        cfg = ClusterConfig(secret="s" * 16, token="tok", data_dir=Path("/nonexistent"), durability="none",
                            nodes=(spec,))
        node = Node(cfg, 1, JobMachine(), functools.partial(LocalReplica, address=spec.raft))
        for i, queue in enumerate(("emails", "default", "default")):
            await node.handle("submit", {"job": {"id": f"j{i}", "type": "util.noop", "queue": queue}})
        [job] = (await node.handle("lease", {"worker": "w1", "queues": ["emails"], "wait_s": 0}))["jobs"]
        await node.handle("complete", {"id": job["id"], "attempt": job["attempt"],
                                       "lease_token": job["lease_token"], "result": None})
        families = _scrape(node)
        assert set(families) == {m.name for m in NODE_METRICS}
        jobs = families["raftq_jobs"]
        assert _value(jobs, "raftq_jobs", queue="emails", state="queued") == 0   # emptied, still there
        assert _value(jobs, "raftq_jobs", queue="emails", state="succeeded") == 1
        assert _value(jobs, "raftq_jobs", queue="default", state="queued") == 2
        finished = families["raftq_jobs_finished"]
        assert _value(finished, "raftq_jobs_finished_total", queue="emails", type="util.noop",
                      outcome="succeeded") == 1
        assert _value(families["raftq_queue_workers"], "raftq_queue_workers", queue="emails") == 1
        assert _value(families["raftq_queue_workers"], "raftq_queue_workers", queue="default") == 0
        assert _value(families["raftq_queue_wait_seconds"], "raftq_queue_wait_seconds_count", queue="emails") == 1
        assert _value(families["raftq_requests"], "raftq_requests_total", op="submit") == 3
        assert _value(families["raftq_is_leader"], "raftq_is_leader") == 1
        assert _value(families["raftq_connection_refusals"], "raftq_connection_refusals_total",
                      port="client", reason="bad_token") == 0
        assert _value(families["raftq_commit_batch_commands"], "raftq_commit_batch_commands_count") == 5

        node.raft.follow("other:1")  # type: ignore[attr-defined]  # a follower exports no job figures
        follower = _scrape(node)
        assert set(follower) == {m.name for m in NODE_METRICS if m.scope != LEADER}
        assert _value(follower["raftq_is_leader"], "raftq_is_leader") == 0
        node.raft.destroy()
    asyncio.run(go())


@pytest.mark.parametrize("doc", ["docs/metrics.md", "README.md"])
def test_the_docs_hold_the_generated_tables(doc: str) -> None:
    text = (REPO / doc).read_text()
    assert markdown_table(NODE_METRICS) in text, f"{doc}: regenerate with python -m cluster.metrics --markdown"
    assert markdown_table(WORKER_METRICS, scopes=False) in text, \
        f"{doc}: regenerate with python -m worker.metrics --markdown"
