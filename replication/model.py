"""The job record, its public views, its states, and the limits and
validation of commands.

Everything here is plain data and pure functions. `validate_command` is THE
check of a command's shape: the machine runs it on apply, on every replica
(apply must never raise). The server deliberately does not run it before
proposing (that cost the leader a sixth of its CPU per submitted job); it
checks only the request arguments it needs to build a command
(cluster/ops.py), so a malformed command may reach the log, where every
replica rejects it alike with the same BAD_REQUEST the client then gets.
The states and limits defined here are the only definitions: the server, the
clients, the CLI and cluster/ops.py import them.

Units: integer milliseconds inside (`*_ms`); the public `JobView` carries epoch
seconds as float (`*_at`, `timeout_s`), per docs/contracts.md section 1.

No clock, randomness, I/O or threads here: this module must stay deterministic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable

# The codes the machine answers with, re-exported for replication/machine.py.
from replication.codes import BAD_REQUEST, CONFLICT, INTERNAL, LEASE_LOST, NOT_FOUND  # noqa: F401

# --- states -------------------------------------------------------------------

PENDING = "pending"
SCHEDULED = "scheduled"
QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCELLED = "cancelled"

# Fixed order: stats() and the snapshot list states in this order.
STATES: tuple[str, ...] = (PENDING, SCHEDULED, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL_STATES: frozenset[str] = frozenset((SUCCEEDED, FAILED, CANCELLED))


# --- limits ---------------------------------------------------------------------

MAX_ID_LEN = 200            # job id, type, queue, unique_key, worker name
MAX_NAME_LEN = 200
MAX_BATCH = 10_000          # specs per submit_many
MAX_LEASE_BATCH = 1_000     # jobs per lease command (`max`)
MAX_LEASE_QUEUES = 100      # queues named in one lease command
MAX_HEARTBEAT_LEASES = 10_000
MAX_COMPLETE_BATCH = 1_000   # items per complete_many
# A lease token: 16 bytes as lowercase hex, derived on apply from the 16-byte
# nonce the leader stamps on each lease command (replication/state/leasing.py).
LEASE_NONCE_BYTES = 16
LEASE_TOKEN_LEN = 32
# A lease a request may ask for (lease, heartbeat): shorter than a network
# round trip plus a heartbeat interval, a lease would expire while granted.
MIN_LEASE_MS = 100
MAX_LEASE_MS = 86_400_000   # one day
# What apply accepts in a command: any positive duration. Commands come from the
# server, which enforces MIN_LEASE_MS; apply keeps the wider rule so that the
# machine's own tests may drive millisecond leases, and narrowing what apply
# accepts would change how a log replays.
MIN_COMMAND_LEASE_MS = 1
MAX_MS = 2**53              # any absolute time or duration in ms (exact in a float)
MAX_PRIORITY = 2**31 - 1
MIN_PRIORITY = -(2**31)
MAX_ATTEMPTS = 1_000
MAX_BACKOFF_MS = 86_400_000  # accepted base; the computed delay is capped at BACKOFF_CAP_MS
BACKOFF_CAP_MS = 300_000
MAX_ERROR_LEN = 65_536      # longer fail() errors are truncated (not rejected: a
MAX_PROGRESS_MSG_LEN = 1_000  # long traceback must not leave a job stuck running)
MAX_VALUE_DEPTH = 32        # nesting of args / result
MSGPACK_INT_MIN = -(2**63)
MSGPACK_INT_MAX = 2**64 - 1

MAX_DEPS = 1_000             # depends_on entries per job
MAX_REQUEUE_BATCH = 1_000    # ids per requeue_failed command
MAX_CPU_M = 10**9            # resources / capacity cpu, in thousandths of a cpu
MAX_MEM_MB = 2**40
MAX_LEASE_EXPIRIES = 1_000
MAX_RUNNING_LIMIT = 10**9
MAX_RATE_MILLI = 10**9       # rate limits, in thousandths of a job per second
MAX_SCHEDULE_NAME_LEN = 150  # leaves room in the derived job id "sched:NAME:FIRE_MS"
MAX_SCHEDULES = 10_000
MAX_CATCH_UP = 1_000
MAX_REASON_LEN = 1_000       # error text of a job cancelled through its dependencies
MAX_ALERTS = 1_000           # alert rules (replication/state/alerts.py)
MAX_ALERT_NAME_LEN = 150
MAX_ALERT_WHEN_LEN = 500     # a condition's text (cluster/alert_rules.py parses it)
MAX_ALERT_TARGET_LEN = 2_000  # a webhook URL or an email address
MAX_ALERT_DETAIL_LEN = 1_000  # what the evaluator saw, carried by a transition
MAX_PENDING_ALERTS = 1_000   # transitions recorded and not yet delivered; older ones are dropped
ALERT_STATES: tuple[str, ...] = ("firing", "resolved")

DEFAULT_QUEUE = "default"
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_MS = 1_000
DEFAULT_MAX_LEASE_EXPIRIES = 3
MISFIRE_POLICIES: tuple[str, ...] = ("skip", "catch_up")

OPS: frozenset[str] = frozenset((
    "submit", "submit_many", "lease", "heartbeat", "complete", "complete_many", "fail", "cancel", "retry", "tick",
    "requeue_failed", "queue_limit", "schedule_add", "schedule_remove", "schedule_pause",
    "schedule_resume", "fire", "alert_add", "alert_remove", "alert_transition", "alert_delivered",
))


# --- the job record --------------------------------------------------------------


@dataclass(slots=True)
class Job:
    """One job, all of it plain data (msgpack-encodable field by field).

    `seq` orders the job FIFO within its priority; the machine assigns it at
    submit and again at `retry`, and keeps it across requeues.
    `attempts` is the fencing token: `lease` increments it.
    `lease_token` is the secret of the current (or last) lease, derived when it
    is granted; only its holder may report on or renew that lease. None for a
    lease granted by a command without a nonce (fenced by attempt only).
    `worker`, `lease_deadline_ms` are set while `running`; a job cancelled while
    running keeps `worker` and `attempts` so that worker's next heartbeat is
    told to cancel.
    `lease_expiries` counts attempts lost to lease expiry (not handler errors);
    reaching `max_lease_expiries` quarantines the job (`failed`).
    `depends_on` lists the jobs that must succeed before this one leaves
    `pending`; `schedule` names the schedule that fired it; `resources` is
    `[cpu_m, mem_mb]` (thousandths of a cpu, MiB) a worker's free capacity
    must cover.
    """

    id: str
    type: str
    args: Any
    queue: str
    priority: int
    max_attempts: int
    timeout_ms: int | None
    backoff_ms: int
    unique_key: str | None
    seq: int
    state: str
    created_ms: int
    run_at_ms: int | None = None
    attempts: int = 0
    started_ms: int | None = None
    finished_ms: int | None = None
    result: Any = None
    error: str | None = None
    worker: str | None = None
    lease_deadline_ms: int | None = None
    progress: list[Any] | None = None
    lease_expiries: int = 0
    depends_on: list[str] | None = None
    schedule: str | None = None
    resources: list[int] | None = None
    max_lease_expiries: int = DEFAULT_MAX_LEASE_EXPIRIES
    # An optional trailing snapshot row field (not in JOB_FIELDS): a row holds it
    # only when it is not None, so snapshots without tokens keep their bytes.
    lease_token: str | None = None
    # Derived, never in a snapshot row (rebuilt by restore): the sizes of the
    # msgpack encodings of `args` and of `result` + `error`, for admission.
    args_bytes: int = 0
    outcome_bytes: int = 0


# Snapshot row layout (positional, so a million-job snapshot stays compact).
# Changing it means a new snapshot format number. Format 1 rows hold the
# first len(JOB_FIELDS_V1) fields; the rest take their defaults.
JOB_FIELDS_V1: tuple[str, ...] = (
    "id", "type", "args", "queue", "priority", "max_attempts", "timeout_ms",
    "backoff_ms", "unique_key", "seq", "state", "created_ms", "run_at_ms",
    "attempts", "started_ms", "finished_ms", "result", "error", "worker",
    "lease_deadline_ms", "progress", "lease_expiries",
)
JOB_FIELDS: tuple[str, ...] = JOB_FIELDS_V1 + ("depends_on", "schedule", "resources", "max_lease_expiries")
# A format 2 row may hold one more field after JOB_FIELDS: the job's lease
# token, present only when set (`Job.lease_token`).


_row_getter = attrgetter(*JOB_FIELDS)


def job_to_row(job: Job) -> list[Any]:
    row = list(_row_getter(job))
    if job.lease_token is not None:
        row.append(job.lease_token)
    return row


def job_from_row(row: list[Any], n_fields: int = len(JOB_FIELDS)) -> Job:
    """A Job from a snapshot row of `n_fields` fields (a prefix of JOB_FIELDS),
    plus the lease token when `n_fields` is all of them; its derived sizes are
    left for the caller to set."""
    with_token = n_fields == len(JOB_FIELDS)
    if not isinstance(row, (list, tuple)) or not (len(row) == n_fields or (with_token and len(row) == n_fields + 1)):
        raise ValueError(f"snapshot job row must have {n_fields} fields")
    job = Job(*row)
    if job.lease_token is not None and not isinstance(job.lease_token, str):
        raise ValueError(f"snapshot job {job.id!r}: lease token must be a string")
    if job.progress is not None:
        job.progress = list(job.progress)
    if job.depends_on is not None:
        job.depends_on = list(job.depends_on)
    if job.resources is not None:
        job.resources = list(job.resources)
    return job


def _sec(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000.0


def job_view(job: Job) -> dict[str, Any]:
    """The public JobView (contracts.md section 1): times as epoch float seconds."""
    return {
        "id": job.id,
        "type": job.type,
        "args": job.args,
        "queue": job.queue,
        "priority": job.priority,
        "state": job.state,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "result": job.result,
        "error": job.error,
        "created_at": _sec(job.created_ms),
        "started_at": _sec(job.started_ms),
        "finished_at": _sec(job.finished_ms),
        "run_at": _sec(job.run_at_ms),
        "timeout_s": _sec(job.timeout_ms),
        "unique_key": job.unique_key,
        "worker": job.worker,
        "progress": None if job.progress is None else list(job.progress),
        "depends_on": None if job.depends_on is None else list(job.depends_on),
        "schedule": job.schedule,
        "resources": resources_view(job.resources),
        "lease_expiries": job.lease_expiries,
        "max_lease_expiries": job.max_lease_expiries,
    }


def resources_view(resources: list[int] | None) -> dict[str, Any] | None:
    """`[cpu_m, mem_mb]` as the public `{"cpu": float, "mem_mb": int}`."""
    if resources is None:
        return None
    return {"cpu": resources[0] / 1000.0, "mem_mb": resources[1]}


def to_milli(value: int | float) -> int:
    """A cpu amount or a rate as integer thousandths (all such arithmetic is integer)."""
    return int(round(value * 1000))


def leased_view(job: Job) -> dict[str, Any]:
    """A LeasedJob: the JobView plus the fencing token (attempt), the lease
    deadline and the lease token (absent for a lease granted without one).
    The only view that carries the token: it goes to the lease's holder alone."""
    view = job_view(job)
    view["attempt"] = job.attempts
    view["lease_deadline_at"] = _sec(job.lease_deadline_ms)
    if job.lease_token is not None:
        view["lease_token"] = job.lease_token
    return view


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}


