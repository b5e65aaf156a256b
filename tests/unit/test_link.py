"""The Raft link's frames (replication/link.py): what a receiver accepts, and
the frame caps on a live SealedConnection (replication/pysyncobj_seam.py, over
a socketpair; the test delivers the poll events)."""
from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import pytest
from pysyncobj.tcp_connection import TcpConnection

from replication.link import (DUMP_CHUNK_BYTES, ENTRY_OVERHEAD_BYTES, HANDSHAKE_FRAME_BYTES, LinkError, LinkKey,
                              Receiver, Sender, max_frame_bytes)
from replication.pysyncobj_seam import CONNECTION_STATE, POLL_EVENT_TYPE, SealedConnection, _batch, seal

KEY = LinkKey("a-raft-password-derived-from-the-secret")
BATCH = 4 * 1024 * 1024
CAP = max_frame_bytes(BATCH)


def _open_all(receiver: Receiver, buf: bytearray) -> list[object]:
    out = []
    while (frame := receiver.next_frame(buf, CAP)) is not None:
        out.append(receiver.open(frame))
    return out


def test_messages_round_trip_in_order_across_partial_reads() -> None:
    sender, receiver = Sender(KEY), Receiver(KEY)
    messages = [{"type": "append_entries", "entries": [(b"x" * 300, 7, 2)]}, ("rand", {"n": 1}),
                b"\0" * 3_000_000]
    wire = b"".join(sender.seal(m) for m in messages)
    buf, got = bytearray(), []
    for i in range(0, len(wire), 65536):  # the socket hands frames over in pieces
        buf += wire[i:i + 65536]
        got += _open_all(receiver, buf)
    assert got == messages and not buf


def test_a_flipped_bit_anywhere_is_refused() -> None:
    frame = bytearray(Sender(KEY).seal({"type": "request_vote", "term": 9}))
    for pos in (4, 4 + 20, len(frame) - 1):  # salt, counter, tag
        bad = bytearray(frame)
        bad[pos] ^= 1
        with pytest.raises(LinkError):
            _open_all(Receiver(KEY), bad)


def test_another_password_is_refused() -> None:
    frame = Sender(LinkKey("some-other-password-entirely")).seal(["status"])
    with pytest.raises(LinkError, match="authentication"):
        _open_all(Receiver(KEY), bytearray(frame))


def test_a_replayed_frame_is_refused() -> None:
    sender, receiver = Sender(KEY), Receiver(KEY)
    first = sender.seal("one")
    assert _open_all(receiver, bytearray(first)) == ["one"]
    with pytest.raises(LinkError, match="replayed"):
        _open_all(receiver, bytearray(first))
    assert _open_all(receiver, bytearray(sender.seal("two"))) == ["two"]


def test_frames_of_another_connection_are_refused_mid_connection() -> None:
    receiver = Receiver(KEY)
    assert _open_all(receiver, bytearray(Sender(KEY).seal("mine"))) == ["mine"]
    with pytest.raises(LinkError, match="salt"):
        _open_all(receiver, bytearray(Sender(KEY).seal("theirs")))


@pytest.mark.parametrize("size", [0, 10, CAP + 1, 2**32 - 1])
def test_impossible_lengths_are_refused_before_buffering(size: int) -> None:
    with pytest.raises(LinkError, match="length"):
        Receiver(KEY).next_frame(bytearray(size.to_bytes(4, "little") + b"\0" * 64), CAP)


def test_an_incomplete_frame_waits() -> None:
    frame = Sender(KEY).seal("whole")
    buf = bytearray(frame[:-1])
    receiver = Receiver(KEY)
    assert receiver.next_frame(buf, CAP) is None and len(buf) == len(frame) - 1
    buf += frame[-1:]
    assert _open_all(receiver, buf) == ["whole"]


# ---- the caps on a live connection (SealedConnection over a socketpair) ----

class _Poller:
    """pysyncobj's poller interface; the test delivers events itself."""

    def __init__(self) -> None:
        self.masks: dict[int, int] = {}

    def subscribe(self, fd: int, callback: object, mask: int) -> None:
        self.masks[fd] = mask

    def unsubscribe(self, fd: int) -> None:
        self.masks.pop(fd, None)


_open: list[tuple[SealedConnection, socket.socket]] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _open:
        conn, peer = _open.pop()
        conn.disconnect()
        peer.close()


def _connection(recv_key: bytes | None = None) -> tuple[SealedConnection, socket.socket, list[object], _Poller]:
    mine, theirs = socket.socketpair()
    mine.setblocking(False)  # as pysyncobj sets every socket
    poller, got = _Poller(), []
    conn = TcpConnection(poller, onMessageReceived=got.append, socket=mine, recvBufferSize=65536)
    conn.encryptor = KEY
    sealed = seal(conn, CAP)
    sealed.recvRandKey = recv_key
    _open.append((sealed, theirs))
    return sealed, theirs, got, poller


