"""Nemeses: the faults, each as setup / inject / heal on a FaultCluster.

The runner alternates inject (held `hold_s`) and heal (then `rest_s` of calm)
while the clients load the cluster, and calls `heal` once more at the end
whatever happened; `heal` must be idempotent and leave every node and worker
process running, with no iptables rule left.

Which node a nemesis hits is chosen with the run's seeded `random.Random`,
except where the fault is about the leader (asked of the cluster at inject time).
"""
from __future__ import annotations

import os
import random
import signal
import struct
import time
from pathlib import Path

import msgpack

from tests.fault.harness import FaultCluster


class Nemesis:
    name = "none"

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def setup(self, c: FaultCluster) -> None:
        """Before any node starts."""

    def inject(self, c: FaultCluster) -> str:
        return "nothing"

    def heal(self, c: FaultCluster) -> None:
        heal_all(c)


def heal_all(c: FaultCluster) -> None:
    """No rules, nothing paused, every node and worker running."""
    c.net.heal()
    for key, proc in list(c.procs.items()):
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
    for i in range(1, c.n + 1):
        if not c.alive(f"n{i}"):
            c.start_node(i)
    for w in c.workers:
        if not c.alive(w):
            c.start_worker(w)


def _leader_or_random(c: FaultCluster, rng: random.Random) -> int:
    try:
        return c.leader(timeout=10)
    except TimeoutError:
        return rng.randint(1, c.n)


class KillLeader(Nemesis):
    name = "kill-leader"

    def inject(self, c: FaultCluster) -> str:
        victim = _leader_or_random(c, self.rng)
        c.signal(f"n{victim}", signal.SIGKILL)
        return f"kill -9 n{victim} (leader)"


class KillRandom(Nemesis):
    name = "kill-random"

    def inject(self, c: FaultCluster) -> str:
        victim = self.rng.randint(1, c.n)
        c.signal(f"n{victim}", signal.SIGKILL)
        return f"kill -9 n{victim}"


class PauseLeader(Nemesis):
    name = "pause-leader"

    def inject(self, c: FaultCluster) -> str:
        victim = _leader_or_random(c, self.rng)
        c.signal(f"n{victim}", signal.SIGSTOP)
        return f"SIGSTOP n{victim} (leader)"


class PartitionLeader(Nemesis):
    name = "partition-leader"

    def inject(self, c: FaultCluster) -> str:
        leader = _leader_or_random(c, self.rng)
        others = [f"n{i}" for i in range(1, c.n + 1) if i != leader]
        c.net.partition([f"n{leader}"], others)
        return f"n{leader} (leader) cut off from {others}; clients and workers still reach it"


class PartitionHalves(Nemesis):
    name = "partition-halves"

    def inject(self, c: FaultCluster) -> str:
        alone = self.rng.randint(1, c.n)
        minority = [f"n{alone}", c.workers[0], c.clients[0]]
        majority = [f"n{i}" for i in range(1, c.n + 1) if i != alone] + c.workers[1:] + c.clients[1:]
        c.net.partition(minority, majority)
        return f"minority {minority} | majority {majority}"


class PartitionOneWay(Nemesis):
    name = "partition-oneway"

    def inject(self, c: FaultCluster) -> str:
        leader = _leader_or_random(c, self.rng)
        for i in range(1, c.n + 1):
            if i != leader:
                c.net.block(f"n{leader}", f"n{i}", inbound=True, outbound=False)
        return f"n{leader} (leader) hears nothing from its peers (they still hear it)"


class PacketLoss(Nemesis):
    name = "packet-loss"

    def inject(self, c: FaultCluster) -> str:
        p = self.rng.choice([0.1, 0.2, 0.3])
        for i in range(1, c.n + 1):
            c.net.lose(f"n{i}", p)
        return f"every node drops {p:.0%} of inbound packets"


