"""The dump file: the checksum written with every dump is verified on load,
and a damaged dump is refused with one line naming the file and the remedy."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from pysyncobj.config import SERIALIZER_STATE

from replication.snapshot import MAGIC, DumpError, DumpWriter, read_dump


def _written(tmp_path: Path) -> Path:
    """A dump written the production way: DumpWriter's forked child."""
    path = tmp_path / "raft.dump"
    writer = DumpWriter(path, lambda: {"format": 1, "jobs": {"a": 1}}, durable=True)
    writer.serialize(str(path) + ".tmp", ((b"c1", 9, 2), (b"c0", 8, 2), ["127.0.0.1:1"]))
    deadline = time.monotonic() + 30
    state = writer.check()
    while state == SERIALIZER_STATE.SERIALIZING and time.monotonic() < deadline:
        time.sleep(0.01)
        state = writer.check()
    assert state == SERIALIZER_STATE.SUCCESS
    return path


def test_written_dump_reads_back(tmp_path: Path) -> None:
    dump = read_dump(_written(tmp_path), durable=True)
    assert dump.machine == {"format": 1, "jobs": {"a": 1}}
    assert (dump.last, dump.prev) == ((b"c1", 9, 2), (b"c0", 8, 2))


@pytest.mark.parametrize("damage", ["flip", "truncate", "header"])
def test_damaged_dump_is_refused_with_one_line(tmp_path: Path, damage: str) -> None:
    path = _written(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        del data[-3:]
    else:
        data[: len(MAGIC)] = b"PICKLE!!"
    path.write_bytes(bytes(data))
    with pytest.raises(DumpError) as info:
        read_dump(path, durable=True)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "docs/storage.md" in message
    assert ("bad header" if damage == "header" else "checksum mismatch") in message
