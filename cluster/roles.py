"""Who may do what: the roles, the ops each role allows, and queue scopes.

A credential (`cluster.config.Credential`) holds one or more roles and may be
confined to a list of queues. At hello the node resolves the presented token
to an `Access` (`Credentials.resolve`), which the connection keeps:

- `ops`, the frozenset of ops its roles allow, checked on every request by a
  set lookup (the hot path: submit, lease, complete pay nothing more);
- `queues`, None for an unscoped credential; otherwise `scope_refusal` checks
  every request: an op naming a queue must name one inside, an op naming a job
  must name a job whose queue is inside (looked up on this replica).

`OP_ROLES` is the op table's `roles` column (cluster/ops.py).
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster.errors import Forbidden
from cluster.ops import OPS
from replication.model import DEFAULT_QUEUE  # the queue of a job spec that names none

if TYPE_CHECKING:
    from cluster.config import Credential
    from replication.machine import JobMachine
    from replication.raft import RaftNode

# The table of ops says who may call each one (cluster/ops.py, Op.roles).
OP_ROLES: dict[str, frozenset[str]] = {name: op.roles for name, op in OPS.items()}

# Every authenticated connection may send these whatever its roles: a second
# hello is answered by the dispatcher (BAD_REQUEST) as it always was.
_ALWAYS = frozenset({"hello"})

# Reads that span every queue and show what is inside other queues' jobs or
# schedules: a scoped credential is refused them (aggregate counts such as
# stats and queues stay readable: they show no job). Alert rules are
# cluster-wide (any queue, the nodes), so they are refused too.
_UNSCOPED_ONLY = frozenset({"schedule_list", "alert_add", "alert_list", "alert_remove"})

# Ops whose args name job ids, and where: top-level `id`, or `id` in each map
# of a list. Derived from the op table, so that a new op naming a job is
# scoped without an edit here.
_JOB_ID_OPS = frozenset(name for name, op in OPS.items() if any(a.name == "id" for a in op.args))
_JOB_LIST_OPS = {name: a.name for name, op in OPS.items() for a in op.args
                 if isinstance(a.item, tuple) and any(f.name == "id" for f in a.item)}
_SCHEDULE_OPS = frozenset({"schedule_remove", "schedule_pause", "schedule_resume"})


def ops_for(roles: Iterable[str]) -> frozenset[str]:
    """Every op the union of `roles` allows."""
    wanted = set(roles)
    return _ALWAYS | frozenset(op for op, allowed in OP_ROLES.items() if allowed & wanted)


@dataclass(frozen=True, slots=True)
class Access:
    """What one authenticated connection may do (decided at hello)."""

    name: str                          # the credential's name, for messages
    roles: tuple[str, ...]
    ops: frozenset[str]
    queues: frozenset[str] | None      # None: every queue

    def op_refusal(self, op: str) -> Forbidden:
        need = " or ".join(sorted(OP_ROLES.get(op, ())))
        return Forbidden(f"{op}: credential {self.name!r} ({', '.join(self.roles)}) may not run it; "
                         f"it needs the {need or 'no'} role")


class Credentials:
    """The cluster's tokens and the `Access` each one grants."""

    def __init__(self, credentials: Iterable[Credential]) -> None:
        # Digests, compared in constant time: the node never holds a token in
        # a structure whose lookup time depends on how close a guess came.
        self._entries = [(_digest(c.token), Access(name=c.name, roles=tuple(c.roles), ops=ops_for(c.roles),
                                                   queues=None if c.queues is None else frozenset(c.queues)))
                         for c in credentials]

    def resolve(self, token: Any) -> Access | None:
        """The access of the credential whose token this is, else None."""
        if not isinstance(token, str):
            return None
        digest = _digest(token)
        found = None
        for known, access in self._entries:
            if hmac.compare_digest(digest, known):
                found = access
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# ---- queue scope --------------------------------------------------------------


def scope_refusal(access: Access, op: str, args: dict[str, Any], raft: RaftNode,
                  machine: JobMachine) -> Forbidden | None:
    """FORBIDDEN when a scoped credential's request reaches outside its queues.

    Job ids are looked up on this replica. An id it does not know passes (the
    handler answers NOT_FOUND, or NOT_LEADER from a follower that has not
    seen the job yet): refusing it here would break the clients' redirects.
    Malformed args pass too: the handler refuses them with BAD_REQUEST.
    """
    queues = access.queues
    assert queues is not None
    if op in _UNSCOPED_ONLY:
        return Forbidden(f"{op}: credential {access.name!r} is limited to queues {_names(queues)}; "
                         f"{op} shows every queue")
    named: list[str] = []      # queues the request names
    job_ids: list[Any] = []    # jobs it touches
    if op == "submit":
        _spec_targets(args.get("job"), named, job_ids)
    elif op == "submit_many":
        for spec in _maps(args.get("jobs")):
            _spec_targets(spec, named, job_ids)
    elif op == "lease":
        wanted = args.get("queues") or [DEFAULT_QUEUE]
        named += wanted if isinstance(wanted, list) else []
    elif op in _JOB_ID_OPS:
        job_ids.append(args.get("id"))
    elif op in _JOB_LIST_OPS:
        job_ids += [item.get("id") for item in _maps(args.get(_JOB_LIST_OPS[op]))]
    elif op == "list":
        queue = args.get("queue")
        if queue is None:
            return Forbidden(f"list: credential {access.name!r} is limited to queues {_names(queues)}; "
                             f"name one with 'queue'")
        named.append(queue)
    elif op == "requeue_failed":
        if isinstance(args.get("ids"), list):
            job_ids += args["ids"]
        elif args.get("queue") is not None:
            named.append(args["queue"])
        elif args.get("all"):
            return Forbidden(f"requeue_failed: credential {access.name!r} is limited to queues "
                             f"{_names(queues)}; name one with 'queue' instead of 'all'")
    elif op == "queue_limit":
        named.append(args.get("queue"))
    elif op == "schedule_add":
        sched = args.get("schedule")
        _spec_targets(sched.get("job") if isinstance(sched, dict) else None, named, job_ids)
    elif op in _SCHEDULE_OPS:
        name = args.get("name")
        if isinstance(name, str):
            with raft.reading():
                sched = machine.get_schedule(name)
            job = sched.get("job") if sched is not None else None
            if isinstance(job, dict):
                named.append(job.get("queue") or DEFAULT_QUEUE)
    for queue in named:
        if isinstance(queue, str) and queue not in queues:
            return Forbidden(f"{op}: credential {access.name!r} is limited to queues {_names(queues)}, "
                             f"not {queue!r}")
    if job_ids:
        with raft.reading():
            for job_id in job_ids:
                view = machine.get(job_id) if isinstance(job_id, str) else None
                if view is not None and view["queue"] not in queues:
                    return Forbidden(f"{op}: credential {access.name!r} is limited to queues {_names(queues)}; "
                                     f"job {job_id!r} is in queue {view['queue']!r}")
    return None


def _spec_targets(spec: Any, named: list[str], job_ids: list[Any]) -> None:
    """The queue a job spec goes to, and the jobs it touches: its own id (an
    existing job would be answered with its state) and its dependencies (whose
    outcome decides this job's)."""
    if not isinstance(spec, dict):
        return
    named.append(spec.get("queue") or DEFAULT_QUEUE)
    job_ids.append(spec.get("id"))
    deps = spec.get("depends_on")
    if isinstance(deps, list):
        job_ids += deps


def _maps(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _names(queues: frozenset[str]) -> str:
    return ", ".join(sorted(queues))
