"""Issue 3's lifecycle features through the `raftq` CLI against a real 3-node cluster.

Where a test needs exact control of outcomes it plays the worker itself with
`Client.lease/complete/fail`; the cancellation test uses a real worker process.
Two tests kill the leader (SIGKILL): a `--every 1` schedule must keep firing once
per period (no duplicate fire time, no gap beyond the failover), and a running
job's cancellation must hold and reach its worker.
"""
from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from cluster.errors import TooLarge
from tests.integration.conftest import clusters
from tests.integration.harness import REPO, TOKEN, LocalCluster, WorkerProcess, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster for the module (start-up costs seconds); tests use distinct queues."""
    for make in clusters(tmp_path_factory.mktemp("lifecycle")):
        yield make(lease_ttl_s=3.0)


def raftq(c: LocalCluster, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    nodes = ",".join(c.client_addrs[i - 1] for i in c.alive())
    out = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "RAFTQ_CLUSTER": nodes, "RAFTQ_TOKEN": TOKEN})
    if ok:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def rjson(c: LocalCluster, *args: str) -> Any:
    return json.loads(raftq(c, *args, "--json").stdout)


def status(c: LocalCluster, job_id: str) -> dict[str, Any]:
    with c.client() as client:
        return client.get(job_id)


def test_dependencies_dead_letters_and_quarantine(lc: LocalCluster) -> None:
    raftq(lc, "submit", "t.a", "--id", "dep-a", "--queue", "deps")
    raftq(lc, "submit", "t.b", "--id", "dep-b", "--queue", "deps")
    raftq(lc, "submit", "t.c", "--id", "dep-c", "--queue", "deps", "--depends-on", "dep-a", "--depends-on", "dep-b")
    raftq(lc, "submit", "t.d", "--id", "dep-d", "--queue", "deps", "--depends-on", "dep-c")
    view = rjson(lc, "status", "dep-c")
    assert view["state"] == "pending" and view["depends_on"] == ["dep-a", "dep-b"]
    bad = raftq(lc, "submit", "t.x", "--depends-on", "no-such-job", ok=False)
    assert bad.returncode == 1 and "no-such-job" in bad.stderr and "Traceback" not in bad.stderr

    with lc.client() as c:
        got = {j["id"]: j for j in c.lease("w-deps", ["deps"], max=5, wait_s=2)}
        assert sorted(got) == ["dep-a", "dep-b"]
        c.complete("dep-a", got["dep-a"]["attempt"], {"from": "a"}, lease_token=got["dep-a"]["lease_token"])
        c.complete("dep-b", got["dep-b"]["attempt"], {"from": "b"}, lease_token=got["dep-b"]["lease_token"])
        [child] = c.lease("w-deps", ["deps"], max=5, wait_s=2)
        assert child["id"] == "dep-c" and child["parents"] == {"dep-a": {"from": "a"}, "dep-b": {"from": "b"}}
        c.fail("dep-c", child["attempt"], "exploded", retryable=False, lease_token=child["lease_token"])
    assert rjson(lc, "status", "dep-d")["state"] == "cancelled"
    assert rjson(lc, "status", "dep-d")["error"].startswith("dependency dep-c failed: exploded")

    # dead letters
    dlq = rjson(lc, "dlq", "list", "--queue", "deps")
    assert [j["id"] for j in dlq["jobs"]] == ["dep-c"]
    out = raftq(lc, "dlq", "requeue", "dep-c", "dep-a")
    assert "requeued 1, skipped 1" in out.stdout
    assert rjson(lc, "status", "dep-c")["state"] == "queued"
    usage = raftq(lc, "dlq", "requeue", "--all", "dep-c", ok=False)
    assert usage.returncode == 2 and usage.stderr.startswith("error:")

    # quarantine: a job whose lease keeps expiring goes to the dead letters
    with lc.client() as c:
        c.submit("t.crashy", id="crashy", queue="crash", max_attempts=5, max_lease_expiries=2)
        for _ in range(2):
            [j] = c.lease("w-crash", ["crash"], wait_s=5, lease_ms=200)
            assert j["id"] == "crashy"  # ... and the worker "dies": no heartbeat
        wait_until(lambda: c.get("crashy")["state"] == "failed", 10, "quarantine")
        assert c.get("crashy")["error"] == "quarantined: worker crashed/lost it 2 times"
    out = raftq(lc, "dlq", "requeue", "--queue", "crash")
    assert "requeued 1" in out.stdout
    assert rjson(lc, "status", "crashy")["state"] == "queued"


def test_queue_limits_capacity_and_submit_options(lc: LocalCluster) -> None:
    raftq(lc, "queue", "limit", "lim", "--max-running", "1")
    raftq(lc, "queue", "limit", "rate", "--rate", "2")
    for i in range(3):
        raftq(lc, "submit", "t", "--queue", "lim", "--id", f"lim-{i}")
    for i in range(5):
        raftq(lc, "submit", "t", "--queue", "rate", "--id", f"rate-{i}")
    queues = {q["queue"]: q for q in rjson(lc, "queue", "list")}
    assert queues["lim"]["max_running"] == 1 and queues["rate"]["rate_per_s"] == 2.0
    assert queues["lim"]["jobs"]["queued"] == 3
    with lc.client() as c1, lc.client() as c2:
        [first] = c1.lease("w-lim-1", ["lim"], max=3, wait_s=1)
        assert c2.lease("w-lim-2", ["lim"], max=3, wait_s=0.5) == []  # the limit holds across workers
        c1.complete(first["id"], first["attempt"], None, lease_token=first["lease_token"])
        assert [j["id"] for j in c2.lease("w-lim-2", ["lim"], max=3, wait_s=2)] == ["lim-1"]

        burst = c1.lease("w-rate", ["rate"], max=5, wait_s=0)
        assert [j["id"] for j in burst] == ["rate-0", "rate-1"]
        started = time.monotonic()
        [nxt] = c1.lease("w-rate", ["rate"], max=5, wait_s=5)  # the long poll waits for a token
        assert nxt["id"] == "rate-2" and 0.2 < time.monotonic() - started < 3.0

    # capacity-aware leasing and the worker registry
    raftq(lc, "submit", "t", "--queue", "cap", "--id", "cap-big", "--resources", "cpu=4,mem_mb=100")
    raftq(lc, "submit", "t", "--queue", "cap", "--id", "cap-small", "--resources", "cpu=1,mem_mb=100")
    assert rjson(lc, "status", "cap-big")["resources"] == {"cpu": 4.0, "mem_mb": 100}
    bad = raftq(lc, "submit", "t", "--resources", "gpu=1", ok=False)
    assert bad.returncode == 2 and "--resources" in bad.stderr
    with lc.client() as c:
        got = c.lease("w-cap", ["cap"], max=5, wait_s=1, capacity={"cpu": 2, "mem_mb": 1000})
        assert [j["id"] for j in got] == ["cap-small"]
        # results over the cap are refused before they reach the log
        with pytest.raises(TooLarge):
            c.complete("cap-small", got[0]["attempt"], "x" * (1024 * 1024 + 10), lease_token=got[0]["lease_token"])
        assert c.get("cap-small")["state"] == "running"
    workers = {w["name"]: w for w in rjson(lc, "workers")}
    assert workers["w-cap"]["capacity"] == {"cpu": 2, "mem_mb": 1000}
    assert workers["w-cap"]["running"] == ["cap-small"] and workers["w-cap"]["queues"] == ["cap"]
    assert "w-cap" in raftq(lc, "workers").stdout

    # --run-at (client converts ISO 8601), --delay, --unique-key
    # 6 s ahead: two CLI runs (a second each on a loaded box) come before the check.
    at = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=6)).isoformat()
    raftq(lc, "submit", "t", "--queue", "later", "--id", "at-1", "--run-at", at)
    assert rjson(lc, "status", "at-1")["state"] == "scheduled"
    raftq(lc, "submit", "t", "--queue", "later", "--id", "delay-1", "--delay", "1")
    wait_until(lambda: status(lc, "at-1")["state"] == "queued" and status(lc, "delay-1")["state"] == "queued",
               20, "delayed jobs promoted")
    first_id = raftq(lc, "submit", "t", "--queue", "uq", "--unique-key", "k1").stdout.strip()
    assert raftq(lc, "submit", "t", "--queue", "uq", "--unique-key", "k1").stdout.strip() == first_id
    bad = raftq(lc, "submit", "t", "--run-at", "next tuesday", ok=False)
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr


def _fire_times(c: LocalCluster, name: str) -> list[int]:
    page = rjson(c, "list", "--schedule", name, "--limit", "1000")
    return sorted(int(j["id"].rsplit(":", 1)[1]) for j in page["jobs"])


def test_schedule_fires_once_per_period_across_leader_kill(lc: LocalCluster) -> None:
    out = raftq(lc, "schedule", "add", "beat", "--every", "1", "util.noop", "--arg-json", "n=1", "--queue", "cron")
    assert "added" in out.stdout
    assert "unchanged" in raftq(lc, "schedule", "add", "beat", "--every", "1", "util.noop", "--arg-json", "n=1",
                                "--queue", "cron").stdout
    conflict = raftq(lc, "schedule", "add", "beat", "--every", "2", "util.noop", ok=False)
    assert conflict.returncode == 1 and "exists" in conflict.stderr
    assert raftq(lc, "schedule", "add", "bad", "--cron", "61 * * * *", "t", ok=False).returncode == 1
    assert raftq(lc, "schedule", "add", "bad", "--cron", "* * * * *", "--tz", "Mars/Base", "t",
                 ok=False).returncode == 1
    raftq(lc, "schedule", "add", "nightly", "--cron", "0 3 * * *", "--tz", "Europe/Paris", "util.noop")

    wait_until(lambda: len(_fire_times(lc, "beat")) >= 3, 10, "three firings")
    leader = lc.leader_id()
    killed_at = time.time()
    lc.kill(leader)
    survivors = [i for i in lc.alive()]
    lc.leader_id(among=survivors)
    failover_s = time.time() - killed_at
    before = len(_fire_times(lc, "beat"))
    wait_until(lambda: len(_fire_times(lc, "beat")) >= before + 3, 15, "firings after the failover")
    raftq(lc, "schedule", "pause", "beat")
    paused_at = len(_fire_times(lc, "beat"))
    sched = {s["name"]: s for s in rjson(lc, "schedule", "list")}
    assert sched["beat"]["paused"] is True and sched["nightly"]["tz"] == "Europe/Paris"
    nightly = datetime.datetime.fromtimestamp(sched["nightly"]["next_fire_ms"] / 1000,
                                              datetime.timezone.utc).astimezone(
        __import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert (nightly.hour, nightly.minute) == (3, 0)

    times = _fire_times(lc, "beat")
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g % 1000 == 0 and g >= 1000 for g in gaps), gaps          # never twice, always on the grid
    assert max(gaps) <= (failover_s + 3) * 1000, (gaps, failover_s)      # no gap beyond the failover
    assert sum(g > 1000 for g in gaps) <= 1, gaps                        # one hole at most: the failover
    jobs = rjson(lc, "list", "--schedule", "beat")["jobs"]
    assert all(j["schedule"] == "beat" and j["queue"] == "cron" and j["args"] == {"n": 1} for j in jobs)
    time.sleep(1.5)  # a paused schedule must not fire: observe one period
    assert len(_fire_times(lc, "beat")) == paused_at
    raftq(lc, "schedule", "remove", "beat")
    assert "beat" not in {s["name"] for s in rjson(lc, "schedule", "list")}
    lc.start(leader)  # back to three nodes for the next test
    lc.wait_replicas_equal([1, 2, 3])


def test_running_job_cancellation_survives_leader_kill(lc: LocalCluster) -> None:
    worker = WorkerProcess(lc, "canceller", ["--queues", "cancelq", "--threads", "1", "--lease-ttl", "3"])
    try:
        job_id = raftq(lc, "submit", "util.sleep", "--arg-json", "seconds=60", "--queue", "cancelq").stdout.strip()
        wait_until(lambda: status(lc, job_id)["state"] == "running", 20, "the job running")
        assert rjson(lc, "cancel", job_id)["state"] == "cancelled"
        lc.kill(lc.leader_id())
        lc.leader_id(among=lc.alive())
        view = rjson(lc, "status", job_id)
        assert view["state"] == "cancelled" and view["attempts"] == 1
        # The worker learns through a heartbeat and frees its only thread: a quick job runs next.
        quick = raftq(lc, "submit", "util.noop", "--queue", "cancelq", "--wait", "--wait-timeout", "30")
        assert quick.returncode == 0
        assert rjson(lc, "status", job_id)["state"] == "cancelled"  # recorded once, never overwritten
        out = raftq(lc, "cancel", job_id, ok=False)
        assert out.returncode == 1 and "already cancelled" in out.stderr
    finally:
        worker.stop()
