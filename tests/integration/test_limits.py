"""Every size and admission limit, pushed past on real node processes.

One cluster for the module, with small limits so each is reached in a few
requests (docs/contracts.md, "Limits"). The tests run in file order and each
leaves the cluster below its limits for the next.
"""
from __future__ import annotations

import socket
from typing import Any, Iterator

import msgpack
import pytest

from cluster import protocol
from cluster.client import Client
from cluster.errors import BadRequest, NotFound, Overloaded, TooLarge
from tests.integration.conftest import clusters
from tests.integration.harness import TOKEN, LocalCluster, wait_until

ARGS_CAP = 16 * 1024
RESULT_CAP = 16 * 1024
ENTRY_CAP = 300_000            # >= ARGS_CAP + 256 KiB (config rule)
HELD_JOBS = 250
HELD_BYTES = 200_000
LIMITS = f"""
max_args_bytes = {ARGS_CAP}
max_result_bytes = {RESULT_CAP}
max_entry_bytes = {ENTRY_CAP}
max_held_jobs = {HELD_JOBS}
max_held_bytes = {HELD_BYTES}
min_schedule_interval_s = 1.0
retention_s = 0.5
"""
PURGE_WAIT_S = 15  # retention_s plus the retention tick (every 5 s), with room for a loaded box


@pytest.fixture(scope="module")
def lc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    for make in clusters(tmp_path_factory.mktemp("limits")):
        yield make(extra_config=LIMITS)


def _frame(req_id: int, op: str, args: dict[str, Any]) -> bytes:
    return protocol.encode_frame({"id": req_id, "op": op, "args": args})


def _deepest_decodable_args() -> Any:
    """Args nested as deep as a request frame can carry: one level more than a
    command inside a log entry can (the entry wraps it in 2 levels, the frame in 3)."""
    depth = 1100
    while True:
        value: Any = []
        for _ in range(depth - 1):
            value = [value]
        frame = {"id": 1, "op": "submit", "args": {"job": {"id": "poisoned", "type": "t", "args": value}}}
        try:
            msgpack.unpackb(msgpack.packb(frame))
            return value
        except (ValueError, msgpack.StackError):
            depth -= 1


def _replies(sockets: list[socket.socket]) -> list[dict[str, Any]]:
    out = []
    for s in sockets:
        decoder = protocol.FrameDecoder()
        got: list[dict[str, Any]] = []
        while len(got) < 2:  # hello, then the submit
            data = s.recv(65536)
            assert data, "connection closed before the reply"
            got.extend(decoder.feed(data))
        out.append(got[1])
    return out


def _purge_all_jobs(c: Client) -> None:
    """Cancel every live job, then wait until retention purged them all."""
    while True:
        live = [j["id"] for state in ("queued", "scheduled", "pending", "running")
                for j in c.list(state=state, limit=1000)["jobs"]]
        if not live:
            break
        for job_id in live:
            c.cancel(job_id)
    wait_until(lambda: c.stats()["held"] == 0, PURGE_WAIT_S, "retention to purge every job")


def test_a_poisoned_command_fails_alone_among_200_concurrent_submits(lc: LocalCluster) -> None:
    poison = _deepest_decodable_args()
    host, port = lc.client_addrs[lc.leader_id() - 1].rsplit(":", 1)
    hello = _frame(0, "hello", {"version": 1, "role": "client", "token": TOKEN})
    sockets = [socket.create_connection((host, int(port)), timeout=20) for _ in range(200)]
    try:
        for s in sockets:
            s.sendall(hello)
        for i, s in enumerate(sockets):
            args = poison if i == 100 else {"i": i}
            s.sendall(_frame(1, "submit", {"job": {"id": f"batch-{i}", "type": "t", "args": args}}))
        replies = _replies(sockets)
    finally:
        for s in sockets:
            s.close()
    poisoned = replies.pop(100)
    assert poisoned.get("err", [None])[0] == "BAD_REQUEST", poisoned
    assert [r.get("ok", r)["created"] for r in replies] == [True] * 199
    with lc.client() as c:
        assert c.stats()["jobs"]["queued"] == 199


