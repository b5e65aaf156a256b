"""The alert condition grammar: parse a rule's `--when` text, evaluate it.

docs/alerting.md is the reference. The grammar, kept small on purpose:

    condition  := measure OP number | predicate
    measure    := depth(QUEUE) | oldest_ready_age(QUEUE)
                | failure_rate(QUEUE, DURATION) | failures(QUEUE, DURATION)
    predicate  := dead_letters_growing(QUEUE, DURATION) | no_worker(QUEUE)
                | node_down | no_quorum | schedule_missed(NAME)
    OP         := >  >=  <  <=
    DURATION   := a number with a unit: 500ms, 30s, 5m, 2h, 1d

`oldest_ready_age` compares with a DURATION, the other measures with a plain
number (`failure_rate` is a fraction in 0..1). Names are taken as written
(letters, digits and `_ - . : /`), so a queue named like a function is fine.

`parse` is what the node runs before it proposes `alert_add` (a bad condition
is BAD_REQUEST naming what is wrong) and what the evaluator runs on a stored
rule. `Condition.evaluate(signals)` is pure: `Signals` is what the evaluator
read from the state and the node's view of its peers in one round.
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from cluster.errors import BadRequest

DURATION_UNITS_MS: dict[str, int] = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_WINDOW_MS = 7 * 86_400_000  # the finished-jobs window a rule may look back over
SCHEDULE_OVERDUE_MS = 60_000    # a schedule this late was not fired by any leader

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
# name -> its parameters: "queue", "name" (a schedule) or "window" (a duration)
_MEASURES: dict[str, tuple[str, ...]] = {
    "depth": ("queue",), "oldest_ready_age": ("queue",),
    "failure_rate": ("queue", "window"), "failures": ("queue", "window"),
}
_PREDICATES: dict[str, tuple[str, ...]] = {
    "dead_letters_growing": ("queue", "window"), "no_worker": ("queue",),
    "node_down": (), "no_quorum": (), "schedule_missed": ("name",),
}
_TOKEN = re.compile(r"\s*(?:(?P<op>>=|<=|>|<)|(?P<punct>[(),])|(?P<word>[A-Za-z0-9_.:/-]+))")
_NAME = re.compile(r"[A-Za-z0-9_.:/-]+")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration_ms(text: str, what: str = "duration") -> int:
    """`30s`, `5m`, `1.5h`, `500ms` -> milliseconds; BadRequest otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise BadRequest(f"{what} must be a number with a unit (ms, s, m, h, d), e.g. 30s or 5m; got {text!r}")
    return int(float(m.group(1)) * DURATION_UNITS_MS[m.group(2)])


@dataclass
class Signals:
    """What one evaluation round read; every condition is decided from it alone.

    `queues`: queue -> counts by state; `oldest_ready_ms`: queue -> when its
    longest-waiting queued job became ready; `finishes`: window_ms -> queue ->
    (succeeded, failed) finished within it and still so; `worker_queues`:
    the queues some registered worker leases from; `schedules`: name ->
    (fired, missed, next_fire_ms, paused); `missed_latest`: schedules whose
    latest firing was missed (the evaluator follows their counters); `down_nodes`: ids of other nodes
    this leader cannot reach (None: not probed this round); `nodes`: how many
    nodes the cluster has; `now_ms`: the leader's wall clock.
    """

    now_ms: int
    queues: dict[str, dict[str, int]] = field(default_factory=dict)
    oldest_ready_ms: dict[str, int] = field(default_factory=dict)
    finishes: dict[int, dict[str, tuple[int, int]]] = field(default_factory=dict)
    worker_queues: frozenset[str] = frozenset()
    schedules: dict[str, tuple[int, int, int, bool]] = field(default_factory=dict)
    missed_latest: frozenset[str] = frozenset()
    down_nodes: list[int] | None = None
    nodes: int = 1


@dataclass(frozen=True)
class Outcome:
    """A condition's verdict and what it saw, in words (the notification's detail)."""

    true: bool
    detail: str


