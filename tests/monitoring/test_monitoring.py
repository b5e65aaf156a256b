"""docs/monitoring/: the Prometheus rules (promtool check and unit tests), the
metric names the rules and the Grafana dashboard use, and a real Prometheus
scraping a real 3-node cluster and a worker.

promtool and prometheus come with Debian's `prometheus` package; without it
these tests are skipped, saying so.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from cluster.metrics import NODE_METRICS
from loadtest.localcluster import free_ports
from tests.integration.conftest import clusters
from tests.integration.harness import LocalCluster, WorkerProcess, wait_until
from worker.metrics import WORKER_METRICS

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "docs" / "monitoring"
RULES = MONITORING / "raftq-rules.yml"
DASHBOARD = MONITORING / "raftq-dashboard.json"
RULE_TESTS = Path(__file__).with_name("rules_test.yml")
NO_PROMETHEUS = "Debian package `prometheus` is not installed (apt-get install prometheus)"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        print(f"skipped: {name}: {NO_PROMETHEUS}", file=sys.stderr)
        pytest.skip(f"{name}: {NO_PROMETHEUS}")
    return path


def test_promtool_checks_the_rules_file() -> None:
    out = subprocess.run([_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_rule_unit_tests_pass() -> None:
    out = subprocess.run([_tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


# ---- the names the rules and the dashboard query ----------------------------

def exported_names() -> set[str]:
    """Every series name a node or a worker exports."""
    names: set[str] = set()
    for m in NODE_METRICS + WORKER_METRICS:
        names.add(m.sample_name)
        if m.kind == "histogram":
            names |= {m.name + suffix for suffix in ("_bucket", "_sum", "_count")}
    return names


def recorded_names() -> set[str]:
    return set(re.findall(r"^\s*- record:\s*(\S+)", RULES.read_text(), re.M))


def queried_names(text: str) -> set[str]:
    """raftq series names in `text` (the bare word "raftq" of prose and job names aside)."""
    return {n for n in re.findall(r"\braftq[a-z0-9_:]*", text) if n != "raftq"}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())

    def walk(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                yield node["expr"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)
    return list(walk(dash))


def test_the_rules_query_only_exported_or_recorded_names() -> None:
    used = queried_names(RULES.read_text())
    assert used - exported_names() - recorded_names() == set()
    assert {"raftq_jobs", "raftq_is_leader", "raftq_follower_lag_entries", "raftq_fsync_seconds_bucket"} <= used


def test_the_dashboard_queries_only_exported_or_recorded_names() -> None:
    exprs = dashboard_exprs()
    assert len(exprs) > 30
    used = set().union(*(queried_names(e) for e in exprs))
    assert used - exported_names() - recorded_names() == set()
    # Every exported metric is on the dashboard somewhere.
    shown = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in used}
    recorded_from = queried_names(RULES.read_text())
    missing = {m.sample_name for m in NODE_METRICS + WORKER_METRICS
               if m.sample_name not in shown and m.name not in shown and m.sample_name not in recorded_from
               and m.name + "_bucket" not in recorded_from}
    assert missing == set()


def test_the_name_check_catches_a_misspelt_metric() -> None:
    used = queried_names('sum(rate(raftq_jobs_finishd_total[5m])) and raftq:jobs_queued:sum and up{job="raftq"}')
    assert used - exported_names() - recorded_names() == {"raftq_jobs_finishd_total"}


# ---- a real Prometheus --------------------------------------------------------

class Prometheus:
    """A prometheus process scraping `targets` every second, with the rules loaded."""

    def __init__(self, root: Path, nodes: list[str], workers: list[str]) -> None:
        binary = _tool("prometheus")
        root.mkdir(parents=True, exist_ok=True)
        config = root / "prometheus.yml"
        config.write_text("\n".join([
            "global:", "  scrape_interval: 1s", "  evaluation_interval: 1s",
            f"rule_files: ['{RULES}']",
            "scrape_configs:",
            "  - job_name: raftq", "    static_configs:", f"      - targets: {json.dumps(nodes)}",
            "  - job_name: raftq-worker", "    static_configs:", f"      - targets: {json.dumps(workers)}",
        ]) + "\n")
        self.addr = f"127.0.0.1:{free_ports(1)[0]}"
        self.log = open(root / "prometheus.log", "wb")
        self.proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={root / 'data'}",
                                      f"--web.listen-address={self.addr}"],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://{self.addr}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.loads(r.read())
        except (urllib.error.URLError, ConnectionError):
            return []
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def prometheus_found() -> None:
    _tool("prometheus")  # skip before a cluster is started for nothing


@pytest.fixture
def cluster(prometheus_found: None, tmp_path: Path) -> Iterator[LocalCluster]:
    for make in clusters(tmp_path):
        yield make()


def test_a_real_prometheus_scrapes_a_cluster_and_a_worker(cluster: LocalCluster, tmp_path: Path) -> None:
    worker_addr = f"127.0.0.1:{free_ports(1)[0]}"
    worker = WorkerProcess(cluster, "w1", ["--queues", "default,emails", "--metrics-port",
                                           worker_addr.rsplit(":", 1)[1]])
    prometheus = Prometheus(tmp_path / "prometheus", cluster.http_addrs, [worker_addr])
    try:
        with cluster.client() as c:
            ids = [c.submit("util.noop", {}, queue="emails" if i % 2 else "default") for i in range(10)]
            for job_id in ids:
                assert c.result(job_id, timeout=60)["state"] == "succeeded"

        def scraped(expr: str, expected: float) -> bool:
            return prometheus.value(expr) == expected

        wait_until(lambda: scraped('count(up{job="raftq"} == 1)', 3), 60, "3 nodes scraped")
        wait_until(lambda: scraped('up{job="raftq-worker"}', 1), 60, "the worker scraped")
        wait_until(lambda: scraped('sum(raftq_jobs_finished_total{outcome="succeeded", type="util.noop"})', 10),
                   60, "10 finished jobs counted by the leader")
        wait_until(lambda: scraped('sum(raftq_worker_jobs_total{outcome="succeeded", type="util.noop"})', 10),
                   60, "10 jobs run by the worker")
        # Job figures come from one node: the leader.
        leader = cluster.http_addrs[cluster.leader_id() - 1]
        jobs = prometheus.query('count by (instance) (raftq_jobs)')
        assert [r["metric"]["instance"] for r in jobs] == [leader]
        # An emptied queue reads 0; its jobs are counted as succeeded.
        assert prometheus.value('raftq_jobs{queue="emails", state="queued"}') == 0
        assert prometheus.value('raftq_jobs{queue="emails", state="succeeded"}') == 5
        assert prometheus.value('raftq_queue_workers{queue="emails"}') == 1
        assert prometheus.value('sum(raftq_queue_wait_seconds_count)') == 10
        assert len(prometheus.query("raftq_follower_lag_entries")) == 2
        assert prometheus.value("sum(raftq_is_leader)") == 1
        # The recording rules run on the scraped series.
        wait_until(lambda: scraped("raftq:leaders:sum", 1), 60, "the recording rules evaluated")
        wait_until(lambda: scraped('raftq:jobs_queued:sum{queue="emails"}', 0), 60, "raftq:jobs_queued:sum")
        # Before the first scrapes "no leader" may be pending; with a leader scraped it is not.
        wait_until(lambda: prometheus.query('ALERTS{alertname=~"RaftqNoLeader|RaftqNodeDown|RaftqNoLiveWorker"}')
                   == [], 60, "no leader/node/worker alert pending")
    finally:
        prometheus.stop()
        worker.stop()
