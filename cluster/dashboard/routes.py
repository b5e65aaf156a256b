"""`/dashboard/...` on a node's HTTP port: the page and its JSON API.

Static files (`static/`) are read from the package once, at first use; only
names in that fixed set are served, so no request path ever reaches the file
system. They are served to anyone who reaches the port: they hold no data,
and a browser cannot attach a header to the navigation that loads them.

The API, `/dashboard/api/<name>`, runs the node's own ops through the op
table's path (`Node.handle`: argument checks, then the handler), so it reads
exactly what the client port would answer. Every call presents a cluster
credential (the tokens the CLI uses) in the `X-Raftq-Token` header, and each
op it runs is checked as the client port checks it (cluster/roles.py): the
op's roles, then a scoped credential's queues. Reads need one too, not only
the actions: they show job args, results and errors, which the client port
shows only to producer and admin credentials, and the HTTP port must not be a
side door to them (so `http_token`, the scrapers' token, opens nothing here).
A wrong token counts against its source in the node's hello throttle, shared
with the client port, so guessing here is paced as it is there.

A header, never a cookie: a page on another origin cannot send one without a
CORS preflight, which this port never grants (OPTIONS is 405), so there is no
cross-site request forgery to guard against.

Reads run with `stale_ok`: the node answers from its own replica (the
overview says which node and its applied index), so a follower serves the
page too. Actions go through the op's handler, which refuses them on a
follower; the API then answers 421 with the leader's dashboard address.
"""
from __future__ import annotations

import asyncio
import json
import math
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import parse_qs

import msgpack

from cluster.errors import BadRequest, NotLeader, Overloaded, RaftqError, TooLarge, Unauthorized
from cluster.ops import HEAVY_OPS
from cluster.protocol import Encoded
from cluster.roles import Access, scope_refusal
from replication import codes

if TYPE_CHECKING:
    from cluster.server import Node

DASHBOARD_PATH = "/dashboard"
API_PATH = "/dashboard/api/"
TOKEN_HEADER = "X-Raftq-Token"
MAX_BODY_BYTES = 64 * 1024   # an action names at most a page of jobs (100 ids of <= 200 chars)
BODY_TIMEOUT_S = 5.0         # the page sends its small body at once, like the head
PEER_TIMEOUT_S = 1.0         # a peer's /health is answered at once; a down peer must not stall the page
MAX_PEER_REPLY = 64 * 1024
LIST_LIMIT = 100             # jobs per page of the search: args and results are cut to a preview
OLDEST_AGE_QUEUES = 20       # queues (the most queued first) whose oldest ready job the overview looks up
PREVIEW_CHARS = 200

# status line, content type, body, extra header lines (each ending in \r\n)
Reply = tuple[str, str, bytes, str]

_PAGE_HEADERS = ("Content-Security-Policy: default-src 'self'; frame-ancestors 'none'; "
                 "base-uri 'none'; form-action 'none'\r\n"
                 "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n")
_API_HEADERS = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8"}
_HTTP_STATUS = {
    codes.BAD_REQUEST: "400 Bad Request", codes.UNAUTHORIZED: "401 Unauthorized", codes.FORBIDDEN: "403 Forbidden",
    codes.NOT_FOUND: "404 Not Found", codes.CONFLICT: "409 Conflict", codes.TOO_LARGE: "413 Payload Too Large",
    codes.NOT_LEADER: "421 Misdirected Request", codes.OVERLOADED: "429 Too Many Requests",
    codes.NO_LEADER: "503 Service Unavailable", codes.UNAVAILABLE: "503 Service Unavailable",
    codes.TIMEOUT: "504 Gateway Timeout",
}

_assets: dict[str, tuple[str, bytes]] | None = None


def _static() -> dict[str, tuple[str, bytes]]:
    """name -> (content type, bytes) of every file in static/, read once."""
    global _assets
    if _assets is None:
        folder = resources.files("cluster.dashboard") / "static"
        _assets = {f.name: (_CONTENT_TYPES.get("." + f.name.rpartition(".")[2], "application/octet-stream"),
                            f.read_bytes())
                   for f in folder.iterdir() if f.is_file()}
    return _assets


def is_dashboard(target: str) -> bool:
    """Whether a request target is the dashboard's (the rest of the port is http.py's)."""
    path = target.split("?", 1)[0]
    return path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/")


async def serve(node: "Node", method: str, target: str, head: bytes, reader: asyncio.StreamReader,
                source: str) -> Reply:
    """The reply to one request whose target `is_dashboard`."""
    path = target.split("?", 1)[0]
    if path.startswith(API_PATH):
        return await _api(node, method, target, head, reader, source)
    if method != "GET":
        return "405 Method Not Allowed", "text/plain", b"GET only\n", ""
    if path == DASHBOARD_PATH:
        return "301 Moved Permanently", "text/plain", b"", "Location: /dashboard/\r\n"
    asset = _static().get(path[len(DASHBOARD_PATH) + 1:] or "index.html")
    if asset is None:
        return "404 Not Found", "text/plain", b"not found\n", ""
    return "200 OK", asset[0], asset[1], _PAGE_HEADERS


