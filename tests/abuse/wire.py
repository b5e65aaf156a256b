"""Raw client-port and Raft-port connections for the attacks.

The library client validates and retries; an attacker does neither. These
helpers speak the wire protocol directly (cluster/protocol.py's framing) so an
attack can send what the library refuses to (frames that cannot be re-encoded,
partial frames, requests it never reads the answers to), and report outcomes by
wire code or by "closed", never by message text.

Every socket is bound to a chosen loopback source address: attackers use
127.0.1.x-127.0.3.x, never 127.0.0.1, so a per-source limit on the node throttles
the attack and not the legitimate client or the suite's own checks.
"""
from __future__ import annotations

import asyncio
import errno
import selectors
import socket
import time
from typing import Any

import msgpack

from cluster.protocol import FrameDecoder, encode_request_frame, hello_args, pack_args
from tests.integration.harness import TOKEN

CLOSED = "closed"       # outcome of a request whose connection the node closed
NO_ANSWER = "no answer"  # outcome of a request still unanswered at its deadline
_REPLY_MAX_BYTES = 64 * 1024 * 1024


def split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host, int(port)


def attacker_source(i: int, block: int = 1) -> str:
    """The i-th attacker source address in 127.0.<block>.1-250 (never a node's)."""
    return f"127.0.{block}.{1 + i % 250}"


def outcome_of(reply: dict[str, Any] | str) -> str:
    """"ok", a wire error code, CLOSED or NO_ANSWER."""
    if isinstance(reply, str):
        return reply
    if "err" in reply:
        err = reply["err"]
        return str(err[0]) if isinstance(err, (list, tuple)) and err else "INTERNAL"
    return "ok"


# ----------------------------------------------------------------- asyncio


class RawConn:
    """One pipelining client-port connection (asyncio streams), hello done."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._decoder = FrameDecoder(_REPLY_MAX_BYTES)
        self._next_id = 1
        self._ready: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, addr: str, source: str, timeout_s: float = 5.0) -> "RawConn":
        host, port = split(addr)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0), limit=_REPLY_MAX_BYTES), timeout_s)
        conn = cls(reader, writer)
        rid = conn.send_packed("hello", pack_args("hello", hello_args(TOKEN)))
        reply = await conn.reply(rid, timeout_s)
        if outcome_of(reply) != "ok":
            conn.close()
            raise ConnectionError(f"hello refused: {outcome_of(reply)}")
        return conn

    def send_packed(self, op: str, packed_args: bytes) -> int:
        rid = self._next_id
        self._next_id += 1
        self.writer.write(encode_request_frame(rid, op, packed_args))
        return rid

    def send(self, op: str, args: dict[str, Any]) -> int:
        return self.send_packed(op, msgpack.packb(args, use_bin_type=True))

    async def next_reply(self, timeout_s: float) -> dict[str, Any] | str:
        """The next frame from the node, CLOSED or NO_ANSWER."""
        deadline = time.monotonic() + timeout_s
        while not self._ready:
            left = deadline - time.monotonic()
            if left <= 0:
                return NO_ANSWER
            try:
                data = await asyncio.wait_for(self.reader.read(256 * 1024), left)
            except asyncio.TimeoutError:
                return NO_ANSWER
            except OSError:
                return CLOSED
            if not data:
                return CLOSED
            self._ready.extend(self._decoder.feed(data))
        return self._ready.pop(0)

    async def reply(self, rid: int, timeout_s: float) -> dict[str, Any] | str:
        """The answer to request `rid` (frames for other ids are dropped)."""
        deadline = time.monotonic() + timeout_s
        while True:
            msg = await self.next_reply(max(deadline - time.monotonic(), 0.0))
            if isinstance(msg, str) or msg.get("id") in (rid, 0):
                return msg

    def close(self) -> None:
        self.writer.close()


# ----------------------------------------------------------------- blocking


def connect(addr: str, source: str, timeout_s: float = 2.0) -> socket.socket | None:
    """A blocking TCP connection from `source`, or None if the node did not take it."""
    try:
        return socket.create_connection(split(addr), timeout=timeout_s, source_address=(source, 0))
    except OSError:
        return None


def open_many(addr: str, n: int, block: int, deadline_s: float, sources: int = 250) -> list[socket.socket]:
    """Up to n idle connections opened at once (non-blocking connects, epoll)
    from `sources` attacker addresses: a node that stops accepting makes
    connects hang, not the suite."""
    host, port = split(addr)
    sel = selectors.DefaultSelector()
    pending: list[socket.socket] = []
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((attacker_source(i % sources, block), 0))
            rc = s.connect_ex((host, port))
        except OSError:
            s.close()
            continue
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            continue
        sel.register(s, selectors.EVENT_WRITE)
        pending.append(s)
    opened: list[socket.socket] = []
    deadline = time.monotonic() + deadline_s
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(deadline - time.monotonic(), 0.0)):
            s = key.fileobj  # type: ignore[assignment]
            sel.unregister(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                opened.append(s)
            else:
                s.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    sel.close()
    return opened


def send_partial(sock: socket.socket, data: bytes, timeout_s: float) -> int:
    """Send as much of `data` as the node takes within timeout_s; bytes sent
    (a node that closes or stops reading ends it early)."""
    sock.settimeout(timeout_s)
    view = memoryview(data)
    sent = 0
    try:
        while sent < len(data):
            sent += sock.send(view[sent:sent + 1024 * 1024])
    except OSError:
        pass
    return sent


def closed_by_node(socks: list[socket.socket], deadline_s: float) -> int:
    """Wait until the node has closed each socket (EOF or reset; an error frame
    before the close is fine) or the deadline passes; how many it closed."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    deadline = time.monotonic() + deadline_s
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=min(max(deadline - time.monotonic(), 0.0), 1.0)):
            s = key.fileobj
            try:
                data = s.recv(65536)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                closed += 1
    sel.close()
    return closed


def close_all(socks: list[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
