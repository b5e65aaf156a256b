"""The node: one replica's asyncio (uvloop) server.

A node serves a `JobMachine` (the replicated state) and owns the `Replica` that
feeds it committed entries (replication/replica.py: in production the
`RaftNode` adapter, built by `raft_replica`; in tests replication/local.py), a
`GroupCommitter` that turns concurrent writes into single Raft entries, and
three listeners:

- the client protocol (length-prefixed msgpack, cluster/protocol.py), served by
  `ClientConnection`, one per TCP connection, requests pipelined;
- HTTP `/health` and `/metrics` (cluster/http.py);
- the Raft port, owned by pysyncobj, ticked on this same loop (replication/raft.py).

Who may answer what: every write, and every read without `stale_ok`, is
answered by the leader only; a follower replies NOT_LEADER with the leader's
*client* address, or NO_LEADER during an election. Leadership is never treated
as a lock: leases are granted inside `apply`, so two nodes that both believe
they lead cannot hand one job to two workers in the log.

Limits on the client port (settings in cluster/config.py, reasons in
docs/contracts.md §5): connections per node and per source (cluster/limits.py,
inside the fd budget), a tiny frame and a deadline before `hello`, an idle
close, a per-connection outbound high-water mark (reading stops until the
peer drains), heavy reads bounded per connection and per node and run in
slices, long polls indexed by queue and job (cluster/waiters.py) and capped.

Leader duties run in `_ticker`: when a lease deadline or a scheduled run time
is due on the replica (or retention is due), it commits a `tick` command. The
alert rules are evaluated and their notifications delivered by
cluster/alerting.py's `AlertEvaluator`, another task on this loop.

Threads: everything here runs on the one asyncio loop, Raft ticks and apply
included (so `reading()` never waits for an apply in progress).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import resource
import secrets
import signal
import time
from typing import Any, Awaitable, Callable

import msgpack

from cluster import alert_delivery, alert_rules, ops, protocol
from cluster.alerting import AlertEvaluator
from cluster.commit import GroupCommitter
from cluster.config import ClusterConfig
from cluster.errors import (BadRequest, Internal, NoLeader, NotFound, NotLeader, Overloaded, TooLarge,
                            RaftqError, Timeout, Unauthorized, error_from_wire)
from cluster.hello_throttle import HelloThrottle
from cluster.jobargs import refusal as job_args_refusal
from cluster.limits import LISTEN_BACKLOG, ConnectionLimits, connection_cap, raise_fd_limit
from cluster.tls import asks_client_certificates
from cluster.roles import Access, Credentials, scope_refusal
from cluster.waiters import Waiters
from replication.machine import JobMachine
from replication.codes import BAD_REQUEST
from replication.model import FINAL_STATES, LEASE_NONCE_BYTES, MAX_REQUEUE_BATCH, error, validate_schedule
from replication.raft import RaftConfig, RaftNode
from replication.replica import Replica, ReplicaFactory

log = logging.getLogger("raftq.node")

TICK_INTERVAL_S = 0.05     # how often the leader checks for due work
RETENTION_TICK_S = 5.0     # a tick for retention at least this often
EMPTY_LEASE_PAUSE_S = 0.1  # after a lease commit that granted nothing (limits, capacity): poll no faster
MAX_REQUEUE_ROUNDS = 1000  # requeue --all: at most this many batches per request
# A parked long poll re-checks at least this often even if no entry concerned
# it (what the index cannot see: a worker's capacity, a restored snapshot).
# Every entry that makes a job leasable wakes its pollers, and a node that
# loses leadership wakes them all, so this is a backstop: 8,000 parked polls
# re-checking every second cost the leader a third of a core.
POLL_RECHECK_S = 5.0
# list builds its page in slices of this many jobs and yields the loop between
# them: 50 job views (built and encoded) take about a millisecond, and the Raft tick runs
# on this loop against a 0.4-1.0 s election timeout.
LIST_SLICE = 50
# Heavy ops (cluster/ops.py: their cost grows with the state): at most
# max_heavy_reads_per_connection of them run per connection and max_heavy_reads
# per node; the rest wait their turn, in order. Long polls (lease, wait) count
# against max_pollers(_per_connection) while they run.
HEAVY_OPS = ops.HEAVY_OPS
POLL_OPS = ops.LONG_POLL_OPS
# Requests one connection may start per loop iteration; more wait for the next
# one (reading paused meanwhile). Ten connections pipelining 800 long polls
# each once queued 8,000 task steps ahead of the Raft tick in one iteration.
MAX_BATCH = 64


class Node:
    """One member of the cluster: its machine, the replica that applies the
    log to it, and the request handlers."""

    def __init__(self, cfg: ClusterConfig, node_id: int, machine: JobMachine, make_replica: ReplicaFactory,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        """Serve `machine`, replicated by the replica `make_replica` builds for
        it (`raft_replica` in production, replication/local.py in tests); call
        on the running loop. `on_fatal(reason)`: storage failed (a write, fsync
        or meta write); it was logged, and the process must now stop and exit
        non-zero."""
        self.cfg = cfg
        self.node_id = node_id
        self.fatal: str | None = None  # why storage failed (see _storage_failed)
        self._on_fatal = on_fatal
        self.spec = cfg.node(node_id)
        self.machine = machine
        self.waiters = Waiters()
        self._raft_to_client = {n.raft: n.client for n in cfg.nodes}
        # Named `raft` for what it is in production; any Replica serves.
        self.raft: Replica = make_replica(machine, on_applied=self._wake, on_fatal=self._storage_failed)
        self.committer = GroupCommitter(self.raft, max_batch_bytes=cfg.max_entry_bytes,
                                        check=self._check_sizes)
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        # Client connections refused or closed unserved, by reason (cluster/metrics.py lists them).
        self.refusals: dict[str, int] = {}
        self.connections = 0
        self._last_tick = 0.0
        # A command no larger than this cannot hold args or a result over its cap.
        self._part_cap = min(cfg.max_args_bytes, cfg.max_result_bytes)
        self.conn_limits = ConnectionLimits(cfg, connection_cap(cfg, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
        self.client_conns: set[ClientConnection] = set()
        self.heavy_reads = asyncio.Semaphore(cfg.max_heavy_reads)
        self.pollers = 0
        self.credentials = Credentials(cfg.all_credentials())
        self.hello_throttle = HelloThrottle()
        self.alerting = AlertEvaluator(self)

    def count_refusal(self, reason: str) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + 1

    # ---- Raft glue -------------------------------------------------------

    def _storage_failed(self, reason: str) -> None:
        """RaftNode's on_fatal: nothing more is acknowledged from here on (the
        adapter fails every proposal); say why once and have the process end."""
        self.fatal = reason
        log.critical("node %d: storage failed, stopping (exit code 1): %s", self.node_id, reason)
        if self._on_fatal is not None:
            self._on_fatal(reason)

    def _wake(self) -> None:
        """After each applied entry (on this loop, inside the Raft tick): wake
        the long polls it concerns (cluster/waiters.py)."""
        self.waiters.wake(self.machine.touched_queues, self.machine.touched_jobs)

    def leader_client(self) -> str | None:
        """The leader's client address; None while there is none, and while
        this node has no Raft link to the leader it last heard from: a node
        cut off from a majority never sees an election that would replace a
        dead leader, and must not send clients to it."""
        leader = self.raft.leader()
        if not leader:
            return None
        if leader != self.spec.raft:
            linked = self.raft.status().get("peers_connected")
            if linked is not None and leader not in linked:
                return None
        return self._raft_to_client.get(leader)

    def _require_leader(self) -> None:
        if self.raft.is_leader():
            return
        leader = self.leader_client()
        if leader is None:
            # who says so, and in which term: a client that finds no leader
            # anywhere reports each reachable node's view (quorum lost?)
            raise NoLeader("no leader (election in progress); retry",
                           {"node": self.node_id, "term": self.raft.status().get("term")})
        raise NotLeader(f"not the leader; the leader is {leader}", {"leader": leader})

    async def _commit(self, cmd: dict[str, Any]) -> dict[str, Any]:
        fut = self._start_commit(cmd)
        try:
            await fut
        except NotLeader:
            pass  # _commit_result words it with the new leader
        return self._commit_result(fut)

    def _start_commit(self, cmd: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Check leadership and hand `cmd` to the group committer; the future
        resolves with the raw result (see `_commit_result`).

        The command's shape is checked once, by `apply` on every replica
        (validate_command), and a malformed one comes back as BAD_REQUEST with
        the same message: checking it here as well cost the leader a sixth of
        its CPU per submitted job. A malformed command in the log is harmless
        (every replica rejects it alike)."""
        self._require_leader()
        return self.committer.enqueue(cmd)

    def _commit_result(self, fut: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        """The outcome of a done `_start_commit` future: the result, or the error
        it stands for (raised)."""
        try:
            result = fut.result()
        except NotLeader:
            leader = self.leader_client()
            raise NotLeader(f"leadership moved; the leader is {leader}", {"leader": leader}) from None
        if "error" in result:
            raise error_from_wire([result["error"], result.get("message", ""), None])
        return result

    # ---- request handlers ----------------------------------------------

    # Every handler gets its op's arguments checked by cluster/ops.py (`Op.check`:
    # every declared one, defaults filled in) and reads them from that dict.

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        handler = self._handlers.get(op)
        if handler is None:
            raise BadRequest(f"unknown op {op!r}")
        self.requests[op] = self.requests.get(op, 0) + 1
        return await handler(self, ops.OPS[op].check(args))

    # The hottest writes skip the coroutine machinery: `start_write` builds
    # their command and runs every check synchronously, then returns the
    # commit future, and the connection answers from its done callback (no
    # Task, no coroutine frames per request). The async handlers build the
    # same command and go through `_commit` (also for `handle`'s callers).

    def _submit_cmd(self, a: dict[str, Any]) -> dict[str, Any]:
        refused = job_args_refusal(a["job"])
        if refused is not None:
            raise BadRequest(refused)
        self._check_capacity(1)
        return {"op": "submit", "job": a["job"]}

    def _submit_many_cmd(self, a: dict[str, Any]) -> dict[str, Any]:
        jobs = a["jobs"]
        self._check_capacity(len(jobs))
        return {"op": "submit_many", "jobs": jobs}

    def _check_sizes(self, cmd: dict[str, Any], size: int) -> None:
        """The committer's check of an encoded command (`size` bytes): args and
        results over their caps are TOO_LARGE, submits past the held-bytes cap
        OVERLOADED. O(1) for a command smaller than the caps, the common case:
        only a larger one has its parts measured (encoded once more)."""
        cfg = self.cfg
        op = cmd["op"]
        if size > self._part_cap:
            self._check_parts(op, cmd)
        if op == "submit" or op == "submit_many":
            held = self.machine.held_bytes()
            if held + size > cfg.max_held_bytes:
                raise Overloaded(f"queue full: {held} bytes of jobs held (limit max_held_bytes = "
                                 f"{cfg.max_held_bytes}); retry once finished jobs are purged (retention_s)")

    def _check_parts(self, op: Any, cmd: dict[str, Any]) -> None:
        """TOO_LARGE naming the first args / result of `cmd` over its cap."""
        cfg = self.cfg
        if op == "submit":
            _check_part(cmd.get("job"), "args", cfg.max_args_bytes, "max_args_bytes", "job")
        elif op == "submit_many":
            for i, spec in enumerate(cmd.get("jobs") or ()):
                _check_part(spec, "args", cfg.max_args_bytes, "max_args_bytes", f"jobs[{i}]")
        elif op == "schedule_add":
            sched = cmd.get("schedule")
            _check_part(sched.get("job") if isinstance(sched, dict) else None, "args", cfg.max_args_bytes,
                        "max_args_bytes", "schedule.job")
        elif op == "complete":
            _check_part(cmd, "result", cfg.max_result_bytes, "max_result_bytes", "complete")
        elif op == "complete_many":
            for i, item in enumerate(cmd.get("items") or ()):
                _check_part(item, "result", cfg.max_result_bytes, "max_result_bytes", f"items[{i}]")

    def _complete_many_cmd(self, a: dict[str, Any]) -> dict[str, Any]:
        """A worker's batched completions: each item was checked like `complete`'s
        args (the result size cap follows), and the machine fences and answers
        each one on its own ({"results": [{"state"} | {"error", "message"}]})."""
        return {"op": "complete_many", "items": [{"id": item["id"], "attempt": item["attempt"],
                                                   "lease_token": item["lease_token"],
                                                   "result": item.get("result")} for item in a["items"]]}

    def start_write(self, op: str, args: dict[str, Any]) -> asyncio.Future[dict[str, Any]] | None:
        """The commit future of a fast-path write (raises RaftqError for a bad
        request or a non-leader; `_commit_result` turns the done future into
        the answer), or None when `op` has no fast path (then use `handle`)."""
        build = self._fast_writes.get(op)
        if build is None:
            return None
        self.requests[op] = self.requests.get(op, 0) + 1
        if op == "submit_many":
            return self._start_submit_many(ops.OPS[op].check(args))
        return self._start_commit(build(self, ops.OPS[op].check(args)))

    async def _op_submit(self, a: dict[str, Any]) -> Any:
        return await self._commit(self._submit_cmd(a))

    async def _op_submit_many(self, a: dict[str, Any]) -> Any:
        fut = self._start_submit_many(a)
        try:
            await fut
        except NotLeader:
            pass  # _commit_result words it with the new leader
        return self._commit_result(fut)

    def _start_submit_many(self, a: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """The commit future of a submit_many. An item whose built-in job type
        refuses its args is answered BAD_REQUEST in its place and left out of
        the command; the others are submitted and answered as usual."""
        jobs = a["jobs"]
        refused = [job_args_refusal(spec) for spec in jobs]
        if not any(refused):
            return self._start_commit(self._submit_many_cmd(a))
        self._require_leader()
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def splice(fut: asyncio.Future[dict[str, Any]] | None) -> None:
            # (fut.exception() first: it is then retrieved even when nobody waits)
            failed = fut is not None and (fut.cancelled() or fut.exception() is not None or "error" in fut.result())
            if answer.done():
                return  # cancelled: the connection is gone
            if failed:
                _copy_outcome(fut, answer)  # type: ignore[arg-type]  # the whole batch failed: so does the answer
                return
            submitted = iter(fut.result()["results"] if fut is not None else ())
            answer.set_result({"results": [next(submitted) if why is None else error(BAD_REQUEST, why)
                                           for why in refused]})

        good = [spec for spec, why in zip(jobs, refused) if why is None]
        if good:
            self._start_commit(self._submit_many_cmd({"jobs": good})).add_done_callback(splice)
        else:
            splice(None)
        return answer

    def _check_capacity(self, n: int) -> None:
        """Admission of `n` new jobs (held bytes: `_check_sizes`). Without the
        apply lock: a racy read of a few ints is fine for an admission limit
        (the limit is soft by a batch either way), and taking the lock made
        every submit wait behind a whole entry being applied."""
        refused = self._admission_refusal(n)
        if refused is not None:
            raise Overloaded(refused[1])

    def _admission_refusal(self, n: int) -> tuple[str, str] | None:
        """(the setting, a message naming it) when `n` more jobs may not enter
        now: submits and schedule firings alike."""
        machine, cfg = self.machine, self.cfg
        live = machine.live_count()
        if live + n > cfg.max_live_jobs:
            return "max_live_jobs", (f"queue full: {live} live jobs (limit max_live_jobs = "
                                     f"{cfg.max_live_jobs}); retry later")
        held = machine.held_count()
        if held + n > cfg.max_held_jobs:
            return "max_held_jobs", (f"queue full: {held} jobs held, finished ones included (limit max_held_jobs = "
                                     f"{cfg.max_held_jobs}); retry once finished jobs are purged (retention_s)")
        held_bytes = machine.held_bytes()
        if held_bytes >= cfg.max_held_bytes:
            return "max_held_bytes", (f"queue full: {held_bytes} bytes of jobs held (limit max_held_bytes = "
                                      f"{cfg.max_held_bytes}); retry once finished jobs are purged (retention_s)")
        return None

    def _read_guard(self, a: dict[str, Any]) -> None:
        if not a["stale_ok"]:
            self._require_leader()

    async def _op_get(self, a: dict[str, Any]) -> Any:
        job_id = a["id"]
        self._read_guard(a)
        with self.raft.reading():
            view = self.machine.get(job_id)
        if view is None:
            raise NotFound(f"no job {job_id!r}")
        return view

    async def _op_wait(self, a: dict[str, Any]) -> Any:
        job_id = a["id"]
        deadline = time.monotonic() + a["timeout_s"]
        while True:
            self._read_guard(a)
            with self.raft.reading():
                view = self.machine.get(job_id)
            if view is None:
                raise NotFound(f"no job {job_id!r}")
            remaining = deadline - time.monotonic()
            if view["state"] in FINAL_STATES or remaining <= 0:
                return view
            await self.waiters.job(job_id, min(remaining, POLL_RECHECK_S))

    async def _op_list(self, a: dict[str, Any]) -> Any:
        self._read_guard(a)
        state, queue, limit, cursor, schedule = a["state"], a["queue"], a["limit"], a["cursor"], a["schedule"]
        # Built and encoded in slices, yielding the loop between them
        # (LIST_SLICE); entries applied in between may show in later slices.
        reply = protocol.PageEncoder("jobs")
        while True:
            want = min(LIST_SLICE, limit - reply.count)
            try:
                with self.raft.reading():
                    page, cursor = self.machine.list_jobs(state=state, queue=queue, limit=want, cursor=cursor,
                                                          schedule=schedule)
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            reply.add(page)
            # A short page: the end, or the machine's scan budget for one call.
            if cursor is None or len(page) < want or reply.count >= limit:
                return reply.finish(cursor=cursor)
            await asyncio.sleep(0)

    async def _op_stats(self, a: dict[str, Any]) -> Any:
        self._read_guard(a)
        with self.raft.reading():
            stats = dict(self.machine.stats())
        stats.update(node_id=self.node_id, role=self.raft.status().get("role"), leader=self.leader_client())
        return stats

    async def _op_cluster_status(self, a: dict[str, Any]) -> Any:
        status = self.raft.status()
        leader = self.leader_client()
        leader_raft = self.raft.leader() if leader is not None else None
        linked = status.get("peers_connected")  # None: this replica has no peers to know of
        nodes = []
        for n in self.cfg.nodes:
            if n.id == self.node_id:
                role = status.get("role", "follower")
            elif linked is not None and n.raft not in linked:
                role = "unreachable"  # from this node: no Raft link to it now
            elif n.raft == leader_raft:
                role = "leader"
            else:
                role = "follower"
            nodes.append({"id": n.id, "client": n.client, "raft": n.raft, "http": n.http, "role": role})
        return {
            "leader": leader,
            "self": self.node_id,
            "term": status.get("term"),
            "commit_index": status.get("commit_index"),
            "last_applied": status.get("last_applied"),
            "nodes": nodes,
        }

    async def _op_digest(self, a: dict[str, Any]) -> Any:
        """This replica's state digest (any node answers): replicas at the same
        applied index must agree byte for byte (tests and `raftq cluster status`)."""
        with self.raft.reading():
            digest = self.machine.digest()
            last_applied = self.raft.status().get("last_applied")
        return {"digest": digest, "last_applied": last_applied, "node_id": self.node_id}

    def _lease_ms(self, a: dict[str, Any]) -> int:
        """The lease a request asks for, else the cluster's lease_ttl_s."""
        lease_ms = a["lease_ms"]
        return int(self.cfg.lease_ttl_s * 1000) if lease_ms is None else lease_ms

    async def _op_lease(self, a: dict[str, Any]) -> Any:
        queues = list(a["queues"])
        deadline = time.monotonic() + a["wait_s"]
        cmd = {"op": "lease", "worker": a["worker"], "queues": queues, "max": a["max"], "lease_ms": self._lease_ms(a)}
        if a["capacity"] is not None:
            cmd["capacity"] = a["capacity"]  # its shape is checked with the command
        while True:
            self._require_leader()
            with self.raft.reading():
                # queue limits included; a rate limit says how long until a token
                wait_ms = self.machine.lease_wait_ms(queues, int(time.time() * 1000))
            if wait_ms == 0:
                # A fresh nonce per proposal: the machine derives each granted
                # job's lease token from it (replication/state/leasing.py).
                cmd["nonce"] = secrets.token_bytes(LEASE_NONCE_BYTES)
                result = await self._commit(cmd)
                if result.get("jobs"):
                    return result
                # Nothing fitted (capacity) or a race: do not spin on commits that
                # wake every other poller, which would commit again.
                await asyncio.sleep(min(EMPTY_LEASE_PAUSE_S, max(deadline - time.monotonic(), 0)))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"jobs": []}
            await self.waiters.lease(queues, min(remaining, POLL_RECHECK_S,
                                                 wait_ms / 1000 if wait_ms else POLL_RECHECK_S))

    async def _op_heartbeat(self, a: dict[str, Any]) -> Any:
        return await self._commit({"op": "heartbeat", "worker": a["worker"], "lease_ms": self._lease_ms(a),
                                   "leases": a["leases"]})

    async def _op_complete_many(self, a: dict[str, Any]) -> Any:
        return await self._commit(self._complete_many_cmd(a))


    # ---- lifecycle ops (issue 3) ------------------------------------------

    async def _op_requeue_failed(self, a: dict[str, Any]) -> Any:
        """Dead letters back to queued: explicit ids, or every failed job (of a queue)
        picked from this leader's replica in batches; each batch is one command
        naming its ids, so every replica requeues exactly the same jobs."""
        ids = a["ids"]
        if ids is not None:
            requeued: list[str] = []
            skipped: list[str] = []
            for i in range(0, len(ids), MAX_REQUEUE_BATCH):
                r = await self._commit({"op": "requeue_failed", "ids": ids[i:i + MAX_REQUEUE_BATCH]})
                requeued += r["requeued"]
                skipped += r["skipped"]
            return {"requeued": requeued, "skipped": skipped}
        queue = a["queue"]  # None: every queue (`all`; the table requires one of them)
        cursor: int | None = None
        n_requeued = n_skipped = 0
        for _ in range(MAX_REQUEUE_ROUNDS):
            self._require_leader()
            with self.raft.reading():
                page, cursor = self.machine.list_jobs(state="failed", queue=queue, limit=MAX_REQUEUE_BATCH,
                                                      cursor=cursor)
            if page:
                r = await self._commit({"op": "requeue_failed", "ids": [j["id"] for j in page]})
                n_requeued += len(r["requeued"])
                n_skipped += len(r["skipped"])
            if cursor is None:
                break
        return {"requeued": n_requeued, "skipped": n_skipped, "more": cursor is not None}

    async def _op_queue_limit(self, a: dict[str, Any]) -> Any:
        cmd: dict[str, Any] = {"op": "queue_limit", "queue": a["queue"]}
        for key in ("max_running", "rate_per_s"):
            if a[key] is not None:
                cmd[key] = a[key]
        result = await self._commit(cmd)
        # New limits may let parked polls of this queue start a job now.
        self.waiters.wake({cmd["queue"]: self.cfg.max_pollers}, ())
        return result

    async def _op_queues(self, a: dict[str, Any]) -> Any:
        self._read_guard(a)
        with self.raft.reading():
            return {"queues": self.machine.queues()}

    async def _op_workers(self, a: dict[str, Any]) -> Any:
        self._read_guard(a)
        with self.raft.reading():
            return {"workers": self.machine.workers()}

    async def _op_schedule_add(self, a: dict[str, Any]) -> Any:
        from cluster import cron  # croniter: the leader's business, never apply's

        sched = a["schedule"]
        problem = validate_schedule(sched)  # the machine's own check, so fields are named alike
        if problem is None:
            problem = job_args_refusal(sched["job"])
        if problem is not None:
            raise BadRequest(problem)
        self._check_interval(sched)
        next_fire_ms = cron.check_schedule(sched, int(time.time() * 1000))
        return await self._commit({"op": "schedule_add", "schedule": sched, "next_fire_ms": next_fire_ms})

    def _check_interval(self, sched: dict[str, Any]) -> None:
        min_ms = int(self.cfg.min_schedule_interval_s * 1000)
        every = sched.get("every_ms")
        if every is not None and every < min_ms:
            raise BadRequest(f"'every_ms' must be at least {min_ms} (min_schedule_interval_s), got {every}")

    async def _op_schedule_list(self, a: dict[str, Any]) -> Any:
        self._read_guard(a)
        with self.raft.reading():
            return {"schedules": self.machine.schedules()}

    async def _op_schedule_resume(self, a: dict[str, Any]) -> Any:
        from cluster import cron

        name = a["name"]
        self._require_leader()
        with self.raft.reading():
            sched = self.machine.get_schedule(name)
        if sched is None:
            raise NotFound(f"no schedule {name!r}")
        self._check_interval(sched)  # one added before the minimum existed stays paused
        next_fire_ms = cron.next_fire_after(sched, int(time.time() * 1000))
        return await self._commit({"op": "schedule_resume", "name": name, "next_fire_ms": next_fire_ms})

    async def _fire_due_schedules(self, now_ms: int) -> None:
        """Leader: propose one `fire` per due fire time (the machine drops
        repeats), capped per round and under the same admission as a submit
        (cron.plan_firings)."""
        from cluster import cron

        with self.raft.reading():
            top = self.machine.next_fire_ms()
            due = self.machine.due_schedules(now_ms) if top is not None and top <= now_ms else []

        def refusal(n: int) -> str | None:
            refused = self._admission_refusal(n)
            return None if refused is None else f"over {refused[0]}"

        cmds = cron.plan_firings(due, now_ms, refusal)
        if cmds:
            results = await asyncio.gather(*(self.committer.commit(c) for c in cmds), return_exceptions=True)
            for cmd, r in zip(cmds, results):
                if isinstance(r, BaseException) or "error" in r:
                    log.debug("fire %s@%s not applied: %s", cmd["schedule"], cmd["fire_ms"], r)

    async def _op_alert_add(self, a: dict[str, Any]) -> Any:
        """Checked here, before the log (apply stores the condition's text):
        the condition parses and the target is usable."""
        alert_rules.parse(a["when"])
        alert_delivery.check_target(a["webhook"], a["email"])
        cmd = {"op": "alert_add", **{k: v for k, v in a.items() if v is not None}}
        return await self._commit(cmd)

    async def _op_alert_list(self, a: dict[str, Any]) -> Any:
        self._read_guard(a)
        with self.raft.reading():
            return {"alerts": self.machine.alerts.view()}

    # Dispatch: the handler of op NAME is `_op_NAME`, or for a direct op (its
    # checked args are the command, cluster/ops.py) one made by `_direct_handler`:
    # filled in, and checked both ways, by `_dispatch_table` below the class.
    _handlers: dict[str, Callable[["Node", dict[str, Any]], Awaitable[Any]]] = {}

    # Writes answered from their commit future (see `start_write`): they get
    # the same checked args as `handle` gives their `_op_` handler. A
    # complete's result size is checked by `_check_sizes` once it is encoded.
    _fast_writes: dict[str, Callable[["Node", dict[str, Any]], dict[str, Any]]] = {
        "submit": _submit_cmd,
        "submit_many": _submit_many_cmd,
        "complete": lambda self, a: {"op": "complete", **a},
        "complete_many": _complete_many_cmd,
    }

    # ---- leader duties -------------------------------------------------

    async def _ticker(self) -> None:
        """On the leader: commit a `tick` when a deadline is due (and for retention)."""
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            if not self.raft.is_leader():
                continue
            try:
                with self.raft.reading():
                    due_ms = self.machine.next_due_ms()
                now = time.time()
                due = due_ms is not None and due_ms <= now * 1000
                if due or now - self._last_tick >= RETENTION_TICK_S:
                    self._last_tick = now
                    await self.committer.commit({"op": "tick", "retention_ms": int(self.cfg.retention_s * 1000)})
                await self._fire_due_schedules(int(now * 1000))
            except RaftqError as exc:
                log.debug("tick not committed: %s", exc)
            except Exception:
                log.exception("ticker failed; continuing")

    async def _reaper(self) -> None:
        """Close client connections that sent no hello within hello_timeout_s,
        or sat idle (nothing in flight, no bytes in) for idle_timeout_s; a
        peer that leaves our replies unread (writes paused) counts as idle
        even with requests in flight, so it cannot hold its slot forever. One
        sweep over the connections every quarter of the shorter timeout (at
        most 1 s), so `data_received` only resets a counter. Also wakes every
        parked long poll when this node loses leadership (they answer
        NOT_LEADER at once instead of at their re-check)."""
        cfg = self.cfg
        interval = min(max(min(cfg.hello_timeout_s, cfg.idle_timeout_s) / 4, 0.05), 1.0)
        loop = asyncio.get_running_loop()
        was_leader = False
        while True:
            await asyncio.sleep(interval)
            try:
                leader = self.raft.is_leader()
                if was_leader and not leader:
                    self.waiters.wake_all()
                was_leader = leader
                now = loop.time()
                for conn in list(self.client_conns):
                    if not conn.authenticated:
                        if now - conn.opened >= cfg.hello_timeout_s:
                            self.count_refusal("hello_timeout")
                            conn.fail(Timeout(f"no hello within {cfg.hello_timeout_s:g}s"))
                    elif conn.in_flight and not conn.write_paused:
                        conn.quiet_s = 0.0
                    else:
                        conn.quiet_s += interval
                        if conn.quiet_s < cfg.idle_timeout_s:
                            pass
                        elif conn.write_paused and conn.transport is not None:
                            self.count_refusal("unread_replies")
                            conn.transport.abort()  # close() would wait for the peer to read what is buffered
                        else:
                            self.count_refusal("idle_timeout")
                            conn.fail(Timeout(f"idle for {cfg.idle_timeout_s:g}s: connection closed; reconnect"))
            except Exception:  # never let one bad sweep end the reaping
                log.exception("connection reaper failed; continuing")

    # ---- lifecycle -----------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        from cluster.http import start_http_server  # local: keeps the import graph obvious

        host, port = _split(self.spec.client)
        # TLS (cluster/tls.py) when the config names a certificate; without it
        # the listener is exactly the plain TCP one. A handshake must end
        # within the hello deadline, which only starts once it has.
        client_tls = self.cfg.client_port_tls()
        tls_options: dict[str, Any] = {} if client_tls is None else {
            "ssl": client_tls, "ssl_handshake_timeout": self.cfg.hello_timeout_s}
        connection = MutualTlsConnection if asks_client_certificates(client_tls) else ClientConnection
        server = await loop.create_server(lambda: connection(self), host, port,
                                          reuse_address=True, backlog=LISTEN_BACKLOG, **tls_options)
        http_server = None
        if self.spec.http:
            h_host, h_port = _split(self.spec.http)
            http_server = await start_http_server(self, h_host, h_port)
        ticker = asyncio.create_task(self._ticker())
        reaper = asyncio.create_task(self._reaper())
        alert_task = asyncio.create_task(self.alerting.run())
        log.info("node %d serving clients on %s (raft %s%s)", self.node_id, self.spec.client, self.spec.raft,
                 f", http {self.spec.http}" if self.spec.http else "")
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        log.info("client connections capped at %d (max_connections %d, open-file limit %d, fd_reserve %d), "
                 "%d per source", self.conn_limits.cap, self.cfg.max_connections, nofile, self.cfg.fd_reserve,
                 self.cfg.max_connections_per_source)
        try:
            await stop.wait()
        finally:
            ticker.cancel()
            reaper.cancel()
            alert_task.cancel()
            self.alerting.stop()
            server.close()
            if http_server is not None:
                http_server.close()
            self.raft.destroy()
            log.info("node %d stopped", self.node_id)


def _dispatch_table() -> dict[str, Callable[[Node, dict[str, Any]], Awaitable[Any]]]:
    """A handler for every op of the table: `Node._op_NAME`, or `_direct_handler`
    for a direct op. An op without exactly one, or a handler without an op,
    fails at import (not at the first request)."""
    handlers = {name[len("_op_"):]: fn for name, fn in vars(Node).items() if name.startswith("_op_")}
    direct = {name for name, op in ops.OPS.items() if op.direct}
    if handlers.keys() | direct != ops.OPS.keys() or handlers.keys() & direct:
        wrong = (handlers.keys() | direct) ^ ops.OPS.keys() | (handlers.keys() & direct)
        raise ImportError(f"cluster.server: ops without exactly one handler, or handlers without an op: "
                          f"{sorted(wrong)}")
    return {name: _direct_handler(name) if name in direct else handlers[name] for name in ops.OPS}


def _direct_handler(op: str) -> Callable[[Node, dict[str, Any]], Awaitable[Any]]:
    async def handler(node: Node, a: dict[str, Any]) -> Any:
        return await node._commit({"op": op, **a})

    handler.__qualname__ = handler.__name__ = f"direct {op}"
    return handler


Node._handlers = _dispatch_table()


class ClientConnection(asyncio.Protocol):
    """One client connection: hello first, then pipelined requests.

    A malformed frame gets an error frame and the connection is closed; a
    failing handler gets INTERNAL and the connection keeps serving.

    Limits (settings in ClusterConfig):
    - admitted only under the node's and the source's connection caps, else
      OVERLOADED and close (`Node.conn_limits`);
    - before hello: one frame of at most HELLO_MAX_FRAME_BYTES, within
      hello_timeout_s (`Node._reaper`); after: max_frame_bytes; a source that
      presented a wrong token has its hellos paced (cluster/hello_throttle.py);
    - after hello, each request must be covered by the credential's roles
      (and queues, if scoped), else FORBIDDEN (cluster/roles.py);
    - reading pauses while MAX_IN_FLIGHT requests are in flight, and while
      the transport holds more than conn_write_buffer_bytes the peer has not
      read (asyncio's pause_writing); queued handlers start only once it has
      drained below a quarter of that, so a peer that does not read holds at
      most the mark plus the replies already being built;
    - at most MAX_BATCH requests start per loop iteration (reading paused
      until the buffered rest has started), so no connection queues a burst
      of work ahead of the Raft tick;
    - heavy reads (HEAVY_OPS): at most max_heavy_reads_per_connection at once
      here and max_heavy_reads on the node, in arrival order; long polls
      (POLL_OPS): at most max_pollers_per_connection here, max_pollers on the node.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.decoder = protocol.FrameDecoder(protocol.HELLO_MAX_FRAME_BYTES)
        self.transport: asyncio.Transport | None = None
        self.source: str | None = None  # set once admitted (counted in node.conn_limits)
        self.opened = 0.0
        self.quiet_s = 0.0  # idle time seen by the reaper; reset by any bytes in
        self.authenticated = False
        # Set at hello: the credential's access, the ops it allows (looked up per
        # request), and whether it is confined to queues (checked per request).
        self.access: Access | None = None
        self.ops: frozenset[str] = frozenset()
        self.scoped = False
        self.in_flight = 0
        self.paused = False
        self.write_paused = False
        self.backlog = False  # frames beyond MAX_BATCH wait in the decoder for the next iteration
        self._drained: asyncio.Event | None = None  # set while the write buffer is below its low mark
        self._heavy: asyncio.Semaphore | None = None
        self.pollers = 0
        self.closing = False
        # Running handler Tasks and fast-path commit futures: cancelled when the
        # connection is lost (a cancelled future drops its not-yet-proposed command).
        self.tasks: set[asyncio.Future[Any]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        node = self.node
        peer = transport.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        refusal = node.conn_limits.admit(source)
        if refusal is not None:
            node.errors["OVERLOADED"] = node.errors.get("OVERLOADED", 0) + 1
            node.count_refusal("node_limit" if node.conn_limits.total >= node.conn_limits.cap else "source_limit")
            self.fail(Overloaded(refusal))
            return
        self.source = source
        node.connections += 1
        node.client_conns.add(self)
        self.opened = asyncio.get_running_loop().time()
        high = node.cfg.conn_write_buffer_bytes
        self.transport.set_write_buffer_limits(high=high, low=high // 4)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.source is not None:
            self.node.connections -= 1
            self.node.conn_limits.release(self.source)
            self.node.client_conns.discard(self)
            self.source = None
        for task in self.tasks:
            task.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._drained is None:
            self._drained = asyncio.Event()
        self._drained.clear()
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._drained is not None:
            self._drained.set()
        self._maybe_resume()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.quiet_s = 0.0
        if not self.authenticated:
            if not self._hello_frame(data):
                return
            data = b""  # what followed hello is buffered in the decoder
        self._handle_frames(data)

    def _handle_frames(self, data: bytes) -> None:
        try:
            messages = self.decoder.feed(data, MAX_BATCH)
        except protocol.ProtocolViolation as exc:
            self._fail_connection(None, exc.error())
            return
        for msg in messages:
            try:
                req = protocol.parse_request(msg)
            except protocol.ProtocolViolation as exc:
                if exc.request_id is not None:
                    # A well-framed request with a bad op or args: answer it, keep serving.
                    self.node.errors[exc.code] = self.node.errors.get(exc.code, 0) + 1
                    self._send(protocol.response_err(exc.request_id, exc.error()))
                    continue
                self._fail_connection(exc.request_id, exc.error())
                return
            self.in_flight += 1
            try:
                if req.op not in self.ops or self.scoped:
                    self._check_access(req)
                fut = self.node.start_write(req.op, req.args)
            except RaftqError as exc:
                self._answered(self._error_frame(req, exc))
                continue
            except Exception:
                self._answered(self._internal_frame(req))
                continue
            if fut is not None:
                self.tasks.add(fut)
                fut.add_done_callback(functools.partial(self._write_done, req))
                continue
            task = asyncio.ensure_future(self._run(req))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if len(messages) == MAX_BATCH:  # more may be buffered: take them next iteration
            self.backlog = True
            asyncio.get_running_loop().call_soon(self._next_batch)
        if (self.backlog or self.in_flight >= protocol.MAX_IN_FLIGHT) and not self.paused \
                and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _next_batch(self) -> None:
        self.backlog = False
        if self.closing:
            return
        self._handle_frames(b"")
        if not self.backlog:
            self._maybe_resume()

    def _maybe_resume(self) -> None:
        """Resume reading once nothing holds it paused (in flight, unread
        replies, frames still buffered)."""
        if (self.paused and self.in_flight < protocol.MAX_IN_FLIGHT // 2 and not self.write_paused
                and not self.backlog and self.transport is not None):
            self.paused = False
            self.transport.resume_reading()

    def _hello_frame(self, data: bytes) -> bool:
        """Before hello: take at most one small frame, which must be a valid
        hello. True once authenticated (the rest of the stream is then read
        under the normal frame limit)."""
        try:
            messages = self.decoder.feed(data, max_messages=1)
        except protocol.ProtocolViolation as exc:
            self._fail_connection(None, error_from_wire([exc.code, f"before hello: {exc.message}", None]))
            return False
        if not messages:
            return False
        try:
            req = protocol.parse_request(messages[0])
        except protocol.ProtocolViolation as exc:
            self._fail_connection(exc.request_id, exc.error())
            return False
        self._hello(req)
        return self.authenticated

    def _hello(self, req: protocol.Request) -> None:
        if req.op != "hello":
            self._fail_connection(req.id, Unauthorized("the first request must be hello with a token"))
            return
        if req.args.get("version") != protocol.PROTOCOL_VERSION:
            self._fail_connection(req.id, BadRequest(
                f"unsupported protocol version {req.args.get('version')!r}; this node speaks {protocol.PROTOCOL_VERSION}"))
            return
        # A source that presented a wrong token before waits for its next slot.
        loop = asyncio.get_running_loop()
        now = loop.time()
        source = self.source or "?"
        wait_s = self.node.hello_throttle.wait_s(source, now, self.opened + self.node.cfg.hello_timeout_s)
        if wait_s is None:
            self.node.count_refusal("hello_throttled")
            self._fail_connection(req.id, Overloaded(
                f"too many failed hellos from {source}: its hellos are evaluated one at a time, "
                f"slowly; retry in a few seconds"))
        elif wait_s > 0:
            if self.transport is not None:
                self.transport.pause_reading()  # what came after the hello stays in the decoder
            loop.call_later(wait_s, self._hello_slot, req)
        else:
            self._check_token(req)

    def _hello_slot(self, req: protocol.Request) -> None:
        """The hello's slot has come: evaluate it, then serve what the peer
        sent after it."""
        if self.closing:
            return
        self._check_token(req)
        if self.authenticated and self.transport is not None:
            self.transport.resume_reading()
            self._handle_frames(b"")

    def _check_token(self, req: protocol.Request) -> None:
        access = self.node.credentials.resolve(req.args.get("token"))
        if access is None:
            self.node.hello_throttle.failed(self.source or "?", asyncio.get_running_loop().time())
            self.node.count_refusal("bad_token")
            self._fail_connection(req.id, Unauthorized("invalid token"))
            return
        self.access = access
        self.ops = access.ops
        self.scoped = access.queues is not None
        self.authenticated = True
        self.decoder.max_frame_bytes = self.node.cfg.max_frame_bytes
        self._send(protocol.response_ok(req.id, {"node_id": self.node.node_id,
                                                 "protocol": protocol.PROTOCOL_VERSION}))

    def _check_access(self, req: protocol.Request) -> None:
        """Raise FORBIDDEN when this connection's credential does not cover
        `req`: its roles lack the op, or (scoped credentials only) the request
        reaches outside its queues."""
        access = self.access
        assert access is not None
        refusal = (access.op_refusal(req.op) if req.op not in self.ops
                   else scope_refusal(access, req.op, req.args, self.node.raft, self.node.machine))
        if refusal is not None:
            raise refusal

    async def _run(self, req: protocol.Request) -> None:
        try:
            if self.write_paused:
                await self._until_drained()
            if req.op in HEAVY_OPS:
                result = await self._heavy_read(req)
            elif req.op in POLL_OPS:
                result = await self._long_poll(req)
            else:
                result = await self.node.handle(req.op, req.args)
            frame = protocol.response_ok(req.id, result)
        except RaftqError as exc:
            frame = self._error_frame(req, exc)
        except asyncio.CancelledError:
            self.in_flight -= 1
            return
        except Exception:
            frame = self._internal_frame(req)
        self._answered(frame)

    async def _until_drained(self) -> None:
        """Wait until the peer has read our replies down to the low mark (a lost
        connection cancels the waiting task)."""
        while self.write_paused and self._drained is not None:
            await self._drained.wait()

    async def _heavy_read(self, req: protocol.Request) -> Any:
        if self._heavy is None:
            self._heavy = asyncio.Semaphore(self.node.cfg.max_heavy_reads_per_connection)
        async with self._heavy:
            # Re-checked: the reply must not go out while the peer is not reading.
            if self.write_paused:
                await self._until_drained()
            async with self.node.heavy_reads:
                return await self.node.handle(req.op, req.args)

    async def _long_poll(self, req: protocol.Request) -> Any:
        node = self.node
        cfg = node.cfg
        if self.pollers >= cfg.max_pollers_per_connection:
            raise Overloaded(f"{self.pollers} long polls (lease/wait) already running on this connection "
                             f"(limit {cfg.max_pollers_per_connection})")
        if node.pollers >= cfg.max_pollers:
            raise Overloaded(f"node has {node.pollers} long polls (lease/wait) running (limit {cfg.max_pollers}); "
                             f"retry later")
        self.pollers += 1
        node.pollers += 1
        try:
            return await node.handle(req.op, req.args)
        finally:
            self.pollers -= 1
            node.pollers -= 1

    def _write_done(self, req: protocol.Request, fut: asyncio.Future[dict[str, Any]]) -> None:
        """Done callback of a fast-path write (see `Node.start_write`)."""
        self.tasks.discard(fut)
        if fut.cancelled():  # the connection is gone
            self.in_flight -= 1
            return
        try:
            frame = protocol.response_ok(req.id, self.node._commit_result(fut))
        except RaftqError as exc:
            frame = self._error_frame(req, exc)
        except Exception:
            frame = self._internal_frame(req)
        self._answered(frame)

    def _error_frame(self, req: protocol.Request, exc: RaftqError) -> dict[str, Any]:
        self.node.errors[exc.code] = self.node.errors.get(exc.code, 0) + 1
        return protocol.response_err(req.id, exc)

    def _internal_frame(self, req: protocol.Request) -> dict[str, Any]:
        log.exception("handler for %r failed", req.op)
        self.node.errors["INTERNAL"] = self.node.errors.get("INTERNAL", 0) + 1
        return protocol.response_err(req.id, Internal(f"internal error while handling {req.op!r}"))

    def _answered(self, frame: dict[str, Any]) -> None:
        """Send a request's answer; it no longer counts as in flight."""
        self.in_flight -= 1
        self._send(frame)
        if self.paused:
            self._maybe_resume()

    def _send(self, frame: dict[str, Any]) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            data = protocol.encode_frame(frame)
        except Exception:
            log.exception("could not encode a response")
            data = protocol.encode_frame(protocol.response_err(frame.get("id"), Internal("unencodable result")))
        self.transport.write(data)

    def fail(self, error: RaftqError) -> None:
        """Send a connection-level error (request id 0) and close."""
        self._fail_connection(0, error)

    def _fail_connection(self, req_id: Any, error: RaftqError) -> None:
        self._send(protocol.response_err(req_id if isinstance(req_id, int) else 0, error))
        self.closing = True
        if self.transport is not None:
            self.transport.close()


class MutualTlsConnection(ClientConnection):
    """A client connection on a port with mutual TLS. A peer whose certificate
    did not verify never gets here (the handshake failed); one that sent none
    is refused with an error it can read (see tls.server_context)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not transport.get_extra_info("peercert"):
            self.node.count_refusal("no_client_certificate")
            self.transport = transport  # type: ignore[assignment]
            self.fail(Unauthorized("this node requires a client certificate (mutual TLS): "
                                   "pass --tls-cert and --tls-key [env RAFTQ_TLS_CERT, RAFTQ_TLS_KEY]"))
            return
        super().connection_made(transport)


# ---- argument helpers (bad input -> BAD_REQUEST, never a traceback) -----

# ---- helpers ---------------------------------------------------------------

def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def _copy_outcome(src: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
    if src.cancelled():
        dst.cancel()
    elif src.exception() is not None:
        dst.set_exception(src.exception())  # type: ignore[arg-type]
    else:
        dst.set_result(src.result())


def _check_part(obj: Any, key: str, limit: int, setting: str, where: str) -> None:
    """TOO_LARGE when `obj[key]` (args or a result) encodes to more than `limit` bytes."""
    if not isinstance(obj, dict) or obj.get(key) is None:
        return
    size = len(msgpack.packb(obj[key], use_bin_type=True))
    if size > limit:
        raise TooLarge(f"{where}: {key} of {size} bytes exceeds the {setting} limit of {limit} bytes; "
                       f"store large data elsewhere and pass a reference")


# ---- process entry point ---------------------------------------------------

def raft_replica(cfg: ClusterConfig, node_id: int, rejoin: bool = False) -> ReplicaFactory:
    """The production replica of node `node_id`: a RaftNode ticked on the
    running loop, its journal in the node's data dir. `rejoin`: a wiped node's
    first start (no vote until it hears a leader, docs/storage.md)."""
    spec = cfg.node(node_id)

    def make(machine: JobMachine, *, on_applied: Callable[[], None], on_fatal: Callable[[str], None]) -> RaftNode:
        data_dir = cfg.node_data_dir(node_id)
        data_dir.mkdir(parents=True, exist_ok=True)
        config = RaftConfig(self_addr=spec.raft, peers=[n.raft for n in cfg.nodes if n.id != node_id],
                            data_dir=data_dir, password=cfg.raft_password, durability=cfg.durability,
                            names={n.raft: f"node {n.id}" for n in cfg.nodes})
        return RaftNode(config, machine, on_applied=on_applied, loop=asyncio.get_running_loop(),
                        on_fatal=on_fatal, rejoin=rejoin)
    return make


def run_node(cfg: ClusterConfig, node_id: int, rejoin: bool = False) -> int:
    """Run one node in the foreground until SIGTERM/SIGINT. Returns the exit code."""
    return run_until_stopped(node_id, lambda on_fatal: Node(cfg, node_id, JobMachine(),
                                                            raft_replica(cfg, node_id, rejoin), on_fatal=on_fatal))


def run_until_stopped(node_id: int, build: Callable[[Callable[[str], None]], Node]) -> int:
    """Run the node `build(on_fatal)` makes, on uvloop, until SIGTERM/SIGINT or
    until it calls `on_fatal`. Returns the exit code."""
    import uvloop

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s node{node_id} %(name)s %(levelname)s %(message)s")

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        node = build(lambda reason: stop.set())
        await node.serve(stop)
        return 1 if node.fatal is not None else 0  # storage failed: a supervisor must see it

    raise_fd_limit()  # before the loop: connection_cap budgets what it gives
    return uvloop.run(main())