def test_args_and_results_over_their_caps_are_too_large(lc: LocalCluster) -> None:
    with lc.client() as c:
        with pytest.raises(TooLarge, match="max_args_bytes limit of 16384"):
            c.submit("t", {"blob": "x" * ARGS_CAP}, id="big-args")
        with pytest.raises(TooLarge, match=r"jobs\[1\]: args .* max_args_bytes"):
            c.submit_many([{"id": "m0", "type": "t"}, {"id": "m1", "type": "t", "args": {"b": "x" * ARGS_CAP}}])
        assert c.submit("t", {"blob": "x" * (ARGS_CAP - 100)}, id="args-under-cap", queue="results") == "args-under-cap"
        [job] = c.lease("w", ["results"], max=1, wait_s=5)
        with pytest.raises(TooLarge, match="max_result_bytes limit of 16384"):
            c.complete(job["id"], job["attempt"], "r" * RESULT_CAP, lease_token=job["lease_token"])
        assert c.complete(job["id"], job["attempt"], "r" * 100, lease_token=job["lease_token"]) == "succeeded"
        for missing in ("big-args", "m0", "m1"):
            with pytest.raises(NotFound):
                c.get(missing)


def test_submit_many_over_the_entry_cap_is_too_large_and_applies_nothing(lc: LocalCluster) -> None:
    specs = [{"id": f"entry-{i}", "type": "t", "args": {"b": "x" * (ARGS_CAP - 1000)}} for i in range(20)]
    with lc.client() as c:
        before = c.stats()["held"]
        with pytest.raises(TooLarge, match=f"max_entry_bytes limit of {ENTRY_CAP}"):
            c.submit_many(specs)
        assert c.stats()["held"] == before
        assert c.submit_many(specs[:5]) == [s["id"] for s in specs[:5]]  # under the cap: one entry


def test_held_jobs_cap_counts_finished_jobs_and_stops_schedule_firings(lc: LocalCluster) -> None:
    with lc.client() as c:
        _purge_all_jobs(c)
        c.submit_many([{"id": f"held-{i}", "type": "t"} for i in range(HELD_JOBS)])
        with pytest.raises(Overloaded, match=f"max_held_jobs = {HELD_JOBS}"):
            c.submit("t", id="one-too-many")
        # Firings obey the same admission: missed, never a job, never piled up.
        c.schedule_add("while-full", "t", every=1.0)
        wait_until(lambda: c.schedules()[0]["missed"] >= 2, 15, "two missed firings")
        sched = c.schedules()[0]
        assert sched["fired"] == 0 and c.list(schedule="while-full")["jobs"] == []
        assert sched["next_fire_ms"] > sched["last_fire_ms"]  # moved on
        c.schedule_remove("while-full")
        for i in range(HELD_JOBS):
            c.cancel(f"held-{i}")
        with pytest.raises(Overloaded, match="max_held_jobs"):  # final jobs still count until purged
            c.submit("t", id="one-too-many")
        wait_until(lambda: c.stats()["held"] == 0, PURGE_WAIT_S, "retention to purge the held jobs")
        assert c.submit("t", id="one-too-many") == "one-too-many"


def test_held_bytes_cap_refuses_until_purged(lc: LocalCluster) -> None:
    blob = {"b": "x" * (ARGS_CAP - 1000)}
    with lc.client() as c:
        _purge_all_jobs(c)
        accepted = 0
        with pytest.raises(Overloaded, match=f"max_held_bytes = {HELD_BYTES}"):
            for i in range(2 * HELD_BYTES // ARGS_CAP):
                c.submit("t", blob, id=f"bytes-{i}")
                accepted += 1
        assert HELD_BYTES // ARGS_CAP <= accepted <= HELD_BYTES // (ARGS_CAP - 1000)
        assert c.stats()["held_bytes"] <= HELD_BYTES
        refused = f"bytes-{accepted}"
        _purge_all_jobs(c)
        assert c.submit("t", blob, id=refused) == refused


@pytest.mark.parametrize("fields, message", [
    ({"every_ms": 1}, "'every_ms' must be at least 1000 .min_schedule_interval_s."),
    ({"cron": "0 0 31 2 *"}, "'cron' .* no next fire time"),
    ({"cron": "* * * * * *"}, "'cron' .* at most 5 fields"),
    ({"every_ms": "1000"}, "'every_ms' must be an integer"),
    ({"every_ms": 5000, "tz": 7}, "'tz' must be a string"),
    ({"every_ms": 5000, "tz": "Mars/Olympus"}, "'tz': unknown time zone"),
    ({"every_ms": 5000, "job": {"type": "t", "priority": "high"}}, "job: 'priority' must be an integer"),
    ({"every_ms": 5000, "job": {"type": "t", "args": {"b": "x" * ARGS_CAP}}}, "max_args_bytes"),
])
def test_malformed_or_too_frequent_schedules_are_refused(lc: LocalCluster, fields: dict[str, Any],
                                                         message: str) -> None:
    sched = {"name": "bad", "job": {"type": "t"}, **fields}
    with lc.client() as c:
        with pytest.raises((BadRequest, TooLarge), match=message):
            c.request("schedule_add", {"schedule": sched})
        assert c.schedules() == []
