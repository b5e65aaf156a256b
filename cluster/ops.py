"""The client ops, declared once: name, kind, who may call it, its arguments.

`OPS` is the one table of the requests a client may send after `hello`. The
rest derives from it:

- protocol.OPS (the ops the codec accepts) and the server's dispatch: every op
  has exactly one handler, `Node._op_<name>`, except a `direct` op, whose
  checked args are its command (checked when cluster.server loads);
- the server's argument checks: `Op.check(args)` runs before the handler and
  hands it the checked values, defaults filled in;
- the clients' argument checks: `Client` and `AsyncClient` build a request's
  args and run the same `Op.check` before any I/O;
- the server's heavy-read and long-poll caps (`HEAVY_OPS`, `LONG_POLL_OPS`);
- docs/contracts.md's op table (`python -m cluster.ops --markdown`; a test
  keeps the doc equal to it).

What an op checks here is the request: types and bounds of the arguments a
node needs to build a command. The command's full shape (a JobSpec's fields,
a schedule) is checked once, on apply, by replication.model.validate_command:
an arg of type "map" or "list" without `item` is only checked to be one.
Unknown argument names are ignored (older and newer clients interoperate).

`roles` says who may call the op (cluster/roles.py enforces it at every
request): `producer` submits, cancels and reads, `worker` runs jobs, `admin`
manages queues, schedules, retries and dead letters and reads. `queue_arg` names the argument that names the
queue(s) the op touches (a dotted path; `[]` is every item of a list), for
queue scoping; None: the op names no queue (ops naming a job by `id` act on
that job's queue, known only to the replica).

Checks are built once, at import: `Op.check` is a loop over prebuilt
closures, since submit and lease run it on every request.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from cluster.errors import BadRequest
from replication.model import (DEFAULT_QUEUE, LEASE_TOKEN_LEN, MAX_ALERT_NAME_LEN, MAX_ALERT_TARGET_LEN,
                               MAX_ALERT_WHEN_LEN, MAX_ATTEMPTS, MAX_BATCH, MAX_COMPLETE_BATCH, MAX_HEARTBEAT_LEASES,
                               MAX_ID_LEN, MAX_LEASE_BATCH, MAX_LEASE_MS, MAX_LEASE_QUEUES, MAX_MS, MAX_NAME_LEN,
                               MAX_RATE_MILLI, MAX_RUNNING_LIMIT, MAX_SCHEDULE_NAME_LEN, MIN_LEASE_MS, STATES)

Kind = Literal["write", "read", "long_poll"]
ArgType = Literal["str", "text", "hex", "int", "number", "bool", "map", "list", "any"]

KINDS: tuple[str, ...] = ("write", "read", "long_poll")
PRODUCER = "producer"
WORKER = "worker"
ADMIN = "admin"
ROLES: tuple[str, ...] = (PRODUCER, WORKER, ADMIN)
_P = frozenset({PRODUCER})
_W = frozenset({WORKER})
_A = frozenset({ADMIN})
_READ = frozenset({PRODUCER, ADMIN})        # reads of jobs, queues, workers and schedules
_ANY = frozenset({PRODUCER, WORKER, ADMIN})  # reads a worker needs too (finding the nodes, the registry)

# Request limits of the server alone (the machine never sees these values).
MAX_WAIT_S = 60.0       # longest long poll (lease, wait) a client may ask for
MAX_LIST_LIMIT = 1000   # jobs per list page
# Longest `every` schedule period (a century): with a bound that does not move
# with the clock, `schedule add --every` shows the range the leader accepts.
MAX_EVERY_MS = 100 * 365 * 86_400_000


@dataclass(frozen=True)
class Arg:
    """One argument. Absent and None are the same: the default applies.

    `type`: "str" non-empty string (at most `max_len` chars), "text" any
    string, "hex" exactly `max_len` lowercase hex digits, "int" integer (bool is not one), "number" finite int or float,
    "bool", "map", "list" (of `item`, when given; `min`/`max` bound its
    length), "any" msgpack value. `min`/`max` bound an int or number.
    `label` names the argument in error messages (default: its name).
    """

    name: str
    type: ArgType
    required: bool = False
    default: Any = None
    min: float | None = None
    max: float | None = None
    max_len: int | None = None
    choices: tuple[str, ...] | None = None
    item: "Arg | tuple[Arg, ...] | None" = None
    label: str = ""
    doc: str = ""

    def describe(self) -> str:
        """What a valid value is, in words (error messages and the docs)."""
        t = self.type
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        if t == "str":
            return f"a string of 1..{self.max_len} characters" if self.max_len else "a non-empty string"
        if t == "text":
            return "a string"
        if t == "hex":
            return f"{self.max_len} lowercase hex digits"
        if t in ("int", "number"):
            noun = "an integer" if t == "int" else "a number"
            if self.min is not None and self.max is not None:
                return f"{noun} in {_num(self.min)}..{_num(self.max)}"
            return f"{noun} >= {_num(self.min)}" if self.min is not None else noun
        if t == "bool":
            return "true or false"
        if t == "map":
            return "a map"
        if t == "list":
            what = "items"
            if isinstance(self.item, Arg):
                what = "strings" if self.item.type == "str" else f"{self.item.type}s"
            elif isinstance(self.item, tuple):
                what = "maps {" + ", ".join(a.name for a in self.item) + "}"
            lo = int(self.min or 0)
            if self.max is not None and lo == self.max:
                return f"a list of {lo} {what}"
            if self.max is not None:
                return f"a list of {lo}..{_num(self.max)} {what}"
            return f"a non-empty list of {what}" if lo else f"a list of {what}"
        return "any msgpack value"


def _num(x: float) -> str:
    """A bound as people write it: 86400000, 0.001 (never 8.64e+07)."""
    return str(int(x)) if float(x).is_integer() else repr(x)


# Per argument: (name, default, checker, the Arg if required else None).
_Plan = tuple[tuple[str, Any, Callable[[Any], Any], "Arg | None"], ...]


@dataclass(frozen=True)
class Op:
    name: str
    kind: Kind
    roles: frozenset[str]  # a credential holding any of these roles may call it (cluster/roles.py)
    args: tuple[Arg, ...]
    result: str
    queue_arg: str | None = None
    heavy: bool = False  # cost grows with the state: capped per connection and per node
    one_of: tuple[str, ...] = ()  # at least one of these args must be given (not None or false)
    # The checked args are the command: the server proposes {"op": name, **args}
    # and answers its result, with no handler of its own.
    direct: bool = False
    _plan: _Plan = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_plan", _plan_of(self.args))

    def check(self, args: dict[str, Any]) -> dict[str, Any]:
        """Every declared argument, checked, defaults filled in; BadRequest
        naming the first bad one."""
        out: dict[str, Any] = {}
        for name, default, check, required in self._plan:
            value = args.get(name)
            if value is None:
                if required is not None:
                    raise BadRequest(f"{self.name} needs {name!r}: {required.describe()}")
                out[name] = default
            else:
                out[name] = check(value)
        if self.one_of and not any(out[n] is not None and out[n] is not False for n in self.one_of):
            raise BadRequest(f"{self.name} needs one of {', '.join(repr(n) for n in self.one_of)}")
        return out


# --------------------------------------------------------------------- checkers


def _plan_of(args: tuple[Arg, ...]) -> _Plan:
    return tuple((a.name, a.default, _checker(a), a if a.required else None) for a in args)


def _fail(arg: Arg, value: Any) -> BadRequest:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return BadRequest(f"{arg.label or repr(arg.name)} must be {arg.describe()}, got {shown}")


_HEX_DIGITS = "0123456789abcdef"


def _any(value: Any) -> Any:
    return value


def _checker(arg: Arg) -> Callable[[Any], Any]:
    """A function returning a valid value of `arg` (the same object) or raising BadRequest."""
    t = arg.type
    if t == "any":
        return _any
    if t == "str":
        max_len = arg.max_len or sys.maxsize
        choices = arg.choices

        def check_str(v: Any) -> Any:
            if not isinstance(v, str) or not 0 < len(v) <= max_len or (choices is not None and v not in choices):
                raise _fail(arg, v)
            return v
        return check_str
    if t == "text":
        def check_text(v: Any) -> Any:
            if not isinstance(v, str):
                raise _fail(arg, v)
            return v
        return check_text
    if t == "hex":
        if arg.max_len is None:
            raise ValueError(f"{arg.name}: a hex argument needs its length (max_len)")
        length = arg.max_len

        def check_hex(v: Any) -> Any:
            if not isinstance(v, str) or len(v) != length or v.strip(_HEX_DIGITS):
                raise _fail(arg, v)
            return v
        return check_hex
    if t == "int" or t == "number":
        # Every number here is bounded, so the range test also refuses inf (and NaN).
        if t == "number" and (arg.min is None or arg.max is None):
            raise ValueError(f"{arg.name}: a number argument needs both bounds")
        lo = -math.inf if arg.min is None else arg.min
        hi = math.inf if arg.max is None else arg.max
        kinds: tuple[type, ...] = (int,) if t == "int" else (int, float)

        def check_num(v: Any) -> Any:
            # bool is an int subclass, never a count here
            if v.__class__ not in kinds or not lo <= v <= hi:
                raise _fail(arg, v)
            return v
        return check_num
    if t == "bool":
        def check_bool(v: Any) -> Any:
            if v is not True and v is not False:
                raise _fail(arg, v)
            return v
        return check_bool
    if t == "map":
        def check_map(v: Any) -> Any:
            if not isinstance(v, dict):
                raise _fail(arg, v)
            return v
        return check_map
    return _list_checker(arg)


def _list_checker(arg: Arg) -> Callable[[Any], Any]:
    lo = int(arg.min or 0)
    hi = sys.maxsize if arg.max is None else int(arg.max)
    item = arg.item
    check_item: Callable[[Any], Any] | None = None
    if isinstance(item, Arg):
        check_item = _checker(item)
    elif isinstance(item, tuple):
        fields = _plan_of(item)
        shape = "a map {" + ", ".join(a.name for a in item) + "}"

        def check_fields(v: Any) -> Any:
            if not isinstance(v, dict):
                raise BadRequest(f"must be {shape}")
            for name, _default, check, required in fields:
                value = v.get(name)
                if value is None:
                    if required is not None:
                        raise BadRequest(f"{name!r} is required: {required.describe()}")
                else:
                    check(value)
            return v
        check_item = check_fields

    def check_list(v: Any) -> Any:
        if not isinstance(v, list) or not lo <= len(v) <= hi:
            raise _fail(arg, v)
        if check_item is not None:
            for i, x in enumerate(v):
                try:
                    check_item(x)
                except BadRequest as exc:
                    raise BadRequest(f"{arg.name}[{i}]: {exc.message}") from None
        return v
    return check_list


# ------------------------------------------------------------------- the table

_JOB_ID = Arg("id", "str", required=True, max_len=MAX_ID_LEN, label="job id")
_STALE_OK = Arg("stale_ok", "bool", default=False, doc="any node answers, from its replica")
_ATTEMPT = Arg("attempt", "int", required=True, min=0, max=MAX_ATTEMPTS, doc="the fencing token of the lease")
_WORKER = Arg("worker", "str", required=True, max_len=MAX_NAME_LEN, label="worker name")
_LEASE_MS = Arg("lease_ms", "int", min=MIN_LEASE_MS, max=MAX_LEASE_MS, doc="default: the cluster's lease_ttl_s")
_SCHEDULE_NAME = Arg("name", "str", required=True, max_len=MAX_SCHEDULE_NAME_LEN, label="schedule name")
_LEASE_TOKEN = Arg("lease_token", "hex", required=True, max_len=LEASE_TOKEN_LEN,
                   doc="the LeasedJob's; only the lease's holder has it")
_ALERT_NAME = Arg("name", "str", required=True, max_len=MAX_ALERT_NAME_LEN, label="alert name")
_COMPLETION = (_JOB_ID, _ATTEMPT, _LEASE_TOKEN, Arg("result", "any"))

OPS: dict[str, Op] = {op.name: op for op in (
    Op("submit", "write", _P, (
        Arg("job", "map", required=True, doc="JobSpec, id required"),
    ), '`{"id", "created", "state"}`', queue_arg="job.queue"),
    Op("submit_many", "write", _P, (
        Arg("jobs", "list", required=True, min=1, max=MAX_BATCH, doc="[JobSpec]"),
    ), '`{"results": [...]}`', queue_arg="jobs[].queue"),
    Op("get", "read", _READ, (_JOB_ID, _STALE_OK), "JobView or `NOT_FOUND`"),
    Op("wait", "long_poll", _READ, (
        _JOB_ID,
        Arg("timeout_s", "number", default=10.0, min=0, max=MAX_WAIT_S),
        _STALE_OK,
    ), "JobView once final, or the current JobView when timeout_s elapses"),
    Op("cancel", "write", _P, (_JOB_ID,), '`{"state"}`', direct=True),
    Op("retry", "write", _A, (_JOB_ID,), '`{"state"}`', direct=True),
    Op("list", "read", _READ, (
        Arg("state", "str", choices=STATES),
        Arg("queue", "str", max_len=MAX_NAME_LEN),
        Arg("limit", "int", default=100, min=1, max=MAX_LIST_LIMIT),
        Arg("cursor", "int", min=0, doc="the integer a previous list returned"),
        Arg("schedule", "str", max_len=MAX_SCHEDULE_NAME_LEN),
        _STALE_OK,
    ), '`{"jobs": [JobView], "cursor"}`', queue_arg="queue", heavy=True),
    Op("stats", "read", _READ, (_STALE_OK,), 'machine stats + `{"node_id", "role", "leader"}`', heavy=True),
    Op("cluster_status", "read", _ANY, (),
       '`{"leader": client addr or None, "self": id, "term", "commit_index", "last_applied", '
       '"nodes": [{"id", "client", "raft", "http", "role"}]}`, role as the answering node sees it: leader, '
       'follower, candidate, or unreachable (no Raft link to it); any node answers; every client calls it '
       'once when it first connects', heavy=True),
    Op("digest", "read", _READ, (),
       '`{"digest", "last_applied", "node_id"}` of the answering replica (any node; tests compare replicas)',
       heavy=True),
    Op("lease", "long_poll", _W, (
        _WORKER,
        Arg("queues", "list", default=(DEFAULT_QUEUE,), min=1, max=MAX_LEASE_QUEUES,
            item=Arg("queue", "str", max_len=MAX_NAME_LEN)),
        Arg("max", "int", default=1, min=1, max=MAX_LEASE_BATCH),
        Arg("wait_s", "number", default=5.0, min=0, max=MAX_WAIT_S),
        _LEASE_MS,
        Arg("capacity", "map", doc="{cpu?, mem_mb?}: the worker's free capacity"),
    ), '`{"jobs": [LeasedJob]}`; long-polls up to wait_s when nothing is ready', queue_arg="queues[]"),
    Op("heartbeat", "write", _W, (
        _WORKER,
        Arg("leases", "list", required=True, max=MAX_HEARTBEAT_LEASES, item=(
            _JOB_ID, _ATTEMPT, _LEASE_TOKEN, Arg("progress", "list", min=2, max=2, doc="[fraction, message]"))),
        _LEASE_MS,
    ), '`{"lost", "cancel"}`'),
    Op("complete", "write", _W, _COMPLETION, '`{"state"}`', direct=True),
    Op("complete_many", "write", _W, (
        Arg("items", "list", required=True, min=1, max=MAX_COMPLETE_BATCH, item=_COMPLETION),
    ), '`{"results": [{"state"} or {"error", "message"}]}` (a worker\'s batched outbox)'),
    Op("fail", "write", _W, (
        _JOB_ID, _ATTEMPT, _LEASE_TOKEN,
        Arg("error", "text", required=True),
        Arg("retryable", "bool", default=True),
    ), '`{"state"}`', direct=True),
    Op("requeue_failed", "write", _A, (
        Arg("ids", "list", min=1, item=Arg("id", "str", max_len=MAX_ID_LEN), doc="committed in batches of 1000"),
        Arg("queue", "str", max_len=MAX_NAME_LEN),
        Arg("all", "bool", default=False),
    ), 'ids: `{"requeued": [id], "skipped": [id]}`; queue/all: `{"requeued": n, "skipped": n, "more": bool}`',
       queue_arg="queue", one_of=("ids", "queue", "all")),
    Op("queue_limit", "write", _A, (
        Arg("queue", "str", required=True, max_len=MAX_NAME_LEN),
        Arg("max_running", "int", min=0, max=MAX_RUNNING_LIMIT),
        Arg("rate_per_s", "number", min=0.001, max=MAX_RATE_MILLI / 1000),
    ), '`{"queue", "max_running", "rate_per_s"}`', queue_arg="queue"),
    Op("queues", "read", _READ, (_STALE_OK,), '`{"queues": [...]}` (machine `queues()`)', heavy=True),
    Op("workers", "read", _ANY, (_STALE_OK,), '`{"workers": [...]}` (machine `workers()`)', heavy=True),
    Op("schedule_add", "write", _A, (
        Arg("schedule", "map", required=True, doc="as the machine op, without next_fire_ms"),
    ), '`{"name", "created", "next_fire_ms"}`; any malformed field (a cron with no next date such as '
       '`0 0 31 2 *`, a seconds field, an unknown zone, a wrong type, `every_ms` under `min_schedule_interval_s`, template '
       'args over `max_args_bytes`): `BAD_REQUEST` / `TOO_LARGE` naming the field', queue_arg="schedule.job.queue"),
    Op("schedule_list", "read", _READ, (_STALE_OK,),
       '`{"schedules": [{"name", "cron", "every_ms", "tz", "job", "misfire", "max_catch_up", "paused", '
       '"next_fire_ms", "last_fire_ms", "fired", "created_ms", "missed"}]}`', heavy=True),
    Op("schedule_remove", "write", _A, (_SCHEDULE_NAME,), '`{"name", "removed": true}`', direct=True),
    Op("schedule_pause", "write", _A, (_SCHEDULE_NAME,), '`{"name", "paused": true}`', direct=True),
    Op("schedule_resume", "write", _A, (_SCHEDULE_NAME,), '`{"name", "paused": false, "next_fire_ms"}`'),
    Op("alert_add", "write", _A, (
        _ALERT_NAME,
        Arg("when", "str", required=True, max_len=MAX_ALERT_WHEN_LEN, doc="a condition, docs/alerting.md"),
        Arg("for_ms", "int", default=0, min=0, max=MAX_MS, doc="how long it must hold before firing"),
        Arg("webhook", "str", max_len=MAX_ALERT_TARGET_LEN, doc="http(s) URL POSTed a JSON notification"),
        Arg("email", "str", max_len=MAX_ALERT_TARGET_LEN, doc="address mailed through [alerting] smtp_host"),
    ), '`{"name", "created"}`; a condition outside the grammar, or not exactly one of webhook and email: '
       '`BAD_REQUEST` saying what is wrong; the name taken by another definition: `CONFLICT`',
       one_of=("webhook", "email")),
    Op("alert_list", "read", _A, (_STALE_OK,),
       '`{"alerts": [{"name", "when", "for_ms", "webhook", "email", "created_ms", "firing", "since_ms", '
       '"undelivered"}]}`', heavy=True),
    Op("alert_remove", "write", _A, (_ALERT_NAME,), '`{"name", "removed": true}` (its undelivered '
       'notifications are dropped)', direct=True),
)}

HEAVY_OPS: frozenset[str] = frozenset(op.name for op in OPS.values() if op.heavy)
LONG_POLL_OPS: frozenset[str] = frozenset(op.name for op in OPS.values() if op.kind == "long_poll")


def check(op: str, args: dict[str, Any]) -> dict[str, Any]:
    """`OPS[op].check(args)`: what the clients run before sending a request."""
    return OPS[op].check(args)


# ------------------------------------------------------------------- the docs

OPS_DOC_BEGIN = "<!-- ops table: generated by `python -m cluster.ops --markdown`; do not edit by hand -->"
OPS_DOC_END = "<!-- end of ops table -->"


def _arg_markdown(arg: Arg) -> str:
    text = f"`{arg.name}`" + ("" if arg.required else "?") + ": " + arg.describe()
    if arg.default is not None and arg.default is not False:
        text += f" = {json.dumps(arg.default)}"
    if arg.doc:
        text += f" ({arg.doc})"
    return text


def markdown() -> str:
    """docs/contracts.md's op table, between its two marker lines."""
    lines = [OPS_DOC_BEGIN, "",
             "| op | kind | roles | args | queue arg | result |",
             "|---|---|---|---|---|---|"]
    for op in OPS.values():
        args = "; ".join(_arg_markdown(a) for a in op.args) or "–"
        if op.one_of:
            args += "; at least one of " + ", ".join(f"`{n}`" for n in op.one_of)
        kind = op.kind.replace("_", " ") + (", heavy" if op.heavy else "")
        queue = f"`{op.queue_arg}`" if op.queue_arg else "–"
        roles = ", ".join(r for r in ROLES if r in op.roles)
        lines.append(f"| `{op.name}` | {kind} | {roles} | {args.replace('|', '/')} | {queue} | {op.result} |")
    lines += ["", OPS_DOC_END]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m cluster.ops --markdown")
    print(markdown())