# --- validation --------------------------------------------------------------------
# Each checker returns an error message, or None when the value is acceptable.


def is_int(value: Any) -> bool:
    # bool is an int subclass in Python but never a valid count or time here.
    return type(value) is int


def _check_int(obj: dict[str, Any], key: str, lo: int, hi: int, *, optional: bool = False,
               default_ok: bool = False) -> str | None:
    if key not in obj or (optional and obj[key] is None):
        return None if (optional or default_ok) else f"{key!r} is required"
    value = obj[key]
    if not is_int(value):
        return f"{key!r} must be an integer, got {type(value).__name__}"
    if not lo <= value <= hi:
        return f"{key!r} must be between {lo} and {hi}, got {value}"
    return None


def _check_str(obj: dict[str, Any], key: str, *, max_len: int = MAX_NAME_LEN,
               optional: bool = False) -> str | None:
    if key not in obj or (optional and obj[key] is None):
        return None if optional else f"{key!r} is required"
    value = obj[key]
    if not isinstance(value, str):
        return f"{key!r} must be a string, got {type(value).__name__}"
    if not 1 <= len(value) <= max_len:
        return f"{key!r} must be 1..{max_len} characters long"
    return None


def check_plain(value: Any, depth: int = 0) -> str | None:
    """Is `value` plain msgpack data (so snapshots and results always encode)?"""
    if depth > MAX_VALUE_DEPTH:
        return f"value nested deeper than {MAX_VALUE_DEPTH} levels"
    if value is None or isinstance(value, (bool, str, bytes)):
        return None
    if type(value) is int:
        if MSGPACK_INT_MIN <= value <= MSGPACK_INT_MAX:
            return None
        return "integer out of msgpack range"
    if type(value) is float:
        return None
    if isinstance(value, (list, tuple)):
        for item in value:
            msg = check_plain(item, depth + 1)
            if msg:
                return msg
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int, bytes)) or isinstance(key, bool):
                return "map keys must be strings, integers or bytes"
            msg = check_plain(item, depth + 1)
            if msg:
                return msg
        return None
    return f"unsupported value type {type(value).__name__}"


