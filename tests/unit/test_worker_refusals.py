"""worker/refusals.py: only refusals count, only while nothing is accepted."""
from __future__ import annotations

from cluster.errors import BadRequest, Forbidden, NoLeader, Timeout, Unauthorized, Unavailable
from cluster.tls import TlsError
from worker.refusals import Refusals


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_refusals_lasting_the_window_give_up() -> None:
    clock = Clock()
    r = Refusals(30.0, clock)
    assert not r.failed(Unauthorized("bad token"))
    clock.now += 29.9
    assert not r.failed(Forbidden("no worker role"))
    clock.now += 0.1
    assert r.failed(Unauthorized("bad token"))


def test_an_accepted_request_restarts_the_window() -> None:
    clock = Clock()
    r = Refusals(30.0, clock)
    r.failed(Unauthorized())
    clock.now += 20
    r.accepted()  # e.g. a node that already knows the rotated token
    clock.now += 20
    assert not r.failed(Unauthorized())  # the window starts again here...
    clock.now += 29
    assert not r.failed(Unauthorized())
    clock.now += 1
    assert r.failed(Unauthorized())  # ...and ends 30 s later


def test_outages_never_give_up() -> None:
    clock = Clock()
    r = Refusals(0.0, clock)
    for exc in (Unavailable("nothing reachable"), NoLeader(), Timeout(), OSError("reset")):
        clock.now += 1000
        assert not r.failed(exc)


def test_every_kind_of_refusal_counts() -> None:
    for exc in (Unauthorized(), Forbidden(), BadRequest(), TlsError("certificate refused")):
        assert Refusals(0.0, Clock()).failed(exc)
