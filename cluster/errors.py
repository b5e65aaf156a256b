"""One registry of wire error codes and the exception class for each.

The server raises these; the client maps a wire error back to the same class by
its code (never by message text), so callers catch `NotLeader`, `LeaseLost`...
"""
from __future__ import annotations

from typing import Any


class RaftqError(Exception):
    """Base of every raftq error that crosses the wire."""

    code = "INTERNAL"

    def __init__(self, message: str = "", extra: Any = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.extra = extra

    def to_wire(self) -> list[Any]:
        return [self.code, self.message, self.extra]


_REGISTRY: dict[str, type[RaftqError]] = {}


def _register(cls: type[RaftqError]) -> type[RaftqError]:
    _REGISTRY[cls.code] = cls
    return cls


@_register
class Internal(RaftqError):
    code = "INTERNAL"


@_register
class NotLeader(RaftqError):
    """This node is a follower; `leader` is the leader's client address (or None)."""

    code = "NOT_LEADER"

    def __init__(self, message: str = "", extra: Any = None) -> None:
        super().__init__(message or "not the leader", extra)
        self.leader: str | None = (extra or {}).get("leader") if isinstance(extra, dict) else None


@_register
class NoLeader(RaftqError):
    code = "NO_LEADER"


@_register
class Unauthorized(RaftqError):
    code = "UNAUTHORIZED"


@_register
class Forbidden(RaftqError):
    """Authenticated, but this credential's roles or queues do not cover the
    request (cluster/roles.py); the connection stays open."""

    code = "FORBIDDEN"


@_register
class BadRequest(RaftqError):
    code = "BAD_REQUEST"


@_register
class NotFound(RaftqError):
    code = "NOT_FOUND"


@_register
class LeaseLost(RaftqError):
    code = "LEASE_LOST"


@_register
class TooLarge(RaftqError):
    code = "TOO_LARGE"


@_register
class Overloaded(RaftqError):
    code = "OVERLOADED"


@_register
class Conflict(RaftqError):
    code = "CONFLICT"


@_register
class Timeout(RaftqError):
    code = "TIMEOUT"


class Unavailable(RaftqError):
    """Client side only: no node of the cluster could be reached in time."""

    code = "UNAVAILABLE"


CODES: frozenset[str] = frozenset(_REGISTRY)


def error_from_wire(err: Any) -> RaftqError:
    """Turn a wire `[code, message, extra]` into the registered exception."""
    if not isinstance(err, (list, tuple)) or not err:
        return Internal(f"malformed error from server: {err!r}")
    code = err[0]
    message = err[1] if len(err) > 1 and isinstance(err[1], str) else ""
    extra = err[2] if len(err) > 2 else None
    cls = _REGISTRY.get(code, Internal) if isinstance(code, str) else Internal
    return cls(message, extra)
