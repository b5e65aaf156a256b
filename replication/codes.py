"""The wire error codes: every code raftq puts in an error, defined once.

The state machine writes them into its results (`{"error": CODE, ...}`), the
Raft adapter reports them for proposals that did not commit, and
cluster/errors.py builds one exception class per code from `WIRE_CODES`. This
module lives in replication/ because replication/ must not import cluster/
(docs/contracts.md); it holds strings only.
"""
from __future__ import annotations

NOT_LEADER = "NOT_LEADER"
NO_LEADER = "NO_LEADER"
UNAUTHORIZED = "UNAUTHORIZED"
FORBIDDEN = "FORBIDDEN"
BAD_REQUEST = "BAD_REQUEST"
NOT_FOUND = "NOT_FOUND"
LEASE_LOST = "LEASE_LOST"
TOO_LARGE = "TOO_LARGE"
OVERLOADED = "OVERLOADED"
CONFLICT = "CONFLICT"
TIMEOUT = "TIMEOUT"
INTERNAL = "INTERNAL"
# Never on the wire: a client's verdict that no node could be reached in time.
UNAVAILABLE = "UNAVAILABLE"

# Every code a node may send, with what it means (docs/contracts.md §3 lists the same).
WIRE_CODES: dict[str, str] = {
    NOT_LEADER: "this node is a follower; extra {'leader': client address or None}",
    NO_LEADER: "no leader (an election is running, or quorum is lost); extra {'node': id, 'term': n}; retry",
    UNAUTHORIZED: "no hello first, or a bad token",
    FORBIDDEN: "the connection's credential lacks the role or queue for this request",
    BAD_REQUEST: "a malformed frame, request or argument",
    NOT_FOUND: "no such job or schedule",
    LEASE_LOST: "the attempt no longer holds the job's lease",
    TOO_LARGE: "a frame, command, args or result over its limit",
    OVERLOADED: "a node limit refused the request; retry later",
    CONFLICT: "the job or schedule is in a state that forbids the op",
    TIMEOUT: "no answer in time (leadership changed: outcome unknown), or an idle connection closed",
    INTERNAL: "a bug or an undecodable reply",
}
