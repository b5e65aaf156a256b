"""The exception class of each wire error code (the codes: replication/codes.py).

The server raises these; the client maps a wire error back to the same class by
its code (never by message text), so callers catch `NotLeader`, `LeaseLost`...
Every code of `codes.WIRE_CODES` has exactly one class here; importing this
module fails if one is missing or extra (a new code is added there first).
"""
from __future__ import annotations

from typing import Any

from replication import codes


class RaftqError(Exception):
    """Base of every raftq error that crosses the wire."""

    code = codes.INTERNAL

    def __init__(self, message: str = "", extra: Any = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.extra = extra

    def to_wire(self) -> list[Any]:
        return [self.code, self.message, self.extra]


class Internal(RaftqError):
    code = codes.INTERNAL


class NotLeader(RaftqError):
    """This node is a follower; `leader` is the leader's client address (or None)."""

    code = codes.NOT_LEADER

    def __init__(self, message: str = "", extra: Any = None) -> None:
        super().__init__(message or "not the leader", extra)
        self.leader: str | None = (extra or {}).get("leader") if isinstance(extra, dict) else None


class NoLeader(RaftqError):
    code = codes.NO_LEADER


class Unauthorized(RaftqError):
    code = codes.UNAUTHORIZED


class Forbidden(RaftqError):
    """Authenticated, but this credential's roles or queues do not cover the
    request (cluster/roles.py); the connection stays open."""

    code = codes.FORBIDDEN


class BadRequest(RaftqError):
    code = codes.BAD_REQUEST


class NotFound(RaftqError):
    code = codes.NOT_FOUND


class LeaseLost(RaftqError):
    code = codes.LEASE_LOST


class TooLarge(RaftqError):
    code = codes.TOO_LARGE


class Overloaded(RaftqError):
    code = codes.OVERLOADED


class Conflict(RaftqError):
    code = codes.CONFLICT


class Timeout(RaftqError):
    code = codes.TIMEOUT


class WaitTimeout(Timeout):
    """Client side only: the job was not final when the caller's wait limit
    passed (`result(id, timeout=...)`); `view` is its last JobView. A Timeout,
    so code that caught Timeout keeps working, but never a lost connection."""

    def __init__(self, message: str = "", extra: Any = None) -> None:
        super().__init__(message, extra)
        self.view: dict[str, Any] | None = extra if isinstance(extra, dict) else None


class Unavailable(RaftqError):
    """Client side only: no node of the cluster could be reached in time."""

    code = codes.UNAVAILABLE


_WIRE_CLASSES: tuple[type[RaftqError], ...] = (
    Internal, NotLeader, NoLeader, Unauthorized, Forbidden, BadRequest, NotFound, LeaseLost, TooLarge, Overloaded,
    Conflict,
    Timeout,
)
_REGISTRY: dict[str, type[RaftqError]] = {cls.code: cls for cls in _WIRE_CLASSES}
if _REGISTRY.keys() != codes.WIRE_CODES.keys() or len(_REGISTRY) != len(_WIRE_CLASSES):
    raise ImportError(f"cluster.errors: wire codes without exactly one class: "
                      f"{sorted(_REGISTRY.keys() ^ codes.WIRE_CODES.keys())}")


def error_class(code: str) -> type[RaftqError]:
    """The class of a wire code (Internal for a code this version does not know)."""
    return _REGISTRY.get(code, Internal)


def error_from_wire(err: Any) -> RaftqError:
    """Turn a wire `[code, message, extra]` into the registered exception."""
    if not isinstance(err, (list, tuple)) or not err:
        return Internal(f"malformed error from server: {err!r}")
    code = err[0]
    message = err[1] if len(err) > 1 and isinstance(err[1], str) else ""
    extra = err[2] if len(err) > 2 else None
    cls = _REGISTRY.get(code, Internal) if isinstance(code, str) else Internal
    return cls(message, extra)