class ClockSkew(Nemesis):
    """Restart the leader with its wall clock ahead or behind; the skew stays to the end."""

    name = "clock-skew"

    def inject(self, c: FaultCluster) -> str:
        victim = _leader_or_random(c, self.rng)
        skew = self.rng.choice(["+40", "-40", "+5", "-5"])
        c.signal(f"n{victim}", signal.SIGKILL)
        c.skew[victim] = skew
        c.start_node(victim)
        return f"n{victim} restarted with its clock {skew}s off"


class RestartAll(Nemesis):
    name = "restart-all"

    def inject(self, c: FaultCluster) -> str:
        for i in range(1, c.n + 1):
            c.signal(f"n{i}", signal.SIGKILL)
        return "kill -9 every node"


class WorkerKill(Nemesis):
    name = "worker-kill"

    def inject(self, c: FaultCluster) -> str:
        victim = self.rng.choice(c.workers)
        c.signal(victim, signal.SIGKILL)
        return f"kill -9 worker {victim}"


class WorkerPause(Nemesis):
    name = "worker-pause"

    def inject(self, c: FaultCluster) -> str:
        victim = self.rng.choice(c.workers)
        c.signal(victim, signal.SIGSTOP)
        return f"SIGSTOP worker {victim} (past its {c.lease_ttl_s:g}s lease)"


class TruncateJournal(Nemesis):
    """Crash a follower and cut the tail of its journal: what an unsynced write loses."""

    name = "truncate-journal"

    def inject(self, c: FaultCluster) -> str:
        leader = _leader_or_random(c, self.rng)
        victim = self.rng.choice([i for i in range(1, c.n + 1) if i != leader])
        c.signal(f"n{victim}", signal.SIGKILL)
        path = c.data_dir(victim) / "raft.journal"
        cut = 0
        if path.exists():
            size = path.stat().st_size
            # Only what was never synced can be lost: nothing up to the stored
            # commit index (docs/storage.md; cutting that is refused at start).
            cut = min(self.rng.randint(1, 4000), size - _committed_end(c.data_dir(victim)))
            os.truncate(path, size - cut)
        c.start_node(victim)
        return f"n{victim} (follower) killed, {cut} bytes cut off its journal, restarted"


def _committed_end(data_dir: Path) -> int:
    """Offset just past the journal record of the commit index stored in raft.meta."""
    try:
        commit = msgpack.unpackb((data_dir / "raft.meta").read_bytes()).get("commit_index", 0)
    except FileNotFoundError:
        commit = 0
    data = (data_dir / "raft.journal").read_bytes()
    pos = end = 8  # after the header
    while pos + 24 <= len(data):
        length, _, idx, _ = struct.unpack_from("<IIQQ", data, pos)
        pos += 24 + length
        if idx <= commit and pos <= len(data):
            end = pos
    return end


class DiskFull(Nemesis):
    """One node's data dir on a small tmpfs, filled up and later freed."""

    name = "disk-full"

    def setup(self, c: FaultCluster) -> None:
        self.victim = self.rng.randint(1, c.n)
        self.dir = c.mount_small_disk(self.victim, 24)

    def inject(self, c: FaultCluster) -> str:
        filler = Path(self.dir) / "filler"
        with open(filler, "ab", buffering=0) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(64):  # bounded: the tmpfs is far smaller
                try:
                    f.write(chunk)
                except OSError:
                    break
        return f"n{self.victim}'s disk filled"

    def heal(self, c: FaultCluster) -> None:
        filler = Path(self.dir) / "filler"
        filler.unlink(missing_ok=True)
        heal_all(c)


NEMESES: dict[str, type[Nemesis]] = {n.name: n for n in (
    Nemesis, KillLeader, KillRandom, PauseLeader, PartitionLeader, PartitionHalves, PartitionOneWay,
    PacketLoss, ClockSkew, RestartAll, WorkerKill, WorkerPause, TruncateJournal, DiskFull)}
FAULTS = [name for name in NEMESES if name != "none"]


def hold_for(c: FaultCluster, name: str) -> float:
    """How long a fault stays injected: past the election timeout, past a lease."""
    if name in ("worker-pause",):
        return 2.5 * c.lease_ttl_s
    return 4.0


def sleep(seconds: float) -> None:
    time.sleep(max(seconds, 0.0))
