"""Bad frames and bad requests get a clear error code; the node keeps serving."""
from __future__ import annotations

import socket
import struct

import msgpack
import pytest

from cluster import protocol
from cluster.errors import BadRequest
from tests.integration.harness import TOKEN, LocalCluster


def _conn(cluster: LocalCluster, node: int) -> socket.socket:
    host, port = cluster.client_addrs[node - 1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _read_until_closed(s: socket.socket) -> list[dict]:
    decoder = protocol.FrameDecoder()
    out: list[dict] = []
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        out.extend(decoder.feed(data))
    return out


def _hello(token: str = TOKEN) -> bytes:
    return protocol.encode_frame({"id": 1, "op": "hello", "args": {"version": 1, "role": "client", "token": token}})


@pytest.mark.parametrize("name, payload, code", [
    ("garbage msgpack", _hello() + struct.pack(">I", 4) + b"\xc1\xc1\xc1\xc1", "BAD_REQUEST"),
    ("not a map", _hello() + struct.pack(">I", 2) + msgpack.packb([1]), "BAD_REQUEST"),
    ("oversize length", _hello() + struct.pack(">I", 2**31), "TOO_LARGE"),
    ("wrong token", _hello("not-the-token"), "UNAUTHORIZED"),
    ("no hello first", protocol.encode_frame({"id": 1, "op": "get", "args": {"id": "x"}}), "UNAUTHORIZED"),
])
def test_bad_frames_get_an_error_and_close(module_cluster: LocalCluster, name: str, payload: bytes, code: str) -> None:
    cluster = module_cluster
    leader = cluster.leader_id()
    with _conn(cluster, leader) as s:
        s.sendall(payload)
        replies = _read_until_closed(s)
    errors = [r["err"][0] for r in replies if "err" in r]
    assert errors == [code], f"{name}: {replies}"
    # The node still serves other clients.
    with cluster.client() as c:
        assert c.submit("util.noop", {}, id=f"after-{code}-{abs(hash(name))}")


@pytest.mark.parametrize("op, args", [
    ("no_such_op", {}),
    ("submit", {"job": "not a map"}),
    ("submit", {"job": {"id": "", "type": "util.noop"}}),
    ("submit", {"job": {"id": "ok-id", "type": "util.noop", "priority": "high"}}),
    ("get", {"id": 42}),
    ("list", {"limit": -5}),
    ("list", {"cursor": "abc"}),
    ("list", {"state": "sleeping"}),
    ("lease", {"worker": "w", "queues": "default"}),
    ("complete", {"id": "x", "attempt": "one", "result": None}),
])
def test_bad_requests_get_bad_request_and_the_connection_stays_open(module_cluster: LocalCluster, op: str,
                                                                   args: dict) -> None:
    cluster = module_cluster
    with cluster.client() as c:
        with pytest.raises(BadRequest):
            c.request(op, args)
        # Same connection, next request works.
        assert c.submit("util.noop", {}) is not None
