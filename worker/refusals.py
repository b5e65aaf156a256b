"""Telling a misconfigured worker from a cluster outage.

A worker that cannot reach any node keeps retrying: the nodes come back, and
the worker with them. A worker the nodes answer but refuse (a wrong token,
a credential without the worker role or with other queues, a TLS setup the
nodes reject, arguments they call malformed) would retry forever and look
healthy to its supervisor. So a refusal that lasts `window_s` with no accepted
request in between ends the worker with `REFUSED_EXIT_CODE`, which systemd
(`Restart=on-failure`) restarts and reports. The window is short but not zero:
while the nodes are restarted one by one to roll a credential, some still
refuse the new token for a while.
"""
from __future__ import annotations

import time
from collections.abc import Callable

from cluster.errors import BadRequest, Forbidden, Unauthorized
from cluster.tls import TlsError

REFUSED_EXIT_CODE = 3
# What a node answers the same way until the worker's configuration changes.
# Everything else (unreachable, no leader, timeouts, overload) is an outage.
REFUSALS = (Unauthorized, Forbidden, BadRequest, TlsError)


class Refusals:
    """How long the cluster has refused this worker. Loop thread only."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._since: float | None = None  # first refusal since the last accepted request

    def accepted(self) -> None:
        self._since = None

    def failed(self, exc: BaseException) -> bool:
        """Note a failed request; True once refusals have lasted the whole window."""
        if not isinstance(exc, REFUSALS):
            return False  # an outage neither starts nor ends the window
        now = self._clock()
        if self._since is None:
            self._since = now
        return now - self._since >= self.window_s
