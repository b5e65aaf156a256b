"""raftq wire protocol: framing, request parsing and JobSpec building, with no I/O.

A frame is a 4-byte big-endian length followed by one msgpack map
(contracts.md §3). Requests are `{"id": int, "op": str, "args": map}`, responses
`{"id": int, "ok": any}` or `{"id": int, "err": [CODE, message, extra]}`.

Invariants this module keeps, so that the server and both clients can trust it:
- `FrameDecoder` rejects an oversize length prefix as soon as the 4 header
  bytes arrive, BEFORE buffering the body: a peer cannot make us hold more
  than `max_frame_bytes` + one read of unparsed input.
- Decoding a frame is bounded: msgpack limits are set from the frame size, so
  a tiny frame cannot claim a huge array, and every decode error becomes a
  `ProtocolViolation("BAD_REQUEST")`, never an arbitrary exception. A frame is
  a map with str keys; nested maps may use str or bytes keys (msgpack's
  strict_map_key), since job args are "any msgpack value".
- `feed(data, max_messages=1)` stops after one frame and keeps the rest
  buffered, so a server can raise `max_frame_bytes` after a small hello
  before the next frame's header is judged.
- Total decode work is O(bytes fed): the buffer is consumed with one prefix
  deletion per `feed` call (bytearray front-deletion is amortised O(1)).
- `job_spec_from_options` is the one place where client-side seconds become
  the `*_ms` fields of a JobSpec (contracts.md §1); the Client, the AsyncClient
  and the CLI all build specs through it, so they validate identically.
"""
from __future__ import annotations

import datetime as _dt
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import msgpack

from cluster.errors import BadRequest, RaftqError, TooLarge, error_class
from cluster.ops import OPS as CLIENT_OPS
from replication.model import MAX_ID_LEN

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024
# Before hello a peer is unauthenticated: it may send one frame of at most this
# size. A hello (version, role, a token of <= 1024 chars) is ~100 bytes to 1.1 KiB.
HELLO_MAX_FRAME_BYTES = 4096
MAX_IN_FLIGHT = 1024
# Long polls (lease, wait) a node serves at once per connection by default
# (ClusterConfig.max_pollers_per_connection); the AsyncClient queues past it.
MAX_POLLS_PER_CONNECTION = 512
HEADER_BYTES = 4

# The ops the codec accepts: hello (the handshake, below) and the client ops of
# cluster/ops.py, where each op's kind, role and arguments are declared.
OPS: frozenset[str] = frozenset({"hello", *CLIENT_OPS})
# Roles a hello may declare.
ROLES: frozenset[str] = frozenset({"client", "worker"})

_MAX_REQUEST_ID = 2**63 - 1


