"""util.* job types and the table of every built-in job type.

The built-ins live one family per module (text, math, files, http, images,
data, archives, email, reports, batch, scrape, logs, maintenance, health);
each exposes `JOBS = {name: (handler, pool)}`. `BUILTINS` merges them and
`register(registry)` adds them all (idempotent). Importing `worker.jobs`
registers them in the default registry.

Each handler first parses its arguments through its declaration in
cluster/jobargs.py (`parse_args`; the node refuses the same bad ones at submit,
so a BadArgument here, never retried, is mostly what only the worker can judge:
a path, a host, a column; or a pipeline step's args) and then does real work. Thread-pool handlers poll
`ctx.cancelled` between steps so a lost lease, a cancel or a timeout stops
them; process-pool handlers are terminated instead (worker/process.py).
"""
from __future__ import annotations

import time
from typing import Any

from worker.context import JobCancelled, JobContext
from worker.jobs import (archives, batch, data, email, files, health, http, images, logs, maintenance,
                         math, reports, scrape, text)
from worker.jobs.math import (MAX_FACTORIAL_N, MAX_PRIMES_LIST_N, MAX_PRIMES_N, int_to_decimal,  # noqa: F401
                              math_factorial, math_primes, primes_sieve)
from worker.jobs.text import text_convert, text_wordcount  # noqa: F401 - re-exported
from worker.registry import JobError, Registry, default_registry, parse_args


def util_noop(args: dict, ctx: JobContext) -> None:
    """Do nothing; accepts any arguments (handy for load tests)."""
    return None


def util_sleep(args: dict, ctx: JobContext) -> dict:
    """Sleep `seconds` (0..3600) in small steps, reporting progress, stopping on cancel."""
    seconds = parse_args("util.sleep", args)["seconds"]
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
    a = parse_args("util.fail", args)
    raise JobError(a["message"], retryable=a["retryable"])



_UTIL: dict[str, tuple[Any, str]] = {
    "util.noop": (util_noop, "thread"),
    "util.sleep": (util_sleep, "thread"),
    "util.fail": (util_fail, "thread"),
}

# name -> (handler, pool)
BUILTINS: dict[str, tuple[Any, str]] = {
    **_UTIL,
    **text.JOBS, **math.JOBS, **files.JOBS, **http.JOBS, **images.JOBS, **data.JOBS,
    **archives.JOBS, **email.JOBS, **reports.JOBS, **batch.JOBS, **scrape.JOBS, **logs.JOBS,
    **maintenance.JOBS, **health.JOBS,
}


def register(registry: Registry) -> Registry:
    """Add every built-in job type to `registry` (idempotent)."""
    for name, (fn, pool) in BUILTINS.items():
        registry.add(name, fn, pool=pool)  # type: ignore[arg-type]
    return registry


register(default_registry)
