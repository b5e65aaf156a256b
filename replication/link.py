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
(`seal(conn, max_frame)`) right after pysyncobj creates each connection,
before any byte is read or written on it; `LinkKey` is what pysyncobj then
holds as its "encryptor". Loop thread only (replication/raft.py).

Limits (what a connection can make this node buffer):
* Until the connection is authentic (a frame carrying the random key this
  node chose for it, which no recording can replay), a frame may hold at most
  HANDSHAKE_FRAME_BYTES: a stranger, or a replayed first frame, gets a node to
  buffer a few KiB, never a batch.
* After that, a frame may hold at most `max_frame_bytes(batch)`: the largest
  message pysyncobj sends with the adapter's batching (see there).
* Reads stop once a whole frame of the current cap could be buffered
  (pysyncobj reads until EAGAIN, however fast the other side streams); the
  rest is read after the buffered frames are parsed.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import os
import pickle
import socket
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pysyncobj.monotonic import monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection, _getAddrType

SALT_BYTES = 16
COUNTER_BYTES = 8
HEADER_BYTES = SALT_BYTES + COUNTER_BYTES
TAG_BYTES = 16
# The handshake (pysyncobj's random keys, 32 bytes each, then the sender's
# address, 'readonly' or a short admin command) pickles to well under 200
# bytes; 4 KiB leaves room and is all a stranger can make a node buffer.
HANDSHAKE_FRAME_BYTES = 4096
# What one entry costs in a batch besides its command bytes: pickle's tuple,
# length and index/term opcodes (~30 bytes) with room to spare. The adapter's
# batching counts each entry as len(command) + ENTRY_OVERHEAD_BYTES, so a batch
# of many tiny entries cannot outgrow the frame cap.
ENTRY_OVERHEAD_BYTES = 64
# pysyncobj streams a dump in chunks of logCompactionBatchSize bytes (the
# adapter sets it to this) inside an append_entries of their own.
DUMP_CHUNK_BYTES = 64 * 1024
# A message around its payload: the append_entries dict (type, term,
# commit_index, prevLogIdx/Term, transmission), the (random key, message)
# tuple and pickle framing: measured ~250 bytes; 4 KiB leaves room.
MESSAGE_OVERHEAD_BYTES = 4096
_NONCE_PAD = b"\0" * (12 - COUNTER_BYTES)
_KDF_LABEL = b"raftq raft link v1"


