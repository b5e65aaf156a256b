"""The Raft port's wire format: one AES-GCM sealed pickle per message.

pysyncobj 0.3.17 frames every Raft message as zlib(pickle) wrapped in Fernet
(AES-CBC + HMAC + base64), and grows its buffers with `bytes +=` / slicing.
Measured on the 2-core box: ~80 us to send and ~45 us to receive a small
append_entries, four messages on every commit's critical path (~0.4 ms of a
sequential submit), and buffer copies quadratic in a large batch's size. This
module keeps pysyncobj's connection logic and handshake and replaces only the
framing:

    frame  = length (4 bytes, little endian) | header | AES-GCM(plaintext)
    header = salt (16 random bytes, one per connection and direction)
             | counter (8 bytes, big endian, 1, 2, 3, ...)
    key    = HMAC-SHA256(master, salt); nonce = 4 zero bytes | counter
    master = PBKDF2-HMAC-SHA256(password, 100,000 rounds) (as strong as
             pysyncobj's Fernet key against an offline guess)

The header is the associated data, so it is authenticated too. A fresh salt per
connection gives every connection its own key, so a (key, nonce) pair never
repeats; the receiver requires the counter to rise, so a frame cannot be
replayed within a connection; pysyncobj's random-key handshake (every message
after the first carries the key the receiver chose) still stops a recorded
connection from being replayed as a new one. Nothing is unpickled before the
tag checks out, which is what keeps the Raft port from running a stranger's
pickle. No zlib: these are LAN/loopback links and the CPU is the bottleneck.

`SealedConnection` is a `TcpConnection` whose class the transport swaps in
(`seal(conn)`) right after pysyncobj creates each connection, before any byte
is read or written on it; `LinkKey` is what pysyncobj then holds as its
"encryptor". Loop thread only (replication/raft.py).
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import pickle
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pysyncobj.tcp_connection import TcpConnection

SALT_BYTES = 16
COUNTER_BYTES = 8
HEADER_BYTES = SALT_BYTES + COUNTER_BYTES
TAG_BYTES = 16
# A Raft message is at most one append_entries batch (4 MiB by default) or a
# dump chunk; anything claiming more is refused before it is buffered whole.
MAX_FRAME_BYTES = 64 * 1024 * 1024
_NONCE_PAD = b"\0" * (12 - COUNTER_BYTES)
_KDF_LABEL = b"raftq raft link v1"


class LinkError(Exception):
    """A frame that is not authentic, out of order, or malformed."""


class LinkKey:
    """The cluster's link key (derived once from the Raft password)."""

    def __init__(self, password: str) -> None:
        self._master = hashlib.pbkdf2_hmac("sha256", password.encode(), _KDF_LABEL, 100_000)

    def session(self, salt: bytes) -> AESGCM:
        return AESGCM(hmac.digest(self._master, salt, "sha256"))


class Sender:
    """One direction of one connection: seals messages with its own salt."""

    def __init__(self, key: LinkKey) -> None:
        self._salt = os.urandom(SALT_BYTES)
        self._aead = key.session(self._salt)
        self._counter = 0

    def seal(self, message: Any) -> bytes:
        self._counter += 1
        counter = self._counter.to_bytes(COUNTER_BYTES, "big")
        header = self._salt + counter
        body = self._aead.encrypt(_NONCE_PAD + counter, pickle.dumps(message, protocol=5), header)
        return (HEADER_BYTES + len(body)).to_bytes(4, "little") + header + body


class Receiver:
    """The other direction: opens frames from one peer salt, counter rising."""

    def __init__(self, key: LinkKey) -> None:
        self._key = key
        self._salt: bytes | None = None
        self._aead: AESGCM | None = None
        self._counter = 0

    def next_frame(self, buf: bytearray) -> bytes | None:
        """Cut the next whole frame off the front of `buf` (None: not complete yet)."""
        if len(buf) < 4:
            return None
        size = int.from_bytes(buf[:4], "little")
        if not HEADER_BYTES + TAG_BYTES <= size <= MAX_FRAME_BYTES:
            raise LinkError(f"bad frame length {size}")
        if len(buf) < 4 + size:
            return None
        frame = bytes(buf[4:4 + size])
        del buf[:4 + size]  # bytearray: O(1) at the front
        return frame

    def open(self, frame: bytes) -> Any:
        salt, counter = frame[:SALT_BYTES], frame[SALT_BYTES:HEADER_BYTES]
        if self._salt is None:
            self._salt, self._aead = salt, self._key.session(salt)
        elif salt != self._salt:
            raise LinkError("salt changed within a connection")
        n = int.from_bytes(counter, "big")
        if n <= self._counter:
            raise LinkError(f"counter {n} after {self._counter}: replayed or reordered")
        assert self._aead is not None
        try:
            plain = self._aead.decrypt(_NONCE_PAD + counter, frame[HEADER_BYTES:], frame[:HEADER_BYTES])
        except Exception as exc:  # cryptography's InvalidTag
            raise LinkError("authentication failed") from exc
        self._counter = n
        return pickle.loads(plain)  # only ever on authenticated bytes