# ---- the API ------------------------------------------------------------------


class _Call:
    """One authenticated API request: runs ops as its credential may."""

    def __init__(self, node: "Node", access: Access, query: dict[str, list[str]], body: dict[str, Any]) -> None:
        self.node = node
        self.access = access
        self.query = query
        self.body = body

    async def run(self, op: str, args: dict[str, Any]) -> Any:
        """`op` as the client port runs it for this credential."""
        node, access = self.node, self.access
        if op not in access.ops:
            raise access.op_refusal(op)
        if access.queues is not None:
            refusal = scope_refusal(access, op, args, node.raft, node.machine)
            if refusal is not None:
                raise refusal
        if op in HEAVY_OPS:  # counted against the node's heavy reads, as on the client port
            async with node.heavy_reads:
                result = await node.handle(op, args)
        else:
            result = await node.handle(op, args)
        if isinstance(result, Encoded):
            return msgpack.unpackb(result.data, raw=False, strict_map_key=False)
        return result

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values and values[0] != "" else None

    def int_param(self, name: str) -> int | None:
        value = self.param(name)
        if value is None:
            return None
        if not value.isdigit():
            raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
        return int(value)


async def _overview(call: _Call) -> dict[str, Any]:
    """Cluster, queues, workers and this node's commit latency: one poll of the page."""
    node = call.node
    status = await call.run("cluster_status", {})
    queues = (await call.run("queues", {"stale_ok": True}))["queues"]
    workers = (await call.run("workers", {"stale_ok": True}))["workers"]
    now = time.time()
    # One list call each: a bounded number per poll, however many queues there are.
    # A scoped credential sees every queue's counts but lists jobs of its own queues only.
    visible = [q for q in queues if call.access.queues is None or q["queue"] in call.access.queues]
    busiest = {q["queue"] for q in sorted(visible, key=lambda q: -q["jobs"].get("queued", 0))[:OLDEST_AGE_QUEUES]}
    for queue in queues:
        if "oldest_ready_age_s" not in queue:  # the queues op may report it itself one day
            queue["oldest_ready_age_s"] = (await _oldest_ready_age(call, queue, now)
                                           if queue["queue"] in busiest else None)
    latencies = sorted(node.committer.latencies)
    return {
        "now": now,
        "node_id": node.node_id,
        "cluster": status,
        "raft": node.raft.status(),
        "peers": await _peers(node),
        "queues": queues,
        "workers": workers,
        "commit_latency_s": None if not latencies else {
            "p50": _quantile(latencies, 0.5), "p99": _quantile(latencies, 0.99), "samples": len(latencies)},
    }


async def _oldest_ready_age(call: _Call, queue: dict[str, Any], now: float) -> float | None:
    """Seconds the first queued job of `queue` (in submit order) has been ready,
    or None: none queued, or none within one list call's scan budget."""
    if not queue["jobs"].get("queued"):
        return None
    page = await call.run("list", {"state": "queued", "queue": queue["queue"], "limit": 1, "stale_ok": True})
    if not page["jobs"]:
        return None
    job = page["jobs"][0]
    ready_since = max(job["created_at"] or now, job["run_at"] or 0)
    return max(0.0, now - ready_since)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _peers(node: "Node") -> dict[str, Any]:
    """Every other node's /health (role, term, commit and applied index), asked
    now, for the lag column. Only over plain HTTP: this node holds no CA to
    check a peer's HTTPS certificate against, and would not send the
    http_token to a peer it cannot authenticate."""
    if node.cfg.tls_cert is not None:
        return {"polled": False, "reason": "the HTTP ports speak HTTPS: peers are not polled", "nodes": {}}
    others = [n for n in node.cfg.nodes if n.id != node.node_id and n.http]
    replies = await asyncio.gather(*(_health(n.http, node.cfg.http_token) for n in others))
    return {"polled": True, "nodes": {str(n.id): reply for n, reply in zip(others, replies)}}