_SPEC_KEYS = frozenset((
    "id", "type", "args", "queue", "priority", "max_attempts", "timeout_ms",
    "delay_ms", "run_at_ms", "backoff_ms", "unique_key", "depends_on", "resources",
    "max_lease_expiries",
))
# What a schedule's job template may hold (a fired job's id, time and
# dependencies come from the firing).
_TEMPLATE_KEYS = frozenset((
    "type", "args", "queue", "priority", "max_attempts", "timeout_ms", "backoff_ms",
    "unique_key", "resources", "max_lease_expiries",
))


def _check_number(value: Any, name: str, lo: float, hi: float) -> str | None:
    if not ((type(value) is int or type(value) is float) and math.isfinite(value)):
        return f"{name!r} must be a finite number"
    if not lo <= value <= hi:
        return f"{name!r} must be between {lo:g} and {hi:g}"
    return None


def check_capacity(value: Any, name: str) -> str | None:
    """A `{cpu?: number, mem_mb?: int}` map (job resources or worker capacity)."""
    if not isinstance(value, dict):
        return f"{name!r} must be a map {{cpu, mem_mb}}"
    unknown = [k for k in value if k not in ("cpu", "mem_mb")]
    if unknown:
        return f"{name!r}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (expected cpu, mem_mb)"
    if "cpu" in value:
        msg = _check_number(value["cpu"], f"{name}.cpu", 0, MAX_CPU_M / 1000)
        if msg:
            return msg
    return _check_int(value, "mem_mb", 0, MAX_MEM_MB, optional=True)


