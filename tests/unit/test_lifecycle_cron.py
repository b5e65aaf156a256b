"""Fire-time arithmetic of schedules (cluster/cron.py), and the CLI's parsing of
the lifecycle options, without a cluster."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import parse_iso_time, parse_resources, raftq
from cli.output import InputError
from cluster import cron
from cluster.errors import BadRequest
from cluster.protocol import job_spec_from_options
from replication.model import MAX_MS


def ms(*args: int, tz: str = "UTC") -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp() * 1000)


@pytest.mark.parametrize("misfire, max_catch_up, now_offset, expected", [
    ("skip", 1, -1, []),                                          # not due yet
    ("skip", 1, 0, [(10_000, 11_000)]),                           # due on the dot
    ("skip", 1, 999, [(10_000, 11_000)]),
    ("skip", 1, 3_500, [(13_000, 14_000)]),                       # late: only the latest
    ("catch_up", 3, 3_500, [(11_000, 12_000), (12_000, 13_000), (13_000, 14_000)]),
    ("catch_up", 10, 1_000, [(10_000, 11_000), (11_000, 12_000)]),
])
def test_every_due_firings(misfire: str, max_catch_up: int, now_offset: int,
                           expected: list[tuple[int, int]]) -> None:
    sched = {"every_ms": 1000, "next_fire_ms": 10_000, "misfire": misfire, "max_catch_up": max_catch_up}
    assert cron.due_firings(sched, 10_000 + now_offset) == expected


def test_every_far_behind_is_arithmetic_not_a_loop() -> None:
    sched = {"every_ms": 1, "next_fire_ms": 0, "misfire": "skip"}
    assert cron.due_firings(sched, 10**12) == [(10**12, 10**12 + 1)]


def test_cron_due_firings_in_a_time_zone() -> None:
    sched = {"cron": "0 3 * * *", "tz": "Europe/Paris", "misfire": "catch_up", "max_catch_up": 2,
             "next_fire_ms": ms(2024, 3, 1, 3, 0, tz="Europe/Paris")}
    now = ms(2024, 3, 3, 12, 0, tz="Europe/Paris")
    assert cron.due_firings(sched, now) == [
        (ms(2024, 3, 2, 3, 0, tz="Europe/Paris"), ms(2024, 3, 3, 3, 0, tz="Europe/Paris")),
        (ms(2024, 3, 3, 3, 0, tz="Europe/Paris"), ms(2024, 3, 4, 3, 0, tz="Europe/Paris")),
    ]
    assert cron.due_firings({**sched, "misfire": "skip"}, now)[0][0] == ms(2024, 3, 3, 3, 0, tz="Europe/Paris")


def test_cron_fire_time_on_the_dot_is_due() -> None:
    t = ms(2024, 1, 1, 12, 5)
    sched = {"cron": "*/5 * * * *", "tz": "UTC", "next_fire_ms": t}
    assert cron.due_firings(sched, t) == [(t, ms(2024, 1, 1, 12, 10))]
    assert cron.due_firings(sched, t - 1) == []


def test_cron_across_dst_keeps_local_time() -> None:
    # Europe/Paris springs forward on 2024-03-31: 09:00 local is 08:00 UTC before, 07:00 UTC after.
    sched = {"cron": "0 9 * * *", "tz": "Europe/Paris"}
    before = cron.next_fire_after(sched, ms(2024, 3, 29, 12, 0))
    after = cron.next_fire_after(sched, before)
    assert datetime.fromtimestamp(before / 1000, timezone.utc).hour == 8
    assert datetime.fromtimestamp(after / 1000, timezone.utc).hour == 7
    assert after - before == 23 * 3600 * 1000


def test_next_fire_after_every() -> None:
    assert cron.next_fire_after({"every_ms": 2500}, 1000) == 3500


NOW = ms(2024, 1, 1)


@pytest.mark.parametrize("sched, message", [
    ({"cron": "61 * * * *"}, "'cron'"),
    ({"cron": "every day"}, "'cron'"),
    ({"cron": "0 0 31 2 *"}, "'cron' .* no next fire time"),     # a date that never occurs
    ({"cron": "* * * * * *"}, "'cron' .* at most 5 fields"),     # seconds: under a minute
    ({"cron": 5}, "'cron' must be a string"),
    ({"cron": "* * * * *", "every_ms": 1000}, "exactly one"),
    ({}, "exactly one"),
    ({"every_ms": "1000"}, "'every_ms' must be a positive integer"),
    ({"every_ms": True}, "'every_ms' must be a positive integer"),
    ({"every_ms": MAX_MS}, "'every_ms' too large"),
    ({"every_ms": 1000, "tz": "Mars/Olympus"}, "'tz': unknown time zone"),
    ({"every_ms": 1000, "tz": "America"}, "'tz': unknown time zone"),       # a directory of tzdata
    ({"every_ms": 1000, "tz": "../../etc/passwd"}, "'tz': unknown time zone"),
    ({"every_ms": 1000, "tz": 3}, "'tz' must be an IANA time zone name"),
    ("not a map", "'schedule' must be a map"),
])
def test_check_schedule_rejects(sched: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        cron.check_schedule(sched, NOW)


def test_check_schedule_returns_the_first_fire_time() -> None:
    assert cron.check_schedule({"every_ms": 1000}, NOW) == NOW + 1000
    assert cron.check_schedule({"cron": "0 3 * * *", "tz": "Europe/Paris"}, NOW) == ms(2024, 1, 1, 3, tz="Europe/Paris")


_ANY = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                 st.floats(allow_nan=True), st.text(max_size=30), st.binary(max_size=10),
                 st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_CRONS = st.one_of(_ANY, st.sampled_from([
    "0 0 31 2 *", "0 0 30 2 *", "@reboot", "@yearly", "H * * * *", "0 0 L * *", "0 0 * * 5#6",
    "*/0 * * * *", "0-99 * * * *", "* * * * * *", "0 0 1 1 * 2020", "1-0 * * * *", "\x00", "* * * *",
]), st.lists(st.sampled_from(["*", "0", "L", "W", "#", "/", "-", ",", "99", "2", "H", "?", "jan", "mon"]),
             max_size=8).map(" ".join))
_ZONES = st.one_of(_ANY, st.sampled_from(["UTC", "Europe/Paris", "Mars/Olympus", "America", "../etc", "", "\x00",
                                          "/etc/localtime", "posix/UTC", "a" * 300]))


@settings(max_examples=300, deadline=None)
@given(cron_expr=_CRONS, every=_ANY, tz=_ZONES, which=st.sampled_from(["cron", "every", "both", "none"]))
def test_malformed_schedules_only_ever_raise_bad_request(cron_expr: Any, every: Any, tz: Any, which: str) -> None:
    """Whatever a client sends, the leader's schedule arithmetic answers a fire
    time or BadRequest: never another exception (which would be INTERNAL)."""
    sched: dict[str, Any] = {"tz": tz}
    if which in ("cron", "both"):
        sched["cron"] = cron_expr
    if which in ("every", "both"):
        sched["every_ms"] = every
    try:
        first = cron.check_schedule(sched, NOW)
    except BadRequest:
        return
    assert NOW < first <= MAX_MS
    assert cron.next_fire_after(sched, first) > first


# ---------------------------------------------------------------- client / CLI parsing


def test_job_spec_lifecycle_options() -> None:
    spec = job_spec_from_options("t", id="x", depends_on=["a", "b"], resources={"cpu": 1.5, "mem_mb": 10},
                                 max_lease_expiries=2)
    assert spec["depends_on"] == ["a", "b"] and spec["resources"] == {"cpu": 1.5, "mem_mb": 10}
    assert spec["max_lease_expiries"] == 2
    assert "depends_on" not in job_spec_from_options("t", depends_on=[])
    for bad in ({"depends_on": "a"}, {"depends_on": [""]}, {"resources": [1]}, {"max_lease_expiries": 0}):
        with pytest.raises(BadRequest):
            job_spec_from_options("t", **bad)


@pytest.mark.parametrize("text, expected", [
    ("cpu=2,mem_mb=512", {"cpu": 2.0, "mem_mb": 512}),
    ("cpu=0.5", {"cpu": 0.5}),
    (" mem_mb = 64 ", {"mem_mb": 64}),
])
def test_parse_resources(text: str, expected: dict[str, Any]) -> None:
    assert parse_resources(text) == expected


@pytest.mark.parametrize("text", ["gpu=1", "cpu=-1", "mem_mb=1.5", "cpu", "cpu=1,cpu=2", "cpu=nan", ""])
def test_parse_resources_rejects(text: str) -> None:
    with pytest.raises(InputError, match="--resources"):
        parse_resources(text)


def test_parse_iso_time() -> None:
    assert parse_iso_time("2030-01-02T03:04:05Z").timestamp() == datetime(
        2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc).timestamp()
    assert parse_iso_time("2030-01-02T03:04:05+02:00").utcoffset().total_seconds() == 7200
    with pytest.raises(InputError, match="ISO 8601"):
        parse_iso_time("tomorrow")


@pytest.mark.parametrize("argv, message", [
    (["dlq", "requeue"], "one of them"),
    (["dlq", "requeue", "--all", "--queue", "q"], "one of them"),
    (["dlq", "requeue", "a", "--all"], "one of them"),
    (["schedule", "add", "s", "t"], "exactly one of --cron"),
    (["schedule", "add", "s", "t", "--cron", "* * * * *", "--every", "5"], "exactly one of --cron"),
    (["submit", "t", "--delay", "1", "--run-at", "2030-01-01T00:00:00Z"], "not both"),
    (["queue", "limit", "q", "--max-running", "-1"], "-1"),
])
def test_cli_usage_errors_are_one_line(argv: list[str], message: str) -> None:
    result = CliRunner().invoke(raftq, [*argv, "--cluster", "127.0.0.1:1", "--request-timeout", "0.2"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


# ---------------------------------------------------------------- the leader's firing plan


def _machine_with_schedule(**sched: Any) -> Any:
    from replication.machine import JobMachine

    m = JobMachine()
    definition = {"name": "s", "job": {"type": "t"}, **sched}
    [r] = m.apply_entry({"v": 1, "now_ms": NOW, "cmds": [
        {"op": "schedule_add", "schedule": definition, "next_fire_ms": NOW}]})
    assert r["created"], r
    return m


def _round(m: Any, now: int, refusal: Any = lambda n: None) -> list[dict[str, Any]]:
    cmds = cron.plan_firings(m.due_schedules(now), now, refusal)
    results = m.apply_entry({"v": 1, "now_ms": now, "cmds": cmds})
    assert all("error" not in r for r in results), results
    return cmds


def test_a_schedule_a_day_behind_catches_up_over_capped_rounds_oldest_first() -> None:
    m = _machine_with_schedule(every_ms=60_000, misfire="catch_up", max_catch_up=1000)
    now = NOW + 86_400_000  # a day of minutes (1,440) went unseen: the latest 1,000 are due
    fired: list[int] = []
    rounds = 0
    while m.due_schedules(now):
        cmds = _round(m, now)
        assert 0 < len(cmds) <= cron.MAX_FIRINGS_PER_TICK
        fired += [c["fire_ms"] for c in cmds]
        rounds += 1
        assert rounds <= 20
    assert rounds == 1000 // cron.MAX_FIRINGS_PER_TICK
    assert fired == sorted(fired) == [now - 60_000 * i for i in range(999, -1, -1)]
    assert m.get_schedule("s")["fired"] == 1000 and m.stats()["held"] == 1000


def test_firings_admission_refuses_are_missed_and_never_pile_up() -> None:
    m = _machine_with_schedule(every_ms=1000, misfire="catch_up", max_catch_up=50)
    now = NOW + 100_000
    cmds = _round(m, now, refusal=lambda n: None if n <= 20 else "over max_held_jobs")
    assert len(cmds) == 50 and [c.get("skip") for c in cmds] == [None] * 20 + ["over max_held_jobs"] * 30
    sched = m.get_schedule("s")
    assert (sched["fired"], sched["missed"], m.stats()["held"]) == (20, 30, 20)
    assert m.due_schedules(now) == []  # moved on: nothing left over for the next round
    assert len(_round(m, now + 1000, refusal=lambda n: "over max_live_jobs")) == 1
    assert (m.get_schedule("s")["missed"], m.stats()["held"]) == (31, 20)
