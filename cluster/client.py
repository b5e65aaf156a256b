"""raftq client library: `Client` (blocking sockets) and `AsyncClient` (asyncio).

Both speak the wire protocol of contracts.md §3 and expose the methods of §4,
written ONCE in `_Api`: each method builds its request's args, which
`_Call.make` checks eagerly against the op table (cluster/ops.py, the check
the node runs too), builds a plan (a generator of `_Call`s, usually one) and
hands it to `self._run`, which is a blocking loop in `Client` and a coroutine
in `AsyncClient`.

Retry rules (shared through `_Nodes`, `_Backoff` and `_Attempts`):
- NOT_LEADER with a leader address: go there at once (later redirects in the
  same call back off, so two confused nodes cannot make us spin).
- NOT_LEADER without one, NO_LEADER, a server TIMEOUT (outcome unknown),
  connection refused/reset/EOF, or no reply within the attempt budget: drop the
  connection, move to the next known node, back off 20 ms, x2, cap 500 ms.
  Except once per call: a kept connection found closed (EOF/reset) is retried
  at once on a new connection to the same node, since nodes close connections
  idle past `idle_timeout_s` and that says nothing about the node's health.
- Everything is bounded by `timeout_s` per call, extended by the server-side
  wait of long polls (`wait`, `lease`). Then the call raises `Unavailable`
  (nothing reachable), `NoLeader` (when the nodes that answered had no
  leader, each one's view, and "no quorum" when they are no majority: "no
  quorum: 1 of 3 nodes reachable (node 1: no leader, term 7); unreachable:
  ..."), or `Timeout`.
- Re-sending is safe because every write is idempotent: the client chose the
  job id (submit) and presents the same lease token (complete/fail/heartbeat).
  Any other server error is raised as its registered class from
  cluster.errors; no raw socket error ever escapes.

An attempt that gets no reply within half the call budget (plus the long-poll
wait) is abandoned and retried elsewhere: a SIGSTOPped node still accepts TCP
connections, and waiting the whole budget on it would forfeit the failover.

Learning the cluster: after the first successful connection each client calls
`cluster_status` once (best effort) and adds every node's client address to
its list, so a single seed address suffices.

TLS (cluster/tls.py): with `tls=ClientTls(ca=..., cert=..., key=...)` every
connection is TLS 1.2+, the node's certificate is verified against the CA and
must name the host dialled. A TLS mismatch or a refused certificate is a
`TlsError` (an `Unavailable`), raised at once, not retried: the nodes of one
cluster share one configuration, so no other node would answer differently.
TLS failures are silent on the wire (a TLS node just closes a plaintext
connection), so a new connection closed before hello is answered is looked
into: a plaintext client probes whether the port speaks TLS, a client that
presented a certificate learns that it was refused.

`Client` uses only socket/ssl/time from the stdlib, so gevent's monkey patching
(Locust) makes it cooperative. It is not thread-safe: one per thread/greenlet.
`AsyncClient` keeps ONE connection and pipelines: a reader task resolves
futures by request id; on connection loss every in-flight request fails
internally and is retried under the same rules.
"""
from __future__ import annotations

import asyncio
import math
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable

from cluster.errors import (
    BadRequest,
    Internal,
    NoLeader,
    NotLeader,
    RaftqError,
    Timeout,
    Unauthorized,
    Unavailable,
    WaitTimeout,
    error_from_wire,
)
from cluster import ops
from cluster.protocol import (
    MAX_FRAME_BYTES,
    MAX_IN_FLIGHT,
    MAX_POLLS_PER_CONNECTION,
    ROLES,
    FrameDecoder,
    ProtocolViolation,
    encode_request_frame,
    format_address,
    hello_args,
    job_spec_from_mapping,
    job_spec_from_options,
    pack_args,
    parse_address,
    parse_nodes,
)
from cluster.tls import (ClientTls, TlsError, client_certificate_refused, handshake_error, probe_speaks_tls,
                         speaks_tls)
from replication.model import FINAL_STATES, validate_schedule

__all__ = ["Client", "AsyncClient", "ClientTls"]

# Replies come from a trusted node; accept somewhat more than a request may be
# (a `list` page of large JobViews) rather than drop a healthy connection.
_REPLY_MAX_FRAME_BYTES = 4 * MAX_FRAME_BYTES
_RESULT_CHUNK_S = 5.0
_READ_CHUNK = 256 * 1024


# ----------------------------------------------------------------- shared machinery


@dataclass(frozen=True)
class _Call:
    op: str
    args: dict[str, Any]
    wait_s: float = 0.0  # server-side long-poll time; extends the call deadline
    packed: bytes = field(default=b"", compare=False)

    @staticmethod
    def make(op: str, args: dict[str, Any], wait_s: float = 0.0) -> "_Call":
        """A request of a client op, its args checked against cluster/ops.py (the
        server's own check, run here before any I/O) and encoded once."""
        ops.OPS[op].check(args)
        return _Call(op, args, wait_s, pack_args(op, args))

    @staticmethod
    def unchecked(op: str, args: dict[str, Any]) -> "_Call":
        """A raw request, sent as given: the server judges it (`request`)."""
        return _Call(op, args, 0.0, pack_args(op, args))


