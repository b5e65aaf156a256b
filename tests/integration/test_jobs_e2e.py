"""Real job types end to end: a LocalCluster (3 real nodes on loopback), real
`raftq worker` processes with a data root holding copies of examples/, and a
real http.server serving examples/site.

- every family of job type runs through the cluster on the shipped examples;
- a path outside the data root fails at once, non-retryable, with a clear error;
- a process job past its timeout fails; a running job is cancelled;
- SIGTERM during a batch: every job the worker finished is recorded as
  succeeded; the jobs it handed back finish on a second worker.
"""
from __future__ import annotations

import shutil
import signal
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

from tests.integration.harness import REPO, LocalCluster, WorkerProcess, wait_until

pytestmark = pytest.mark.integration


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("jobs-e2e")
    root = base / "data"
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("out"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(REPO / "examples/site")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cluster = LocalCluster(base / "cluster", lease_ttl_s=5.0)
    cluster.start()
    workers: list[WorkerProcess] = []
    try:
        cluster.leader_id(timeout=30)
        w = WorkerProcess(cluster, "e2e-1", ["--data-root", str(root), "--threads", "4", "--processes", "2",
                                             "--lease-ttl", "5"])
        workers.append(w)
        with cluster.client() as client:
            yield {"cluster": cluster, "client": client, "root": root, "workers": workers,
                   "site": f"http://127.0.0.1:{server.server_address[1]}"}
    finally:
        for w in workers:
            w.stop()
        cluster.stop()
        server.shutdown()
        server.server_close()


def run(client: Any, jtype: str, args: Any, **opts: Any) -> dict:
    jid = client.submit(jtype, args, **opts)
    return client.result(jid, timeout=40)


def test_every_family_runs_on_real_inputs(env: dict[str, Any]) -> None:
    client, root, site = env["client"], env["root"], env["site"]
    jobs: dict[str, tuple[str, Any]] = {
        "convert": ("text.convert", {"op": "markdown_to_html", "path": "examples/text/notes.md",
                                     "output": "out/notes.html"}),
        "compress": ("file.compress", {"path": "examples/logs/access.log", "format": "xz", "output": "out/a.xz"}),
        "checksum": ("file.checksum", {"path": "examples/data/sales.csv"}),
        "resize": ("image.resize", {"path": "examples/images/sample.png", "width": 160, "output": "out/s.png"}),
        "stats": ("data.csv_stats", {"path": "examples/data/sales.csv", "group_by": "region"}),
        "logs": ("logs.analyze", {"path": "examples/logs/access.log"}),
        "report": ("report.generate", {"path": "examples/data/sales.csv", "output": "out/r.html",
                                       "label": "region", "value": "revenue"}),
        "archive": ("archive.create", {"source": "examples/site", "output": "out/site.zip"}),
        "fetch": ("http.fetch", {"url": site + "/about.html"}),
        "scrape": ("web.scrape", {"url": site + "/", "max_pages": 10}),
        "health": ("health.check", {"probes": [{"url": site + "/"}]}),
        "backup": ("maintenance.backup", {"source": "examples/site", "dest": "out/backups", "keep": 2}),
        "pipeline": ("batch.pipeline", {"steps": [
            {"type": "text.convert", "args": {"op": "csv_to_json", "path": "examples/data/sales.csv",
                                              "output": "out/sales.json"}},
            {"type": "file.compress"}, {"type": "file.checksum"}]}),
        "primes": ("math.primes", {"n": 1_000_000}),
    }
    ids = {key: client.submit(jtype, args) for key, (jtype, args) in jobs.items()}
    views = {key: client.result(jid, timeout=60) for key, jid in ids.items()}
    failed = {k: v["error"] for k, v in views.items() if v["state"] != "succeeded"}
    assert not failed, failed
    r = {k: v["result"] for k, v in views.items()}
    assert "<h1>Release notes</h1>" in (root / "out/notes.html").read_text()
    assert r["compress"]["bytes_in"] == (root / "examples/logs/access.log").stat().st_size
    assert (r["resize"]["width"], r["resize"]["height"]) == (160, 120)
    assert r["stats"]["rows"] == 40 and set(r["stats"]["groups"]) == {"east", "north", "south", "west"}
    assert r["logs"]["parsed"] == 240 and r["logs"]["latency_ms"]["count"] == 240
    assert "<svg" in (root / "out/r.html").read_text()
    assert r["archive"]["files"] == 7
    assert r["fetch"]["status"] == 200 and "<title>About</title>" in r["fetch"]["text"]
    assert r["scrape"]["crawled"] == 6 and r["scrape"]["robots_blocked"] == [site + "/private/admin.html"]
    assert r["health"]["ok"] is True
    assert r["backup"]["archive"].startswith("out/backups/site-")
    assert r["pipeline"]["result"]["algorithm"] == "sha256" and r["pipeline"]["steps"][1]["result"]["output"] == \
        "out/sales.json.gz"
    assert r["primes"]["count"] == 78498


def test_bad_paths_and_hosts_fail_at_once(env: dict[str, Any]) -> None:
    client = env["client"]
    view = run(client, "file.checksum", {"path": "../../../etc/passwd"}, max_attempts=3)
    assert view["state"] == "failed" and view["attempts"] == 1
    assert "outside the worker's data root" in view["error"] and view["error"].startswith("file.checksum: ")
    view = run(client, "http.fetch", {"url": "http://192.0.2.1/"}, max_attempts=3)
    assert view["state"] == "failed" and view["attempts"] == 1 and "allowlist" in view["error"]


def test_jobs_cannot_reach_the_nodes_own_ports(env: dict[str, Any]) -> None:
    # --cluster names the client ports; the worker learns the Raft and HTTP
    # (/metrics) ports from the cluster. All are random, outside raftq's port band.
    cluster, client = env["cluster"], env["client"]
    for url in (f"http://{cluster.http_addrs[1]}/metrics", f"http://{cluster.client_addrs[2]}/"):
        view = run(client, "http.fetch", {"url": url}, max_attempts=3)
        assert view["state"] == "failed" and view["attempts"] == 1, view
        assert "is a port of this raftq cluster" in view["error"]
    view = run(client, "health.check", {"probes": [{"tcp": cluster.raft_addrs[0]}]}, max_attempts=1)
    assert view["state"] == "failed" and "is a port of this raftq cluster" in view["error"]


def test_process_job_timeout_and_running_job_cancel(env: dict[str, Any]) -> None:
    client = env["client"]
    view = run(client, "math.primes", {"n": 50_000_000}, timeout=0.3, max_attempts=1)
    assert view["state"] == "failed" and view["error"] == "timeout after 0.3s"
    jid = client.submit("util.sleep", {"seconds": 60})
    wait_until(lambda: client.get(jid)["state"] == "running", 20, "the sleep job to start")
    wait_until(lambda: client.get(jid)["progress"] is not None, 20, "progress via heartbeat")
    assert client.cancel(jid) == "cancelled"
    # The worker learns it from the next heartbeat and its slot is free again:
    # four more jobs (its thread count) all run.
    after = [client.submit("text.wordcount", {"text": "still working"}) for _ in range(4)]
    for a in after:
        assert client.result(a, timeout=30)["state"] == "succeeded"
    assert client.get(jid)["state"] == "cancelled"


def test_sigterm_during_a_batch_loses_no_finished_result(env: dict[str, Any]) -> None:
    cluster: LocalCluster = env["cluster"]
    client = env["client"]
    # A second worker of our own, alone on its queue, with a short grace period.
    w = WorkerProcess(cluster, "e2e-term", ["--data-root", str(env["root"]), "--queues", "batch", "--threads", "3",
                                            "--grace", "0.5", "--lease-ttl", "5"])
    env["workers"].append(w)
    ids = [client.submit("util.sleep", {"seconds": 0.4 if i % 2 else 3.0}, queue="batch", max_attempts=5)
           for i in range(12)]
    wait_until(lambda: sum(client.get(i)["state"] == "succeeded" for i in ids) >= 2, 30, "some finished jobs")
    w.kill(signal.SIGTERM)
    assert w.proc.wait(timeout=20) == 0, "exit 0: every finished result was delivered"
    states = {i: client.get(i) for i in ids}
    done_by_first = {i for i, v in states.items() if v["state"] == "succeeded"}
    assert done_by_first and all(states[i]["result"]["slept"] > 0 for i in done_by_first)
    assert all(v["state"] in ("succeeded", "queued", "scheduled") for v in states.values()), states
    # Jobs handed back are finished by another worker; none is lost or run after success.
    w2 = WorkerProcess(cluster, "e2e-term-2", ["--data-root", str(env["root"]), "--queues", "batch",
                                               "--threads", "6", "--lease-ttl", "5"])
    env["workers"].append(w2)
    final = {i: client.result(i, timeout=40) for i in ids}
    assert all(v["state"] == "succeeded" for v in final.values()), final
    for i in done_by_first:
        assert final[i]["attempts"] == states[i]["attempts"], "a recorded result is never redone"
