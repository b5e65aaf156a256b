"""The job-handler registry: which function runs which job type, and where.

A handler is a plain function `fn(args: dict, ctx: JobContext) -> result`
registered under a job type name with `@job("name", pool="thread"|"process")`.
`result` must be msgpack-encodable (None, bool, int, float, str, bytes, lists
and maps of those); the worker checks that before reporting it.

Invariants:
- The decorator returns the function unchanged, so a process-pool handler is
  pickled by reference (module + qualified name) and re-imported in the child
  process. That is why process handlers must be module-level functions.
- A name maps to exactly one function. Registering the same function again
  (e.g. a module imported twice) is a no-op; a different function under a taken
  name is a `RegistryError`, never a silent override.
- Handlers signal outcomes by raising: `JobError(msg, retryable=...)` for a
  deliberate failure, `BadArgument(msg)` for bad input (never retried: running
  it again cannot help). Any other exception is a retryable failure.

A built-in handler reads its args through `parse_args(type, args)`, the schema
the node checks at submit time too (cluster/jobargs.py); a custom handler
checks its own with `require()` and `check_keys()`. Both word errors the same
way, and the worker prefixes them with the job type when reporting, e.g.
"math.primes: 'n' must be an integer between 0 and 50000000, got 'abc'".
"""
from __future__ import annotations

import importlib
import math
import os
import re
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterable, Literal

from cluster import jobargs
from cluster.jobargs import BUILTIN_ARGS, ArgError

Pool = Literal["thread", "process"]
Handler = Callable[[dict, Any], Any]

_MISSING: Any = object()
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]{0,199}$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class RegistryError(ValueError):
    """A handler could not be registered (bad name, pool, or a name clash)."""


class LoadError(ValueError):
    """A user job module given with --import could not be imported."""


