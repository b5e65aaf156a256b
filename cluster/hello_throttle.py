"""Failed hellos slow their source down: token guessing at a few per second.

Once a source has presented a wrong token, its hellos are evaluated one per
HELLO_INTERVAL_S, whatever connection they come on: each hello reserves the
source's next free slot and waits for it, so opening many connections in
parallel gains a guesser nothing. A hello whose slot would come after its
connection's hello deadline is refused at once (OVERLOADED) without being
evaluated, so the reservations never run more than hello_timeout_s ahead and
a correct client from the same address gets in within that once the guessing
stops. A source that never failed is not looked up beyond one dict miss.

Memory is bounded: at most MAX_SOURCES sources are remembered (the one whose
last failure is oldest is forgotten first), and a source is forgotten
FORGET_S after its last failure once its slots are used up. A success does not
clear the record: a guesser holding one valid credential could otherwise
interleave it to reset the pace.

IPv6 sources are counted per /64: one host usually holds a whole /64.
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict

HELLO_INTERVAL_S = 0.5   # a failing source gets 2 hellos/s evaluated (was ~8,000 wrong guesses/s)
FORGET_S = 60.0          # a source with no failure for this long starts clean
MAX_SOURCES = 10_000     # ~3 MB of records at most


class HelloThrottle:
    """Per-source pacing of hellos after a failure (all times: loop.time())."""

    def __init__(self, interval_s: float = HELLO_INTERVAL_S, forget_s: float = FORGET_S,
                 max_sources: int = MAX_SOURCES) -> None:
        self.interval_s = interval_s
        self.forget_s = forget_s
        self.max_sources = max_sources
        # key -> [next free slot, last failure], oldest failure first
        self._sources: OrderedDict[str, list[float]] = OrderedDict()
        self.evaluated_late = 0  # hellos evaluated in a reserved slot (after a wait or none)
        self.refused = 0         # hellos refused unevaluated: no slot before their deadline

    def __len__(self) -> int:
        return len(self._sources)

    def wait_s(self, source: str, now: float, deadline: float) -> float | None:
        """Seconds this hello must wait before it is evaluated (0.0: at once,
        the answer for a source with no failure on record), reserving that
        slot; None when no slot is free before `deadline`: refuse it."""
        if not self._sources:
            return 0.0
        key = _key(source)
        record = self._sources.get(key)
        if record is None:
            return 0.0
        slot = max(now, record[0])
        if now - record[1] >= self.forget_s and slot == now:
            del self._sources[key]
            return 0.0
        if slot > deadline:
            self.refused += 1
            return None
        record[0] = slot + self.interval_s
        self.evaluated_late += 1
        return slot - now

    def failed(self, source: str, now: float) -> None:
        """A hello from `source` presented a wrong token at `now`."""
        key = _key(source)
        record = self._sources.pop(key, None)
        if record is None:
            if len(self._sources) >= self.max_sources:
                self._sources.popitem(last=False)
            record = [now + self.interval_s, now]
        record[1] = now
        self._sources[key] = record  # (re)inserted last: the most recent failure


def _key(source: str) -> str:
    try:
        addr = ipaddress.ip_address(source)
    except ValueError:
        return source
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return source
