"""The built-in job types: util.*, text.*, math.*.

Each handler validates its arguments first (BadArgument: the job fails at once,
never retried) and then does real work. Thread-pool handlers poll
`ctx.cancelled` between steps so a lost lease, a cancel or a timeout stops them;
the CPU-bound math handlers run in the process pool, where the context is a
local stand-in (see worker/runner.py), so their progress is not forwarded.
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter
from itertools import compress
from typing import Any

from worker.context import JobCancelled, JobContext
from worker.registry import BadArgument, JobError, Registry, check_keys, default_registry, require

MAX_SLEEP_S = 3600
MAX_PRIMES_N = 50_000_000
MAX_PRIMES_LIST_N = 1_000_000
MAX_FACTORIAL_N = 100_000
MAX_FACTORIAL_VALUE_DIGITS = 10_000
HEAD_DIGITS = 50

_WORD_RE = re.compile(r"[^\W_]+")  # runs of letters/digits (Unicode-aware), "_" is a separator


def util_noop(args: dict, ctx: JobContext) -> None:
    """Do nothing; accepts any arguments (handy for load tests)."""
    return None


def util_sleep(args: dict, ctx: JobContext) -> dict:
    """Sleep `seconds` (0..3600) in small steps, reporting progress, stopping on cancel."""
    check_keys(args, ("seconds",))
    seconds = require(args, "seconds", float, min=0, max=MAX_SLEEP_S)
    start = time.monotonic()
    end = start + seconds
    step = min(0.1, max(seconds / 100, 0.01))
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if ctx.wait(min(step, end - now)):
            raise JobCancelled(ctx.cancel_reason or "cancelled")
        if seconds > 0:
            ctx.progress((time.monotonic() - start) / seconds, f"slept {time.monotonic() - start:.1f}s of {seconds:g}s")
    ctx.progress(1.0, "done")
    return {"slept": round(time.monotonic() - start, 3)}


def util_fail(args: dict, ctx: JobContext) -> None:
    """Fail on purpose with `message`; `retryable` (default true) decides retries."""
    check_keys(args, ("message", "retryable"))
    message = require(args, "message", str, default="util.fail: failing as asked")
    retryable = require(args, "retryable", bool, default=True)
    raise JobError(message, retryable=retryable)


def text_wordcount(args: dict, ctx: JobContext) -> dict:
    """Count words (lowercased runs of letters/digits), lines and characters of `text`."""
    check_keys(args, ("text",))
    text = require(args, "text", str)
    counts = Counter(w.lower() for w in _WORD_RE.findall(text))
    # Ties broken alphabetically so the answer is the same on every run.
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return {
        "words": sum(counts.values()),
        "lines": len(text.splitlines()),
        "chars": len(text),
        "top": [[w, c] for w, c in top],
    }


def primes_sieve(n: int, ctx: JobContext | None = None) -> bytearray:
    """Sieve of Eratosthenes: byte i is 1 iff i is prime, for 0 <= i <= n."""
    sieve = bytearray([1]) * (n + 1)
    sieve[0:2] = b"\x00\x00"[: n + 1]
    limit = math.isqrt(n)
    for i in range(2, limit + 1):
        if sieve[i]:
            start = i * i
            sieve[start::i] = bytes(len(range(start, n + 1, i)))
            if ctx is not None and i % 64 == 1:
                ctx.check_cancelled()
                ctx.progress(i / limit, "sieving")
    return sieve


def math_primes(args: dict, ctx: JobContext) -> dict:
    """Count the primes <= `n` (and list them when `list` is true and n <= 1,000,000)."""
    check_keys(args, ("n", "list"))
    n = require(args, "n", int, min=0, max=MAX_PRIMES_N)
    want_list = require(args, "list", bool, default=False)
    if want_list and n > MAX_PRIMES_LIST_N:
        raise BadArgument(
            f"'list' is only allowed for n <= {MAX_PRIMES_LIST_N} (got n={n}); "
            "omit it to get just the count"
        )
    sieve = primes_sieve(n, ctx)
    out: dict[str, Any] = {"n": n, "count": sieve.count(1)}
    if want_list:
        out["primes"] = list(compress(range(n + 1), sieve))
    return out


def int_to_decimal(value: int) -> str:
    """str(value) without Python's 4300-digit conversion limit (divide and conquer)."""
    if value < 0:
        return "-" + int_to_decimal(-value)
    if value < 10**4000:
        return str(value)
    half = (_decimal_digits(value) + 1) // 2
    high, low = divmod(value, 10**half)
    return int_to_decimal(high) + int_to_decimal(low).zfill(half)


def _decimal_digits(value: int) -> int:
    """Exact number of decimal digits of value >= 0."""
    if value == 0:
        return 1
    d = max(1, int(value.bit_length() * 0.30102999566398120))
    while 10**d <= value:
        d += 1
    while d > 1 and 10 ** (d - 1) > value:
        d -= 1
    return d


def math_factorial(args: dict, ctx: JobContext) -> dict:
    """n! for 0 <= n <= 100,000: digit count, first 50 digits, full value up to 10,000 digits."""
    check_keys(args, ("n",))
    n = require(args, "n", int, min=0, max=MAX_FACTORIAL_N)
    value = math.factorial(n)
    digits = _decimal_digits(value)
    if digits <= MAX_FACTORIAL_VALUE_DIGITS:
        text: str | None = int_to_decimal(value)
        head = text[:HEAD_DIGITS]
    else:
        text = None
        head = str(value // 10 ** (digits - HEAD_DIGITS))
    return {"n": n, "digits": digits, "value": text, "digits_head": head}


# name -> (handler, pool)
BUILTINS: dict[str, tuple[Any, str]] = {
    "util.noop": (util_noop, "thread"),
    "util.sleep": (util_sleep, "thread"),
    "util.fail": (util_fail, "thread"),
    "text.wordcount": (text_wordcount, "thread"),
    "math.primes": (math_primes, "process"),
    "math.factorial": (math_factorial, "process"),
}


def register(registry: Registry) -> Registry:
    """Add every built-in job type to `registry` (idempotent)."""
    for name, (fn, pool) in BUILTINS.items():
        registry.add(name, fn, pool=pool)  # type: ignore[arg-type]
    return registry


register(default_registry)
