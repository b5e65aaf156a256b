"""The worker's runner without a cluster: job execution, timeouts, cancellation,
lost leases, the results outbox and graceful stop.

`FakeCluster` stands in for the network half of `cluster.client.AsyncClient`
(lease / heartbeat / complete / fail, fenced by attempt exactly as
docs/contracts.md §1 describes). It is a test double for the network only and
lives only in this file; the real worker is tested against real nodes in
tests/integration/.
"""
from __future__ import annotations

import asyncio
import gc
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from cluster.errors import Conflict, LeaseLost, NoLeader, NotFound, Unavailable
from worker.config import WorkerConfig
from worker.context import JobContext
from worker.hooks import WorkerHooks
from worker.jobs import register
from worker.registry import BadArgument, Registry, require
from worker.runner import Worker


class FakeCluster:
    """In-memory job table answering the worker calls of AsyncClient."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.queue: list[str] = []
        self.reports: list[tuple[str, str, int, Any]] = []  # (op, id, attempt, result|error)
        self.retryable: dict[str, bool] = {}
        self.heartbeats: list[list[dict]] = []
        self.lease_calls: list[int] = []  # `max` of each lease call
        self.capacities: list[dict | None] = []  # `capacity` of each lease call
        self.down = False  # every call raises Unavailable
        self.report_errors: list[Exception] = []  # raised by the next complete/fail calls
        self.batches: list[int] = []  # size of each complete_many call
        self.reports_down_until = 0.0  # complete/fail raise Unavailable until this monotonic time
        self.ttl_s = 0.5  # what a heartbeat extends a lease by (the cluster's lease_ttl)
        self.deadline: dict[str, float] = {}  # lease deadlines, judged on every call
        self.extend_on_heartbeat = True
        self.max_running = 0
        self._ready = asyncio.Event()

    def add(self, type: str, args: Any = None, *, id: str | None = None,
            timeout_s: float | None = None, max_attempts: int = 3) -> str:
        jid = id or f"job-{len(self.jobs) + 1}"
        self.jobs[jid] = {"id": jid, "type": type, "args": args if args is not None else {},
                          "queue": "default", "priority": 0, "state": "queued", "attempts": 0,
                          "max_attempts": max_attempts, "timeout_s": timeout_s, "progress": None}
        self.queue.append(jid)
        self._ready.set()
        return jid

    def running(self) -> int:
        return sum(1 for j in self.jobs.values() if j["state"] == "running")

    def state(self, jid: str) -> str:
        return self.jobs[jid]["state"]

    # --- operator actions ---

    def cancel(self, jid: str) -> None:
        self.jobs[jid]["state"] = "cancelled"

    def expire(self, jid: str) -> None:
        """The lease ran out in log time: the attempt is stale (retry pending)."""
        self.jobs[jid]["state"] = "scheduled"

    # --- AsyncClient surface (contracts §4) ---

    def _check_up(self) -> None:
        if self.down:
            raise Unavailable("no node reachable")
        now = time.monotonic()
        for jid, due in list(self.deadline.items()):
            if due <= now and self.jobs[jid]["state"] == "running":
                self.expire(jid)
                del self.deadline[jid]

    async def lease(self, worker: str, queues: list[str], max: int = 1, wait_s: float = 5.0,
                    lease_ms: int | None = None, capacity: dict | None = None) -> list[dict]:
        self._check_up()
        assert max >= 1, "the worker must lease only with free capacity"
        self.lease_calls.append(max)
        self.capacities.append(capacity)
        deadline = time.monotonic() + wait_s
        while True:
            picked = []
            while self.queue and len(picked) < max:
                job = self.jobs[self.queue.pop(0)]
                if job["queue"] in queues and job["state"] == "queued":
                    job["state"] = "running"
                    job["attempts"] += 1
                    job["lease_token"] = f"{job['attempts']:032x}"  # this fake only checks it is presented
                    self.deadline[job["id"]] = time.monotonic() + (lease_ms or 30000) / 1000
                    picked.append(dict(job, attempt=job["attempts"], lease_token=job["lease_token"],
                                       lease_deadline_at=time.time() + (lease_ms or 30000) / 1000))
            self.max_running = builtins_max(self.max_running, self.running())
            remaining = deadline - time.monotonic()
            if picked or remaining <= 0:
                return picked
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _holds(self, jid: str, attempt: int, lease_token: str) -> bool:
        job = self.jobs.get(jid)
        return (job is not None and job["state"] == "running" and job["attempts"] == attempt
                and job["lease_token"] == lease_token)

    async def heartbeat(self, worker: str, leases: list[dict], lease_ms: int | None = None) -> dict:
        self._check_up()
        self.heartbeats.append(leases)
        lost, cancel = [], []
        for lease in leases:
            job = self.jobs[lease["id"]]
            if job["state"] == "cancelled":
                cancel.append(lease["id"])
            elif not self._holds(lease["id"], lease["attempt"], lease["lease_token"]):
                lost.append(lease["id"])
            else:
                if self.extend_on_heartbeat:
                    self.deadline[lease["id"]] = time.monotonic() + self.ttl_s
                if "progress" in lease:
                    job["progress"] = lease["progress"]
        return {"lost": lost, "cancel": cancel}

    def _report_check(self, jid: str, attempt: int, lease_token: str) -> None:
        self._check_up()
        if time.monotonic() < self.reports_down_until:
            raise Unavailable("no node reachable")
        if self.report_errors:
            raise self.report_errors.pop(0)
        if not self._holds(jid, attempt, lease_token):
            raise LeaseLost(f"{jid} attempt {attempt} is not the current lease")

    async def complete(self, id: str, attempt: int, result: Any, *, lease_token: str) -> str:
        self._report_check(id, attempt, lease_token)
        self.jobs[id]["state"] = "succeeded"
        self.reports.append(("complete", id, attempt, result))
        return "succeeded"

    async def complete_many(self, items: list[dict]) -> list[dict]:
        # As the real op: a transport-level error fails the whole call; a
        # fencing error answers for its item only.
        self.batches.append(len(items))
        self._check_up()
        if time.monotonic() < self.reports_down_until:
            raise Unavailable("no node reachable")
        if self.report_errors and not isinstance(self.report_errors[0], (LeaseLost, NotFound, Conflict)):
            raise self.report_errors.pop(0)  # before any item is applied, like a lost request
        answers: list[dict] = []
        for item in items:
            try:
                answers.append({"state": await self.complete(item["id"], item["attempt"], item["result"],
                                                                  lease_token=item["lease_token"])})
            except (LeaseLost, NotFound, Conflict) as exc:
                answers.append({"error": exc.code, "message": str(exc)})
        return answers

    async def fail(self, id: str, attempt: int, error: str, retryable: bool = True, *, lease_token: str) -> str:
        self._report_check(id, attempt, lease_token)
        job = self.jobs[id]
        job["state"] = "scheduled" if retryable and job["attempts"] < job["max_attempts"] else "failed"
        self.reports.append(("fail", id, attempt, error))
        self.retryable[id] = retryable
        return job["state"]


builtins_max = max


# --- harness ---

def make_config(tmp_path: Path, **over: Any) -> WorkerConfig:
    base: dict[str, Any] = dict(cluster=["127.0.0.1:1"], name="w1", threads=2, lease_ttl_s=1.0,
                                heartbeat_s=0.05, poll_wait_s=0.2, grace_s=2.0, workdir=tmp_path / "wd")
    base.update(over)
    return WorkerConfig(**base)


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def scenario(tmp_path: Path, body: Callable[[FakeCluster, Worker, Registry], Awaitable[None]],
             registry: Registry | None = None, stop: bool = True, hooks: list[WorkerHooks] | None = None,
             **cfg: Any) -> tuple[int, FakeCluster, Worker]:
    """Run a worker against a FakeCluster while `body` drives it; then stop it."""
    reg = registry or Registry()

    async def main() -> tuple[int, FakeCluster, Worker]:
        loop_errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
        fake = FakeCluster()
        worker = Worker(make_config(tmp_path, **cfg), reg, client=fake, hooks=hooks)
        runner = asyncio.create_task(worker.run())
        try:
            await body(fake, worker, reg)
            if stop:
                worker.request_stop()
            code = await asyncio.wait_for(runner, 20)
        finally:
            runner.cancel()
        gc.collect()  # an unretrieved future exception is reported when collected
        assert not loop_errors, f"event loop errors: {loop_errors}"
        return code, fake, worker

    return asyncio.run(main())


def test_runs_a_job_and_reports_its_result(tmp_path: Path) -> None:
    reg = Registry()
    seen: list[JobContext] = []

    @reg.job("t.add")
    def add(args: dict, ctx: JobContext) -> dict:
        seen.append(ctx)
        assert ctx.workdir.is_dir()
        return {"sum": args["a"] + args["b"]}

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        jid = fake.add("t.add", {"a": 2, "b": 3})
        await until(lambda: fake.state(jid) == "succeeded", what="completion")

    code, fake, worker = scenario(tmp_path, body, reg)
    assert code == 0
    assert fake.reports == [("complete", "job-1", 1, {"sum": 5})]
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

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        for jid, jtype, args in [("a", "t.boom", {}), ("b", "t.strict", {"n": "abc"}),
                                 ("c", "t.nope", {}), ("d", "t.set", {})]:
            fake.add(jtype, args, id=jid)
        await until(lambda: len(fake.reports) == 4, what="four reports")

    _, fake, _ = scenario(tmp_path, body, reg)
    errors = {r[1]: r[3] for r in fake.reports}
    assert errors["a"] == "ValueError: boom" and fake.retryable["a"] is True
    assert errors["b"] == "t.strict: 'n' must be an integer >= 0, got 'abc'"
    assert fake.retryable["b"] is False and fake.state("b") == "failed"
    assert errors["c"].startswith("unknown job type 't.nope'") and fake.retryable["c"] is False
    assert "result cannot be stored" in errors["d"] and fake.retryable["d"] is False


def test_timeout_fails_retryably_and_cancels_the_handler(tmp_path: Path) -> None:
    reg = Registry()
    observed = threading.Event()

    @reg.job("t.hang")
    def hang(args: dict, ctx: JobContext) -> None:
        if ctx.wait(30):
            observed.set()

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        jid = fake.add("t.hang", timeout_s=0.3)
        await until(lambda: fake.reports, what="timeout report")
        await until(observed.is_set, what="handler to see cancellation")
        await until(lambda: worker.free_slots == 2, what="slot released")
        assert fake.state(jid) == "scheduled"

    _, fake, _ = scenario(tmp_path, body, reg)
    assert fake.reports == [("fail", "job-1", 1, "timeout after 0.3s")]
    assert fake.retryable["job-1"] is True


def test_registry_timeout_applies_when_the_job_sets_none(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.slow", timeout=0.2)
    def slow(args: dict, ctx: JobContext) -> None:
        ctx.wait(30)

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.add("t.slow")
        await until(lambda: fake.reports, what="timeout report")

    _, fake, _ = scenario(tmp_path, body, reg)
    assert fake.reports[0][3] == "timeout after 0.2s"


@pytest.mark.parametrize("action, reason", [("cancel", "cancelled"), ("expire", "lease lost")])
@pytest.mark.parametrize("raises", [False, True])
def test_cancel_or_lost_lease_stops_the_run_and_reports_nothing(
        tmp_path: Path, action: str, reason: str, raises: bool) -> None:
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

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        jid = fake.add("t.long", {"raise": raises})
        await until(started.is_set, what="start")
        await until(lambda: fake.jobs[jid]["progress"] == [0.5, "halfway"], what="progress via heartbeat")
        getattr(fake, action)(jid)
        await until(lambda: reasons, what="handler to stop")
        await until(lambda: worker.free_slots == 2, what="slot released")
        n = len(fake.heartbeats)
        await until(lambda: len(fake.heartbeats) > n + 2 or not worker.leases, what="heartbeats")
        assert not worker.leases, "an abandoned lease is not heartbeated any more"

    _, fake, _ = scenario(tmp_path, body, reg)
    assert reasons == [reason]
    assert fake.reports == []


def test_outbox_retries_until_the_cluster_acknowledges(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 42

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.report_errors = [Unavailable("down"), NoLeader("election"), ConnectionResetError("reset")]
        jid = fake.add("t.quick")
        await until(lambda: fake.state(jid) == "succeeded", what="delivery after retries")
        # While waiting in the outbox, the lease kept being heartbeated.
        assert any(lease["id"] == jid for beat in fake.heartbeats for lease in beat)

    _, fake, _ = scenario(tmp_path, body, reg)
    assert fake.reports == [("complete", "job-1", 1, 42)]
    assert fake.report_errors == []


def test_outbox_keeps_the_lease_alive_while_the_cluster_is_down(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 7

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        # Reports fail for 2.5 lease TTLs; heartbeats still get through and
        # keep the lease, so the result is accepted once reports work again.
        fake.reports_down_until = time.monotonic() + 2.5 * fake.ttl_s
        jid = fake.add("t.quick")
        await until(lambda: fake.state(jid) == "succeeded", what="delivery")

    _, fake, _ = scenario(tmp_path, body, reg, heartbeat_s=0.05)
    assert fake.reports == [("complete", "job-1", 1, 7)]


def test_without_heartbeats_the_fake_expires_the_lease(tmp_path: Path) -> None:
    """Guard for the test above: the fake really does expire unrenewed leases."""
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 7

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.reports_down_until = time.monotonic() + 2.5 * fake.ttl_s
        fake.extend_on_heartbeat = False
        jid = fake.add("t.quick")
        await until(lambda: worker.stats["dropped"] == 1, what="fenced report")
        assert fake.state(jid) == "scheduled"

    _, fake, _ = scenario(tmp_path, body, reg)
    assert fake.reports == []


def test_a_fenced_report_is_dropped_and_the_worker_carries_on(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 1

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.report_errors = [LeaseLost("stale")]
        fake.add("t.quick", id="first")
        await until(lambda: worker.stats["dropped"] == 1, what="drop")
        fake.add("t.quick", id="second")
        await until(lambda: fake.state("second") == "succeeded", what="next job")

    code, fake, _ = scenario(tmp_path, body, reg)
    assert code == 0
    assert [r[1] for r in fake.reports] == ["second"]


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

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        for i in range(5):
            fake.add("t.gate", id=f"g{i}")
        # No job has finished yet, so no prefetch: exactly the free slots.
        await until(lambda: fake.running() == 2, what="two running")
        await asyncio.sleep(0.3)  # a further poll window: nothing more may be leased
        assert fake.running() == 2 and len(fake.queue) == 3
        gate.set()
        await until(lambda: len(fake.reports) == 5, what="all five")

    _, fake, _ = scenario(tmp_path, body, reg, threads=2)
    assert peak[0] == 2
    assert all(1 <= m <= 2 for m in fake.lease_calls)


def test_lease_offers_free_capacity(tmp_path: Path) -> None:
    reg = Registry()
    gate = threading.Event()

    @reg.job("t.gate")
    def gated(args: dict, ctx: JobContext) -> None:
        gate.wait(10)

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        assert worker.free_capacity() == {"cpu": 4.0, "mem_mb": 4096}
        jid = fake.add("t.gate", id="big")
        fake.jobs[jid]["resources"] = {"cpu": 1.5, "mem_mb": 1000}
        await until(lambda: fake.running() == 1, what="running")
        await until(lambda: fake.capacities[-1] == {"cpu": 2.5, "mem_mb": 3096}, what="a poll with less capacity")
        gate.set()
        await until(lambda: fake.reports, what="report")

    _, fake, _ = scenario(tmp_path, body, reg, threads=2, cpu=4, mem_mb=4096)
    assert fake.capacities[0] == {"cpu": 4.0, "mem_mb": 4096}


def test_lease_capacity_defaults_to_free_slots(tmp_path: Path) -> None:
    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        await until(lambda: fake.capacities, what="first poll")

    _, fake, _ = scenario(tmp_path, body, threads=3)
    assert fake.capacities[0] == {"cpu": 3.0}


def test_graceful_stop_waits_for_running_jobs(tmp_path: Path) -> None:
    reg = Registry()
    started = threading.Event()

    @reg.job("t.finish")
    def finish(args: dict, ctx: JobContext) -> str:
        started.set()
        time.sleep(0.3)
        return "done"

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.add("t.finish")
        await until(started.is_set, what="start")

    code, fake, _ = scenario(tmp_path, body, reg, grace_s=5.0)
    assert code == 0
    assert fake.reports == [("complete", "job-1", 1, "done")]


def test_stop_past_grace_hands_running_jobs_back(tmp_path: Path) -> None:
    reg = Registry()
    started = threading.Event()
    reasons: list[str] = []

    @reg.job("t.forever")
    def forever(args: dict, ctx: JobContext) -> None:
        started.set()
        ctx.wait(30)
        reasons.append(ctx.cancel_reason)

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.add("t.forever")
        await until(started.is_set, what="start")

    t0 = time.monotonic()
    code, fake, _ = scenario(tmp_path, body, reg, grace_s=0.3)
    assert time.monotonic() - t0 < 5
    assert code == 0
    assert fake.reports == [("fail", "job-1", 1, "worker shutting down")]
    assert fake.retryable["job-1"] is True
    assert reasons == ["worker shutting down"]


def test_second_stop_request_and_undelivered_results_give_exit_code_1(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 1

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.report_errors = [Unavailable("down")] * 1000
        fake.add("t.quick")
        await until(lambda: worker.outbox, what="result in the outbox")
        worker.request_stop()
        worker.request_stop()  # second request: at once

    t0 = time.monotonic()
    code, fake, _ = scenario(tmp_path, body, reg, stop=False, grace_s=30.0)
    assert time.monotonic() - t0 < 5
    assert code == 1
    assert fake.reports == []


def test_request_stop_from_another_thread(tmp_path: Path) -> None:
    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        await until(lambda: fake.lease_calls, what="first lease poll")
        threading.Thread(target=worker.request_stop).start()

    code, fake, _ = scenario(tmp_path, body, stop=False)
    assert code == 0


def test_lease_errors_back_off_and_recover(tmp_path: Path) -> None:
    reg = Registry()

    @reg.job("t.quick")
    def quick(args: dict, ctx: JobContext) -> int:
        return 3

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.down = True
        fake.add("t.quick")
        await asyncio.sleep(0.3)
        assert fake.state("job-1") == "queued"
        fake.down = False
        await until(lambda: fake.state("job-1") == "succeeded", what="recovery")

    _, fake, _ = scenario(tmp_path, body, reg)
    assert fake.reports == [("complete", "job-1", 1, 3)]


def test_builtin_jobs_run_in_threads_and_processes(tmp_path: Path) -> None:
    reg = register(Registry())

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        fake.add("text.wordcount", {"text": "a b a"}, id="wc")
        fake.add("math.primes", {"n": 1000}, id="pr")  # pool="process"
        fake.add("math.primes", {"n": -1}, id="bad")
        # At its timeout a process job is reported failed and its child
        # terminated (tests/unit/test_worker_process.py checks the PID).
        fake.add("math.primes", {"n": 50_000_000}, id="slow", timeout_s=0.05)
        await until(lambda: len(fake.reports) == 4, timeout=60, what="four reports")

    _, fake, _ = scenario(tmp_path, body, reg)
    got = {r[1]: r[3] for r in fake.reports}
    assert got["wc"]["words"] == 3
    assert got["pr"] == {"n": 1000, "count": 168}
    assert got["bad"] == "math.primes: 'n' must be an integer between 0 and 50000000, got -1"
    assert fake.retryable["bad"] is False
    assert got["slow"] == "timeout after 0.05s" and fake.retryable["slow"] is True


def test_heartbeat_sends_our_lease_ms(tmp_path: Path) -> None:
    class FakeWithLeaseMs(FakeCluster):
        def __init__(self) -> None:
            super().__init__()
            self.heartbeat_lease_ms: list[int | None] = []

        async def heartbeat(self, worker: str, leases: list[dict], lease_ms: int | None = None) -> dict:
            self.heartbeat_lease_ms.append(lease_ms)
            return await super().heartbeat(worker, leases)

    reg = Registry()

    @reg.job("t.nap")
    def nap(args: dict, ctx: JobContext) -> None:
        ctx.wait(0.3)

    async def main() -> FakeWithLeaseMs:
        fake = FakeWithLeaseMs()
        worker = Worker(make_config(tmp_path, lease_ttl_s=1.5), reg, client=fake)
        runner = asyncio.create_task(worker.run())
        jid = fake.add("t.nap")
        await until(lambda: fake.state(jid) == "succeeded", what="completion")
        worker.request_stop()
        assert await asyncio.wait_for(runner, 10) == 0
        return fake

    fake = asyncio.run(main())
    assert fake.heartbeat_lease_ms and set(fake.heartbeat_lease_ms) == {1500}


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

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        a, b = fake.add("t.plain", {}), fake.add("t.files", {})
        await until(lambda: fake.state(a) == fake.state(b) == "succeeded", what="both done")

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

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        # The first report attempt is lost in transit (the whole batch is
        # retried), then one item is fenced: only that one is dropped.
        fake.report_errors = [Unavailable("down"), LeaseLost("stale")]
        for n in range(8):
            fake.add("t.gated", {"n": n}, id=f"j{n}")
        await until(lambda: len(worker._runs) == 8, what="all 8 running")
        gate.set()  # all finish at once: their reports share requests
        await until(lambda: worker.stats["succeeded"] + worker.stats["dropped"] == 8, what="all reported")

    code, fake, worker = scenario(tmp_path, body, reg, threads=8)
    assert code == 0
    assert worker.stats["succeeded"] == 7 and worker.stats["dropped"] == 1
    assert len(fake.reports) == 7 and all(r[0] == "complete" for r in fake.reports)
    assert {r[1]: r[3] for r in fake.reports} == {f"j{n}": n for n in range(8) if fake.state(f"j{n}") == "succeeded"}
    assert max(fake.batches) > 1, fake.batches
    # far fewer requests than one per job (8) plus the retried one
    assert len(fake.batches) < 8, fake.batches


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

    async def body(fake: FakeCluster, worker: Worker, _: Registry) -> None:
        for _i in range(4):  # short jobs first: prefetch is on only while jobs are short
            fake.add("t.quick", id=f"q{_i}")
        await until(lambda: worker.stats["succeeded"] == 4, what="quick jobs")
        # Idle now: the pending poll asks for the 2 free slots + 2 to park.
        await until(lambda: not worker._runs and fake.lease_calls[-1] == 4, what="a poll for 4")
        for _i in range(5):
            fake.add("t.block", id=f"job-{_i + 1}")
        # Two slots: job-1 and job-2 run, job-3 and job-4 are prefetched (the
        # prefetch is at most `threads`), job-5 stays queued.
        await until(lambda: fake.running() == 4 and len(worker._waiting) == 2, what="two parked")
        await until(lambda: any({"job-3", "job-4"} <= {x["id"] for x in hb} for hb in fake.heartbeats),
                    what="parked leases heartbeated")
        assert fake.state("job-5") == "queued"
        fake.cancel("job-3")
        await until(lambda: "job-3" not in {k[0] for k in worker._waiting}, what="cancelled parked job dropped")
        assert worker.stats["dropped"] == 1

    code, fake, _ = scenario(tmp_path, body, reg, threads=2, grace_s=0.3)
    assert code == 0
    assert sorted(ran) == ["job-1", "job-2"]  # neither parked job ever ran
    assert sorted(r for r in fake.reports if r[0] == "fail") == [
        ("fail", f"job-{n}", 1, "worker shutting down") for n in (1, 2, 4)]
    assert fake.retryable["job-4"] is True
