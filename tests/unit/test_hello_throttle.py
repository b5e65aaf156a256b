"""cluster/hello_throttle.py on a hand-driven clock: slots, refusals, memory."""
from __future__ import annotations

from cluster.hello_throttle import HelloThrottle

DEADLINE_S = 5.0  # hello_timeout_s


def test_a_source_that_never_failed_waits_for_nothing() -> None:
    t = HelloThrottle()
    assert [t.wait_s("10.0.0.1", 100.0 + i * 0.001, 105.0) for i in range(1000)] == [0.0] * 1000
    t.failed("10.0.0.2", 100.0)
    assert t.wait_s("10.0.0.1", 100.0, 105.0) == 0.0


def test_after_a_failure_each_hello_takes_the_next_slot_until_the_deadline() -> None:
    t = HelloThrottle(interval_s=0.5)
    t.failed("10.0.0.1", 100.0)
    # Ten parallel connections opened at 100.0: slots 100.5, 101.0, ... up to their deadline.
    waits = [t.wait_s("10.0.0.1", 100.0, 100.0 + DEADLINE_S) for _ in range(15)]
    assert waits[:10] == [0.5 * (i + 1) for i in range(10)]
    assert waits[10:] == [None] * 5  # no slot before the deadline: refused unevaluated
    assert t.evaluated_late == 10 and t.refused == 5
    # Later connections get the slots after those (never more than a deadline ahead).
    assert t.wait_s("10.0.0.1", 103.0, 108.0) == 2.5


def test_a_source_is_forgotten_after_a_quiet_period_and_a_success_does_not_reset_it() -> None:
    t = HelloThrottle(interval_s=0.5, forget_s=60.0)
    t.failed("10.0.0.1", 100.0)
    assert t.wait_s("10.0.0.1", 130.0, 135.0) == 0.0  # the slot is free, but the record stays
    assert t.wait_s("10.0.0.1", 130.0, 135.0) == 0.5  # (a success here changes nothing)
    assert len(t) == 1
    assert t.wait_s("10.0.0.1", 161.0, 166.0) == 0.0
    assert len(t) == 0


def test_memory_is_bounded_by_forgetting_the_oldest_failure() -> None:
    t = HelloThrottle(max_sources=100)
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}", 100.0 + i)
    assert len(t) == 100
    assert t.wait_s("10.0.0.0", 2000.0, 2005.0) == 0.0   # forgotten first
    assert t.wait_s("10.0.3.231", 1099.0, 1104.0) == 0.5  # the latest is remembered


def test_an_ipv6_host_is_one_source_per_64() -> None:
    t = HelloThrottle(interval_s=0.5)
    t.failed("2001:db8:1:2::1", 100.0)
    assert t.wait_s("2001:db8:1:2:ffff::9", 100.0, 105.0) == 0.5
    assert t.wait_s("2001:db8:1:3::1", 100.0, 105.0) == 0.0
    t.failed("::ffff:10.0.0.9", 100.0)  # an IPv4 peer on a dual-stack socket is that IPv4 address
    assert t.wait_s("10.0.0.9", 100.0, 105.0) == 0.5