class JobError(Exception):
    """Raised by a handler to fail its job with a clear message.

    `retryable=False` sends the job straight to the dead-letter set.
    """

    retryable: bool = True

    def __init__(self, message: str, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep `retryable` when the error crosses a process boundary (pickle).
        return (type(self), (self.message, self.retryable))

    def __str__(self) -> str:
        return self.message


class BadArgument(JobError):
    """A job's arguments are invalid; the job fails at once, never retried."""

    retryable = False


@dataclass(frozen=True)
class JobType:
    """One registered handler and how to run it."""

    name: str
    fn: Handler
    pool: Pool = "thread"
    timeout_s: float | None = None  # default per-attempt limit when the job sets none
    max_attempts: int | None = None  # advisory default for submitters


class Registry:
    """Job type name -> JobType. Not thread-safe: fill it before the worker starts."""

    def __init__(self) -> None:
        self._types: dict[str, JobType] = {}

    def job(
        self,
        name: str,
        pool: Pool = "thread",
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register `fn` as the handler of job type `name`."""

        def decorate(fn: Handler) -> Handler:
            self.add(name, fn, pool=pool, timeout=timeout, max_attempts=max_attempts)
            return fn

        return decorate

    def add(
        self,
        name: str,
        fn: Handler,
        *,
        pool: Pool = "thread",
        timeout: float | None = None,
        max_attempts: int | None = None,
    ) -> JobType:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise RegistryError(
                f"job type name must be 1-200 characters of letters, digits and _ . : -, got {name!r}"
            )
        if not callable(fn):
            raise RegistryError(f"handler for {name!r} is not callable: {fn!r}")
        if pool not in ("thread", "process"):
            raise RegistryError(f"{name}: pool must be 'thread' or 'process', got {pool!r}")
        if pool == "process" and "<locals>" in getattr(fn, "__qualname__", "<locals>"):
            raise RegistryError(
                f"{name}: a process-pool handler must be a module-level function "
                "(it is pickled by reference into the child process)"
            )
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise RegistryError(f"{name}: timeout must be a number of seconds > 0, got {timeout!r}")
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise RegistryError(f"{name}: max_attempts must be an integer >= 1, got {max_attempts!r}")
        old = self._types.get(name)
        if old is not None and not _same_function(old.fn, fn):
            raise RegistryError(
                f"job type {name!r} is already registered by {_describe(old.fn)}; "
                f"cannot register {_describe(fn)} under the same name"
            )
        jt = JobType(name, fn, pool, float(timeout) if timeout is not None else None, max_attempts)
        self._types[name] = jt
        return jt

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def copy(self) -> "Registry":
        other = Registry()
        other._types = dict(self._types)
        return other

    def __contains__(self, name: object) -> bool:
        return name in self._types

    def __len__(self) -> int:
        return len(self._types)


def _same_function(a: Handler, b: Handler) -> bool:
    return a is b or (
        getattr(a, "__module__", None) == getattr(b, "__module__", None)
        and getattr(a, "__qualname__", None) == getattr(b, "__qualname__", None)
    )


def _describe(fn: Handler) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


# The process-wide registry that `@job` fills; `worker.jobs` registers the
# built-ins here on import. Tests build their own `Registry()`.
default_registry = Registry()


def job(
    name: str,
    pool: Pool = "thread",
    timeout: float | None = None,
    max_attempts: int | None = None,
) -> Callable[[Handler], Handler]:
    """Register a handler in the default registry: `@job("resize", pool="process")`."""
    return default_registry.job(name, pool=pool, timeout=timeout, max_attempts=max_attempts)


def load_module(name: str) -> ModuleType:
    """Import a user's job module (`--import NAME`) so its `@job`s register.

    The current directory is put on sys.path first, as Celery and RQ do, so
    `raftq worker --import tasks` finds ./tasks.py.
    """
    if not isinstance(name, str) or not _MODULE_RE.match(name):
        raise LoadError(f"--import expects a dotted module name like 'myapp.jobs', got {name!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise LoadError(
                f"cannot import job module {name!r}: no module named {exc.name!r} "
                f"(searched the current directory {cwd} and sys.path)"
            ) from None
        raise LoadError(f"error while importing job module {name!r}: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise LoadError(
            f"error while importing job module {name!r}: {type(exc).__name__}: {exc}"
        ) from exc


# --- argument validation -----------------------------------------------------
# One wording for every argument error: the checks are cluster/jobargs.py's,
# which the node also runs on a built-in type's args at submit time.


def parse_args(job_type: str, args: Any) -> dict:
    """The args of built-in `job_type`, checked against its schema in
    cluster/jobargs.py, defaults filled in; BadArgument naming the first bad one."""
    try:
        return BUILTIN_ARGS[job_type].parse(args)
    except ArgError as exc:
        raise BadArgument(str(exc)) from None


def check_keys(args: Any, allowed: Iterable[str]) -> dict:
    """Reject unknown argument names (catches typos like 'lst' for 'list')."""
    try:
        return jobargs.check_keys(args, allowed)
    except ArgError as exc:
        raise BadArgument(str(exc)) from None


def require(
    args: Any,
    key: str,
    kind: type,
    *,
    min: float | None = None,  # noqa: A002 - reads naturally at call sites
    max: float | None = None,  # noqa: A002
    default: Any = _MISSING,
) -> Any:
    """Return `args[key]` checked to be of `kind` (int, float, str, bool, list, dict).

    For numbers, `min`/`max` bound the value; for str and list they bound the
    length. bool is never accepted as an int; an int is accepted as a float.
    Raises BadArgument with a message naming the argument, the expectation and
    the value received.
    """
    try:
        amap = jobargs.args_map(args)
        if key not in amap:
            if default is not _MISSING:
                return default
            raise ArgError(f"missing required argument {key!r} ({jobargs.expectation(kind, min, max)})")
        return jobargs.check_value(key, amap[key], kind, min, max)
    except ArgError as exc:
        raise BadArgument(str(exc)) from None
