"""Fire-time arithmetic for schedules, run by the leader OUTSIDE the state machine.

croniter reads time-zone data and the wall clock is not replicated, so neither
may run inside `apply`. The leader's ticker asks `due_firings` which fire times
of a schedule are due and proposes one `fire` command per time, carrying the
next fire time; the machine accepts each (schedule, fire_ms) at most once and
only in increasing order, so a new leader recomputing the same times neither
doubles nor skips a firing.

Misfire policies (a schedule is late when several fire times passed unseen,
e.g. while it was paused or no leader was ticking):
- `skip`: fire only the most recent due time;
- `catch_up`: fire the most recent `max_catch_up` due times, oldest first.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from cluster.errors import BadRequest


def zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(f"unknown time zone {tz!r} (expected an IANA name such as Europe/Paris)") from None


def check_schedule(sched: dict[str, Any]) -> None:
    """Raise BadRequest for a cron expression or zone the leader could not compute with."""
    zone(sched.get("tz"))
    expr = sched.get("cron")
    if expr is not None and (not isinstance(expr, str) or not croniter.is_valid(expr)):
        raise BadRequest(f"invalid cron expression {expr!r}")


def _dt(ms: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz)


def _ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


def next_fire_after(sched: dict[str, Any], now_ms: int) -> int:
    """The first fire time strictly after now_ms (an `every` schedule: now + period)."""
    every = sched.get("every_ms")
    if every is not None:
        return now_ms + every
    it = croniter(sched["cron"], _dt(now_ms, zone(sched.get("tz"))))
    return _ms(it.get_next(datetime))


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