def max_frame_bytes(batch_bytes: int) -> int:
    """The largest frame a peer sends when append_entries carry at most
    `batch_bytes` of entries (RaftConfig.append_entries_batch_bytes).

    pysyncobj 0.3.17 sends three kinds of large message: a batch of entries
    (the adapter's batching keeps sum(len(command) + ENTRY_OVERHEAD_BYTES) <=
    batch_bytes; pysyncobj's own could exceed it by one whole entry), one
    'transmission' chunk of an entry of batch_bytes or more (exactly
    batch_bytes of its pickle), and one dump chunk (DUMP_CHUNK_BYTES). Every
    other message (votes, acks, heartbeats, the handshake) is under 1 KiB.
    A frame adds the seal's header and tag."""
    return HEADER_BYTES + TAG_BYTES + max(batch_bytes, DUMP_CHUNK_BYTES) + MESSAGE_OVERHEAD_BYTES


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

    @property
    def counter(self) -> int:
        return self._counter

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

    def next_frame(self, buf: bytearray, max_size: int) -> bytes | None:
        """Cut the next whole frame off the front of `buf` (None: not complete
        yet); a length over `max_size` is refused before the frame is buffered."""
        if len(buf) < 4:
            return None
        size = int.from_bytes(buf[:4], "little")
        if not HEADER_BYTES + TAG_BYTES <= size <= max_size:
            raise LinkError(f"bad frame length {size} (at most {max_size} here)")
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

    Besides pysyncobj's behaviour: frames are capped as the module docstring
    says; `opened_at`, `authentic` and `last_frame_at` (pysyncobj's monotonic
    clock) tell the transport's reaper when the connection began and whether
    and when the other side last proved it holds the key; an
    outgoing connection binds its source address to `bind_host` (so peers can
    check it); and a send that does not fit in the socket at once asks the
    poller for WRITE events, so the rest drains as the socket allows
    (pysyncobj only flushed its write buffer on its next send: a 1 MiB entry
    crept out one socket buffer per heartbeat, with heartbeats behind it).
    """

    _rbuf: bytearray
    _wbuf: bytearray
    _sender: Sender | None
    _receiver: Receiver | None
    max_frame: int
    bind_host: str | None
    authentic: bool
    opened_at: float
    last_frame_at: float

    keepalive_mark: int  # frames_sent at the reaper's last round (raft.py)

    _TcpConnection__readBuffer = _bytearray_attribute("_rbuf")
    _TcpConnection__writeBuffer = _bytearray_attribute("_wbuf")

    @property
    def unsent_bytes(self) -> int:
        """Bytes queued here that the socket has not taken yet."""
        return len(self._wbuf)

    @property
    def frames_sent(self) -> int:
        """Frames sealed on this TCP connection so far (its counter)."""
        return self._sender.counter if self._sender is not None else 0

    def peer_host(self) -> str | None:
        sock = self._TcpConnection__socket  # type: ignore[attr-defined]
        try:
            return str(sock.getpeername()[0]) if sock is not None else None
        except OSError:
            return None

    def _new_session(self) -> None:
        key = self.encryptor
        if not isinstance(key, LinkKey):  # never fall back to pysyncobj's framing
            raise LinkError("a sealed connection needs the cluster's LinkKey")
        self._sender, self._receiver = Sender(key), Receiver(key)

    def connect(self, host: str, port: int) -> Any:
        if self.bind_host is None:
            result = super().connect(host, port)
        else:
            result = self._connect_from(self.bind_host, host, port)
        self._new_session()  # a new TCP connection: a new salt, counters from 1
        self.authentic = False
        self.opened_at = self.last_frame_at = monotonic()
        return result

    def _connect_from(self, source: str, host: str, port: int) -> bool:
        """TcpConnection.connect, with the socket bound to `source` first
        (pysyncobj lets the kernel pick the source address: on loopback always
        127.0.0.1, on a multi-homed host any interface's)."""
        if host is None:
            return False
        self._TcpConnection__state = CONNECTION_STATE.DISCONNECTED
        self._TcpConnection__fileno = None
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        self._TcpConnection__socket = sock
        sndbuf, rcvbuf = self._TcpConnection__sendBufferSize, self._TcpConnection__recvBufferSize  # type: ignore[attr-defined]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.setSockoptKeepalive()
        sock.setblocking(False)
        self._rbuf, self._wbuf = bytearray(), bytearray()
        self._TcpConnection__lastReadTime = monotonic()
        try:
            sock.bind((source, 0))
            sock.connect((host, port))
        except OSError as exc:
            if exc.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                sock.close()
                self._TcpConnection__socket = None
                return False
        self._TcpConnection__fileno = sock.fileno()
        self._TcpConnection__state = CONNECTION_STATE.CONNECTING
        self._TcpConnection__poller.subscribe(  # type: ignore[attr-defined]
            self._TcpConnection__fileno, self._TcpConnection__processConnection,  # type: ignore[attr-defined]
            POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        return True

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
        if self._wbuf and self.state == CONNECTION_STATE.CONNECTED:
            # Drain the rest on WRITE events; pysyncobj's WRITE handler drops
            # the WRITE subscription again once the buffer is empty.
            self._TcpConnection__poller.subscribe(  # type: ignore[attr-defined]
                self._TcpConnection__fileno, self._TcpConnection__processConnection,  # type: ignore[attr-defined]
                POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)

    def _frame_cap(self) -> int:
        return self.max_frame if self.authentic else HANDSHAKE_FRAME_BYTES

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

    def _TcpConnection__tryReadBuffer(self) -> None:  # noqa: N802
        # pysyncobj reads until EAGAIN: a fast stream would grow the buffer
        # without bound before any length is checked. Stop at one whole frame
        # of the current cap; level-triggered polling brings the rest.
        limit = 4 + self._frame_cap()
        while len(self._rbuf) < limit and self._TcpConnection__processRead():  # type: ignore[attr-defined]
            pass
        self._TcpConnection__lastReadTime = monotonic()

    def _TcpConnection__processParseMessage(self) -> Any:  # noqa: N802
        try:
            if self._receiver is None:
                self._new_session()
            receiver = self._receiver
            assert receiver is not None
            frame = receiver.next_frame(self._rbuf, self._frame_cap())
            if frame is None:
                return None
            message = receiver.open(frame)
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise LinkError("wrong connection key")
                self.authentic = True  # it holds the key this node chose: not a replay
        except Exception:
            self.disconnect()  # like pysyncobj: a bad frame drops the connection
            return None
        self.last_frame_at = monotonic()
        return message


def seal(conn: TcpConnection, max_frame: int, bind_host: str | None = None) -> SealedConnection:
    """Turn a TcpConnection pysyncobj just created into a SealedConnection
    whose authentic frames may hold up to `max_frame` bytes (max_frame_bytes);
    `bind_host`: the source address of its outgoing connects."""
    state = conn.__dict__
    rbuf = state.pop("_TcpConnection__readBuffer", b"")
    wbuf = state.pop("_TcpConnection__writeBuffer", b"")
    conn.__class__ = SealedConnection
    assert isinstance(conn, SealedConnection)
    conn._rbuf, conn._wbuf = bytearray(rbuf), bytearray(wbuf)
    conn._sender = conn._receiver = None
    conn.max_frame, conn.bind_host = max_frame, bind_host
    conn.authentic = False
    conn.opened_at = conn.last_frame_at = monotonic()
    conn.keepalive_mark = 0
    return conn