def _check_deps(spec: dict[str, Any]) -> str | None:
    deps = spec.get("depends_on")
    if deps is None:
        return None
    if not isinstance(deps, (list, tuple)):
        return "'depends_on' must be a list of job ids"
    if len(deps) > MAX_DEPS:
        return f"'depends_on' may hold at most {MAX_DEPS} ids"
    for dep in deps:
        if not isinstance(dep, str) or not 1 <= len(dep) <= MAX_ID_LEN:
            return f"'depends_on' items must be job ids of 1..{MAX_ID_LEN} characters"
    if len(set(deps)) != len(deps):
        return "'depends_on' lists a job twice"
    if spec.get("id") in deps:
        return "a job cannot depend on itself"
    return None


# validate_spec's field checks, in the order their messages take precedence.
# Each runs only when its key is present (an absent optional field is valid;
# id and type are required and checked first), so a typical six-field spec
# costs six checks, not fourteen (and the common shape none: _is_common_valid_spec).
_SPEC_FIELD_CHECKS: tuple[tuple[str, Callable[[dict[str, Any]], str | None]], ...] = (
    ("queue", lambda s: _check_str(s, "queue", optional=True)),
    ("priority", lambda s: _check_int(s, "priority", MIN_PRIORITY, MAX_PRIORITY, optional=True)),
    ("max_attempts", lambda s: _check_int(s, "max_attempts", 1, MAX_ATTEMPTS, optional=True)),
    ("timeout_ms", lambda s: _check_int(s, "timeout_ms", 1, MAX_MS, optional=True)),
    ("delay_ms", lambda s: _check_int(s, "delay_ms", 0, MAX_MS, optional=True)),
    ("run_at_ms", lambda s: _check_int(s, "run_at_ms", 0, MAX_MS, optional=True)),
    ("backoff_ms", lambda s: _check_int(s, "backoff_ms", 0, MAX_BACKOFF_MS, optional=True)),
    ("unique_key", lambda s: _check_str(s, "unique_key", optional=True)),
    ("max_lease_expiries", lambda s: _check_int(s, "max_lease_expiries", 1, MAX_LEASE_EXPIRIES, optional=True)),
    ("depends_on", _check_deps),
    ("resources", lambda s: None if s["resources"] is None else check_capacity(s["resources"], "resources")),
)


