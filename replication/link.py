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

This module is the framing alone and knows nothing of pysyncobj: the
connection that uses it (`SealedConnection`, a pysyncobj `TcpConnection`) is
in replication/pysyncobj_seam.py, and `LinkKey` is what pysyncobj holds as
its "encryptor" there. Loop thread only (replication/raft.py).

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

import hashlib
import hmac
import os
import pickle
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
