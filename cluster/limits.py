"""Connection admission for the client port: caps per node and per source
address, and the file-descriptor budget they live in.

Why a budget: with a 1024 fd limit, ~1,100 idle connections once starved the
journal's fsync (`os.dup`), the meta file and the Raft peers: no write could
commit and the leader never stepped down. So at start the node raises its soft
RLIMIT_NOFILE to the hard limit (`raise_fd_limit`), and client connections may
use only what is left after

- `fd_reserve` (config): journal, meta, snapshot dumps (a forked child),
  fsync's dup, Raft peer sockets, the loop's own fds;
- `LISTEN_BACKLOG`: connections the kernel completed that uvloop may accept in
  one burst before any of them is seen (and refused) here;
- `http.HTTP_MAX_CONNECTIONS`: the HTTP port's own cap.

Invariants: `total` and `per_source` count exactly the connections `admit`
accepted and `release` has not yet released; a refused connection is closed at
once (its fd lives for one loop iteration).
"""
from __future__ import annotations

import logging
import resource

from cluster.config import ClusterConfig
from cluster.http import HTTP_MAX_CONNECTIONS

log = logging.getLogger("raftq.node")

# The listen(2) backlog of the client port (asyncio's default): also the most
# connections one accept burst can open before the cap check runs.
LISTEN_BACKLOG = 100


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return soft


def connection_cap(cfg: ClusterConfig, nofile: int) -> int:
    """Client connections this node may hold with `nofile` file descriptors."""
    budget = nofile - cfg.fd_reserve - LISTEN_BACKLOG - HTTP_MAX_CONNECTIONS
    return max(1, min(cfg.max_connections, budget))


class ConnectionLimits:
    def __init__(self, cfg: ClusterConfig, cap: int) -> None:
        self.cap = cap
        self.per_source_cap = cfg.max_connections_per_source
        self.total = 0
        self.per_source: dict[str, int] = {}

    def admit(self, source: str) -> str | None:
        """Count a new connection from `source`; or say why it is refused."""
        if self.total >= self.cap:
            return f"node at its connection limit ({self.cap}); retry later or use another node"
        n = self.per_source.get(source, 0)
        if n >= self.per_source_cap:
            return f"too many connections from {source} (limit {self.per_source_cap}); retry later"
        self.total += 1
        self.per_source[source] = n + 1
        return None

    def release(self, source: str) -> None:
        self.total -= 1
        n = self.per_source[source] - 1
        if n:
            self.per_source[source] = n
        else:
            del self.per_source[source]