class ProtocolViolation(Exception):
    """A peer broke the framing or request shape.

    `code` is a wire code ("TOO_LARGE" or "BAD_REQUEST"). `request_id` is set
    when the frame was a well-formed map with a usable id (so the server can
    answer that request); None when the stream itself is broken (answer with
    id 0 and close).
    """

    def __init__(self, code: str, message: str, request_id: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id

    def error(self) -> RaftqError:
        """The registered exception for this violation (for `response_err`)."""
        return error_class(self.code)(self.message)


# --------------------------------------------------------------------------- frames


def encode_frame(msg: dict[str, Any]) -> bytes:
    """One frame: 4-byte big-endian length + msgpack map.

    A response whose "ok" is `Encoded` is spliced in as is. Raises
    TypeError/ValueError/OverflowError from msgpack for values it cannot
    encode (the client turns those into BadRequest).
    """
    ok = msg.get("ok")
    if ok.__class__ is Encoded:
        body = b"".join((_FIXMAP_2, _KEY_ID, msgpack.packb(msg["id"]), _KEY_OK, ok.data))  # type: ignore[union-attr]
    else:
        body = msgpack.packb(msg, use_bin_type=True)
    return len(body).to_bytes(HEADER_BYTES, "big") + body


class Encoded:
    """A result already in msgpack: a server builds a large reply in slices
    (`PageEncoder`) so that encoding it never holds its loop for long."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


class PageEncoder:
    """Encode `{key: [items...], **rest}` a slice of items at a time."""

    def __init__(self, key: str) -> None:
        self._packer = msgpack.Packer(use_bin_type=True)
        self._key = key
        self._parts: list[bytes] = []
        self.count = 0

    def add(self, items: list[Any]) -> None:
        pack = self._packer.pack
        self._parts.append(b"".join([pack(item) for item in items]))
        self.count += len(items)

    def finish(self, **rest: Any) -> Encoded:
        p = self._packer
        head = p.pack_map_header(1 + len(rest)) + p.pack(self._key) + p.pack_array_header(self.count)
        tail = b"".join(p.pack(k) + p.pack(v) for k, v in rest.items())
        return Encoded(b"".join((head, *self._parts, tail)))


class FrameDecoder:
    """Incremental frame parser: feed bytes, get complete messages."""

    def __init__(self, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be >= 1")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes, max_messages: int = 0) -> list[dict[str, Any]]:
        """Add bytes; return every message completed by them (at most
        `max_messages` if > 0: the rest stays buffered), in order.

        Raises ProtocolViolation; after that the stream is unusable (close it).
        """
        buf = self._buf
        buf += data
        messages: list[dict[str, Any]] = []
        pos = 0
        end = len(buf)
        try:
            while end - pos >= HEADER_BYTES:
                length = int.from_bytes(buf[pos : pos + HEADER_BYTES], "big")
                if length > self.max_frame_bytes:
                    raise ProtocolViolation(
                        "TOO_LARGE",
                        f"frame of {length} bytes exceeds the limit of {self.max_frame_bytes} bytes",
                    )
                start = pos + HEADER_BYTES
                if end - start < length:
                    break
                messages.append(self._decode(bytes(buf[start : start + length])))
                pos = start + length
                if len(messages) == max_messages:
                    break
        finally:
            if pos:
                del buf[:pos]
        return messages

    def _decode(self, body: bytes) -> dict[str, Any]:
        if not body:
            raise ProtocolViolation("BAD_REQUEST", "empty frame")
        n = len(body)
        try:
            msg = msgpack.unpackb(
                body,
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_str_len=n,
                max_bin_len=n,
                max_array_len=n,
                max_map_len=n,
                max_ext_len=n,
            )
        except Exception as e:  # msgpack raises many types (ValueError, ExtraData, StackError...)
            raise ProtocolViolation("BAD_REQUEST", f"undecodable msgpack frame: {e}") from None
        if not isinstance(msg, dict):
            raise ProtocolViolation("BAD_REQUEST", f"frame is a {type(msg).__name__}, expected a map")
        if not all(isinstance(k, str) for k in msg):
            raise ProtocolViolation("BAD_REQUEST", "frame map keys must be strings")
        return msg


# ------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    id: int
    op: str
    args: dict[str, Any] = field(default_factory=dict)


def _valid_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_REQUEST_ID


def parse_request(msg: Any) -> Request:
    """Validate a decoded frame's request shape (not the op's own arguments)."""
    if not isinstance(msg, dict):
        raise ProtocolViolation("BAD_REQUEST", "request must be a map")
    rid = msg.get("id")
    if not _valid_id(rid):
        raise ProtocolViolation("BAD_REQUEST", f"request id must be an integer in 0..2^63-1, got {rid!r}")
    op = msg.get("op")
    if not isinstance(op, str):
        raise ProtocolViolation("BAD_REQUEST", "request op must be a string", rid)
    if op not in OPS:
        raise ProtocolViolation("BAD_REQUEST", f"unknown op {op[:64]!r}", rid)
    args = msg.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolViolation("BAD_REQUEST", f"args of {op} must be a map", rid)
    if not all(isinstance(k, str) for k in args):
        raise ProtocolViolation("BAD_REQUEST", f"args of {op} must have string keys", rid)
    return Request(rid, op, args)


def request(id: int, op: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The request map a client sends."""
    return {"id": id, "op": op, "args": dict(args or {})}


