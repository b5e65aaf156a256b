"""A follower answers every operation: a redirect to the leader, or a stale read."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

from cluster import protocol
from tests.integration.harness import REPO, TOKEN, LocalCluster, wait_until


def raw_call(addr: str, op: str, args: dict, token: str = TOKEN) -> dict:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        decoder = protocol.FrameDecoder()
        s.sendall(protocol.encode_frame({"id": 1, "op": "hello", "args": {"version": 1, "role": "client", "token": token}}))
        s.sendall(protocol.encode_frame({"id": 2, "op": op, "args": args}))
        replies: dict[int, dict] = {}
        while 2 not in replies:
            data = s.recv(65536)
            assert data, "connection closed"
            for msg in decoder.feed(data):
                replies[msg["id"]] = msg
        return replies[2]


def test_follower_redirects_writes_and_serves_stale_reads(cluster: LocalCluster) -> None:
    leader = cluster.leader_id()
    follower = next(i for i in range(1, 4) if i != leader)
    faddr = cluster.client_addrs[follower - 1]
    # The leader knows itself before every follower has heard from it (with
    # pre-vote a follower not yet connected waits for the leader rather than
    # forcing an election): wait until this follower names it.
    wait_until(lambda: raw_call(faddr, "cluster_status", {})["ok"]["leader"] == cluster.client_addrs[leader - 1],
               10, "the follower to learn the leader")
    reply = raw_call(faddr, "submit", {"job": {"id": "x1", "type": "util.noop", "args": {}}})
    assert reply["err"][0] == "NOT_LEADER"
    assert reply["err"][2] == {"leader": cluster.client_addrs[leader - 1]}
    for op, args in [("get", {"id": "x1"}), ("list", {}), ("stats", {}), ("cancel", {"id": "x1"}),
                     ("lease", {"worker": "w", "queues": ["default"], "wait_s": 0}),
                     ("complete", {"id": "x1", "attempt": 1, "lease_token": "0" * 32, "result": None})]:
        assert raw_call(faddr, op, args)["err"][0] == "NOT_LEADER", op

    # The client library follows the redirect from any one node.
    with cluster.node_client(follower) as c:
        job_id = c.submit("util.noop", {}, id="via-follower")
        assert c.get(job_id)["state"] == "queued"
    # Stale reads are answered by the follower itself once it has applied the entry.
    view = wait_until(lambda: raw_call(faddr, "get", {"id": "via-follower", "stale_ok": True}).get("ok"), 10,
                      "the follower to apply the submit")
    assert view["id"] == "via-follower"
    stats = raw_call(faddr, "stats", {"stale_ok": True})["ok"]
    assert stats["node_id"] == follower and stats["role"] == "follower"

    # The CLI works against a follower's address.
    out = subprocess.run([sys.executable, "-m", "cli.main", "status", "via-follower", "--json",
                          "--cluster", faddr, "--token", TOKEN], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    for key in ("id", "type", "queue", "priority", "state", "attempts", "result", "error",
                "created_at", "started_at", "finished_at"):
        assert key in status
    assert status["state"] == "queued" and status["type"] == "util.noop"
    out = subprocess.run([sys.executable, "-m", "cli.main", "cluster", "status", "--json", "--cluster", faddr,
                          "--token", TOKEN], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cs = json.loads(out.stdout)
    assert cs["leader"] == cluster.client_addrs[leader - 1]
    assert sorted((n["id"], n["client"]) for n in cs["nodes"]) == [(i + 1, a) for i, a in enumerate(cluster.client_addrs)]
    assert [n["role"] for n in cs["nodes"]].count("leader") == 1
