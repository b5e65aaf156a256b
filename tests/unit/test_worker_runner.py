"""The worker's runner on a real node: job execution, timeouts, cancellation,
lost leases, the results outbox and graceful stop.

Every scenario runs the real Worker against a real `Node` on a `LocalReplica`
in the test's event loop (tests/unit/worker_node.py), through the real
`AsyncClient`: the real JobMachine grants, extends, fences and expires the
leases. Multi-node behaviour is tested in tests/integration/.
"""
from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from worker.context import JobContext
from worker.jobs import register
from worker.registry import BadArgument, Registry, require
from worker.runner import Worker
from tests.unit.worker_node import WorkerNode, scenario, until

REPORTS = ("complete", "complete_many", "fail")


def test_runs_a_job_and_reports_its_result(tmp_path: Path) -> None:
    reg = Registry()
    seen: list[JobContext] = []

    @reg.job("t.add")
    def add(args: dict, ctx: JobContext) -> dict:
        seen.append(ctx)
        assert ctx.workdir.is_dir()
        return {"sum": args["a"] + args["b"]}

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        jid = await node.submit("t.add", {"a": 2, "b": 3})
        await until(lambda: node.state(jid) == "succeeded", what="completion")

    code, node, worker = scenario(tmp_path, body, reg)
    assert code == 0
    assert node.reports == [("complete", "job-1", 1, {"sum": 5})]
    assert node.job("job-1")["result"] == {"sum": 5}
    assert seen[0].id == "job-1" and seen[0].attempt == 1 and seen[0].args == {"a": 2, "b": 3}
    assert seen[0].workdir_made and not seen[0].workdir.exists(), "the per-job scratch dir is removed afterwards"