def _bytearray_attribute(name: str) -> property:
    """One of TcpConnection's name-mangled buffer attributes, stored in `name`
    and kept a bytearray whatever pysyncobj assigns (`bytes()`, a slice); its
    own `+=` hands back the same object, which is kept as it is."""
    def get(self: Any) -> bytearray:
        return getattr(self, name)  # type: ignore[no-any-return]

    def set_(self: Any, value: bytes | bytearray) -> None:
        if value is not getattr(self, name):
            setattr(self, name, bytearray(value))
    return property(get, set_)


class SealedConnection(TcpConnection):
    """pysyncobj's TcpConnection with the framing above and bytearray buffers.

    The base class keeps its buffers in name-mangled attributes and reassigns
    them (`= bytes()` on connect/disconnect, `+=` on read); the properties
    below keep them bytearrays, so appends and front cuts are O(1). Its
    messages are always sealed: without the cluster's LinkKey it refuses to
    send and drops whatever arrives.
    """

    _rbuf: bytearray
    _wbuf: bytearray
    _sender: Sender | None
    _receiver: Receiver | None

    _TcpConnection__readBuffer = _bytearray_attribute("_rbuf")
    _TcpConnection__writeBuffer = _bytearray_attribute("_wbuf")

    def _new_session(self) -> None:
        key = self.encryptor
        if not isinstance(key, LinkKey):  # never fall back to pysyncobj's framing
            raise LinkError("a sealed connection needs the cluster's LinkKey")
        self._sender, self._receiver = Sender(key), Receiver(key)

    def connect(self, host: str, port: int) -> Any:
        result = super().connect(host, port)
        self._new_session()  # a new TCP connection: a new salt, counters from 1
        return result

    def disconnect(self) -> None:
        self._sender = self._receiver = None
        fileno = self._TcpConnection__fileno  # type: ignore[attr-defined]
        if fileno is not None:
            # pysyncobj closes the socket first and unsubscribes after; an
            # event loop's epoll cannot drop a closed fd, so unsubscribe first.
            self._TcpConnection__poller.unsubscribe(fileno)  # type: ignore[attr-defined]
        super().disconnect()

    def send(self, message: Any) -> None:
        if self._sender is None:
            self._new_session()
        assert self._sender is not None
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        self._wbuf += self._sender.seal(message)
        self._TcpConnection__trySendBuffer()  # type: ignore[attr-defined]

    def _TcpConnection__processSend(self) -> bool:  # noqa: N802
        buf = self._wbuf
        if not buf:
            return False
        try:
            sent = self._TcpConnection__socket.send(buf)  # type: ignore[attr-defined]
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if sent <= 0:
            if sent < 0:
                self.disconnect()
            return False
        del buf[:sent]
        return True

    def _TcpConnection__processParseMessage(self) -> Any:  # noqa: N802
        try:
            if self._receiver is None:
                self._new_session()
            receiver = self._receiver
            assert receiver is not None
            frame = receiver.next_frame(self._rbuf)
            if frame is None:
                return None
            message = receiver.open(frame)
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise LinkError("wrong connection key")
        except Exception:
            self.disconnect()  # like pysyncobj: a bad frame drops the connection
            return None
        return message


def seal(conn: TcpConnection) -> SealedConnection:
    """Turn a TcpConnection pysyncobj just created into a SealedConnection."""
    state = conn.__dict__
    rbuf = state.pop("_TcpConnection__readBuffer", b"")
    wbuf = state.pop("_TcpConnection__writeBuffer", b"")
    conn.__class__ = SealedConnection
    assert isinstance(conn, SealedConnection)
    conn._rbuf, conn._wbuf = bytearray(rbuf), bytearray(wbuf)
    conn._sender = conn._receiver = None
    return conn
