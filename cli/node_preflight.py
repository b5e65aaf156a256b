"""What `raftq node` checks before it starts anything: that this node is not
running already (its data dir is locked by the running one) and that it can
bind each of its addresses on this host. Each failure is one line naming the
cause, where a bind deep in the server would say only "address in use".
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
from typing import IO

from cluster.config import ClusterConfig, ConfigError, parse_address

LOCK_FILE = "node.lock"


class CannotStart(Exception):
    """This node must not start here; the message says why, in one line."""


def lock_data_dir(cfg: ClusterConfig, node_id: int) -> IO[str]:
    """Hold the lock of node `node_id`'s data dir for as long as the returned
    file stays open (the process's life): a second start of the same node,
    by any config that names the same directory, is refused."""
    data_dir = cfg.node_data_dir(node_id)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    lock = open(path, "a+", encoding="ascii")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise CannotStart(f"already running: pid {holder} holds the lock of its data dir {data_dir}") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def check_bindable(cfg: ClusterConfig, node_id: int) -> None:
    """Bind (and release) each address of the node as its servers will."""
    for key, addr in cfg.node(node_id).addresses():
        try:
            host, port = parse_address(addr, key)
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (ConfigError, socket.gaierror) as exc:
            raise CannotStart(f"cannot bind {addr} ({key}): {_reason(exc)}") from None
        family, _, _, _, sockaddr = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As the servers do: a port in TIME_WAIT is free for them too.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                raise CannotStart(f"cannot bind {addr} ({key}): {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    code = getattr(exc, "errno", None)
    if code == errno.EADDRNOTAVAIL:
        return "address not available on this host (each node's addresses must be its own machine's)"
    if code == errno.EADDRINUSE:
        return "port in use by another process"
    if code == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host ({exc.strerror})"
    return str(getattr(exc, "strerror", None) or exc)


def preflight(cfg: ClusterConfig, node_id: int) -> IO[str]:
    """The data-dir lock (keep it open while the node runs), then the binds."""
    lock = lock_data_dir(cfg, node_id)
    try:
        check_bindable(cfg, node_id)
    except BaseException:
        lock.close()
        raise
    return lock

