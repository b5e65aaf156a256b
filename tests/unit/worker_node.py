"""A real node for the worker's tests, and the harness that runs a worker on it.

`WorkerNode` is a `cluster.server.Node` on a `LocalReplica`, serving on a
loopback port inside the test's own event loop: the worker under test talks to
it through the real `AsyncClient` (a `WorkerClient`, which keeps a record of
the worker's calls), and the real `JobMachine` decides every lease, heartbeat
and report. The test acts as an operator through a second client (`submit`,
`cancel`) and reads the machine directly (`job`, `state`, `count`): one loop,
one thread, so a read sees every entry applied so far.

Faults, all on the real parts:
- `no_leader()` / `lead()`: an election; every write answers NO_LEADER.
- `lose_leases(lease_ms)`: a worker cut off for longer than its lease: no
  leader until every lease granted so far has run out, then a leader whose
  first entry is the tick that expires them (so the expiry does not race the
  worker's next heartbeat against the node's ticker).
- `refuse(*ops)`: the node answers OVERLOADED to those ops only, for what
  the real parts cannot do on their own: refuse reports while heartbeats get
  through, or hide a cancellation from the heartbeat so that the report is
  the one fenced. Like tests/fault/buggy_node.py, it lives in a subclass here.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import socket
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

from cluster.client import AsyncClient
from cluster.config import ClusterConfig, NodeSpec
from cluster.errors import Overloaded
from cluster.server import Node
from replication.local import LocalReplica
from replication.machine import JobMachine
from worker.config import WorkerConfig
from worker.hooks import WorkerHooks
from worker.registry import Registry
from worker.runner import Worker

TOKEN = "worker-tests"
# The worker's per-call budget: long enough for a loaded box, short enough that
# NO_LEADER reaches the worker's own retry logic within the test.
CLIENT_TIMEOUT_S = 1.0
# A failed attempt is retried after this many seconds unless a test says
# otherwise: no test sees a job run twice unless it asks for it.
RETRY_BACKOFF_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RefusingNode(Node):
    """A Node that answers OVERLOADED to the ops in `refused` (see `WorkerNode.refuse`)."""

    refused: frozenset[str] = frozenset()

    def start_write(self, op: str, args: dict[str, Any]) -> asyncio.Future[dict[str, Any]] | None:
        self._check_refused(op)
        return super().start_write(op, args)

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        self._check_refused(op)
        return await super().handle(op, args)

    def _check_refused(self, op: str) -> None:
        if op in self.refused:
            raise Overloaded(f"{op} refused by the test")


def _arguments(method: Callable[..., Any], client: AsyncClient, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A client method's arguments by name, defaults included (whatever its signature grows)."""
    bound = inspect.signature(method).bind(client, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


class WorkerClient(AsyncClient):
    """The worker's real client, keeping a record of the worker's calls.

    Every call goes to the node unchanged; the record is what the worker sent
    and what the node answered."""

    def __init__(self, nodes: list[str], **options: Any) -> None:
        super().__init__(nodes, **options)
        # (op, id, attempt, result | error) of every report the node accepted
        self.reports: list[tuple[str, str, int, Any]] = []
        self.retryable: dict[str, bool] = {}  # the flag of each job's last accepted `fail`
        self.report_errors: list[Exception] = []  # what report calls raised to the worker
        self.batches: list[int] = []  # items in each complete_many call
        self.lease_calls: list[int] = []  # `max` of each lease call
        self.capacities: list[dict | None] = []  # `capacity` of each lease call
        self.lease_errors: list[Exception] = []
        self.heartbeats: list[list[dict]] = []  # the leases of each heartbeat call
        self.heartbeat_lease_ms: list[int | None] = []

    async def lease(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:  # type: ignore[override]
        call = _arguments(AsyncClient.lease, self, args, kwargs)
        self.lease_calls.append(call["max"])
        self.capacities.append(call["capacity"])
        try:
            return await super().lease(*args, **kwargs)
        except Exception as exc:
            self.lease_errors.append(exc)
            raise

    async def heartbeat(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        call = _arguments(AsyncClient.heartbeat, self, args, kwargs)
        self.heartbeats.append([dict(lease) for lease in call["leases"]])
        self.heartbeat_lease_ms.append(call["lease_ms"])
        return await super().heartbeat(*args, **kwargs)

    async def complete_many(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:  # type: ignore[override]
        items = _arguments(AsyncClient.complete_many, self, args, kwargs)["items"]
        self.batches.append(len(items))
        answers = await self._report(super().complete_many(*args, **kwargs))
        for item, answer in zip(items, answers):
            if "state" in answer:
                self.reports.append(("complete", item["id"], item["attempt"], item.get("result")))
        return answers

    async def complete(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        call = _arguments(AsyncClient.complete, self, args, kwargs)
        state = await self._report(super().complete(*args, **kwargs))
        self.reports.append(("complete", call["id"], call["attempt"], call["result"]))
        return state

    async def fail(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
        call = _arguments(AsyncClient.fail, self, args, kwargs)
        state = await self._report(super().fail(*args, **kwargs))
        self.reports.append(("fail", call["id"], call["attempt"], call["error"]))
        self.retryable[call["id"]] = call["retryable"]
        return state

    async def _report(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Exception as exc:
            self.report_errors.append(exc)
            raise


class WorkerNode:
    """A one-member cluster in this loop (see the module docstring). Use `started()`."""

    def __init__(self) -> None:
        spec = NodeSpec(1, f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}")
        self.address = spec.client
        cfg = ClusterConfig(secret="s" * 16, token=TOKEN, data_dir=Path("/nonexistent"), durability="none",
                            nodes=(spec,))
        self.node = _RefusingNode(cfg, 1, JobMachine(), functools.partial(LocalReplica, address=spec.raft))
        self.replica: LocalReplica = self.node.raft  # type: ignore[assignment]
        self.operator = AsyncClient([self.address], token=TOKEN)
        self.client = WorkerClient([self.address], token=TOKEN, timeout_s=CLIENT_TIMEOUT_S)
        self._submitted = 0

    @classmethod
    @contextlib.asynccontextmanager
    async def started(cls) -> AsyncIterator["WorkerNode"]:
        node = cls()
        stop = asyncio.Event()
        serving = asyncio.create_task(node.node.serve(stop))
        try:
            yield node
        finally:
            await node.client.close()
            await node.operator.close()
            stop.set()
            await serving

    # ---- the operator --------------------------------------------------------

    async def submit(self, type: str, args: Any = None, *, id: str | None = None, **options: Any) -> str:
        """Submit a job (ids job-1, job-2, ... unless given); `options` as
        `AsyncClient.submit`'s, with backoff RETRY_BACKOFF_S by default."""
        self._submitted += 1
        options.setdefault("backoff", RETRY_BACKOFF_S)
        return await self.operator.submit(type, args, id=id or f"job-{self._submitted}", **options)

    async def submit_many(self, jobs: list[dict[str, Any]]) -> list[str]:
        """Several jobs in one entry (so one lease may take them all)."""
        return await self.operator.submit_many([{"backoff": RETRY_BACKOFF_S, **job} for job in jobs])

    async def cancel(self, job_id: str) -> str:
        return await self.operator.cancel(job_id)

    # ---- reading the machine ---------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any]:
        with self.replica.reading() as machine:
            job = machine.get(job_id)
        assert job is not None, f"no job {job_id!r}"
        return job

    def state(self, job_id: str) -> str:
        return self.job(job_id)["state"]

    def count(self, state: str) -> int:
        with self.replica.reading() as machine:
            return machine.stats()["jobs"][state]

    # ---- the worker's record (its client's) ------------------------------------

    @property
    def reports(self) -> list[tuple[str, str, int, Any]]:
        return self.client.reports

    @property
    def retryable(self) -> dict[str, bool]:
        return self.client.retryable

    # ---- faults ------------------------------------------------------------------

    def no_leader(self) -> None:
        self.replica.follow(None)

    def lead(self) -> None:
        self.replica.lead()

    @contextlib.contextmanager
    def refuse(self, *ops: str) -> Iterator[None]:
        """While inside: the node answers OVERLOADED to `ops` (see the module docstring)."""
        self.node.refused = frozenset(ops)
        try:
            yield
        finally:
            self.node.refused = frozenset()

    async def lose_leases(self, lease_ms: int) -> None:
        """Expire every lease granted so far (see the module docstring)."""
        self.no_leader()
        # No heartbeat commits from here on, so every deadline is before this.
        await asyncio.sleep(lease_ms / 1000 + 0.01)
        self.lead()
        # Proposed before this coroutine yields: the first entry of the new term.
        expiry = self.node.committer.enqueue({"op": "tick", "retention_ms": int(self.node.cfg.retention_s * 1000)})
        await expiry


# --- running a worker on it ---

def make_config(tmp_path: Path, **over: Any) -> WorkerConfig:
    base: dict[str, Any] = dict(cluster=["127.0.0.1:1"], name="w1", threads=2, lease_ttl_s=1.0,
                                heartbeat_s=0.05, poll_wait_s=0.2, grace_s=2.0, workdir=tmp_path / "wd")
    base.update(over)
    return WorkerConfig(**base)


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


Body = Callable[[WorkerNode, Worker, Registry], Awaitable[None]]


def scenario(tmp_path: Path, body: Body, registry: Registry | None = None, stop: bool = True,
             hooks: list[WorkerHooks] | None = None, **cfg: Any) -> tuple[int, WorkerNode, Worker]:
    """Run a worker on a fresh WorkerNode while `body` drives both; then stop it.
    Returns the worker's exit code, the node (stopped: read it, do not call it)
    and the worker."""
    reg = registry or Registry()

    async def main() -> tuple[int, WorkerNode, Worker]:
        loop_errors: list[dict] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: loop_errors.append(context))
        async with WorkerNode.started() as node:
            worker = Worker(make_config(tmp_path, **{"cluster": [node.address], **cfg}), reg,
                            client=node.client, hooks=hooks)
            runner = asyncio.create_task(worker.run())
            try:
                await body(node, worker, reg)
                if stop:
                    worker.request_stop()
                code = await asyncio.wait_for(runner, 20)
            finally:
                runner.cancel()
        gc.collect()  # an unretrieved future exception is reported when collected
        assert not loop_errors, f"event loop errors: {loop_errors}"
        return code, node, worker

    return asyncio.run(main())