def response_ok(id: int, result: Any) -> dict[str, Any]:
    return {"id": id, "ok": result}


def response_err(id: int, error: RaftqError) -> dict[str, Any]:
    return {"id": id, "err": error.to_wire()}


def hello_args(token: str, role: str = "client") -> dict[str, Any]:
    return {"version": PROTOCOL_VERSION, "role": role, "token": token}


# -------------------------------------------------------------------------- addresses


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); BadRequest on anything else."""
    if not isinstance(text, str):
        raise BadRequest(f"node address must be a string 'host:port', got {text!r}")
    s = text.strip()
    host, sep, port_s = s.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise BadRequest(f"bad node address {text!r}: expected host:port")
    return host, int(port_s)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_nodes(nodes: str | list[str] | tuple[str, ...]) -> list[str]:
    """'h:p,h:p' or a list of 'h:p' -> normalised, de-duplicated addresses."""
    if isinstance(nodes, str):
        items = [p for p in nodes.split(",") if p.strip()]
    elif isinstance(nodes, (list, tuple)):
        items = list(nodes)
    else:
        raise BadRequest(f"nodes must be 'host:port,...' or a list of them, got {type(nodes).__name__}")
    out: list[str] = []
    for item in items:
        addr = format_address(*parse_address(item))
        if addr not in out:
            out.append(addr)
    if not out:
        raise BadRequest("no node address given (expected host:port[,host:port...])")
    return out


# --------------------------------------------------------------------------- JobSpec

SPEC_OPTIONS: frozenset[str] = frozenset(
    {"id", "queue", "priority", "max_attempts", "timeout", "delay", "run_at", "backoff", "unique_key",
     "depends_on", "resources", "max_lease_expiries"}
)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _seconds_to_ms(name: str, value: Any, *, allow_zero: bool) -> int | None:
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if not _is_number(value):
        raise BadRequest(f"{name} must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise BadRequest(f"{name} must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    return max(1, round(value * 1000)) if value > 0 else 0


def _check_str(name: str, value: Any, max_chars: int = MAX_ID_LEN) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string, got {value!r}")
    if len(value) > max_chars:
        raise BadRequest(f"{name} must be at most {max_chars} characters")
    return value


def _check_int(name: str, value: Any, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise BadRequest(f"{name} must be >= {minimum}, got {value}")
    return value


def job_spec_from_options(
    type: str,
    args: Any = None,
    *,
    id: str | None = None,
    queue: str = "default",
    priority: int = 0,
    max_attempts: int = 3,
    timeout: float | None = None,
    delay: float | None = None,
    run_at: float | _dt.datetime | None = None,
    backoff: float | None = None,
    unique_key: str | None = None,
    depends_on: list[str] | tuple[str, ...] | None = None,
    resources: Mapping[str, Any] | None = None,
    max_lease_expiries: int | None = None,
) -> dict[str, Any]:
    """Build a JobSpec (contracts §1) from client-side options in seconds.

    `id` defaults to a fresh uuid4 hex (the idempotency key of the submit).
    `run_at` is epoch seconds or a datetime (naive = local time). Optional
    fields left as None are omitted so the machine applies its defaults.
    Raises BadRequest with a one-line message on any bad value.
    """
    spec: dict[str, Any] = {
        "id": uuid.uuid4().hex if id is None else _check_str("job id", id),
        "type": _check_str("job type", type),
        "args": {} if args is None else args,
        "queue": _check_str("queue", queue),
        "priority": _check_int("priority", priority),
        "max_attempts": _check_int("max_attempts", max_attempts, 1),
    }
    if delay is not None and run_at is not None:
        raise BadRequest("give either delay or run_at, not both")
    timeout_ms = _seconds_to_ms("timeout", timeout, allow_zero=False)
    if timeout_ms is not None:
        spec["timeout_ms"] = timeout_ms
    delay_ms = _seconds_to_ms("delay", delay, allow_zero=True)
    if delay_ms is not None:
        spec["delay_ms"] = delay_ms
    if run_at is not None:
        if isinstance(run_at, _dt.datetime):
            run_at = run_at.timestamp()
        if not _is_number(run_at) or run_at < 0:
            raise BadRequest(f"run_at must be epoch seconds or a datetime, got {run_at!r}")
        spec["run_at_ms"] = round(run_at * 1000)
    backoff_ms = _seconds_to_ms("backoff", backoff, allow_zero=True)
    if backoff_ms is not None:
        spec["backoff_ms"] = backoff_ms
    if unique_key is not None:
        spec["unique_key"] = _check_str("unique_key", unique_key)
    if depends_on is not None:
        if isinstance(depends_on, str) or not isinstance(depends_on, (list, tuple)):
            raise BadRequest(f"depends_on must be a list of job ids, got {depends_on!r}")
        if depends_on:
            spec["depends_on"] = [_check_str("depends_on id", d) for d in depends_on]
    if resources is not None:
        if not isinstance(resources, Mapping):
            raise BadRequest(f"resources must be a dict {{cpu, mem_mb}}, got {resources!r}")
        spec["resources"] = dict(resources)
    if max_lease_expiries is not None:
        spec["max_lease_expiries"] = _check_int("max_lease_expiries", max_lease_expiries, 1)
    return spec


def job_spec_from_mapping(job: Any, where: str = "job") -> dict[str, Any]:
    """A JobSpec from a dict `{"type", "args"?, <options of job_spec_from_options>}`."""
    if not isinstance(job, Mapping):
        raise BadRequest(f"{where} must be a dict with at least 'type', got {type(job).__name__}")
    unknown = sorted(str(k) for k in job if k not in SPEC_OPTIONS and k not in ("type", "args"))
    if unknown:
        raise BadRequest(f"{where}: unknown option(s) {', '.join(unknown)}")
    if "type" not in job:
        raise BadRequest(f"{where}: missing 'type'")
    options = {k: v for k, v in job.items() if k in SPEC_OPTIONS}
    try:
        return job_spec_from_options(job["type"], job.get("args"), **options)
    except BadRequest as e:
        raise BadRequest(f"{where}: {e.message}") from None


# ------------------------------------------------------------- client-side encoding


def pack_args(op: str, args: Mapping[str, Any]) -> bytes:
    """msgpack-encode a request's args once, so retries re-send the same bytes.

    Raises BadRequest for values msgpack cannot encode and TooLarge when the
    request could never fit in a frame (the server would close the connection).
    """
    try:
        packed = msgpack.packb(dict(args), use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as e:
        raise BadRequest(f"cannot encode the arguments of {op}: {e}") from None
    if len(packed) + 64 > MAX_FRAME_BYTES:
        raise TooLarge(f"{op} request of {len(packed)} bytes exceeds the {MAX_FRAME_BYTES}-byte frame limit")
    return packed


_FIXMAP_2 = b"\x82"
_FIXMAP_3 = b"\x83"
_KEY_OK = msgpack.packb("ok")
_KEY_ID = msgpack.packb("id")
_KEY_OP = msgpack.packb("op")
_KEY_ARGS = msgpack.packb("args")


def encode_request_frame(id: int, op: str, packed_args: bytes) -> bytes:
    """The frame of `{"id": id, "op": op, "args": <packed_args>}` without re-encoding args."""
    body = b"".join(
        (_FIXMAP_3, _KEY_ID, msgpack.packb(id), _KEY_OP, msgpack.packb(op), _KEY_ARGS, packed_args)
    )
    return len(body).to_bytes(HEADER_BYTES, "big") + body
