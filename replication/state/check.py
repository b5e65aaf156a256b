"""The one assertion helper every part's `check_invariants` uses."""
from __future__ import annotations


def need(cond: bool, what: str) -> None:
    """Raise AssertionError naming the broken invariant `what` unless `cond`."""
    if not cond:
        raise AssertionError(what)
