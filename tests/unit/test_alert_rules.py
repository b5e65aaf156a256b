"""The alert condition grammar (cluster/alert_rules.py): what parses, what each
bad condition is told, and how each condition decides from its signals."""
from __future__ import annotations

import pytest

from cluster.alert_delivery import check_target
from cluster.alert_rules import Condition, Signals, parse, parse_duration_ms
from cluster.errors import BadRequest


@pytest.mark.parametrize("text, parsed", [
    ("depth(emails) > 100", Condition("depth", queue="emails", op=">", threshold=100.0)),
    ("  depth( emails )>=100  ", Condition("depth", queue="emails", op=">=", threshold=100.0)),
    ("oldest_ready_age(q) > 5m", Condition("oldest_ready_age", queue="q", op=">", threshold=300_000.0)),
    ("failure_rate(q, 5m) > 0.2", Condition("failure_rate", queue="q", window_ms=300_000, op=">", threshold=0.2)),
    ("failures(q, 90s) >= 3", Condition("failures", queue="q", window_ms=90_000, op=">=", threshold=3.0)),
    ("dead_letters_growing(q, 10m)", Condition("dead_letters_growing", queue="q", window_ms=600_000)),
    ("no_worker(mail.out-1)", Condition("no_worker", queue="mail.out-1")),
    ("node_down", Condition("node_down")),
    ("no_quorum", Condition("no_quorum")),
    ("schedule_missed(nightly)", Condition("schedule_missed", name="nightly")),
    ("depth(depth) < 1", Condition("depth", queue="depth", op="<", threshold=1.0)),
])
def test_conditions_parse(text: str, parsed: Condition) -> None:
    assert parse(text) == parsed


@pytest.mark.parametrize("text, message", [
    ("", "alert condition is empty"),
    ("frob(q) > 1", "must start with one of dead_letters_growing, depth,"),
    ("depth(q)", "depth needs a comparison, e.g. depth(...) > N"),
    ("depth q > 1", "depth needs its arguments in parentheses"),
    ("depth(q) > many", "depth's threshold must be a number, got 'many'"),
    ("depth(q) > 1 or 2", "depth needs a comparison"),
    ("depth(q) = 1", "unexpected '= 1' at character 10"),
    ("depth('q') > 1", "unexpected"),
    ("depth(q > 1", "depth: expected ',' or ')', got '>'"),
    ("depth(q,) > 1", "depth: expected an argument"),
    ("depth(q, r) > 1", "depth takes 1 argument(s) (queue), got 2"),
    ("failure_rate(q) > 0.1", "failure_rate takes 2 argument(s) (queue, window), got 1"),
    ("failure_rate(q, 5) > 0.1", "failure_rate's window must be a number with a unit"),
    ("failure_rate(q, 8d) > 0.1", "window must be more than 0 and at most 7d"),
    ("failure_rate(q, 5m) > 1.5", "its threshold must be in 0..1"),
    ("oldest_ready_age(q) > 300", "oldest_ready_age's threshold must be a number with a unit"),
    ("depth(q) > nan", "must be a finite number"),
    ("no_worker(q) > 0", "no_worker is true or false by itself"),
    ("node_down(2)", "node_down takes no arguments"),
])
def test_a_bad_condition_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse(text)
    assert message in info.value.message


def test_durations() -> None:
    assert [parse_duration_ms(t) for t in ("500ms", "30s", "1.5m", "2h", "1d")] == [
        500, 30_000, 90_000, 7_200_000, 86_400_000]
    for bad in ("5", "m", "-1s", "5 minutes", "1e3s"):
        with pytest.raises(BadRequest):
            parse_duration_ms(bad)


def test_measures_compare_against_their_thresholds() -> None:
    s = Signals(now_ms=100_000, queues={"q": {"queued": 101, "running": 3}},
                oldest_ready_ms={"q": 100_000 - 301_000}, finishes={300_000: {"q": (6, 4)}})
    assert parse("depth(q) > 100").evaluate(s).true
    assert not parse("depth(q) > 101").evaluate(s).true
    assert parse("depth(q) > 100").evaluate(s).detail == "depth(q) = 101"
    assert not parse("depth(elsewhere) > 0").evaluate(s).true
    age = parse("oldest_ready_age(q) > 5m").evaluate(s)
    assert age.true and age.detail == "oldest_ready_age(q) = 301s"
    assert not parse("oldest_ready_age(r) > 0s").evaluate(s).true  # nothing waits there
    rate = parse("failure_rate(q, 5m) > 0.3").evaluate(s)
    assert rate.true and rate.detail == "failure_rate(q, 5m) = 0.4"
    assert not parse("failure_rate(q, 5m) > 0.4").evaluate(s).true
    assert parse("failures(q, 5m) >= 4").evaluate(s).true
    assert not parse("failure_rate(r, 5m) > 0").evaluate(s).true  # nothing finished: rate 0


def test_predicates() -> None:
    s = Signals(now_ms=1_000_000, queues={"busy": {"queued": 2, "running": 0}, "idle": {"queued": 0, "running": 0},
                                          "served": {"queued": 5, "running": 1}},
                finishes={600_000: {"dl": (0, 2), "fine": (9, 0)}}, worker_queues=frozenset({"served"}),
                schedules={"late": (3, 0, 1_000_000 - 61_000, False), "paused": (3, 0, 0, True),
                           "skipped": (3, 2, 1_000_000 + 5_000, False)},
                missed_latest=frozenset({"skipped"}), nodes=3, down_nodes=[3])
    assert parse("dead_letters_growing(dl, 10m)").evaluate(s).true
    assert not parse("dead_letters_growing(fine, 10m)").evaluate(s).true
    assert parse("no_worker(busy)").evaluate(s).true
    assert not parse("no_worker(idle)").evaluate(s).true   # no jobs: nobody is missing
    assert not parse("no_worker(served)").evaluate(s).true
    assert parse("schedule_missed(late)").evaluate(s).true      # overdue: no leader fired it
    assert not parse("schedule_missed(paused)").evaluate(s).true
    assert parse("schedule_missed(skipped)").evaluate(s).true   # its latest firing was refused
    assert not parse("schedule_missed(absent)").evaluate(s).true
    down = parse("node_down").evaluate(s)
    assert down.true and down.detail == "unreachable from the leader: node 3"
    assert not parse("no_quorum").evaluate(s).true
    s.down_nodes = [2, 3]
    assert parse("no_quorum").evaluate(s).true
    s.down_nodes = []
    assert not parse("node_down").evaluate(s).true


@pytest.mark.parametrize("webhook, email, message", [
    (None, None, "exactly one of --webhook URL and --email ADDRESS"),
    ("http://h/", "a@b", "exactly one of"),
    ("ftp://h/", None, "http:// or https:// URL"),
    ("http:///path", None, "with a host"),
    ("http://h/a b", None, "must not contain spaces"),
    (None, "nobody", "one address like ops@example.com"),
    (None, "a@b\r\nBcc: x@y", "one address like"),
    (None, "a@b, c@d", "one address like"),
])
def test_targets_are_checked(webhook: str | None, email: str | None, message: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_target(webhook, email)
    assert message in info.value.message


def test_good_targets_pass() -> None:
    check_target("https://hooks.example.com/raftq?key=1", None)
    check_target(None, "ops+raftq@example.com")