_COMMON_SPEC_KEYS = frozenset(("id", "type", "args", "queue", "priority"))
_SCALAR_TYPES = (str, bytes, bool, float, type(None))


def _is_common_valid_spec(spec: Any) -> bool:
    """True only for a spec of the common shape that `validate_spec` accepts:
    id, type, optional queue and priority, args a flat map of scalars. False
    means "not sure": run the full check. A few type() tests instead of a
    dozen checker calls: validation runs on every replica for every job."""
    if type(spec) is not dict or not _COMMON_SPEC_KEYS.issuperset(spec):
        return False
    job_id, job_type, queue = spec.get("id"), spec.get("type"), spec.get("queue")
    if type(job_id) is not str or not 1 <= len(job_id) <= MAX_ID_LEN:
        return False
    if type(job_type) is not str or not 1 <= len(job_type) <= MAX_NAME_LEN:
        return False
    if queue is not None and (type(queue) is not str or not 1 <= len(queue) <= MAX_NAME_LEN):
        return False
    priority = spec.get("priority")
    if priority is not None and (type(priority) is not int or not MIN_PRIORITY <= priority <= MAX_PRIORITY):
        return False
    args = spec.get("args")
    if type(args) is dict:
        for key, value in args.items():
            if type(key) is not str:
                return False
            if type(value) not in _SCALAR_TYPES and not (
                    type(value) is int and MSGPACK_INT_MIN <= value <= MSGPACK_INT_MAX):
                return False
    elif args is not None:
        return False
    return True


def validate_spec(spec: Any) -> str | None:
    """Check one JobSpec; unknown keys are rejected (a typo must not pass silently)."""
    if _is_common_valid_spec(spec):
        return None
    return _validate_spec_fully(spec)