def test_failures_are_reported_with_the_right_retry_flag(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.boom")
    def boom(args: dict, ctx: JobContext) -> None:
        raise ValueError("boom")

    @reg.job("t.strict")
    def strict(args: dict, ctx: JobContext) -> int:
        return require(args, "n", int, min=0)

    @reg.job("t.set")
    def returns_set(args: dict, ctx: JobContext) -> set:
        return {1, 2}

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        for jid, jtype, args in [("a", "t.boom", {}), ("b", "t.strict", {"n": "abc"}),
                                 ("c", "t.nope", {}), ("d", "t.set", {})]:
            await node.submit(jtype, args, id=jid)
        await until(lambda: len(node.reports) == 4, what="four reports")

    _, node, _ = scenario(tmp_path, body, reg)
    errors = {r[1]: r[3] for r in node.reports}
    # Each job has 3 attempts: a retryable failure schedules the next one, any other fails the job.
    assert errors["a"] == "ValueError: boom" and node.retryable["a"] is True and node.state("a") == "scheduled"
    assert errors["b"] == "t.strict: 'n' must be an integer >= 0, got 'abc'"
    assert node.retryable["b"] is False and node.state("b") == "failed"
    assert errors["c"].startswith("unknown job type 't.nope'") and node.retryable["c"] is False
    assert "result cannot be stored" in errors["d"] and node.retryable["d"] is False
    assert node.state("c") == node.state("d") == "failed"


def test_timeout_fails_retryably_and_cancels_the_handler(tmp_path: Path) -> None:
    reg = Registry()
    observed = threading.Event()

    @reg.job("t.hang")
    def hang(args: dict, ctx: JobContext) -> None:
        if ctx.wait(30):
            observed.set()

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        jid = await node.submit("t.hang", timeout=0.3)
        await until(lambda: node.reports, what="timeout report")
        await until(observed.is_set, what="handler to see cancellation")
        await until(lambda: worker.free_slots == 2, what="slot released")
        assert node.state(jid) == "scheduled"

    _, node, _ = scenario(tmp_path, body, reg)
    assert node.reports == [("fail", "job-1", 1, "timeout after 0.3s")]
    assert node.retryable["job-1"] is True


def test_registry_timeout_applies_when_the_job_sets_none(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.slow", timeout=0.2)
    def slow(args: dict, ctx: JobContext) -> None:
        ctx.wait(30)

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit("t.slow")
        await until(lambda: node.reports, what="timeout report")

    _, node, _ = scenario(tmp_path, body, reg)
    assert node.reports[0][3] == "timeout after 0.2s"


# A short lease where the test waits for it to run out; elsewhere one that a
# slow moment on a busy box cannot lose.
@pytest.mark.parametrize("action, reason, final, lease_ttl_s", [("cancel", "cancelled", "cancelled", 1.0),
                                                                ("lose_lease", "lease lost", "failed", 0.3)])
@pytest.mark.parametrize("raises", [False, True])
def test_cancel_or_lost_lease_stops_the_run_and_reports_nothing(
        tmp_path: Path, action: str, reason: str, final: str, lease_ttl_s: float, raises: bool) -> None:
    reg = Registry()
    started = threading.Event()
    reasons: list[str] = []

    @reg.job("t.long")
    def long(args: dict, ctx: JobContext) -> str:
        started.set()
        while not ctx.cancelled:
            ctx.progress(0.5, "halfway")
            ctx.wait(0.02)
        reasons.append(ctx.cancel_reason)
        if args.get("raise"):
            ctx.check_cancelled()  # raises JobCancelled: must be consumed quietly
        return "finished anyway"  # must not be reported: the attempt is no longer ours

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        # One attempt: an expired lease fails the job instead of handing it to this worker again.
        jid = await node.submit("t.long", {"raise": raises}, max_attempts=1)
        await until(started.is_set, what="start")
        await until(lambda: node.job(jid)["progress"] == [0.5, "halfway"], what="progress via heartbeat")
        if action == "cancel":
            await node.cancel(jid)
        else:  # the worker cannot heartbeat for longer than its lease
            await node.lose_leases(worker.config.lease_ttl_ms)
        await until(lambda: reasons, what="handler to stop")
        await until(lambda: worker.free_slots == 2, what="slot released")
        n = len(node.client.heartbeats)
        await until(lambda: len(node.client.heartbeats) > n + 2 or not worker.leases, what="heartbeats")
        assert not worker.leases, "an abandoned lease is not heartbeated any more"

    _, node, _ = scenario(tmp_path, body, reg, lease_ttl_s=lease_ttl_s)
    assert reasons == [reason]
    assert node.reports == [] and node.client.report_errors == [] and node.client.batches == []
    assert node.state("job-1") == final


def test_outbox_retries_until_the_cluster_acknowledges(tmp_path: Path) -> None:
    reg = Registry()
    gate = threading.Event()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        gate.wait(10)
        return 42

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        jid = await node.submit("t.quick")
        await until(lambda: node.state(jid) == "running", what="lease")
        node.no_leader()  # an election: the report gets NO_LEADER
        gate.set()
        await until(lambda: node.client.report_errors, what="a report answered NO_LEADER")
        with node.refuse(*REPORTS):  # a leader again, too busy for reports
            node.lead()
            await until(lambda: len(node.client.report_errors) >= 2, what="a report answered OVERLOADED")
            # While waiting in the outbox, the lease keeps being heartbeated.
            n = len(node.client.heartbeats)
            await until(lambda: any(lease["id"] == jid for beat in node.client.heartbeats[n:] for lease in beat),
                        what="the lease heartbeated")
        await until(lambda: node.state(jid) == "succeeded", what="delivery after retries")

    _, node, _ = scenario(tmp_path, body, reg, lease_ttl_s=5.0)
    assert node.reports == [("complete", "job-1", 1, 42)]
    kinds = [type(exc).__name__ for exc in node.client.report_errors]
    assert kinds[0] == "NoLeader" and set(kinds[1:]) == {"Overloaded"}, kinds


def test_outbox_keeps_the_lease_alive_while_reports_are_refused(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 7

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        # Reports are refused for 2.5 lease TTLs; heartbeats still get through
        # and keep the lease, so the result is accepted once reports are.
        with node.refuse(*REPORTS):
            jid = await node.submit("t.quick")
            await until(lambda: node.client.report_errors, what="a refused report")
            await asyncio.sleep(2.5 * worker.config.lease_ttl_s)
            assert node.state(jid) == "running"
        await until(lambda: node.state(jid) == "succeeded", what="delivery")

    _, node, _ = scenario(tmp_path, body, reg, lease_ttl_s=0.5, heartbeat_s=0.05)
    assert node.reports == [("complete", "job-1", 1, 7)]


def test_without_heartbeats_the_lease_expires_and_the_late_report_is_dropped(tmp_path: Path) -> None:
    """Guard for the test above: without heartbeats, the node does expire the lease."""
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 7

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        with node.refuse(*REPORTS, "heartbeat"):
            jid = await node.submit("t.quick", max_attempts=1)
            await until(lambda: node.client.report_errors, what="a refused report")
            await until(lambda: node.state(jid) == "failed", what="the lease to expire")
        await until(lambda: worker.stats["dropped"] == 1, what="fenced report")

    _, node, _ = scenario(tmp_path, body, reg, lease_ttl_s=0.4)
    assert node.reports == []
    assert node.job("job-1")["error"].startswith("lease expired")


def test_a_fenced_report_is_dropped_and_the_worker_carries_on(tmp_path: Path) -> None:
    reg = Registry()
    gate = threading.Event()

    @reg.job("t.gated")
    def gated(args: dict, ctx: JobContext) -> int:
        gate.wait(10)
        return 1

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        # The job is cancelled while it runs; with heartbeats refused the
        # worker hears of it only as the answer to its report: LEASE_LOST.
        with node.refuse("heartbeat"):
            await node.submit("t.gated", id="first")
            await until(lambda: node.state("first") == "running", what="lease")
            await node.cancel("first")
            gate.set()
            await until(lambda: worker.stats["dropped"] == 1, what="drop")
        await node.submit("t.gated", id="second")
        await until(lambda: node.state("second") == "succeeded", what="next job")

    code, node, _ = scenario(tmp_path, body, reg)
    assert code == 0
    assert [r[1] for r in node.reports] == ["second"]
    assert node.state("first") == "cancelled"


def test_leases_only_free_capacity(tmp_path: Path) -> None:
    reg = Registry()
    gate = threading.Event()
    lock = threading.Lock()
    now_running = [0]
    peak = [0]

    @reg.job("t.gate")
    def gated(args: dict, ctx: JobContext) -> None:
        with lock:
            now_running[0] += 1
            peak[0] = max(peak[0], now_running[0])
        gate.wait(10)
        time.sleep(0.02)
        with lock:
            now_running[0] -= 1

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        for i in range(5):
            await node.submit("t.gate", id=f"g{i}")
        # No job has finished yet, so no prefetch: exactly the free slots.
        await until(lambda: node.count("running") == 2, what="two running")
        await asyncio.sleep(0.3)  # a further poll window: nothing more may be leased
        assert node.count("running") == 2 and node.count("queued") == 3
        gate.set()
        await until(lambda: len(node.reports) == 5, what="all five")

    _, node, _ = scenario(tmp_path, body, reg, threads=2)
    assert peak[0] == 2
    assert all(1 <= m <= 2 for m in node.client.lease_calls)


def test_lease_offers_free_capacity(tmp_path: Path) -> None:
    reg = Registry()
    gate = threading.Event()

    @reg.job("t.gate")
    def gated(args: dict, ctx: JobContext) -> None:
        gate.wait(10)

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        assert worker.free_capacity() == {"cpu": 4.0, "mem_mb": 4096}
        await node.submit("t.gate", id="big", resources={"cpu": 1.5, "mem_mb": 1000})
        await until(lambda: node.count("running") == 1, what="running")
        await until(lambda: node.client.capacities[-1] == {"cpu": 2.5, "mem_mb": 3096},
                    what="a poll with less capacity")
        gate.set()
        await until(lambda: node.reports, what="report")

    _, node, _ = scenario(tmp_path, body, reg, threads=2, cpu=4, mem_mb=4096)
    assert node.client.capacities[0] == {"cpu": 4.0, "mem_mb": 4096}


def test_lease_capacity_defaults_to_free_slots(tmp_path: Path) -> None:
    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await until(lambda: node.client.capacities, what="first poll")

    _, node, _ = scenario(tmp_path, body, threads=3)
    assert node.client.capacities[0] == {"cpu": 3.0}


def test_graceful_stop_waits_for_running_jobs(tmp_path: Path) -> None:
    reg = Registry()
    started = threading.Event()

    @reg.job("t.finish")
    def finish(args: dict, ctx: JobContext) -> str:
        started.set()
        time.sleep(0.3)
        return "done"

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit("t.finish")
        await until(started.is_set, what="start")

    code, node, _ = scenario(tmp_path, body, reg, grace_s=5.0)
    assert code == 0
    assert node.reports == [("complete", "job-1", 1, "done")]
    assert node.state("job-1") == "succeeded"


def test_stop_past_grace_hands_running_jobs_back(tmp_path: Path) -> None:
    reg = Registry()
    started = threading.Event()
    reasons: list[str] = []

    @reg.job("t.forever")
    def forever(args: dict, ctx: JobContext) -> None:
        started.set()
        ctx.wait(30)
        reasons.append(ctx.cancel_reason)

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit("t.forever")
        await until(started.is_set, what="start")

    # Were the grace ignored, the handler's 30 s wait would overrun the scenario's 20 s limit.
    code, node, _ = scenario(tmp_path, body, reg, grace_s=0.3)
    assert code == 0
    assert node.reports == [("fail", "job-1", 1, "worker shutting down")]
    assert node.retryable["job-1"] is True and node.state("job-1") == "scheduled"
    assert reasons == ["worker shutting down"]


def test_second_stop_request_and_undelivered_results_give_exit_code_1(tmp_path: Path) -> None:
    reg = Registry()
    gate = threading.Event()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        gate.wait(10)
        return 1

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        jid = await node.submit("t.quick")
        await until(lambda: node.state(jid) == "running", what="lease")
        node.no_leader()  # and it stays so: the result cannot be delivered
        gate.set()
        await until(lambda: worker.outbox, what="result in the outbox")
        worker.request_stop()
        worker.request_stop()  # second request: at once

    # Were the second request ignored, the 30 s grace would overrun the scenario's 20 s limit.
    code, node, _ = scenario(tmp_path, body, reg, stop=False, grace_s=30.0)
    assert code == 1
    assert node.reports == [] and node.state("job-1") == "running"


def test_request_stop_from_another_thread(tmp_path: Path) -> None:
    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await until(lambda: node.client.lease_calls, what="first lease poll")
        threading.Thread(target=worker.request_stop).start()

    code, _, _ = scenario(tmp_path, body, stop=False)
    assert code == 0


def test_lease_errors_back_off_and_recover(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 3

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        with node.refuse("lease"):
            await node.submit("t.quick")
            await until(lambda: len(node.client.lease_errors) >= 2, what="refused polls")
            assert node.state("job-1") == "queued"
        await until(lambda: node.state("job-1") == "succeeded", what="recovery")

    _, node, _ = scenario(tmp_path, body, reg)
    assert node.reports == [("complete", "job-1", 1, 3)]


def test_builtin_jobs_run_in_threads_and_processes(tmp_path: Path) -> None:
    reg = register(Registry())
    # The node refuses a built-in type's bad args at submit; under a name it
    # does not check (as a job queued before it did), the handler refuses them.
    reg.add("legacy.primes", reg.get("math.primes").fn, pool="process")  # type: ignore[union-attr]

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit("text.wordcount", {"text": "a b a"}, id="wc")
        await node.submit("math.primes", {"n": 1000}, id="pr")  # pool="process"
        await node.submit("legacy.primes", {"n": -1}, id="bad")
        # At its timeout a process job is reported failed and its child
        # terminated (tests/unit/test_worker_process.py checks the PID).
        await node.submit("math.primes", {"n": 50_000_000}, id="slow", timeout=0.05)
        await until(lambda: len(node.reports) == 4, timeout=60, what="four reports")

    _, node, _ = scenario(tmp_path, body, reg)
    got = {r[1]: r[3] for r in node.reports}
    assert got["wc"]["words"] == 3
    assert got["pr"] == {"n": 1000, "count": 168}
    assert got["bad"] == "legacy.primes: 'n' must be an integer between 0 and 50000000, got -1"
    assert node.retryable["bad"] is False and node.state("bad") == "failed"
    assert got["slow"] == "timeout after 0.05s" and node.retryable["slow"] is True


def test_heartbeat_sends_our_lease_ms(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.nap")
    def nap(args: dict, ctx: JobContext) -> None:
        ctx.wait(0.3)

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        jid = await node.submit("t.nap")
        await until(lambda: node.state(jid) == "succeeded", what="completion")

    code, node, _ = scenario(tmp_path, body, reg, lease_ttl_s=1.5)
    assert code == 0
    assert node.client.heartbeat_lease_ms and set(node.client.heartbeat_lease_ms) == {1500}


def test_bad_argument_message_format() -> None:
    with pytest.raises(BadArgument, match=r"^'n' must be an integer >= 0, got 'abc'$"):
        require({"n": "abc"}, "n", int, min=0)


def test_a_handler_that_never_uses_its_workdir_gets_none_made(tmp_path: Path) -> None:
    reg = Registry()
    seen: list[JobContext] = []

    @reg.job("t.plain")
    def plain(args: dict, ctx: JobContext) -> int:
        seen.append(ctx)
        return 1

    @reg.job("t.files")
    def files(args: dict, ctx: JobContext) -> int:
        (ctx.workdir / "scratch.txt").write_text("x")  # left behind: removed with its dir
        return 2

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        a, b = await node.submit("t.plain", {}), await node.submit("t.files", {})
        await until(lambda: node.state(a) == node.state(b) == "succeeded", what="both done")

    code, _, _ = scenario(tmp_path, body, reg)
    assert code == 0
    assert not seen[0].workdir_made
    assert not seen[0].workdir.exists(), "reading workdir after the attempt creates nothing"
    assert not any((tmp_path / "wd").iterdir()), "no scratch dir outlives its attempt"


def test_successes_are_reported_in_batches_and_a_fenced_item_drops_alone(tmp_path: Path) -> None:
    reg = Registry()
    gate = threading.Event()

    @reg.job("t.gated")
    def gated(args: dict, ctx: JobContext) -> int:
        gate.wait(5)
        return args["n"]

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit_many([{"type": "t.gated", "args": {"n": n}, "id": f"j{n}"} for n in range(8)])
        await until(lambda: len(worker._runs) == 8, what="all 8 running")
        # The first report is refused as a whole (the batch is retried), then
        # one item is fenced: j3 was cancelled meanwhile, and with heartbeats
        # refused the worker hears of it only in the batch's answer.
        with node.refuse("complete_many", "heartbeat"):
            await node.cancel("j3")
            gate.set()  # all finish at once: their reports share requests
            await until(lambda: node.client.report_errors and len(worker.outbox) == 8, what="all 8 waiting")
        await until(lambda: worker.stats["succeeded"] + worker.stats["dropped"] == 8, what="all reported")

    code, node, worker = scenario(tmp_path, body, reg, threads=8)
    assert code == 0
    assert worker.stats["succeeded"] == 7 and worker.stats["dropped"] == 1
    assert len(node.reports) == 7 and all(r[0] == "complete" for r in node.reports)
    assert {r[1]: r[3] for r in node.reports} == {f"j{n}": n for n in range(8) if n != 3}
    assert node.state("j3") == "cancelled"
    assert max(node.client.batches) > 1, node.client.batches
    # far fewer requests than one per job (8) plus the refused one
    assert len(node.client.batches) < 8, node.client.batches


def test_parked_jobs_are_heartbeated_dropped_when_cancelled_and_handed_back_past_grace(tmp_path: Path) -> None:
    reg = Registry()
    ran: list[str] = []

    @reg.job("t.block")
    def block(args: dict, ctx: JobContext) -> None:
        ran.append(ctx.id)
        ctx.wait(30)

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> None:
        return None

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        for i in range(4):  # short jobs first: prefetch is on only while jobs are short
            await node.submit("t.quick", id=f"q{i}")
        await until(lambda: worker.stats["succeeded"] == 4, what="quick jobs")
        # Idle now: the pending poll asks for the 2 free slots + 2 to park.
        await until(lambda: not worker._runs and node.client.lease_calls[-1] == 4, what="a poll for 4")
        # One entry, so that one lease takes the first four in order.
        await node.submit_many([{"type": "t.block", "id": f"job-{i + 1}"} for i in range(5)])
        # Two slots: job-1 and job-2 run, job-3 and job-4 are prefetched (the
        # prefetch is at most `threads`), job-5 stays queued.
        await until(lambda: node.count("running") == 4 and len(worker._waiting) == 2, what="two parked")
        await until(lambda: any({"job-3", "job-4"} <= {x["id"] for x in hb} for hb in node.client.heartbeats),
                    what="parked leases heartbeated")
        assert node.state("job-5") == "queued"
        await node.cancel("job-3")
        await until(lambda: "job-3" not in {k[0] for k in worker._waiting}, what="cancelled parked job dropped")
        assert worker.stats["dropped"] == 1

    code, node, _ = scenario(tmp_path, body, reg, threads=2, grace_s=0.3)
    assert code == 0
    assert sorted(ran) == ["job-1", "job-2"]  # neither parked job ever ran
    assert sorted(r for r in node.reports if r[0] == "fail") == [
        ("fail", f"job-{n}", 1, "worker shutting down") for n in (1, 2, 4)]
    assert node.retryable["job-4"] is True