Plan = Generator[_Call, Any, Any]


def _single(call: _Call, pick: Callable[[Any], Any] | None = None) -> Plan:
    result = yield call
    return pick(result) if pick is not None else result


def _const(value: Any) -> Plan:
    """A plan that needs no request (e.g. submit_many of nothing)."""
    return value
    yield  # pragma: no cover - makes this a generator


class _ConnectionLost(Exception):
    """Internal: the attempt failed at the transport level (retryable)."""

    def __init__(self, addr: str, reason: str) -> None:
        super().__init__(f"{addr}: {reason}")
        self.addr = addr
        self.reason = reason


class _NoReply(_ConnectionLost):
    """Internal: no reply within the attempt budget (node hung or slow)."""


class _Backoff:
    """20 ms, 40 ms, ... capped at 200 ms. The cap bounds how long a client
    sleeps past the moment a new leader is elected (a 500 ms cap added ~250 ms
    to the median failover gap); retries against followers are cheap."""

    FIRST_S = 0.02
    FACTOR = 2.0
    CAP_S = 0.2

    def __init__(self) -> None:
        self._next = self.FIRST_S

    def next(self) -> float:
        delay = self._next
        self._next = min(self.CAP_S, delay * self.FACTOR)
        return delay


_UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})


class _Nodes:
    """Known client addresses (seeds first, then learned) and which to try next."""

    def __init__(self, seeds: list[str]) -> None:
        self.addrs = list(seeds)
        self._idx = 0

    def current(self) -> str:
        return self.addrs[self._idx]

    def advance_from(self, addr: str) -> None:
        """Move past `addr` unless someone else already did (concurrent callers)."""
        if self.addrs[self._idx] == addr:
            self._idx = (self._idx + 1) % len(self.addrs)

    def _add(self, addr: Any) -> str | None:
        if not isinstance(addr, str):
            return None
        try:
            host, port = parse_address(addr)
        except BadRequest:
            return None
        if host in _UNSPECIFIED_HOSTS:
            return None
        norm = format_address(host, port)
        if norm not in self.addrs:
            self.addrs.append(norm)
        return norm

    def prefer(self, addr: str) -> str | None:
        """Make `addr` the next to try; returns its normalised form (None if unusable)."""
        norm = self._add(addr)
        if norm is not None:
            self._idx = self.addrs.index(norm)
        return norm

    def learn(self, status: Any) -> None:
        if not isinstance(status, dict):
            return
        nodes = status.get("nodes")
        if isinstance(nodes, list):
            for node in nodes:
                if isinstance(node, dict):
                    self._add(node.get("client"))

    def describe(self) -> str:
        return ", ".join(self.addrs)


class _Attempts:
    """Per-call retry bookkeeping, identical for Client and AsyncClient."""

    def __init__(self, nodes: _Nodes, deadline: float, clock: Callable[[], float], budget_s: float) -> None:
        self.nodes = nodes
        self.deadline = deadline
        self.clock = clock
        self.budget_s = budget_s
        self.backoff = _Backoff()
        self.redirects = 0
        self.last: Exception | None = None
        # What each node did last in this call: answered without a leader, or
        # could not be reached. A call that finds no leader reports both.
        self.leaderless: dict[str, NoLeader] = {}
        self.unreachable: set[str] = set()

    def on_error(self, exc: Exception, addr: str) -> float:
        """Record a retryable failure at `addr`; return the pause before the
        next attempt, or raise the call's final error when time is up."""
        self.last = exc
        self._note(exc, addr)
        leader = self.nodes.prefer(exc.leader) if isinstance(exc, NotLeader) and exc.leader else None
        if leader is not None and leader != addr:
            self.redirects += 1
            delay = 0.0 if self.redirects == 1 else self.backoff.next()
        else:
            self.nodes.advance_from(addr)
            delay = self.backoff.next()
        if self.clock() + delay >= self.deadline:
            raise self.final()
        return delay

    def _note(self, exc: Exception, addr: str) -> None:
        if isinstance(exc, _ConnectionLost):
            self.unreachable.add(exc.addr)
            self.leaderless.pop(exc.addr, None)
            return
        self.unreachable.discard(addr)
        if isinstance(exc, NoLeader):
            self.leaderless[addr] = exc
        else:
            self.leaderless.pop(addr, None)

    def final(self) -> RaftqError:
        last = self.last
        where = self.nodes.describe()
        after = f"after {self.budget_s:g}s"
        leaderless = self._leaderless_summary()
        if leaderless is not None:
            return NoLeader(f"{leaderless} (gave up {after})", last.extra if isinstance(last, NoLeader) else None)
        if isinstance(last, NoLeader):
            return NoLeader(f"{last.message} (gave up {after}; nodes: {where})", last.extra)
        if isinstance(last, NotLeader):
            return NoLeader(f"no leader found via {where} {after}: {last.message}", last.extra)
        if isinstance(last, Timeout):
            return Timeout(f"{last.message} (gave up {after}; nodes: {where})", last.extra)
        if isinstance(last, _NoReply):
            return Timeout(f"no reply from raftq at {last.addr} {after} (nodes: {where})")
        return Unavailable(f"no raftq node reachable at {where}: {last}")

    def _leaderless_summary(self) -> str | None:
        """When every known node either answered without a leader or could
        not be reached: what each said, and whether they are a majority —
        "no quorum: 1 of 3 nodes reachable (node 1: no leader, term 7);
        unreachable: ..." (never the last refused connection alone)."""
        known = self.nodes.addrs
        answered = [a for a in known if a not in self.unreachable]
        if not self.leaderless or set(answered) != self.leaderless.keys():
            return None
        views = "; ".join(_leaderless_view(addr, self.leaderless[addr]) for addr in answered)
        down = ", ".join(a for a in known if a in self.unreachable)
        what = "no quorum" if 2 * len(answered) <= len(known) else "no leader (election running?)"
        return (f"{what}: {len(answered)} of {len(known)} nodes reachable ({views})"
                + (f"; unreachable: {down}" if down else ""))

    def attempt_deadline(self, wait_s: float) -> float:
        return min(self.deadline, self.clock() + wait_s + max(self.budget_s - wait_s, 0.0) / 2)