def _deliver(conn: SealedConnection) -> None:
    conn.on_poll_event(POLL_EVENT_TYPE.READ)


def test_before_authentication_only_a_handshake_sized_frame_is_read() -> None:
    conn, peer, got, _ = _connection()
    sender = Sender(KEY)
    peer.sendall(sender.seal(b"k" * 32))  # pysyncobj's first message: a random key
    _deliver(conn)
    assert got == [b"k" * 32] and conn.state == CONNECTION_STATE.CONNECTED and not conn.authentic
    peer.sendall(sender.seal(b"\0" * HANDSHAKE_FRAME_BYTES))  # authentic, but too big for now
    _deliver(conn)
    assert conn.state == CONNECTION_STATE.DISCONNECTED and got == [b"k" * 32]


def test_a_frame_carrying_the_nodes_random_key_lifts_the_cap_to_the_batch() -> None:
    conn, peer, got, _ = _connection(recv_key=b"r" * 32)
    sender = Sender(KEY)
    peer.sendall(sender.seal((b"r" * 32, "127.0.0.1:7001")))
    _deliver(conn)
    assert conn.authentic and got == ["127.0.0.1:7001"]
    big = {"type": "append_entries", "entries": [(b"e" * (BATCH - 2000), 5, 1)]}
    wire = sender.seal((b"r" * 32, big))
    threading.Thread(target=peer.sendall, args=(wire,), daemon=True).start()
    while len(got) < 2 and conn.state == CONNECTION_STATE.CONNECTED:
        _deliver(conn)
    assert got[1] == big


def test_a_stranger_cannot_claim_a_large_frame() -> None:
    conn, peer, got, _ = _connection()
    peer.sendall((60 * 1024 * 1024).to_bytes(4, "little") + b"\0" * 65536)
    _deliver(conn)
    assert conn.state == CONNECTION_STATE.DISCONNECTED and got == []


def test_reads_stop_once_a_whole_frame_of_the_cap_is_buffered() -> None:
    conn, peer, _, _ = _connection()
    peer.setblocking(False)
    sent = 0
    with contextlib.suppress(BlockingIOError):
        while sent < 4 * 1024 * 1024:
            sent += peer.send(b"\0" * 65536)
    conn._TcpConnection__tryReadBuffer()  # pysyncobj's read loop: until EAGAIN
    assert 0 < len(conn._rbuf) <= 4 + HANDSHAKE_FRAME_BYTES + 65536 < sent


def test_a_send_the_socket_cannot_take_at_once_asks_for_write_events() -> None:
    conn, peer, _, poller = _connection()
    fd = conn.fileno()
    poller.masks[fd] = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
    conn.send("small")
    assert not poller.masks[fd] & POLL_EVENT_TYPE.WRITE and conn.unsent_bytes == 0
    conn.send(b"\0" * (8 * 1024 * 1024))  # more than the socket buffers hold
    assert conn.unsent_bytes > 0 and poller.masks[fd] & POLL_EVENT_TYPE.WRITE


# ---- the cap covers the largest message pysyncobj sends ----

def _sealed_size(message: object) -> int:
    return len(Sender(KEY).seal((os.urandom(32), message)))  # as sent: (random key, message)


@pytest.mark.parametrize("batch", [1024, 64 * 1024, BATCH])
def test_the_largest_real_messages_fit_the_cap(batch: int) -> None:
    cap = max_frame_bytes(batch)
    head = {"type": "append_entries", "term": 2**40, "commit_index": 2**40,
            "prevLogIdx": 2**40, "prevLogTerm": 2**40}
    tiny = [(b"", 2**40 + i, 2**40) for i in range(batch)]  # the adapter's batching of tiny entries
    mixed = [(b"m" * 700, 2**40 + i, 2**40) for i in range(batch // 700 + 1)] + [(b"b" * batch, 1, 1)]
    messages = [
        {**head, "entries": _batch(tiny, 0, batch)},
        {**head, "entries": _batch(mixed, 0, batch)},
        {**head, "entries": [(b"e" * (batch - ENTRY_OVERHEAD_BYTES), 2**40, 2**40)]},  # one entry, no chunks
        {**head, "transmission": "process", "data": b"t" * batch},  # one chunk of a larger entry
        {"type": "append_entries", "term": 2**40, "commit_index": 2**40,
         "serialized": (b"d" * DUMP_CHUNK_BYTES, False, False)},  # a dump chunk
    ]
    for message in messages:
        assert 4 + _sealed_size(message) <= 4 + cap
    assert cap - max(batch, DUMP_CHUNK_BYTES) <= 8192  # and it is tight: a batch plus a little
