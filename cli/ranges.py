"""Click ranges taken from what the cluster accepts, so `--help` never shows
a value the server refuses (tests/unit/test_cli_ranges.py probes both ends).

Request arguments come from the op table (cluster/ops.py); JobSpec and
schedule fields, which the machine checks on apply (replication/model.py),
from the model's bounds, converted to the seconds the command line speaks.
"""
from __future__ import annotations

import click

from cluster.ops import MAX_EVERY_MS, OPS, Arg
from replication.model import MAX_ATTEMPTS, MAX_CATCH_UP, MAX_MS, MAX_PRIORITY, MIN_PRIORITY

# The machine keeps durations in whole ms: the client rounds seconds to ms, and
# a positive duration to at least 1 ms (cluster.protocol._seconds_to_ms).
_MAX_SECONDS = MAX_MS / 1000


def _arg(op: str, name: str) -> Arg:
    found = [a for a in OPS[op].args if a.name == name]
    if not found:
        raise KeyError(f"op {op!r} has no argument {name!r}")
    return found[0]


def op_range(op: str, name: str) -> click.IntRange | click.FloatRange:
    """The range of a numeric argument of an op, as the op table bounds it."""
    arg = _arg(op, name)
    if arg.type == "int":
        return click.IntRange(min=None if arg.min is None else int(arg.min),
                              max=None if arg.max is None else int(arg.max))
    if arg.type == "number":
        return click.FloatRange(min=arg.min, max=arg.max)
    raise TypeError(f"{op}.{name} is a {arg.type}, not a number")


PRIORITY = click.IntRange(MIN_PRIORITY, MAX_PRIORITY)
MAX_ATTEMPTS_RANGE = click.IntRange(1, MAX_ATTEMPTS)
MAX_CATCH_UP_RANGE = click.IntRange(1, MAX_CATCH_UP)
RUN_TIMEOUT_S = click.FloatRange(0, _MAX_SECONDS, min_open=True)  # timeout_ms 1..MAX_MS
DELAY_S = click.FloatRange(0, _MAX_SECONDS)                       # delay_ms 0..MAX_MS
EVERY_S = click.FloatRange(0.001, MAX_EVERY_MS / 1000)            # every_ms 1..MAX_EVERY_MS (the leader's check)
