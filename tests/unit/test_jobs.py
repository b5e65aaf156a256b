"""The built-in job types on real inputs, called directly as the worker would."""
from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from worker.context import JobCancelled, JobContext
from worker.jobs import builtin
from worker.registry import BadArgument, JobError, default_registry

PARAGRAPH = (
    "It was the best of times, it was the worst of times, it was the age of wisdom,\n"
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of\n"
    "incredulity, it was the season of Light, it was the season of Darkness."
)


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    return JobContext("j1", 1, {}, tmp_path, type="test")


def test_builtins_are_registered_on_import() -> None:
    import worker.jobs  # noqa: F401

    for name, pool in [("util.noop", "thread"), ("util.sleep", "thread"), ("util.fail", "thread"),
                       ("text.wordcount", "thread"), ("math.primes", "process"),
                       ("math.factorial", "process")]:
        jt = default_registry.get(name)
        assert jt is not None and jt.pool == pool, name


def test_every_builtin_is_registered_and_documented() -> None:
    from worker.jobs import BUILTINS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "job-types.md").read_text()
    assert len(BUILTINS) == 25
    for name, (fn, pool) in BUILTINS.items():
        jt = default_registry.get(name)
        assert jt is not None and jt.fn is fn and jt.pool == pool, name
        assert f"`{name}`" in doc, f"{name} is missing from docs/job-types.md"
        if name not in ("util.noop", "util.fail"):
            assert f"raftq submit {name} " in doc, f"{name} has no CLI example in docs/job-types.md"


def test_noop(ctx: JobContext) -> None:
    assert builtin.util_noop({"anything": [1, 2]}, ctx) is None


def test_wordcount_on_a_real_paragraph(ctx: JobContext) -> None:
    out = builtin.text_wordcount({"text": PARAGRAPH}, ctx)
    assert out["lines"] == 3
    assert out["chars"] == len(PARAGRAPH)
    assert out["words"] == 48  # eight clauses of six words
    # Ties are ordered alphabetically, so the answer is stable.
    assert out["top"][:8] == [["it", 8], ["of", 8], ["the", 8], ["was", 8],
                              ["age", 2], ["epoch", 2], ["season", 2], ["times", 2]]
    assert len(out["top"]) == 10 and out["top"][8][1] == 1


def test_wordcount_splits_on_non_letters_and_lowercases(ctx: JobContext) -> None:
    out = builtin.text_wordcount({"text": "Don't STOP-stop_now: 42 café Café"}, ctx)
    assert out["words"] == 8
    assert out["top"] == [["café", 2], ["stop", 2], ["42", 1], ["don", 1], ["now", 1], ["t", 1]]
    assert builtin.text_wordcount({"text": ""}, ctx) == {"words": 0, "lines": 0, "chars": 0, "top": []}


@pytest.mark.parametrize("n, count", [(0, 0), (1, 0), (2, 1), (10, 4), (1000, 168), (10**6, 78498)])
def test_prime_counts(ctx: JobContext, n: int, count: int) -> None:
    assert builtin.math_primes({"n": n}, ctx) == {"n": n, "count": count}


def test_prime_list(ctx: JobContext) -> None:
    assert builtin.math_primes({"n": 30, "list": True}, ctx)["primes"] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    primes = builtin.math_primes({"n": 10**6, "list": True}, ctx)["primes"]
    assert len(primes) == 78498 and primes[-1] == 999983


def test_primes_stops_when_cancelled(ctx: JobContext) -> None:
    ctx.cancel("lease lost")
    with pytest.raises(JobCancelled, match="lease lost"):
        builtin.math_primes({"n": 10**6}, ctx)


def test_factorial(ctx: JobContext) -> None:
    out = builtin.math_factorial({"n": 20}, ctx)
    assert out == {"n": 20, "digits": 19, "value": "2432902008176640000", "digits_head": "2432902008176640000"}
    assert builtin.math_factorial({"n": 0}, ctx)["value"] == "1"


