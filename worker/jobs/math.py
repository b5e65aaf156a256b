"""math.* job types: CPU-bound, so they run in the process pool.

math.primes   sieve of Eratosthenes up to n; the count, or the list (n <= 1e6)
math.factorial  n! as a big integer (digit count, leading digits, full value
                when at most 10,000 digits)

They report progress and poll cancellation between sieve rounds; in the process
pool cancellation arrives as SIGTERM (see worker/process.py) and progress goes
up the child's pipe.
"""
from __future__ import annotations

import math
from itertools import compress
from typing import Any

from worker.context import JobContext
from cluster.jobargs import MAX_FACTORIAL_N, MAX_PRIMES_LIST_N, MAX_PRIMES_N  # noqa: F401 - re-exported
from worker.registry import parse_args

MAX_FACTORIAL_VALUE_DIGITS = 10_000
HEAD_DIGITS = 50


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
    a = parse_args("math.primes", args)
    n, want_list = a["n"], a["list"]
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
    n = parse_args("math.factorial", args)["n"]
    value = math.factorial(n)
    digits = _decimal_digits(value)
    if digits <= MAX_FACTORIAL_VALUE_DIGITS:
        text: str | None = int_to_decimal(value)
        head = text[:HEAD_DIGITS]
    else:
        text = None
        head = str(value // 10 ** (digits - HEAD_DIGITS))
    return {"n": n, "digits": digits, "value": text, "digits_head": head}


JOBS: dict[str, tuple[Any, str]] = {
    "math.primes": (math_primes, "process"),
    "math.factorial": (math_factorial, "process"),
}
