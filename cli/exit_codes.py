"""The `raftq` exit codes, defined once: the commands, their --help and the
README's table say the same (a test compares the README with `TABLE`).

A script waiting on a job can tell "the job failed" from "I stopped waiting"
from "I could not ask": `submit --wait` and `result` end with one of these.
"""
from __future__ import annotations

OK = 0
ERROR = 1            # the cluster refused the request or could not be reached; a bad config or file
USAGE = 2            # bad command-line input (click's own usage errors exit 2 as well)
JOB_NOT_SUCCEEDED = 3  # the job is final but did not succeed: failed (dead-lettered) or cancelled
NOT_FINISHED = 4     # the job is not final: --wait gave up after --wait-timeout, or `result` without --wait

TABLE: tuple[tuple[int, str], ...] = (
    (OK, "the job succeeded (any other command: it did what was asked)"),
    (ERROR, "error: the cluster refused the request or was unreachable (no quorum included), a bad config"),
    (USAGE, "bad command-line input"),
    (JOB_NOT_SUCCEEDED, "the job ended failed (dead-lettered) or cancelled"),
    (NOT_FINISHED, "the job is not finished: the wait timed out (the job goes on), or `result` without --wait"),
)


def help_epilog() -> str:
    """The exit codes as the --help of `submit` and `result` shows them."""
    # \b: click keeps the lines of this paragraph as they are
    return "\b\nExit codes:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in TABLE)


def markdown() -> str:
    """The README's table."""
    return "\n".join(["| exit code | meaning |", "|---|---|", *(f"| {code} | {meaning} |" for code, meaning in TABLE)])