@dataclass(frozen=True)
class Condition:
    """A parsed condition: `func(args) [op threshold]`."""

    func: str
    queue: str | None = None
    name: str | None = None
    window_ms: int | None = None
    op: str | None = None
    threshold: float | None = None

    @property
    def needs_peers(self) -> bool:
        return self.func in ("node_down", "no_quorum")

    def evaluate(self, s: Signals) -> Outcome:
        f = self.func
        if f in _MEASURES:
            value = self._measure(s)
            assert self.op is not None and self.threshold is not None
            shown = _show_ms(value) if f == "oldest_ready_age" else f"{value:g}"
            return Outcome(_COMPARE[self.op](value, self.threshold), f"{f}({self._args()}) = {shown}")
        if f == "dead_letters_growing":
            _, failed = s.finishes.get(self.window_ms or 0, {}).get(self.queue or "", (0, 0))
            return Outcome(failed > 0, f"{failed} new dead letter(s) in {self.queue} in the last "
                                       f"{_show_ms(self.window_ms or 0)}")
        if f == "no_worker":
            counts = s.queues.get(self.queue or "", {})
            waiting = counts.get("queued", 0) + counts.get("running", 0)
            served = self.queue in s.worker_queues
            return Outcome(waiting > 0 and not served,
                           f"{self.queue}: {waiting} job(s) waiting or running, "
                           f"{'a' if served else 'no'} registered worker")
        if f == "schedule_missed":
            return self._schedule_missed(s)
        down = s.down_nodes or []
        if f == "node_down":
            return Outcome(bool(down), "unreachable from the leader: "
                                       + (", ".join(f"node {i}" for i in down) or "none"))
        reachable = s.nodes - len(down)
        return Outcome(reachable <= s.nodes // 2, f"{reachable} of {s.nodes} node(s) reachable from the leader")

    def _measure(self, s: Signals) -> float:
        q = self.queue or ""
        if self.func == "depth":
            return float(s.queues.get(q, {}).get("queued", 0))
        if self.func == "oldest_ready_age":
            ready = s.oldest_ready_ms.get(q)
            return 0.0 if ready is None else float(max(s.now_ms - ready, 0))
        ok, failed = s.finishes.get(self.window_ms or 0, {}).get(q, (0, 0))
        if self.func == "failures":
            return float(failed)
        return failed / (ok + failed) if ok + failed else 0.0

    def _schedule_missed(self, s: Signals) -> Outcome:
        """True while the schedule's latest firing was missed: counted as missed
        by the cluster, or overdue by more than SCHEDULE_OVERDUE_MS (no leader fired it)."""
        sched = s.schedules.get(self.name or "")
        if sched is None:
            return Outcome(False, f"no schedule {self.name!r}")
        fired, missed, next_fire_ms, paused = sched
        overdue = not paused and s.now_ms - next_fire_ms > SCHEDULE_OVERDUE_MS
        return Outcome(overdue or self.name in s.missed_latest,
                       f"schedule {self.name}: {fired} fired, {missed} missed"
                       + (f", overdue by {_show_ms(s.now_ms - next_fire_ms)}" if overdue else ""))

    def _args(self) -> str:
        parts = [p for p in (self.queue, self.name) if p is not None]
        if self.window_ms is not None:
            parts.append(_show_ms(self.window_ms))
        return ", ".join(parts)


def _show_ms(ms: float) -> str:
    """A duration as people write it: 850ms, 12s, 5m, 2h (the largest exact unit, else seconds)."""
    ms = int(ms)
    for unit in ("d", "h", "m", "s"):
        size = DURATION_UNITS_MS[unit]
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms}ms"


def parse(text: str) -> Condition:
    """A condition from its text; BadRequest saying what is wrong."""
    tokens = _tokens(text)
    if not tokens:
        raise BadRequest("alert condition is empty; e.g. 'depth(emails) > 100' (see docs/alerting.md)")
    kind, func = tokens[0]
    if kind != "word" or (func not in _MEASURES and func not in _PREDICATES):
        known = ", ".join(sorted({**_MEASURES, **_PREDICATES}))
        raise BadRequest(f"alert condition must start with one of {known}; got {func!r}")
    params = _MEASURES.get(func) or _PREDICATES.get(func) or ()
    rest = tokens[1:]
    args: list[str] = []
    if params:
        args, rest = _call_args(func, rest)
        if len(args) != len(params):
            raise BadRequest(f"{func} takes {len(params)} argument(s) ({', '.join(params)}), got {len(args)}")
    elif rest and rest[0] == ("punct", "("):
        raise BadRequest(f"{func} takes no arguments: write just {func!r}")
    fields: dict[str, Any] = {}
    for param, arg in zip(params, args):
        if param == "window":
            window = parse_duration_ms(arg, f"{func}'s window")
            if not 0 < window <= MAX_WINDOW_MS:
                raise BadRequest(f"{func}'s window must be more than 0 and at most 7d, got {arg!r}")
            fields["window_ms"] = window
        elif not _NAME.fullmatch(arg):
            raise BadRequest(f"{func}: {arg!r} is not a {param} name")
        else:
            fields[param] = arg
    if func in _PREDICATES:
        if rest:
            raise BadRequest(f"{func} is true or false by itself: nothing may follow it, got {_text(rest)!r}")
        return Condition(func, **fields)
    if len(rest) != 2 or rest[0][0] != "op" or rest[1][0] != "word":
        raise BadRequest(f"{func} needs a comparison: {func}(...) > N (one of {' '.join(_COMPARE)}); "
                         f"got {_text(rest)!r}" if rest else f"{func} needs a comparison, e.g. {func}(...) > N")
    return Condition(func, op=rest[0][1], threshold=_threshold(func, rest[1][1]), **fields)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            at = len(text) - len(text[pos:].lstrip())
            raise BadRequest(f"alert condition: unexpected {text[at:at + 20]!r} at character {at + 1}")
        kind = m.lastgroup or "word"
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _call_args(func: str, tokens: list[tuple[str, str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """The arguments of `func( a, b )` and the tokens after the `)`."""
    if not tokens or tokens[0] != ("punct", "("):
        raise BadRequest(f"{func} needs its arguments in parentheses, e.g. {func}(QUEUE)")
    args: list[str] = []
    i = 1
    while True:
        if i >= len(tokens) or tokens[i][0] != "word":
            raise BadRequest(f"{func}: expected an argument at {_text(tokens[i:]) or 'the end'!r}")
        args.append(tokens[i][1])
        if i + 1 >= len(tokens):
            raise BadRequest(f"{func}: missing ')'")
        sep = tokens[i + 1]
        if sep == ("punct", ")"):
            return args, tokens[i + 2:]
        if sep != ("punct", ","):
            raise BadRequest(f"{func}: expected ',' or ')', got {sep[1]!r}")
        i += 2


def _threshold(func: str, text: str) -> float:
    if func == "oldest_ready_age":
        return float(parse_duration_ms(text, "oldest_ready_age's threshold"))
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{func}'s threshold must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{func}'s threshold must be a finite number, got {text!r}")
    if func == "failure_rate" and not 0 <= value <= 1:
        raise BadRequest(f"failure_rate is a fraction: its threshold must be in 0..1, got {text!r}")
    return value


def _text(tokens: list[tuple[str, str]]) -> str:
    return " ".join(t[1] for t in tokens)
