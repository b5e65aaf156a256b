"""The Raft link's frames (replication/link.py): what a receiver accepts."""
from __future__ import annotations

import pytest

from replication.link import (HANDSHAKE_FRAME_BYTES, LinkError, LinkKey, Receiver, Sender,
                              max_frame_bytes)

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
