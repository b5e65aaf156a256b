"""The group committer (cluster/commit.py): entries assembled from per-command
bytes, and a command that may not enter the log failing alone.

The proposer here applies each entry to a real `JobMachine` after decoding it
exactly as a replica does (replication/raft.py), one loop iteration later.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

import msgpack
import pytest

from cluster.commit import ENTRY_OVERHEAD_BYTES, GroupCommitter
from cluster.errors import BadRequest, Overloaded, TooLarge
from replication.machine import JobMachine


class ApplyingProposer:
    def __init__(self) -> None:
        self.machine = JobMachine()
        self.entries: list[bytes] = []

    def propose(self, entry: bytes, callback: Callable[[list | None, str | None], None]) -> None:
        self.entries.append(entry)
        decoded = msgpack.unpackb(entry, raw=False, strict_map_key=False)  # raises if a replica could not
        asyncio.get_running_loop().call_soon(callback, self.machine.apply_entry(decoded), None)


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _submit(job_id: str, args: Any = None) -> dict[str, Any]:
    return {"op": "submit", "job": {"id": job_id, "type": "t", "args": {} if args is None else args}}


def test_entry_bytes_are_what_packing_the_whole_entry_gives() -> None:
    raft = ApplyingProposer()

    async def main() -> None:
        committer = GroupCommitter(raft, clock_ms=lambda: 1_700_000_000_123)
        cmds = [_submit(f"j{i}", {"i": i}) for i in range(20)]  # > 15: the 16-bit array header
        await asyncio.gather(*(committer.commit(c) for c in cmds))
        assert len(raft.entries) == 1
        assert raft.entries[-1] == msgpack.packb({"v": 1, "now_ms": 1_700_000_000_123, "cmds": cmds},
                                                 use_bin_type=True)

    asyncio.run(main())


@pytest.mark.parametrize("poison, why", [
    (_nested(1100), "deeper than msgpack's packer goes"),
    (_nested(1023), "packs alone, but the entry would be too deep for a replica to decode"),
    ({"x": object()}, "not encodable"),
    ({"n": 2**64}, "integer out of msgpack range"),
    ({"s": "\ud800"}, "a lone surrogate: not UTF-8"),
])
def test_a_poisoned_command_fails_alone(poison: Any, why: str) -> None:
    raft = ApplyingProposer()

    async def main() -> None:
        committer = GroupCommitter(raft)
        futures = [committer.enqueue(_submit(f"ok{i}")) for i in range(100)]
        with pytest.raises(BadRequest):
            committer.enqueue(_submit("poisoned", {"deep": poison}))
        futures += [committer.enqueue(_submit(f"ok{i}")) for i in range(100, 200)]
        results = await asyncio.gather(*futures)
        assert all(r["created"] for r in results), why
        assert raft.machine.held_count() == 200 and raft.machine.get("poisoned") is None

    asyncio.run(main())


def test_no_entry_exceeds_the_byte_cap_and_a_command_over_it_is_too_large() -> None:
    raft = ApplyingProposer()
    cap = 64 * 1024

    async def main() -> None:
        committer = GroupCommitter(raft, max_batch_bytes=cap)
        with pytest.raises(TooLarge, match="max_entry_bytes limit of 65536"):
            committer.enqueue(_submit("huge", {"s": "x" * cap}))
        futures = [committer.enqueue(_submit(f"j{i}", {"s": "x" * (cap // 3)})) for i in range(10)]
        await asyncio.gather(*futures)
        assert all(len(e) <= cap for e in raft.entries)
        assert sum(len(msgpack.unpackb(e)["cmds"]) for e in raft.entries) == 10
        assert len(raft.entries) >= 4  # two such commands per entry at most (three leave no room for the head)
        # exactly at the cap: accepted, and alone in its entry
        head = len(msgpack.packb(_submit("edge", {"s": ""})))
        edge = _submit("edge", {"s": "x" * (cap - ENTRY_OVERHEAD_BYTES - head - 2)})
        assert len(msgpack.packb(edge)) == cap - ENTRY_OVERHEAD_BYTES
        await committer.commit(edge)
        assert len(raft.entries[-1]) <= cap

    asyncio.run(main())


def test_check_sees_each_command_and_its_size_and_may_refuse_it() -> None:
    raft = ApplyingProposer()
    seen: list[tuple[str, int]] = []

    def check(cmd: dict[str, Any], size: int) -> None:
        seen.append((cmd["job"]["id"], size))
        if cmd["job"]["id"] == "refused":
            raise Overloaded("no room")

    async def main() -> None:
        committer = GroupCommitter(raft, check=check)
        with pytest.raises(Overloaded):
            committer.enqueue(_submit("refused"))
        assert (await committer.commit(_submit("fine")))["created"]

    asyncio.run(main())
    assert seen == [("refused", len(msgpack.packb(_submit("refused")))), ("fine", len(msgpack.packb(_submit("fine"))))]
    assert raft.machine.get("refused") is None