def _leaderless_view(addr: str, exc: NoLeader) -> str:
    """How one node answered: "node 1: no leader, term 7" (its address for a node that did not say)."""
    extra = exc.extra if isinstance(exc.extra, dict) else {}
    node, term = extra.get("node"), extra.get("term")
    who = f"node {node}" if isinstance(node, int) else addr
    return f"{who}: no leader" + (f", term {term}" if isinstance(term, int) else "")


_RETRYABLE = (NotLeader, NoLeader, Timeout, _ConnectionLost)


def _closed_while_kept(exc: Exception) -> bool:
    """A kept connection that the node closed (not one that went silent)."""
    return isinstance(exc, _ConnectionLost) and not isinstance(exc, _NoReply)


def _reply_error(addr: str, msg: dict[str, Any]) -> Exception:
    """A reply that does not match the request: a connection-level verdict."""
    if "err" in msg:
        err = error_from_wire(msg["err"])
        if isinstance(err, Unauthorized):
            return err
        return _ConnectionLost(addr, f"server error {err.code}: {err.message}")
    return _ConnectionLost(addr, f"unexpected reply {str(msg)[:120]}")


def _result_of(msg: dict[str, Any], addr: str) -> Any:
    if "ok" in msg:
        return msg["ok"]
    if "err" in msg:
        raise error_from_wire(msg["err"])
    raise _ConnectionLost(addr, f"malformed reply {str(msg)[:120]}")


# -------------------------------------------------------------- argument checking


# The arguments of each op are checked by `_Call.make` (cluster/ops.py); these
# are the client's own parameters (seconds, options) that no op carries as is.


def _number(name: str, value: Any, minimum: float = 0.0) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not value >= minimum
    ):
        raise BadRequest(f"{name} must be a number >= {minimum:g}, got {value!r}")
    return float(value)


def _queue_names(value: Any) -> Any:
    """"a,b" or a tuple as the list `lease` sends (the table checks the names)."""
    if isinstance(value, str):
        return [q.strip() for q in value.split(",") if q.strip()]
    return list(value) if isinstance(value, tuple) else value


def _as_list(value: Any) -> Any:
    """A tuple as the list the wire carries; anything else as is, for the check to judge."""
    return list(value) if isinstance(value, tuple) else value


def _pick(key: str) -> Callable[[Any], Any]:
    def pick(result: Any) -> Any:
        if not isinstance(result, dict) or key not in result:
            raise Internal(f"malformed reply from server: missing {key!r} in {str(result)[:120]}")
        return result[key]

    return pick


def _pick_ids(result: Any) -> list[str]:
    """The ids of a submit_many. An item the node or machine refused (a
    built-in type's bad args; a reused id with another spec: CONFLICT) raises
    its error naming the item; the others were submitted, and `extra` holds
    every item's result."""
    results = _pick("results")(result)
    for i, r in enumerate(results):
        if isinstance(r, dict) and "error" in r:
            raise error_from_wire([r["error"], f"jobs[{i}]: {r.get('message', '')}", {"results": results}])
    return [_pick("id")(r) for r in results]


def _wait_plan(job_id: str, timeout: float | None, clock: Callable[[], float]) -> Plan:
    """Poll `wait` in chunks of <= 5 s until the job is final or `timeout` passes."""
    deadline = None if timeout is None else clock() + timeout
    while True:
        left = _RESULT_CHUNK_S if deadline is None else max(0.0, deadline - clock())
        chunk = min(_RESULT_CHUNK_S, left)
        view = yield _Call.make("wait", {"id": job_id, "timeout_s": chunk}, wait_s=chunk)
        state = _pick("state")(view)
        if state in FINAL_STATES:
            return view
        if deadline is not None and clock() >= deadline:
            raise WaitTimeout(f"job {job_id} is not finished after {timeout:g}s (state: {state})", view)


# ------------------------------------------------------------------- the method list