async def _health(addr: str, http_token: str | None) -> dict[str, Any] | None:
    """GET /health of the node at `addr`; None if it does not answer in time."""
    host, _, port = addr.rpartition(":")
    auth = "" if http_token is None else f"Authorization: Bearer {http_token}\r\n"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), PEER_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(f"GET /health HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n".encode())
        raw = await asyncio.wait_for(_read_all(reader, MAX_PEER_REPLY), PEER_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()
    try:
        reply = json.loads(raw.partition(b"\r\n\r\n")[2])
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


async def _read_all(reader: asyncio.StreamReader, limit: int) -> bytes:
    data = b""
    while len(data) < limit:
        chunk = await reader.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def _jobs(call: _Call) -> dict[str, Any]:
    """One page of the job search (list op), args and results cut to previews."""
    limit = call.int_param("limit")
    page = await call.run("list", {"state": call.param("state"), "queue": call.param("queue"),
                                   "schedule": call.param("schedule"), "cursor": call.int_param("cursor"),
                                   "limit": LIST_LIMIT if limit is None else min(max(limit, 1), LIST_LIMIT),
                                   "stale_ok": True})
    for job in page["jobs"]:
        for key in ("args", "result", "error"):
            job[key] = _preview(job[key])
    return page


def _preview(value: Any) -> Any:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(_jsonable(value))
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


async def _job(call: _Call) -> dict[str, Any]:
    job_id = call.param("id")
    if job_id is None:
        raise BadRequest("name a job: ?id=JOB_ID")
    job: dict[str, Any] = await call.run("get", {"id": job_id, "stale_ok": True})
    return job


async def _schedules(call: _Call) -> dict[str, Any]:
    result: dict[str, Any] = await call.run("schedule_list", {"stale_ok": True})
    return result


async def _requeue(call: _Call) -> dict[str, Any]:
    """Dead letters back to queued: `{"ids": [...]}` (the requeue_failed op)."""
    result: dict[str, Any] = await call.run("requeue_failed", {"ids": call.body.get("ids")})
    return result


async def _schedule_action(call: _Call) -> dict[str, Any]:
    """`{"name", "action": "pause" | "resume"}` (the schedule_pause / schedule_resume ops)."""
    action = call.body.get("action")
    if action not in ("pause", "resume"):
        raise BadRequest(f"action must be pause or resume, got {action!r}")
    result: dict[str, Any] = await call.run(f"schedule_{action}", {"name": call.body.get("name")})
    return result


_ROUTES: dict[tuple[str, str], Callable[[_Call], Awaitable[dict[str, Any]]]] = {
    ("GET", "overview"): _overview,
    ("GET", "jobs"): _jobs,
    ("GET", "job"): _job,
    ("GET", "schedules"): _schedules,
    ("POST", "requeue"): _requeue,
    ("POST", "schedule"): _schedule_action,
}


async def _api(node: "Node", method: str, target: str, head: bytes, reader: asyncio.StreamReader,
               source: str) -> Reply:
    path, _, query = target.partition("?")
    name = path[len(API_PATH):]
    route = _ROUTES.get((method, name))
    if route is None:
        if any(n == name for _, n in _ROUTES):
            return _json("405 Method Not Allowed", {"error": codes.BAD_REQUEST, "message": f"{method} {path}: "
                                                    f"wrong method"})
        return _json("404 Not Found", {"error": codes.NOT_FOUND, "message": f"no API {path}"})
    headers = _headers(head)
    try:
        access = await _authenticate(node, headers.get(TOKEN_HEADER.lower()), source)
        body = await _body(reader, headers) if method == "POST" else {}
        result = await route(_Call(node, access, parse_qs(query), body))
    except RaftqError as exc:
        return _error(node, exc)
    return _json("200 OK", result)


async def _authenticate(node: "Node", token: str | None, source: str) -> Access:
    """The credential `token` names, paced like a hello once its source has
    presented a wrong one (cluster/hello_throttle.py)."""
    if not token:
        raise Unauthorized(f"this API needs a cluster credential in the {TOKEN_HEADER} header")
    loop = asyncio.get_running_loop()
    now = loop.time()
    wait_s = node.hello_throttle.wait_s(source, now, now + node.cfg.hello_timeout_s)
    if wait_s is None:
        raise Overloaded(f"too many wrong tokens from {source}; retry in a few seconds")
    if wait_s > 0:
        await asyncio.sleep(wait_s)
    access = node.credentials.resolve(token)
    if access is None:
        node.hello_throttle.failed(source, loop.time())
        raise Unauthorized("invalid token")
    return access


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> dict[str, Any]:
    length = headers.get("content-length", "")
    if not length.isdigit():
        raise BadRequest("a POST needs a Content-Length")
    if int(length) > MAX_BODY_BYTES:
        raise TooLarge(f"body of {length} bytes; at most {MAX_BODY_BYTES}")
    raw = await asyncio.wait_for(reader.readexactly(int(length)), BODY_TIMEOUT_S)
    try:
        body = json.loads(raw)
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def _headers(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return out


def _error(node: "Node", exc: RaftqError) -> Reply:
    body: dict[str, Any] = {"error": exc.code, "message": exc.message}
    if isinstance(exc, NotLeader):
        leader = _leader_dashboard(node)
        if leader is not None:
            body["leader_dashboard"] = leader
            body["message"] = f"actions are served by the leader at {leader}"
    return _json(_HTTP_STATUS.get(exc.code, "500 Internal Server Error"), body)


def _leader_dashboard(node: "Node") -> str | None:
    leader = node.leader_client()
    spec = next((n for n in node.cfg.nodes if n.client == leader), None)
    if spec is None or spec.http is None:
        return None
    scheme = "http" if node.cfg.tls_cert is None else "https"  # the HTTP port speaks TLS with a certificate
    return f"{scheme}://{spec.http}{DASHBOARD_PATH}/"


def _json(status: str, value: Any) -> Reply:
    return status, "application/json", json.dumps(_jsonable(value)).encode(), _API_HEADERS


def _jsonable(value: Any) -> Any:
    """A msgpack value as JSON can carry it: bytes as {"bytes_hex"}, non-finite
    floats as strings, map keys as strings."""
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"bytes_hex": bytes(value).hex()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
