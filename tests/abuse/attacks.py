"""The attacks of issue 10, one function each: `attack(root, scale) -> Outcome`.

Each runs against a fresh real 3-node cluster on loopback (scenario.py), is
bounded in count and time, and judges the node only by what a client, the
disk and the OS can see: wire codes (TOO_LARGE, OVERLOADED, BAD_REQUEST,
UNAUTHORIZED), connections closed, exit codes, digests, VmRSS. Message texts
and the node's internals are never read, so the same attack judges main and
the fixed node alike. `ATTACKS` lists them in the order the runner runs them.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import msgpack

from cluster.errors import RaftqError
from cluster.protocol import (FrameDecoder, ProtocolViolation, encode_frame, encode_request_frame, hello_args,
                              job_spec_from_options, pack_args, request)
from tests.abuse import wire
from tests.abuse.scenario import CLOSE_DEADLINE_S, Outcome, Scenario, percentile, tracebacks
from tests.integration.harness import TOKEN


@dataclass(frozen=True)
class Scale:
    """Counts and durations of one suite size (every loop is bounded by them)."""

    name: str
    baseline_s: float        # legit client alone, before the attack
    attack_s: float          # how long a sustained attack lasts
    fd_conns: int            # idle connections against a 1024-fd leader
    unauth_client_conns: int  # partial 8 MiB frames before hello, client port
    unauth_raft_conns: int   # partial 60 MiB frames, Raft port
    silent_raft_conns: int   # Raft-port connections that never send a byte
    poison_rounds: int       # bursts of 200 concurrent submits, one poisoned
    large_submits: int       # sequential 1,000,000-byte submits
    jobs_held: int           # jobs held for the read attacks
    nonreading_lists: int    # pipelined list(limit=1000) never read
    heavy_conns: int         # connections pipelining list(limit=1000)
    idle_polls: int          # idle lease long polls
    admission_limit: int     # max_held_jobs for the admission attack


SHORT = Scale("short", baseline_s=3, attack_s=8, fd_conns=1100, unauth_client_conns=30, unauth_raft_conns=4,
              silent_raft_conns=40, poison_rounds=1, large_submits=30, jobs_held=2000, nonreading_lists=3000,
              heavy_conns=4, idle_polls=4000, admission_limit=1000)
LONG = Scale("long", baseline_s=5, attack_s=30, fd_conns=2000, unauth_client_conns=100, unauth_raft_conns=12,
             silent_raft_conns=200, poison_rounds=3, large_submits=200, jobs_held=5000, nonreading_lists=10000,
             heavy_conns=8, idle_polls=8000, admission_limit=5000)

REFUSE_WAIT_S = 15.0        # a node refusing its storage exits within this
CLIENT_FRAME_BYTES = 8 * 1024 * 1024 - 64   # just under main's client-port frame cap
RAFT_FRAME_BYTES = 60 * 1024 * 1024         # just under main's Raft-port frame cap
ARGS_UNDER_CAP = 1_000_000                  # "just under" the 1 MiB default args cap
HUGE_ARGS = 7 * 1024 * 1024                 # over any sane args cap, under the frame cap


def _codes(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


def _hold_jobs(sc: Scenario, n: int, queue: str = "held") -> None:
    """n queued jobs of ~200 bytes of args each, for the read attacks."""
    with sc.client(timeout_s=60) as c:
        for start in range(0, n, 500):
            ids = c.submit_many([{"type": "abuse.held", "args": {"pad": "x" * 200}, "id": f"{queue}-{i}",
                                  "queue": queue} for i in range(start, min(n, start + 500))])
            sc.ack(queue, ids)


# ------------------------------------------------------------ 1 corrupt-journal


def _start_expect_refusal(sc: Scenario, node: int, what: str) -> bool:
    """Start `node` on damaged storage; True if it refused: exited non-zero
    within REFUSE_WAIT_S, with no traceback in its log."""
    cluster, out = sc.cluster, sc.out
    log_path = cluster.root / "logs" / f"node-{node}.log"
    log_from = log_path.stat().st_size if log_path.exists() else 0
    cluster.start(node)
    proc = cluster.procs[node]
    deadline = time.monotonic() + REFUSE_WAIT_S
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    new_log = log_path.read_text(errors="replace")[log_from:] if log_path.exists() else ""
    if proc.poll() is None:
        out.violate(f"{what}: node {node} started anyway")
        out.notes.append(f"{what}: started")
        return False
    if proc.returncode == 0:
        out.violate(f"{what}: node {node} exited 0")
    if "Traceback" in new_log:
        out.violate(f"{what}: node {node} refused with a traceback, not one clear line")
    out.notes.append(f"{what}: refused (exit {proc.returncode})")
    return True


def _wipe_and_start(sc: Scenario, node: int) -> None:
    """The documented way back for a refused node: start it with no state."""
    shutil.rmtree(sc.cluster.node_dir(node))
    sc.cluster.start(node)


def corrupt_journal(root: Path, scale: Scale) -> Outcome:
    sc = Scenario("corrupt-journal", "damaged node refuses to start (exit != 0, one line), rejoins after a "
                  "wipe; no acked job lost; replicas agree", root)
    with sc:
        cluster = sc.cluster
        sc.baseline(scale.baseline_s)
        with sc.client() as c:
            for k in range(4):
                sc.ack("a", c.submit_many([{"type": "abuse.a", "id": f"a-{k}-{i}", "queue": "a"} for i in range(50)]))
        leader = sc.leader
        followers = [i for i in range(1, cluster.n + 1) if i != leader]
        damaged, other = followers
        with sc.attack():
            # A deleted raft.meta next to a non-empty journal.
            cluster.kill(other)
            (cluster.node_dir(other) / "raft.meta").unlink()
            if _start_expect_refusal(sc, other, "meta deleted"):
                _wipe_and_start(sc, other)
            if not sc.wait_caught_up([other], leader):
                sc.out.notes.append(f"node {other} did not catch up")
            # Batch b is acknowledged by the leader and `damaged` alone; then
            # one byte in the middle of `damaged`'s journal flips (valid
            # records after it) and it restarts; then the leader crashes.
            cluster.kill(other)
            with sc.client() as c:
                for k in range(2):
                    sc.ack("b", c.submit_many([{"type": "abuse.b", "id": f"b-{k}-{i}", "queue": "b"}
                                               for i in range(50)]))
            cluster.kill(damaged)
            journal = cluster.node_dir(damaged) / "raft.journal"
            data = bytearray(journal.read_bytes())
            data[len(data) // 2] ^= 0xFF
            journal.write_bytes(bytes(data))
            refused = _start_expect_refusal(sc, damaged, "journal byte flipped")
            cluster.kill(leader)
            cluster.start(other)
            if not refused:  # the survivors elect a leader and take writes
                with sc.client() as c:
                    sc.ack("c", c.submit_many([{"type": "abuse.c", "id": f"c-{i}", "queue": "c"}
                                               for i in range(50)]))
            # The crashed leader comes back; a refused node takes the way back.
            cluster.start(leader)
            if refused:
                cluster.leader_id(timeout=30, among=[leader, other])
                _wipe_and_start(sc, damaged)
        sc.out.observed = "; ".join(sc.out.notes)
        return sc.finish(judge_p99=False, judge_rss=False, max_elections=None)


# ------------------------------------------------------------ 2 fd-exhaustion


def _fresh_submit(sc: Scenario, job_id: str) -> str:
    """A client connecting now (from 127.0.0.1) submits one job: "ok" or the code."""
    try:
        with sc.client(timeout_s=10) as c:
            sc.ack("fresh", [c.submit("abuse.fresh", {}, id=job_id, queue="fresh")])
        return "ok"
    except RaftqError as exc:
        return exc.code


def fd_exhaustion(root: Path, scale: Scale) -> Outcome:
    n = scale.fd_conns
    sc = Scenario("fd-exhaustion", f"{n} idle conns vs 1024-fd nodes, from one source then from 250: "
                  "a new client is served (first), the connected one keeps committing (both)", root, nofile=1024)
    with sc:
        sc.baseline(scale.baseline_s)
        addr = sc.cluster.client_addrs[sc.leader - 1]
        seen = []
        with sc.attack():
            for label, sources in (("1 source", 1), ("250 sources", 250)):
                socks = wire.open_many(addr, n, block=1, deadline_s=10, sources=sources)
                time.sleep(scale.attack_s / 2)
                fresh = _fresh_submit(sc, f"fresh-{sources}")
                time.sleep(scale.attack_s / 2)
                still_open = len(socks) - wire.closed_by_node(list(socks), 0.5)
                wire.close_all(socks)
                seen.append(f"{label}: {len(socks)} opened, {still_open} kept, new client {fresh}")
                if sources == 1 and fresh != "ok":
                    sc.out.violate(f"a new client could not submit while one source held {n} conns ({fresh})")
        emfile = sc.cluster.log_text(sc.leader).count("Errno 24")
        during = sc.legit.stats("attack")
        sc.out.observed = "; ".join(seen) + f"; connected client {during['ok']}/{during['calls']} ok; " \
                                            f"EMFILE in leader log: {emfile}"
        return sc.finish()


# ------------------------------------------------------------ 3 unauth-memory


def unauth_memory(root: Path, scale: Scale) -> Outcome:
    sc = Scenario("unauth-memory", f"partial frames before hello / seal and silent Raft conns: RSS bounded, "
                  f"all closed within {CLOSE_DEADLINE_S:.0f} s", root)
    with sc:
        sc.baseline(scale.baseline_s)
        client_addr = sc.cluster.client_addrs[sc.leader - 1]
        raft_addr = sc.cluster.raft_addrs[sc.leader - 1]
        jobs: list[tuple[socket.socket, bytes]] = []
        socks: list[socket.socket] = []
        client_frame = CLIENT_FRAME_BYTES.to_bytes(4, "big") + os.urandom(CLIENT_FRAME_BYTES - 1024)
        raft_frame = RAFT_FRAME_BYTES.to_bytes(4, "little") + os.urandom(RAFT_FRAME_BYTES - 4096)
        with sc.attack():
            for i in range(scale.unauth_client_conns):
                s = wire.connect(client_addr, wire.attacker_source(i, 2))
                if s is not None:
                    jobs.append((s, client_frame))
            for i in range(scale.unauth_raft_conns):
                # half from the peers' own address (frame cap, handshake deadline),
                # half from an address no peer has (peer filter)
                s = wire.connect(raft_addr, "127.0.0.1" if i % 2 == 0 else wire.attacker_source(i, 3))
                if s is not None:
                    jobs.append((s, raft_frame))
            with ThreadPoolExecutor(8) as pool:
                sent = sum(pool.map(lambda job: wire.send_partial(job[0], job[1], 10.0), jobs))
            socks = [s for s, _ in jobs]
            for i in range(scale.silent_raft_conns):
                s = wire.connect(raft_addr, "127.0.0.1" if i % 4 == 0 else wire.attacker_source(i, 3))
                if s is not None:
                    socks.append(s)
            time.sleep(2.0)  # let the node buffer what it will
            closed = wire.closed_by_node(socks, CLOSE_DEADLINE_S)
        wire.close_all(socks)
        sc.out.observed = (f"{sent / 2**20:.0f} MiB sent on {len(jobs)} conns; {closed}/{len(socks)} conns "
                           f"closed by the node within {CLOSE_DEADLINE_S:.0f} s")
        if closed < len(socks):
            sc.out.violate(f"{len(socks) - closed} of {len(socks)} unauthenticated/silent connections still open "
                           f"after {CLOSE_DEADLINE_S:.0f} s")
        return sc.finish()


# ------------------------------------------------------------ 4 poisoned-batch


def deepest_decodable_args(spec: dict[str, Any]) -> bytes:
    """Packed submit args whose job args nest as deep as a request frame can
    (this node's FrameDecoder decodes it): deeper than any log entry can be
    re-encoded, since the entry wraps the job in more levels."""
    items = [(k, v) for k, v in spec.items() if k != "args"]
    head = b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in items)

    def packed(depth: int) -> bytes:
        job = bytes([0x80 | (len(items) + 1)]) + head + msgpack.packb("args") + b"\x91" * depth + b"\xc0"
        return b"\x81" + msgpack.packb("job") + job

    for depth in range(1100, 0, -1):
        try:
            FrameDecoder().feed(encode_request_frame(1, "submit", packed(depth)))
            return packed(depth)
        except ProtocolViolation:
            continue
    raise AssertionError("no nesting depth decodes")


async def _poison_round(addr: str, r: int, n: int) -> tuple[Counter[str], str, list[str]]:
    conns = await asyncio.gather(*(wire.RawConn.open(addr, wire.attacker_source(i, 1)) for i in range(n)))
    poisoned = n // 2
    frames = []
    for i in range(n):
        spec = job_spec_from_options("abuse.poison", {"i": i}, id=f"p{r}-{i}", queue="poison")
        frames.append(deepest_decodable_args(spec) if i == poisoned else pack_args("submit", {"job": spec}))
    rids = [conn.send_packed("submit", frame) for conn, frame in zip(conns, frames)]  # one burst
    replies = await asyncio.gather(*(conn.reply(rid, 20.0) for conn, rid in zip(conns, rids)))
    for conn in conns:
        conn.close()
    others: Counter[str] = Counter()
    acked = []
    for i, reply in enumerate(replies):
        if i != poisoned:
            others[wire.outcome_of(reply)] += 1
            if wire.outcome_of(reply) == "ok":
                acked.append(f"p{r}-{i}")
    return others, wire.outcome_of(replies[poisoned]), acked


def poisoned_batch(root: Path, scale: Scale) -> Outcome:
    n = 200
    sc = Scenario("poisoned-batch", f"{n - 1}/{n} ok, the too-deep one refused alone (BAD_REQUEST)", root)
    with sc:
        sc.baseline(scale.baseline_s)
        addr = sc.cluster.client_addrs[sc.leader - 1]
        totals: Counter[str] = Counter()
        poison: Counter[str] = Counter()
        with sc.attack():
            for r in range(scale.poison_rounds):
                others, bad, acked = asyncio.run(_poison_round(addr, r, n))
                totals += others
                poison[bad] += 1
                sc.ack("poison", acked)
        rounds = scale.poison_rounds
        sc.out.observed = f"others: {totals['ok']}/{(n - 1) * rounds} ok ({_codes(totals)}); poisoned: {_codes(poison)}"
        if totals["ok"] < (n - 1) * rounds:
            sc.out.violate(f"{(n - 1) * rounds - totals['ok']} innocent submits not ok ({_codes(totals)})")
        if set(poison) - {"BAD_REQUEST", "TOO_LARGE"}:
            sc.out.violate(f"poisoned submit answered {_codes(poison)}, not BAD_REQUEST/TOO_LARGE")
        return sc.finish()


# ------------------------------------------------------------ 5 large-entries


def large_entries(root: Path, scale: Scale) -> Outcome:
    sc = Scenario("large-entries", f"{scale.large_submits} x 1,000,000-byte submits + 4 MB submit_many: all "
                  "answered, leader changes <= 1", root)
    with sc:
        sc.baseline(scale.baseline_s)
        blob = os.urandom(ARGS_UNDER_CAP)
        lat: list[float] = []
        codes: Counter[str] = Counter()
        deadline = time.monotonic() + 20 * scale.attack_s
        with sc.attack(), sc.client(timeout_s=30) as c:
            for i in range(scale.large_submits):
                if time.monotonic() > deadline:
                    sc.out.violate(f"time budget spent after {i} large submits")
                    break
                t0 = time.perf_counter()
                try:
                    sc.ack("big", [c.submit("abuse.big", {"blob": blob}, id=f"big-{i}", queue="big")])
                    codes["ok"] += 1
                except RaftqError as exc:
                    codes[exc.code] += 1
                lat.append((time.perf_counter() - t0) * 1000)
            try:
                ids = c.submit_many([{"type": "abuse.big", "args": {"blob": blob}, "id": f"bigmany-{i}",
                                      "queue": "big"} for i in range(4)])
                sc.ack("big", ids)
                many = "ok"
            except RaftqError as exc:
                many = exc.code
        p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
        sc.out.observed = (f"{codes['ok']}/{scale.large_submits} ok, p50 {p50 or 0:.0f} / p99 {p99 or 0:.0f} ms; "
                           f"4 MB submit_many: {many}")
        if codes["ok"] < scale.large_submits:
            sc.out.violate(f"large submits under the cap not ok: {_codes(codes)}")
        if many not in ("ok", "TOO_LARGE"):
            sc.out.violate(f"4 MB submit_many answered {many}")
        return sc.finish(judge_p99=False, judge_rss=False)


# ------------------------------------------------------------ 6 non-reading-client


def non_reading_client(root: Path, scale: Scale) -> Outcome:
    sc = Scenario("non-reading-client", f"{scale.nonreading_lists} pipelined list(1000) never read: leader RSS "
                  "bounded, legit p99 within factor", root)
    with sc:
        _hold_jobs(sc, scale.jobs_held)
        sc.baseline(scale.baseline_s)
        addr = sc.cluster.client_addrs[sc.leader - 1]
        host, port = wire.split(addr)
        with sc.attack():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.bind((wire.attacker_source(0, 1), 0))
            s.settimeout(5.0)
            s.connect((host, port))
            burst = encode_frame(request(1, "hello", hello_args(TOKEN))) + b"".join(
                encode_frame(request(2 + i, "list", {"queue": "held", "limit": 1000}))
                for i in range(scale.nonreading_lists))
            sent = wire.send_partial(s, burst, 5.0)
            time.sleep(scale.attack_s)
            s.close()
        sc.out.observed = f"{sent / 1024:.0f} KiB of requests taken"
        return sc.finish()


# ------------------------------------------------------------ 7 heavy-reads


async def _heavy_reads(addr: str, conns: int, window: int, seconds: float) -> Counter[str]:
    codes: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds

    async def one(i: int) -> None:
        conn = await wire.RawConn.open(addr, wire.attacker_source(i, 1))
        args = msgpack.packb({"queue": "held", "limit": 1000})
        outstanding = 0
        try:
            while True:
                while outstanding < window and time.monotonic() < stop_at:
                    conn.send_packed("list", args)
                    outstanding += 1
                if outstanding == 0:
                    return
                reply = await conn.next_reply(max(stop_at - time.monotonic(), 0) + 10.0)
                codes[wire.outcome_of(reply)] += 1
                if isinstance(reply, str):
                    return
                outstanding -= 1
                if wire.outcome_of(reply) in ("NOT_LEADER", "NO_LEADER"):
                    return  # leadership moved (a finding in itself): this reader stops
        finally:
            conn.close()

    await asyncio.gather(*(one(i) for i in range(conns)))
    return codes


def heavy_reads(root: Path, scale: Scale) -> Outcome:
    sc = Scenario("heavy-reads", f"{scale.heavy_conns} conns pipelining list(1000) over {scale.jobs_held} jobs: "
                  "no leader change, legit p99 within factor", root)
    with sc:
        _hold_jobs(sc, scale.jobs_held)
        sc.baseline(scale.baseline_s)
        with sc.attack():
            codes = asyncio.run(_heavy_reads(sc.cluster.client_addrs[sc.leader - 1], scale.heavy_conns, 10,
                                             scale.attack_s))
        sc.out.observed = f"lists answered: {_codes(codes)}"
        return sc.finish(max_elections=0)


# ------------------------------------------------------------ 8 idle-long-polls


async def _idle_polls(addr: str, total: int, conns: int, seconds: float) -> Counter[str]:
    codes: Counter[str] = Counter()
    stop_at = time.monotonic() + seconds

    async def one(i: int, n: int) -> None:
        conn = await wire.RawConn.open(addr, wire.attacker_source(i, 1))
        args = msgpack.packb({"worker": f"idle-{i}", "queues": ["idle"], "max": 1, "wait_s": 60})
        for _ in range(n):
            conn.send_packed("lease", args)
        try:
            while time.monotonic() < stop_at:
                reply = await conn.next_reply(stop_at - time.monotonic())
                if reply == wire.NO_ANSWER:
                    break
                codes[wire.outcome_of(reply)] += 1
                if reply == wire.CLOSED:
                    break
        finally:
            conn.close()

    await asyncio.gather(*(one(i, total // conns) for i in range(conns)))
    return codes


def idle_long_polls(root: Path, scale: Scale) -> Outcome:
    sc = Scenario("idle-long-polls", f"{scale.idle_polls} idle lease polls: legit submit p99 within factor", root)
    with sc:
        sc.baseline(scale.baseline_s)
        with sc.attack():
            codes = asyncio.run(_idle_polls(sc.cluster.client_addrs[sc.leader - 1], scale.idle_polls, 8,
                                            scale.attack_s))
        sc.out.observed = f"{scale.idle_polls} polls sent; answered during the attack: {_codes(codes) or 'none'}"
        return sc.finish()


# ------------------------------------------------------------ 9 admission


def admission(root: Path, scale: Scale) -> Outcome:
    limit = scale.admission_limit
    sc = Scenario("admission", f"7 MiB args TOO_LARGE; OVERLOADED once {limit} jobs held (finished ones count); "
                  "1 ms schedule refused or held under the limit", root, extra_config=f"max_held_jobs = {limit}")
    with sc:
        sc.baseline(scale.baseline_s)
        sc.legit.stop()  # its own jobs would count against the limit under test
        seen: list[str] = []
        with sc.attack(), sc.client(timeout_s=30) as c:
            try:
                sc.ack("huge", [c.submit("abuse.huge", {"blob": b"x" * HUGE_ARGS}, id="huge-0", queue="huge")])
                huge = "ok"
            except RaftqError as exc:
                huge = exc.code
            seen.append(f"7 MiB args: {huge}")
            if huge != "TOO_LARGE":
                sc.out.violate(f"7 MiB args answered {huge}, not TOO_LARGE")
            # Fill with finished jobs: submit, lease, complete, until refused.
            held = _jobs_held(c)
            refusal = None
            n = 0
            while refusal is None and n < 2 * limit:
                try:
                    ids = c.submit_many([{"type": "abuse.fill", "id": f"fill-{n + i}", "queue": "fill"}
                                         for i in range(100)])
                except RaftqError as exc:
                    refusal = exc.code
                    break
                sc.ack("fill", ids)
                n += len(ids)
                leased = c.lease("filler", ["fill"], max=100, wait_s=0)
                c.complete_many([{"id": j["id"], "attempt": j["attempt"], "lease_token": j["lease_token"],
                                  "result": None} for j in leased])
            total = held + n
            seen.append(f"fill refused at {total} held: {refusal}" if refusal else
                        f"{total} jobs held ({n} finished), never refused")
            if refusal != "OVERLOADED" or total > limit + 100:
                sc.out.violate(f"{total} jobs held with max_held_jobs={limit}, refusal {refusal}")
            # A 1 ms schedule with the biggest catch-up: refused, or bounded by admission.
            try:
                c.schedule_add("flood", "abuse.flood", every=0.001, misfire="catch_up", max_catch_up=1000)
                added = "ok"
            except RaftqError as exc:
                added = exc.code
            if added == "ok":
                before = _jobs_held(c)
                time.sleep(4.0)
                after = _jobs_held(c)
                c.schedule_remove("flood")
                seen.append(f"1 ms schedule accepted: {after - before} jobs in 4 s, {after} held")
                if after > limit + 100:
                    sc.out.violate(f"1 ms schedule: {after} jobs held with max_held_jobs={limit}")
            else:
                seen.append(f"1 ms schedule: {added}")
                if added != "BAD_REQUEST":
                    sc.out.violate(f"1 ms schedule answered {added}")
        sc.out.observed = "; ".join(seen)
        return sc.finish(judge_p99=False)


def _jobs_held(c: Any) -> int:
    return sum(int(v) for v in c.stats()["jobs"].values())


# ------------------------------------------------------------ 10 malformed-schedule

_TEMPLATE = {"type": "abuse.sched", "args": {}, "queue": "default", "priority": 0, "max_attempts": 3}
MALFORMED_SCHEDULES: dict[str, dict[str, Any]] = {
    "impossible cron": {"name": "m1", "cron": "0 0 31 2 *", "job": _TEMPLATE},
    "cron not a string": {"name": "m2", "cron": 12345, "job": _TEMPLATE},
    "every_ms a string": {"name": "m3", "every_ms": "fast", "job": _TEMPLATE},
    "every_ms negative": {"name": "m4", "every_ms": -5, "job": _TEMPLATE},
    "every_ms 2^64-1": {"name": "m5", "every_ms": 2**64 - 1, "job": _TEMPLATE},
    "every_ms a float": {"name": "m6", "every_ms": 0.5, "job": _TEMPLATE},
    "tz an int": {"name": "m7", "cron": "* * * * *", "tz": 7, "job": _TEMPLATE},
    "tz unknown": {"name": "m8", "cron": "* * * * *", "tz": "Mars/Olympus", "job": _TEMPLATE},
    "name a list": {"name": ["x"], "every_ms": 60000, "job": _TEMPLATE},
    "job a string": {"name": "m10", "every_ms": 60000, "job": "abuse.sched"},
    "no cron, no every": {"name": "m11", "job": _TEMPLATE},
    "misfire unknown": {"name": "m12", "every_ms": 60000, "misfire": "sometimes", "job": _TEMPLATE},
    "max_catch_up a string": {"name": "m13", "every_ms": 60000, "misfire": "catch_up", "max_catch_up": "many",
                              "job": _TEMPLATE},
}


def malformed_schedule(root: Path, scale: Scale) -> Outcome:
    n = len(MALFORMED_SCHEDULES)
    sc = Scenario("malformed-schedule", f"{n}/{n} BAD_REQUEST, never INTERNAL; no traceback in node logs", root)
    with sc:
        sc.baseline(scale.baseline_s)
        answers: dict[str, str] = {}
        with sc.attack(), sc.client(timeout_s=12) as c:
            for name, sched in MALFORMED_SCHEDULES.items():
                try:
                    c.request("schedule_add", {"schedule": sched})
                    answers[name] = "ok"
                except RaftqError as exc:
                    answers[name] = exc.code
        wrong = {k: v for k, v in answers.items() if v != "BAD_REQUEST"}
        traces = tracebacks(sc.cluster)
        sc.out.observed = f"{n - len(wrong)}/{n} BAD_REQUEST" + (
            "; " + ", ".join(f"{k}: {v}" for k, v in wrong.items()) if wrong else "") + f"; {traces} tracebacks"
        if wrong:
            sc.out.violate(f"{len(wrong)} malformed schedules not BAD_REQUEST: {wrong}")
        if traces:
            sc.out.violate(f"{traces} traceback(s) in the node logs")
        return sc.finish()


ATTACKS: dict[str, Callable[[Path, Scale], Outcome]] = {
    "corrupt-journal": corrupt_journal,
    "fd-exhaustion": fd_exhaustion,
    "unauth-memory": unauth_memory,
    "poisoned-batch": poisoned_batch,
    "large-entries": large_entries,
    "non-reading-client": non_reading_client,
    "heavy-reads": heavy_reads,
    "idle-long-polls": idle_long_polls,
    "admission": admission,
    "malformed-schedule": malformed_schedule,
}