class _Api:
    """The client methods of contracts §4, shared by Client and AsyncClient.

    In AsyncClient every method returns an awaitable of the annotated type.
    """

    def __init__(
        self,
        nodes: str | list[str],
        token: str = "dev",
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 2.0,
        role: str = "client",
        tls: ClientTls | None = None,
    ) -> None:
        _check_client_options(token, role, timeout_s, connect_timeout_s)
        if tls is not None and not isinstance(tls, ClientTls):
            raise BadRequest(f"tls must be a ClientTls or None, got {type(tls).__name__}")
        self._tls = tls
        self._tls_context = tls.context() if tls is not None else None  # TlsError for an unusable file
        self._nodes = _Nodes(parse_nodes(nodes))
        self.token = token
        self.role = role
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self._learned = False
        self._closed = False

    def _run(self, plan: Plan) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _clock(self) -> float:
        return time.monotonic()

    def _unanswered_hello(self, addr: str, lost: _ConnectionLost, speaks_tls_now: bool) -> Exception:
        """What to raise when a new connection to `addr` was closed before
        hello was answered; `speaks_tls_now`: a TLS probe of a plaintext
        client's port just succeeded."""
        if self._tls is None:
            return speaks_tls(addr) if speaks_tls_now else lost
        return client_certificate_refused(addr) if self._tls.cert is not None else lost

    # -- jobs

    def submit(
        self,
        type: str,
        args: Any = None,
        *,
        id: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int = 3,
        timeout: float | None = None,
        delay: float | None = None,
        run_at: Any = None,
        backoff: float | None = None,
        unique_key: str | None = None,
        depends_on: list[str] | None = None,
        resources: dict[str, Any] | None = None,
        max_lease_expiries: int | None = None,
    ) -> str:
        """Submit one job; returns its id (the existing one for a duplicate id/unique_key).

        `depends_on`: ids that must succeed first (the job is `pending` until
        then); `resources`: `{"cpu": n, "mem_mb": m}` a worker's free capacity
        must cover; `max_lease_expiries`: lost leases before quarantine.
        """
        spec = job_spec_from_options(
            type, args, id=id, queue=queue, priority=priority, max_attempts=max_attempts,
            timeout=timeout, delay=delay, run_at=run_at, backoff=backoff, unique_key=unique_key,
            depends_on=depends_on, resources=resources, max_lease_expiries=max_lease_expiries,
        )
        return self._run(_single(_Call.make("submit", {"job": spec}), _pick("id")))

    def submit_many(self, jobs: Iterable[dict[str, Any]]) -> list[str]:
        """Submit several jobs in one Raft entry; returns their ids in order."""
        if isinstance(jobs, (str, bytes, dict)) or not isinstance(jobs, Iterable):
            raise BadRequest("submit_many takes a list of job dicts")
        specs = [job_spec_from_mapping(j, f"jobs[{i}]") for i, j in enumerate(jobs)]
        if not specs:
            return self._run(_const([]))
        return self._run(_single(_Call.make("submit_many", {"jobs": specs}), _pick_ids))

    def get(self, id: str, stale_ok: bool = False) -> dict[str, Any]:
        """The JobView of a job; NotFound if it does not exist (or was purged)."""
        args: dict[str, Any] = {"id": id}
        if stale_ok:
            args["stale_ok"] = True
        return self._run(_single(_Call.make("get", args)))

    def result(self, id: str, timeout: float | None = None) -> dict[str, Any]:
        """The JobView once the job is final; WaitTimeout (a Timeout) if not final within `timeout` s."""
        ops.check("wait", {"id": id})
        if timeout is not None:
            _number("timeout", timeout)
        return self._run(_wait_plan(id, timeout, self._clock))

    def cancel(self, id: str) -> str:
        return self._run(_single(_Call.make("cancel", {"id": id}), _pick("state")))

    def retry(self, id: str) -> str:
        return self._run(_single(_Call.make("retry", {"id": id}), _pick("state")))

    def list(
        self,
        state: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        cursor: Any = None,
        stale_ok: bool = False,
        schedule: str | None = None,
    ) -> dict[str, Any]:
        """One page `{"jobs": [JobView], "cursor": next_or_None}`."""
        args: dict[str, Any] = {"limit": limit}
        for key, value in (("schedule", schedule), ("state", state), ("queue", queue), ("cursor", cursor)):
            if value is not None:
                args[key] = value
        if stale_ok:
            args["stale_ok"] = True
        return self._run(_single(_Call.make("list", args)))

    def stats(self, stale_ok: bool = False) -> dict[str, Any]:
        return self._run(_single(_Call.make("stats", {"stale_ok": True} if stale_ok else {})))

    def cluster_status(self) -> dict[str, Any]:
        return self._run(_single(_Call.make("cluster_status", {})))

    def digest(self) -> dict[str, Any]:
        """The answering node's replica digest and applied index (no redirect:
        every node answers for itself; tests compare replicas with it)."""
        return self._run(_single(_Call.make("digest", {})))

    # -- dead letters, queues, schedules, workers (issue 3)

    def requeue_failed(self, ids: list[str] | None = None, *, queue: str | None = None,
                       all: bool = False) -> dict[str, Any]:
        """Dead letters back to `queued`: the given ids, or every failed job
        (of `queue`, or of all queues with all=True). Returns
        `{"requeued", "skipped"}` (lists for ids, counts otherwise)."""
        args: dict[str, Any] = {}
        if ids is not None:
            args["ids"] = _as_list(ids)
        elif queue is not None:
            args["queue"] = queue
        elif all:
            args["all"] = True
        return self._run(_single(_Call.make("requeue_failed", args)))

    def queue_limit(self, queue: str, max_running: int | None = None,
                    rate_per_s: float | None = None) -> dict[str, Any]:
        """Set a queue's cluster-wide limits (both None removes them)."""
        args: dict[str, Any] = {"queue": queue}
        if max_running is not None:
            args["max_running"] = max_running
        if rate_per_s is not None:
            args["rate_per_s"] = rate_per_s
        return self._run(_single(_Call.make("queue_limit", args)))

    def queues(self, stale_ok: bool = False) -> list[dict[str, Any]]:
        """Every queue: `{"queue", "jobs": {state: n}, "max_running", "rate_per_s"}`."""
        return self._run(_single(_Call.make("queues", {"stale_ok": True} if stale_ok else {}), _pick("queues")))

    def workers(self, stale_ok: bool = False) -> list[dict[str, Any]]:
        """The worker registry: `{"name", "queues", "capacity", "running", "lease_ms", "last_seen_at"}`."""
        return self._run(_single(_Call.make("workers", {"stale_ok": True} if stale_ok else {}), _pick("workers")))

    def schedule_add(self, name: str, type: str, args: Any = None, *, cron: str | None = None,
                     every: float | None = None, tz: str = "UTC", queue: str = "default", priority: int = 0,
                     max_attempts: int = 3, timeout: float | None = None, unique_key: str | None = None,
                     misfire: str = "skip", max_catch_up: int = 1, paused: bool = False) -> dict[str, Any]:
        """Add a schedule firing a job of `type` by `cron` (in `tz`) or `every` seconds."""
        if (cron is None) == (every is None):
            raise BadRequest("give exactly one of cron and every")
        template = job_spec_from_options(type, args, queue=queue, priority=priority, max_attempts=max_attempts,
                                         timeout=timeout, unique_key=unique_key)
        del template["id"]
        sched: dict[str, Any] = {"name": name, "tz": tz, "job": template, "misfire": misfire,
                                 "max_catch_up": max_catch_up, "paused": bool(paused)}
        if cron is not None:
            sched["cron"] = cron
        else:
            sched["every_ms"] = max(1, round(_number("every", every, 0.001) * 1000))
        problem = validate_schedule(sched)  # the machine's own check of a schedule
        if problem is not None:
            raise BadRequest(problem)
        return self._run(_single(_Call.make("schedule_add", {"schedule": sched})))

    def schedules(self, stale_ok: bool = False) -> list[dict[str, Any]]:
        return self._run(_single(_Call.make("schedule_list", {"stale_ok": True} if stale_ok else {}),
                                 _pick("schedules")))

    def schedule_remove(self, name: str) -> dict[str, Any]:
        return self._run(_single(_Call.make("schedule_remove", {"name": name})))

    def schedule_pause(self, name: str) -> dict[str, Any]:
        return self._run(_single(_Call.make("schedule_pause", {"name": name})))

    def schedule_resume(self, name: str) -> dict[str, Any]:
        return self._run(_single(_Call.make("schedule_resume", {"name": name})))

    def alert_add(self, name: str, when: str, *, webhook: str | None = None, email: str | None = None,
                  for_ms: int = 0) -> dict[str, Any]:
        """An alert rule (docs/alerting.md): notify `webhook` or `email` when `when` holds for `for_ms`."""
        return self._run(_single(_Call.make("alert_add", {"name": name, "when": when, "for_ms": for_ms,
                                                          "webhook": webhook, "email": email})))

    def alerts(self, stale_ok: bool = False) -> list[dict[str, Any]]:
        return self._run(_single(_Call.make("alert_list", {"stale_ok": True} if stale_ok else {}), _pick("alerts")))

    def alert_remove(self, name: str) -> dict[str, Any]:
        return self._run(_single(_Call.make("alert_remove", {"name": name})))

    def request(self, op: str, args: dict[str, Any]) -> Any:
        """Send one raw request with the usual redirect/retry rules (tools and
        tests); its args are not checked here: the node answers for them."""
        return self._run(_single(_Call.unchecked(op, args)))

    # -- worker calls

    def lease(
        self,
        worker: str,
        queues: Any,
        max: int = 1,
        wait_s: float = 5.0,
        lease_ms: int | None = None,
        capacity: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Lease up to `max` ready jobs, long-polling up to `wait_s` when none is ready.

        Each LeasedJob carries its `attempt` and `lease_token`: every report
        and heartbeat on that lease must present both (nobody else has the
        token). `queues`: a list of names or "a,b". `capacity`: the worker's free
        `{"cpu": n, "mem_mb": m}`; only jobs whose `resources` fit are granted
        (None: any job)."""
        args: dict[str, Any] = {"worker": worker, "queues": _queue_names(queues), "max": max, "wait_s": wait_s}
        if lease_ms is not None:
            args["lease_ms"] = lease_ms
        if capacity is not None:
            args["capacity"] = dict(capacity) if isinstance(capacity, dict) else capacity
        call = _Call.make("lease", args, wait_s=wait_s)
        return self._run(_single(call, _pick("jobs")))

    def heartbeat(self, worker: str, leases: list[dict[str, Any]], lease_ms: int | None = None) -> dict[str, Any]:
        """Extend leases (to now + lease_ms, default the cluster's lease TTL);
        `leases`: `[{"id", "attempt", "lease_token", "progress"?}]`, each as
        leased. Returns `{"lost": [id], "cancel": [id]}` (lost: the lease is
        gone, or the attempt or token is not its own)."""
        args: dict[str, Any] = {"worker": worker, "leases": _as_list(leases)}
        if lease_ms is not None:
            args["lease_ms"] = lease_ms
        return self._run(_single(_Call.make("heartbeat", args)))

    def complete(self, id: str, attempt: int, result: Any = None, *, lease_token: str) -> str:
        """Report success of the lease (`attempt`, `lease_token`) as leased."""
        args = {"id": id, "attempt": attempt, "lease_token": lease_token, "result": result}
        return self._run(_single(_Call.make("complete", args), _pick("state")))

    def complete_many(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Report several successes in one request and one Raft command.

        `items`: `[{"id", "attempt", "lease_token", "result"}]`. Returns one answer per item, in
        order: `{"state": "succeeded"}` (with `"duplicate": True` for a repeat),
        or `{"error": code, "message": text}` when that item was refused
        (LEASE_LOST, NOT_FOUND), exactly as `complete` would have raised. A
        transport error means nothing is known: retrying the whole batch is
        safe (the duplicate rule)."""
        if isinstance(items, (list, tuple)) and not items:
            return self._run(_const([]))
        wire = items
        if isinstance(items, (list, tuple)):
            wire = [{"id": x.get("id"), "attempt": x.get("attempt"), "lease_token": x.get("lease_token"),
                     "result": x.get("result")}
                    if isinstance(x, dict) else x for x in items]
        return self._run(_single(_Call.make("complete_many", {"items": wire}), _pick("results")))

    def fail(self, id: str, attempt: int, error: str, retryable: bool = True, *, lease_token: str) -> str:
        """Report failure of the lease (`attempt`, `lease_token`) as leased."""
        args = {"id": id, "attempt": attempt, "lease_token": lease_token, "error": error, "retryable": retryable}
        return self._run(_single(_Call.make("fail", args), _pick("state")))


def _check_client_options(token: Any, role: Any, timeout_s: Any, connect_timeout_s: Any) -> None:
    if not isinstance(token, str):
        raise BadRequest("token must be a string")
    if role not in ROLES:
        raise BadRequest(f"role must be one of {sorted(ROLES)}, got {role!r}")
    _number("timeout_s", timeout_s, 0.001)
    _number("connect_timeout_s", connect_timeout_s, 0.001)


# ------------------------------------------------------------------ blocking client


class _SyncConn:
    """One blocking connection; strictly one request at a time."""

    def __init__(self, sock: socket.socket, addr: str) -> None:
        self.sock = sock
        self.addr = addr
        self._decoder = FrameDecoder(_REPLY_MAX_FRAME_BYTES)
        self._next_id = 1

    def request(self, op: str, packed: bytes, deadline: float) -> Any:
        rid = self._next_id
        self._next_id += 1
        try:
            self._settimeout(deadline)
            self.sock.sendall(encode_request_frame(rid, op, packed))
            while True:
                self._settimeout(deadline)
                data = self.sock.recv(_READ_CHUNK)
                if not data:
                    raise _ConnectionLost(self.addr, "connection closed by the node")
                for msg in self._decoder.feed(data):
                    if msg.get("id") == rid:
                        return _result_of(msg, self.addr)
                    # Frames for other ids can only be connection-level errors
                    # (strict request/response); an unknown "ok" is ignored.
                    if "err" in msg:
                        raise _reply_error(self.addr, msg)
        except TimeoutError:
            raise _NoReply(self.addr, f"no reply to {op} in time") from None
        except ProtocolViolation as e:
            raise _ConnectionLost(self.addr, f"bad frame from node: {e.message}") from None
        except ssl.SSLError as e:
            raise handshake_error(self.addr, e) or _ConnectionLost(self.addr, str(e) or type(e).__name__) from None
        except OSError as e:
            raise _ConnectionLost(self.addr, str(e) or type(e).__name__) from None

    def _settimeout(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError()
        self.sock.settimeout(left)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class Client(_Api):
    """Blocking raftq client (gevent-patchable plain sockets). Not thread-safe."""

    def __init__(self, nodes: str | list[str], token: str = "dev", **options: Any) -> None:
        super().__init__(nodes, token, **options)
        self._conn: _SyncConn | None = None

    @property
    def nodes(self) -> list[str]:
        """Known client addresses: the seeds, then those learned from the cluster."""
        return list(self._nodes.addrs)

    def __repr__(self) -> str:
        return f"Client({self._nodes.describe()!r}, role={self.role!r})"

    def _run(self, plan: Plan) -> Any:
        result: Any = None
        try:
            while True:
                call = plan.send(result)
                result = self._call(call)
        except StopIteration as stop:
            return stop.value

    def _call(self, call: _Call) -> Any:
        budget = self.timeout_s + call.wait_s
        attempts = _Attempts(self._nodes, time.monotonic() + budget, time.monotonic, budget)
        may_reopen = True
        while True:
            if self._closed:
                raise Unavailable("the raftq client is closed")
            addr = self._conn.addr if self._conn is not None else self._nodes.current()
            kept = self._conn is not None
            try:
                deadline = attempts.attempt_deadline(call.wait_s)
                conn = self._conn or self._connect(addr, deadline)
                return conn.request(call.op, call.packed, deadline)
            except _RETRYABLE as e:
                self._drop()
                if kept and may_reopen and _closed_while_kept(e):
                    may_reopen = False
                    continue
                time.sleep(attempts.on_error(e, addr))

    def _connect(self, addr: str, deadline: float) -> _SyncConn:
        host, port = parse_address(addr)
        left = deadline - time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=max(0.001, min(self.connect_timeout_s, left)))
        except OSError as e:
            raise _ConnectionLost(addr, str(e) or type(e).__name__) from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self._tls_context is not None:
            sock = self._handshake(sock, addr, host)
        conn = _SyncConn(sock, addr)
        try:
            try:
                conn.request("hello", pack_args("hello", hello_args(self.token, self.role)), deadline)
            except _NoReply:
                raise
            except _ConnectionLost as e:
                probe = self._tls is None and probe_speaks_tls(host, port, self.connect_timeout_s)
                raise self._unanswered_hello(addr, e, probe) from None
            if not self._learned:
                try:
                    self._nodes.learn(conn.request("cluster_status", pack_args("cluster_status", {}), deadline))
                except RaftqError:
                    pass  # best effort: the seeds still work
                self._learned = True
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _handshake(self, sock: socket.socket, addr: str, host: str) -> socket.socket:
        """TLS over a connected socket, within the socket's connect timeout."""
        assert self._tls_context is not None
        try:
            return self._tls_context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as e:
            sock.close()
            raise handshake_error(addr, e) or _ConnectionLost(addr, str(e) or type(e).__name__) from None
        except OSError as e:
            sock.close()
            raise _ConnectionLost(addr, f"TLS handshake: {e.strerror or e or type(e).__name__}") from None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """Close the connection; later calls raise Unavailable."""
        self._closed = True
        self._drop()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------- asyncio client


class _AsyncConn(asyncio.Protocol):
    """One pipelined asyncio connection: replies resolve futures by request id.

    A Protocol, not streams: a request is one transport.write and a future, a
    reply is resolved straight from data_received (no reader task, no drain
    unless the transport is over its high-water mark). With a thousand busy
    connections in one process, the stream layers and a per-request
    asyncio.timeout were half the client's CPU."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self._lost: _ConnectionLost | Unauthorized | TlsError | None = None
        self._decoder = FrameDecoder(_REPLY_MAX_FRAME_BYTES)
        self._next_id = 1
        self._loop = asyncio.get_running_loop()
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self.done: asyncio.Future[None] = self._loop.create_future()  # resolved when the connection is gone

    # ---- asyncio.Protocol ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except ProtocolViolation as e:
            self._fail_all(_ConnectionLost(self.addr, f"bad frame from node: {e.message}"))
            return
        for msg in messages:
            self._dispatch(msg)
        if self._lost is not None:
            self._fail_all(self._lost)

    def connection_lost(self, exc: Exception | None) -> None:
        tls_error = handshake_error(self.addr, exc) if isinstance(exc, ssl.SSLError) else None
        self._fail_all(tls_error or _ConnectionLost(self.addr, (str(exc) or type(exc).__name__) if exc
                                                    else "connection closed by the node"))
        if not self.done.done():
            self.done.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- requests ------------------------------------------------------------

    async def request(self, op: str, packed: bytes, deadline: float | None = None) -> Any:
        """Send and await the reply; past `deadline` (loop time) it fails with _NoReply."""
        if self.closed or self.transport is None:
            raise self._lost or _ConnectionLost(self.addr, "connection closed")
        rid = self._next_id
        self._next_id += 1
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.pending[rid] = fut
        timer = None if deadline is None else self._loop.call_at(deadline, self._expire, rid, op)
        try:
            self.transport.write(encode_request_frame(rid, op, packed))
            if self._writable is not None:
                await asyncio.shield(self._writable)
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self.pending.pop(rid, None)

    def _expire(self, rid: int, op: str) -> None:
        fut = self.pending.get(rid)
        if fut is not None and not fut.done():
            fut.set_exception(_NoReply(self.addr, f"no reply to {op} in time"))

    def _dispatch(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        fut = self.pending.get(rid) if isinstance(rid, int) else None
        if fut is None:
            if "err" in msg and self._lost is None:
                self._lost = _reply_error(self.addr, msg)  # type: ignore[assignment]
            return
        if fut.done():
            return
        try:
            fut.set_result(_result_of(msg, self.addr))
        except Exception as e:  # a server error for this request
            fut.set_exception(e)

    def _fail_all(self, exc: Exception) -> None:
        self.closed = True
        if self._lost is None and isinstance(exc, (_ConnectionLost, Unauthorized, TlsError)):
            self._lost = exc
        error = self._lost or exc
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
            waiter.exception()  # retrieved: nobody may be awaiting it
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now; in-flight requests fail with _ConnectionLost (and retry)."""
        self._fail_all(_ConnectionLost(self.addr, "client dropped the connection"))

    async def aclose(self) -> None:
        self._fail_all(_ConnectionLost(self.addr, "client closed"))
        await self.done


class AsyncClient(_Api):
    """asyncio raftq client: the same methods as Client, as awaitables, on ONE
    pipelined connection shared by all concurrent calls."""

    def __init__(self, nodes: str | list[str], token: str = "dev", **options: Any) -> None:
        super().__init__(nodes, token, **options)
        self._conn: _AsyncConn | None = None
        self._dropped: set[_AsyncConn] = set()
        self._connect_lock = asyncio.Lock()
        # The server stops reading past MAX_IN_FLIGHT; queue here instead.
        self._in_flight = asyncio.Semaphore(MAX_IN_FLIGHT)
        # and refuses long polls past its per-connection cap (OVERLOADED): queue those too.
        self._polls = asyncio.Semaphore(MAX_POLLS_PER_CONNECTION)
        self.connections_opened = 0  # observability (tests assert pipelining)

    @property
    def nodes(self) -> list[str]:
        return list(self._nodes.addrs)

    def __repr__(self) -> str:
        return f"AsyncClient({self._nodes.describe()!r}, role={self.role!r})"

    def _clock(self) -> float:
        return asyncio.get_running_loop().time()

    async def _run(self, plan: Plan) -> Any:  # type: ignore[override]
        result: Any = None
        try:
            while True:
                call = plan.send(result)
                result = await self._call(call)
        except StopIteration as stop:
            return stop.value

    async def _call(self, call: _Call) -> Any:
        clock = asyncio.get_running_loop().time
        budget = self.timeout_s + call.wait_s
        attempts = _Attempts(self._nodes, clock() + budget, clock, budget)
        may_reopen = True
        while True:
            if self._closed:
                raise Unavailable("the raftq client is closed")
            conn = self._conn if self._conn is not None and not self._conn.closed else None
            addr = conn.addr if conn is not None else self._nodes.current()
            kept = conn is not None
            try:
                deadline = attempts.attempt_deadline(call.wait_s)
                if conn is None:
                    try:
                        async with asyncio.timeout_at(deadline):
                            conn = await self._connection()
                    except TimeoutError:
                        raise _NoReply(addr, f"no connection for {call.op} in time") from None
                addr = conn.addr
                if call.wait_s:
                    async with self._polls, self._in_flight:
                        return await conn.request(call.op, call.packed, deadline)
                async with self._in_flight:
                    return await conn.request(call.op, call.packed, deadline)
            except _RETRYABLE as e:
                if isinstance(e, _ConnectionLost):
                    addr = e.addr
                if conn is not None:
                    self._drop(conn)
                if kept and may_reopen and _closed_while_kept(e):
                    may_reopen = False
                    continue
                await asyncio.sleep(attempts.on_error(e, addr))

    async def _connection(self) -> _AsyncConn:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        async with self._connect_lock:
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn
            self._conn = await self._open(self._nodes.current())
            return self._conn

    async def _open(self, addr: str) -> _AsyncConn:
        host, port = parse_address(addr)
        tls_options: dict[str, Any] = {} if self._tls_context is None else {
            "ssl": self._tls_context, "server_hostname": host}
        try:
            async with asyncio.timeout(self.connect_timeout_s):  # the TLS handshake included
                _, conn = await asyncio.get_running_loop().create_connection(
                    lambda: _AsyncConn(addr), host, port, **tls_options)
        except TimeoutError:
            raise _ConnectionLost(addr, f"connect timed out after {self.connect_timeout_s:g}s") from None
        except ssl.SSLError as e:
            raise handshake_error(addr, e) or _ConnectionLost(addr, str(e) or type(e).__name__) from None
        except OSError as e:
            raise _ConnectionLost(addr, str(e) or type(e).__name__) from None
        self.connections_opened += 1
        try:
            try:
                await conn.request("hello", pack_args("hello", hello_args(self.token, self.role)))
            except _NoReply:
                raise
            except _ConnectionLost as e:
                probe = self._tls is None and await asyncio.to_thread(
                    probe_speaks_tls, host, port, self.connect_timeout_s)
                raise self._unanswered_hello(addr, e, probe) from None
            if not self._learned:
                try:
                    self._nodes.learn(await conn.request("cluster_status", pack_args("cluster_status", {})))
                except RaftqError:
                    pass  # best effort: the seeds still work
                self._learned = True
        except BaseException:
            await conn.aclose()
            raise
        return conn

    def _drop(self, conn: _AsyncConn) -> None:
        if self._conn is conn:
            self._conn = None
        if not conn.closed:
            conn.abort()
        # Keep a reference until the transport reports the connection gone.
        if not conn.done.done():
            self._dropped.add(conn)
            conn.done.add_done_callback(lambda _f, c=conn: self._dropped.discard(c))

    async def close(self) -> None:
        """Close the connection; in-flight and later calls raise Unavailable."""
        self._closed = True
        conns = list(self._dropped)
        if self._conn is not None:
            conns.append(self._conn)
            self._conn = None
        for conn in conns:
            await conn.aclose()
        self._dropped.clear()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
