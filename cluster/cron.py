"""Fire-time arithmetic for schedules, run by the leader OUTSIDE the state machine.

croniter reads time-zone data and the wall clock is not replicated, so neither
may run inside `apply`. The leader's ticker asks `due_firings` which fire times
of a schedule are due and proposes one `fire` command per time, carrying the
next fire time; the machine accepts each (schedule, fire_ms) at most once and
only in increasing order, so a new leader recomputing the same times neither
doubles nor skips a firing.

Every value a client sent is checked here before croniter sees it, and any
failure of croniter on such a value becomes BadRequest naming the field
(`check_schedule`, `next_fire_after`): a schedule the leader cannot compute
with never enters the log. Six-field (seconds) cron expressions are refused:
a cron schedule fires at most once a minute.

Misfire policies (a schedule is late when several fire times passed unseen,
e.g. while it was paused or no leader was ticking):
- `skip`: fire only the most recent due time;
- `catch_up`: fire the most recent `max_catch_up` due times, oldest first.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from cluster.errors import BadRequest
from cluster.ops import MAX_EVERY_MS
from replication.model import MAX_MS, MAX_NAME_LEN, is_int

log = logging.getLogger("raftq.cron")

CRON_FIELDS = 5  # minute hour day-of-month month day-of-week (no seconds, no years)
# Fire commands one ticker round may propose (every 50 ms, so at most 2,000
# firings/s): a schedule far behind (catch_up after a day down) catches up over
# several rounds instead of one flood of entries.
MAX_FIRINGS_PER_TICK = 100


def zone(tz: Any) -> ZoneInfo:
    if tz is not None and (not isinstance(tz, str) or len(tz) > MAX_NAME_LEN):
        raise BadRequest(f"'tz' must be an IANA time zone name such as Europe/Paris, got {type(tz).__name__}")
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a path such as "America" or "../x"
        raise BadRequest(f"'tz': unknown time zone {tz!r} (expected an IANA name such as Europe/Paris)") from None


def check_schedule(sched: Any, now_ms: int) -> int:
    """The first fire time after now_ms of a schedule definition, or BadRequest
    naming the field the leader could not compute with (tz, cron, every_ms)."""
    if not isinstance(sched, dict):
        raise BadRequest("'schedule' must be a map")
    zone(sched.get("tz"))
    expr, every = sched.get("cron"), sched.get("every_ms")
    if (expr is None) == (every is None):
        raise BadRequest("a schedule needs exactly one of 'cron' and 'every_ms'")
    if is_int(every) and every > MAX_EVERY_MS:  # checked when added only: never stops a schedule already held
        raise BadRequest(f"'every_ms' too large: at most {MAX_EVERY_MS} (100 years), got {every}")
    if expr is not None:
        if not isinstance(expr, str) or not 1 <= len(expr) <= MAX_NAME_LEN:
            raise BadRequest(f"'cron' must be a string of 1..{MAX_NAME_LEN} characters")
        if len(expr.split()) > CRON_FIELDS:
            raise BadRequest(f"'cron' {expr!r}: at most {CRON_FIELDS} fields (minute hour day month weekday); "
                             f"use every_ms for intervals under a minute")
        try:
            valid = croniter.is_valid(expr)
        except Exception:  # croniter's parser raises assorted types on garbage: all the input's fault
            valid = False
        if not valid:
            raise BadRequest(f"'cron': invalid cron expression {expr!r}")
    return next_fire_after(sched, now_ms)


def _dt(ms: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz)


def _ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


def next_fire_after(sched: dict[str, Any], now_ms: int) -> int:
    """The first fire time strictly after now_ms (an `every` schedule: now + period).
    BadRequest when there is none the log can carry (e.g. cron "0 0 31 2 *")."""
    every = sched.get("every_ms")
    if every is not None:
        if not is_int(every) or every < 1:
            raise BadRequest(f"'every_ms' must be a positive integer, got {every!r}")
        nxt = now_ms + every
    else:
        expr = sched.get("cron")
        tz = zone(sched.get("tz"))
        try:
            nxt = _ms(croniter(expr, _dt(now_ms, tz)).get_next(datetime))
        except Exception:  # CroniterBadDateError (a date that never occurs) or a parser error
            raise BadRequest(f"'cron' {expr!r} has no next fire time") from None
    if nxt > MAX_MS:
        raise BadRequest(f"the next fire time {nxt} is beyond {MAX_MS} ms: 'every_ms' too large")
    return nxt


def due_firings(sched: dict[str, Any], now_ms: int) -> list[tuple[int, int]]:
    """[(fire_ms, next_fire_ms)] of `sched` due at now_ms, oldest first, per its misfire policy."""
    first = sched["next_fire_ms"]
    if first > now_ms:
        return []
    keep = (sched.get("max_catch_up") or 1) if sched.get("misfire") == "catch_up" else 1
    every = sched.get("every_ms")
    if every is not None:
        latest = first + (now_ms - first) // every * every
        times = [t for t in (latest - i * every for i in range(keep)) if t >= first]
        after = latest + every
    else:
        tz = zone(sched.get("tz"))
        it = croniter(sched["cron"], _dt(now_ms, tz) + timedelta(milliseconds=1))
        times = []
        while len(times) < keep:
            t = _ms(it.get_prev(datetime))
            if t < first:
                break
            times.append(t)
        if not times:  # `first` came from another computation; honour it as due
            times = [first]
        after = next_fire_after(sched, now_ms)
    times.sort()
    return [(t, times[i + 1] if i + 1 < len(times) else after) for i, t in enumerate(times)]


def plan_firings(due: list[dict[str, Any]], now_ms: int,
                 refusal: Callable[[int], str | None]) -> list[dict[str, Any]]:
    """The `fire` commands for one ticker round: due schedules in the order
    given (oldest next fire time first), at most MAX_FIRINGS_PER_TICK. A firing
    that `refusal(jobs admitted so far + 1)` refuses (admission: a reason, else
    None) carries `skip`: the machine counts it as missed and moves the
    schedule on, so refused firings never pile up."""
    cmds: list[dict[str, Any]] = []
    admitted = 0
    for sched in due:
        if len(cmds) >= MAX_FIRINGS_PER_TICK:
            break
        try:
            firings = due_firings(sched, now_ms)
        except Exception:  # a zone that vanished from tzdata: log, do not stop the ticker
            log.exception("schedule %r: cannot compute fire times", sched.get("name"))
            continue
        for t, n in firings[:MAX_FIRINGS_PER_TICK - len(cmds)]:
            cmd: dict[str, Any] = {"op": "fire", "schedule": sched["name"], "fire_ms": t, "next_fire_ms": n}
            reason = refusal(admitted + 1)
            if reason is None:
                admitted += 1
            else:
                cmd["skip"] = reason
            cmds.append(cmd)
    return cmds
