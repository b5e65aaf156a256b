"""Fire-time arithmetic of schedules (cluster/cron.py), and the CLI's parsing of
the lifecycle options, without a cluster."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from cli.main import parse_iso_time, parse_resources, raftq
from cli.output import InputError
from cluster import cron
from cluster.errors import BadRequest
from cluster.protocol import job_spec_from_options


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


@pytest.mark.parametrize("sched, message", [
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "every day"}, "cron"),
    ({"every_ms": 1000, "tz": "Mars/Olympus"}, "time zone"),
])
def test_check_schedule_rejects(sched: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        cron.check_schedule(sched)


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