def _validate_spec_fully(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return "job spec must be a map"
    if not _SPEC_KEYS.issuperset(spec):
        unknown = [k for k in spec if k not in _SPEC_KEYS]
        return f"unknown job spec field(s): {', '.join(sorted(map(str, unknown)))}"
    msg = _check_str(spec, "id", max_len=MAX_ID_LEN) or _check_str(spec, "type")
    if msg:
        return msg
    for key, check in _SPEC_FIELD_CHECKS:
        if key in spec:
            msg = check(spec)
            if msg:
                return msg
    if "args" in spec:
        msg = check_plain(spec["args"])
        if msg:
            return f"'args': {msg}"
    return None


def validate_template(template: Any) -> str | None:
    """A schedule's job template: a JobSpec without id, delay, run_at or dependencies."""
    if not isinstance(template, dict):
        return "job template must be a map"
    unknown = [k for k in template if k not in _TEMPLATE_KEYS]
    if unknown:
        return f"unknown job template field(s): {', '.join(sorted(map(str, unknown)))}"
    return validate_spec({**template, "id": "template"})


def validate_schedule(sched: Any) -> str | None:
    """A schedule definition (see docs/contracts.md section 1, `schedule_add`)."""
    if not isinstance(sched, dict):
        return "'schedule' must be a map"
    allowed = ("name", "cron", "every_ms", "tz", "job", "misfire", "max_catch_up", "paused")
    unknown = [k for k in sched if k not in allowed]
    if unknown:
        return f"unknown schedule field(s): {', '.join(sorted(map(str, unknown)))}"
    msg = (_check_str(sched, "name", max_len=MAX_SCHEDULE_NAME_LEN)
           or _check_str(sched, "cron", optional=True)
           or _check_int(sched, "every_ms", 1, MAX_MS, optional=True)
           or _check_str(sched, "tz", optional=True)
           or _check_int(sched, "max_catch_up", 1, MAX_CATCH_UP, optional=True))
    if msg:
        return msg
    if (sched.get("cron") is None) == (sched.get("every_ms") is None):
        return "a schedule needs exactly one of 'cron' and 'every_ms'"
    if sched.get("misfire", "skip") not in MISFIRE_POLICIES:
        return f"'misfire' must be one of {', '.join(MISFIRE_POLICIES)}"
    if not isinstance(sched.get("paused", False), bool):
        return "'paused' must be a boolean"
    msg = validate_template(sched.get("job"))
    return f"job: {msg}" if msg else None


def validate_alert(cmd: dict[str, Any]) -> str | None:
    """An `alert_add` command's shape: name, the condition's text, `for_ms`, and
    exactly one of `webhook` and `email`. The condition's grammar is the
    leader's to check before proposing (cluster/alert_rules.py), as cron
    expressions are: apply stores the text as given."""
    msg = (_check_str(cmd, "name", max_len=MAX_ALERT_NAME_LEN)
           or _check_str(cmd, "when", max_len=MAX_ALERT_WHEN_LEN)
           or _check_int(cmd, "for_ms", 0, MAX_MS, optional=True)
           or _check_str(cmd, "webhook", max_len=MAX_ALERT_TARGET_LEN, optional=True)
           or _check_str(cmd, "email", max_len=MAX_ALERT_TARGET_LEN, optional=True))
    if msg:
        return msg
    if (cmd.get("webhook") is None) == (cmd.get("email") is None):
        return "an alert needs exactly one of 'webhook' and 'email'"
    return None


def _check_progress(progress: Any) -> str | None:
    if progress is None:
        return None
    if not isinstance(progress, (list, tuple)) or len(progress) != 2:
        return "'progress' must be [fraction, message]"
    fraction, message = progress
    if not ((type(fraction) is int and MSGPACK_INT_MIN <= fraction <= MSGPACK_INT_MAX)
            or (type(fraction) is float and math.isfinite(fraction))):
        return "progress fraction must be a finite number"
    if not isinstance(message, str):
        return "progress message must be a string"
    return None


def _check_nonce(nonce: Any) -> str | None:
    """A lease command's nonce: absent (logged before leases had tokens) or
    LEASE_NONCE_BYTES bytes."""
    if nonce is None or (isinstance(nonce, bytes) and len(nonce) == LEASE_NONCE_BYTES):
        return None
    return f"'nonce' must be {LEASE_NONCE_BYTES} bytes"


def _check_str_list(obj: dict[str, Any], key: str, max_items: int) -> str | None:
    value = obj.get(key)
    if not isinstance(value, (list, tuple)) or not value:
        return f"{key!r} must be a non-empty list"
    if len(value) > max_items:
        return f"{key!r} may hold at most {max_items} items"
    for item in value:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_NAME_LEN:
            return f"{key!r} items must be strings of 1..{MAX_NAME_LEN} characters"
    return None


def _check_batch(cmd: dict[str, Any], key: str, limit: int, noun: str, *,
                 may_be_empty: bool = False) -> str | None:
    """`cmd[key]` is a list of at most `limit` items (non-empty unless allowed)."""
    items = cmd.get(key)
    if not isinstance(items, (list, tuple)) or not (items or may_be_empty):
        return f"{key!r} must be a {'' if may_be_empty else 'non-empty '}list"
    if len(items) > limit:
        return f"{key!r} may hold at most {limit} {noun}"
    return None


def _check_attempt_ref(obj: dict[str, Any]) -> str | None:
    """The job id, attempt and lease token that name one lease (heartbeat items,
    complete, fail). The token is optional here: commands logged before leases
    had tokens carry none (a missing or wrong one is LEASE_LOST on apply)."""
    return (_check_str(obj, "id", max_len=MAX_ID_LEN) or _check_int(obj, "attempt", 0, MAX_ATTEMPTS)
            or _check_str(obj, "lease_token", max_len=LEASE_TOKEN_LEN, optional=True))


def _check_completion(obj: dict[str, Any]) -> str | None:
    """A `complete` command, or one item of `complete_many`."""
    msg = _check_attempt_ref(obj)
    if msg:
        return msg
    problem = check_plain(obj.get("result"))
    return f"'result': {problem}" if problem else None


def validate_command(cmd: Any) -> str | None:
    """Return why `cmd` is malformed, or None when it may enter the log.

    Only shape is checked here; state-dependent outcomes (NOT_FOUND, CONFLICT,
    LEASE_LOST) are decided by the machine on apply.
    """
    if not isinstance(cmd, dict):
        return "command must be a map"
    op = cmd.get("op")
    if not isinstance(op, str) or op not in OPS:
        return f"unknown op {op!r}"
    if op == "submit":
        msg = validate_spec(cmd.get("job"))
        return f"job: {msg}" if msg else None
    if op == "submit_many":
        msg = _check_batch(cmd, "jobs", MAX_BATCH, "specs")
        if msg:
            return msg
        for i, spec in enumerate(cmd["jobs"]):
            msg = validate_spec(spec)
            if msg:
                return f"jobs[{i}]: {msg}"
        return None
    if op == "lease":
        return (_check_str(cmd, "worker")
                or _check_str_list(cmd, "queues", MAX_LEASE_QUEUES)
                or _check_int(cmd, "max", 1, MAX_LEASE_BATCH)
                or _check_int(cmd, "lease_ms", MIN_COMMAND_LEASE_MS, MAX_LEASE_MS)
                or (None if cmd.get("capacity") is None else check_capacity(cmd["capacity"], "capacity"))
                or _check_nonce(cmd.get("nonce")))
    if op == "heartbeat":
        msg = _check_str(cmd, "worker") or _check_int(cmd, "lease_ms", MIN_COMMAND_LEASE_MS, MAX_LEASE_MS)
        if msg:
            return msg
        msg = _check_batch(cmd, "leases", MAX_HEARTBEAT_LEASES, "items", may_be_empty=True)
        if msg:
            return msg
        for i, lease in enumerate(cmd["leases"]):
            if not isinstance(lease, dict):
                return f"leases[{i}] must be a map"
            msg = _check_attempt_ref(lease) or _check_progress(lease.get("progress"))
            if msg:
                return f"leases[{i}]: {msg}"
        return None
    if op == "complete":
        return _check_completion(cmd)
    if op == "complete_many":
        msg = _check_batch(cmd, "items", MAX_COMPLETE_BATCH, "completions")
        if msg:
            return msg
        for i, item in enumerate(cmd["items"]):
            if not isinstance(item, dict):
                return f"items[{i}] must be a map"
            msg = _check_completion(item)
            if msg:
                return f"items[{i}]: {msg}"
        return None
    if op == "fail":
        msg = _check_attempt_ref(cmd)
        if msg:
            return msg
        if not isinstance(cmd.get("error"), str):
            return "'error' must be a string"
        if "retryable" in cmd and not isinstance(cmd["retryable"], bool):
            return "'retryable' must be a boolean"
        return None
    if op in ("cancel", "retry"):
        return _check_str(cmd, "id", max_len=MAX_ID_LEN)
    if op == "requeue_failed":
        ids = cmd.get("ids")
        if not isinstance(ids, (list, tuple)) or not ids or len(ids) > MAX_REQUEUE_BATCH:
            return f"'ids' must be a list of 1..{MAX_REQUEUE_BATCH} job ids"
        if not all(isinstance(i, str) and 1 <= len(i) <= MAX_ID_LEN for i in ids):
            return f"'ids' items must be job ids of 1..{MAX_ID_LEN} characters"
        return None
    if op == "queue_limit":
        msg = (_check_str(cmd, "queue")
               or _check_int(cmd, "max_running", 0, MAX_RUNNING_LIMIT, optional=True))
        if msg:
            return msg
        rate = cmd.get("rate_per_s")
        if rate is not None:
            msg = _check_number(rate, "rate_per_s", 0, MAX_RATE_MILLI / 1000)
            if msg:
                return msg
            if to_milli(rate) < 1:
                return "'rate_per_s' must be at least 0.001"
        return None
    if op == "schedule_add":
        return validate_schedule(cmd.get("schedule")) or _check_int(cmd, "next_fire_ms", 0, MAX_MS)
    if op in ("schedule_remove", "schedule_pause"):
        return _check_str(cmd, "name", max_len=MAX_SCHEDULE_NAME_LEN)
    if op == "schedule_resume":
        return (_check_str(cmd, "name", max_len=MAX_SCHEDULE_NAME_LEN)
                or _check_int(cmd, "next_fire_ms", 0, MAX_MS))
    if op == "alert_add":
        return validate_alert(cmd)
    if op == "alert_remove":
        return _check_str(cmd, "name", max_len=MAX_ALERT_NAME_LEN)
    if op == "alert_transition":
        msg = (_check_str(cmd, "name", max_len=MAX_ALERT_NAME_LEN)
               or _check_str(cmd, "detail", max_len=MAX_ALERT_DETAIL_LEN, optional=True))
        if msg:
            return msg
        return None if cmd.get("state") in ALERT_STATES else f"'state' must be one of {', '.join(ALERT_STATES)}"
    if op == "alert_delivered":
        return _check_int(cmd, "seq", 1, MAX_MS)
    if op == "fire":
        return (_check_str(cmd, "schedule", max_len=MAX_SCHEDULE_NAME_LEN)
                or _check_int(cmd, "fire_ms", 0, MAX_MS)
                or _check_int(cmd, "next_fire_ms", 0, MAX_MS)
                or _check_str(cmd, "skip", optional=True))
    # tick
    return _check_int(cmd, "retention_ms", 0, MAX_MS)