def test_factorial_beyond_pythons_str_limit(ctx: JobContext) -> None:
    out = builtin.math_factorial({"n": 3000}, ctx)  # 9131 digits: above the 4300-digit str() limit
    assert out["digits"] == 9131 and len(out["value"]) == 9131
    assert out["value"].startswith(out["digits_head"]) and len(out["digits_head"]) == 50
    big = builtin.math_factorial({"n": 5000}, ctx)  # 16326 digits: too long to return whole
    assert big["value"] is None and big["digits"] == 16326
    assert big["digits_head"] == builtin.int_to_decimal(math.factorial(5000))[:50]


def test_sleep_sleeps_and_reports_progress(ctx: JobContext) -> None:
    out = builtin.util_sleep({"seconds": 0.2}, ctx)
    assert 0.2 <= out["slept"] < 2
    assert ctx.last_progress == (1.0, "done")


def test_sleep_stops_on_cancel(ctx: JobContext) -> None:
    threading.Timer(0.1, ctx.cancel, args=("cancelled",)).start()
    with pytest.raises(JobCancelled, match="cancelled"):
        builtin.util_sleep({"seconds": 30}, ctx)


def test_fail_raises_with_the_message(ctx: JobContext) -> None:
    with pytest.raises(JobError, match="^disk full$") as info:
        builtin.util_fail({"message": "disk full"}, ctx)
    assert info.value.retryable is True
    with pytest.raises(JobError) as info:
        builtin.util_fail({"message": "no", "retryable": False}, ctx)
    assert info.value.retryable is False


@pytest.mark.parametrize("fn, args, message", [
    (builtin.math_primes, {"n": "abc"}, "'n' must be an integer between 0 and 50000000, got 'abc'"),
    (builtin.math_primes, {"n": -1}, "'n' must be an integer between 0 and 50000000, got -1"),
    (builtin.math_primes, {"n": True}, "'n' must be an integer between 0 and 50000000, got True"),
    (builtin.math_primes, {"n": 50_000_001}, "'n' must be an integer between 0 and 50000000, got 50000001"),
    (builtin.math_primes, {}, "missing required argument 'n' (an integer between 0 and 50000000)"),
    (builtin.math_primes, {"n": 5, "lst": True}, "unknown argument 'lst' (expected: list, n)"),
    (builtin.math_primes, {"n": 2_000_000, "list": True},
     "'list' is only allowed for n <= 1000000 (got n=2000000); omit it to get just the count"),
    (builtin.math_primes, {"n": 5, "list": "yes"}, "'list' must be a boolean (true or false), got 'yes'"),
    (builtin.math_primes, [5], "arguments must be a map of name -> value, got [5]"),
    (builtin.math_factorial, {"n": 100_001}, "'n' must be an integer between 0 and 100000, got 100001"),
    (builtin.math_factorial, {"n": 2.0}, "'n' must be an integer between 0 and 100000, got 2.0"),
    (builtin.text_wordcount, {"text": 5}, "'text' must be a string, got 5"),
    (builtin.text_wordcount, {}, "missing required argument 'text' (a string)"),
    (builtin.util_sleep, {"seconds": -1}, "'seconds' must be a number between 0 and 3600, got -1"),
    (builtin.util_sleep, {"seconds": float("nan")}, "'seconds' must be a number between 0 and 3600, got nan"),
    (builtin.util_sleep, {"seconds": "1"}, "'seconds' must be a number between 0 and 3600, got '1'"),
    (builtin.util_fail, {"message": 3}, "'message' must be a string, got 3"),
])
def test_bad_arguments_are_rejected_clearly(ctx: JobContext, fn, args, message: str) -> None:
    with pytest.raises(BadArgument) as info:
        fn(args, ctx)
    assert str(info.value) == message
    assert info.value.retryable is False
