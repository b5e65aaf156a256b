"""HTTP `GET /health` and `GET /metrics` (Prometheus text) for one node.

A deliberately tiny HTTP/1.0-style responder on asyncio: one request per
connection, GET only. The metrics are cluster/metrics.py's: read from the
node at scrape time by its collector (prometheus_client renders the
exposition format).

Who may ask (docs/security.md): anyone, by default, so existing scrapers and
probes keep working. With `http_token` in the cluster config every request
must carry `Authorization: Bearer <http_token>` (else 401); with `http_mtls`
the peer must present a client certificate signed by `tls_client_ca`. With
`tls_cert`/`tls_key` the port speaks HTTPS only. The web dashboard
(`/dashboard/`, cluster/dashboard/) checks cluster credentials instead of the
http_token, and its actions POST a small body.

Before any of that a peer is unknown, so every connection is bounded: at most
HTTP_MAX_CONNECTIONS at once (more are closed at once, unanswered), a request
head of at most MAX_HEADER_BYTES that must arrive within HEADER_TIMEOUT_S
(one request per connection, so this is also the idle close), and a reply the
peer must read within WRITE_TIMEOUT_S.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest

from cluster.dashboard import routes as dashboard
from cluster.metrics import NodeCollector
from cluster.tls import asks_client_certificates

if TYPE_CHECKING:
    from cluster.server import Node

log = logging.getLogger("raftq.http")
MAX_HEADER_BYTES = 8192     # a GET with its headers; Prometheus sends ~300 bytes
HEADER_TIMEOUT_S = 5.0      # a scraper or probe sends its request at once
WRITE_TIMEOUT_S = 10.0      # /metrics is tens of KiB: any live reader takes it in well under this
HTTP_MAX_CONNECTIONS = 16   # scrapers and health probes: a handful at a time (counted in the fd budget)


async def start_http_server(node: "Node", host: str, port: int) -> asyncio.AbstractServer:
    registry = CollectorRegistry()
    registry.register(NodeCollector(node))
    tls = node.cfg.http_port_tls()
    mutual_tls = asks_client_certificates(tls)
    expected = None if node.cfg.http_token is None else f"Bearer {node.cfg.http_token}".encode()

    open_connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_connections
        if open_connections >= HTTP_MAX_CONNECTIONS:
            node.count_refusal("http_limit")
            writer.transport.abort()
            return
        open_connections += 1
        try:
            await _serve_one(reader, writer)
        finally:
            open_connections -= 1

    async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        extra = ""  # header lines of the dashboard's replies
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=HEADER_TIMEOUT_S)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split()
            refusal = _refusal(head, expected, mutual_tls and not writer.transport.get_extra_info("peercert"))
            if refusal is not None:
                node.count_refusal("http_unauthorized")
                status, ctype, body = "401 Unauthorized", "text/plain", refusal
            elif len(parts) >= 2 and dashboard.is_dashboard(parts[1]):
                peer = writer.get_extra_info("peername")
                source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
                status, ctype, body, extra = await dashboard.serve(node, parts[0], parts[1], head, reader, source)
            elif len(parts) < 2 or parts[0] != "GET":
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET only\n"
            else:
                path = parts[1].split("?", 1)[0]
                status, ctype, body = _route(node, registry, path)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            status, ctype, body = "400 Bad Request", "text/plain", b"bad request\n"
        except Exception:
            log.exception("http handler failed")
            status, ctype, body = "500 Internal Server Error", "text/plain", b"internal error\n"
        try:
            challenge = "WWW-Authenticate: Bearer\r\n" if status.startswith("401") else ""
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"{challenge}{extra}Connection: close\r\n\r\n".encode() + body)
            await asyncio.wait_for(writer.drain(), timeout=WRITE_TIMEOUT_S)
        except (ConnectionError, asyncio.TimeoutError):
            writer.transport.abort()
        finally:
            writer.close()

    tls_options: dict[str, object] = {} if tls is None else {"ssl": tls, "ssl_handshake_timeout": HEADER_TIMEOUT_S}
    return await asyncio.start_server(handle, host, port, limit=MAX_HEADER_BYTES, reuse_address=True, **tls_options)


def _refusal(head: bytes, expected: bytes | None, certificate_missing: bool) -> bytes | None:
    """The 401 body for a request that lacks a required credential, else None."""
    if certificate_missing:
        return b"this port requires a client certificate (mutual TLS)\n"
    request = head.split(b"\r\n", 1)[0].split()
    # The dashboard checks cluster credentials itself (cluster/dashboard/routes.py).
    if expected is None or (len(request) >= 2 and dashboard.is_dashboard(request[1].decode("latin-1"))):
        return None
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"authorization":
            # Constant time: the comparison must not tell how much of a guess was right.
            if hmac.compare_digest(value.strip(), expected):
                return None
            break
    return b"this port requires Authorization: Bearer <http_token>\n"


def _route(node: "Node", registry: CollectorRegistry, path: str) -> tuple[str, str, bytes]:
    if path == "/metrics":
        return "200 OK", "text/plain; version=0.0.4; charset=utf-8", generate_latest(registry)
    if path == "/health":
        status = node.raft.status()
        leader = node.leader_client()
        body = {"status": "ok" if leader else "no_leader", "node_id": node.node_id, "role": status.get("role"),
                "leader": leader, "term": status.get("term"), "commit_index": status.get("commit_index"),
                "last_applied": status.get("last_applied")}
        # 503 while there is no leader, so a load balancer stops sending writes here.
        code = "200 OK" if leader else "503 Service Unavailable"
        return code, "application/json", json.dumps(body).encode() + b"\n"
    return "404 Not Found", "text/plain", b"not found: try /health or /metrics\n"
