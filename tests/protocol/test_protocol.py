"""Frames through the parser, no sockets (cluster/protocol.py)."""
from __future__ import annotations

import datetime as dt

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster.errors import BadRequest, TooLarge
from cluster.protocol import (
    MAX_FRAME_BYTES,
    OPS,
    FrameDecoder,
    ProtocolViolation,
    Request,
    encode_frame,
    encode_request_frame,
    job_spec_from_mapping,
    job_spec_from_options,
    pack_args,
    parse_nodes,
    parse_request,
    response_err,
    response_ok,
)

MESSAGES = [
    {"id": 1, "op": "hello", "args": {"version": 1, "role": "client", "token": "dev"}},
    {"id": 2, "op": "submit", "args": {"job": {"id": "j1", "type": "t", "args": {"b": b"\x00\xff" * 50}}}},
    {"id": 3, "ok": {"jobs": [{"id": "x", "progress": [0.5, "half"]}], "cursor": None}},
    {"id": 4, "err": ["NOT_LEADER", "not the leader", {"leader": "127.0.0.1:7701"}]},
]


def _frame_raw(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def test_roundtrip_split_at_every_byte_boundary() -> None:
    stream = b"".join(encode_frame(m) for m in MESSAGES)
    for cut in range(len(stream) + 1):
        dec = FrameDecoder()
        out = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert out == MESSAGES, cut
        assert dec.buffered == 0


def test_byte_by_byte_feeding() -> None:
    dec = FrameDecoder()
    out: list[dict] = []
    for b in b"".join(encode_frame(m) for m in MESSAGES):
        out += dec.feed(bytes([b]))
    assert out == MESSAGES


def test_many_frames_in_one_chunk_plus_a_partial_one() -> None:
    msgs = [{"id": i, "op": "get", "args": {"id": f"job-{i}"}} for i in range(500)]
    stream = b"".join(encode_frame(m) for m in msgs)
    tail = encode_frame({"id": 999, "op": "stats"})
    dec = FrameDecoder()
    assert dec.feed(stream + tail[:7]) == msgs
    assert dec.buffered == 7
    assert dec.feed(tail[7:]) == [{"id": 999, "op": "stats"}]


@given(st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text() | st.binary(), max_size=4), max_size=8),
       st.lists(st.integers(min_value=0, max_value=400), max_size=10))
@settings(max_examples=100, deadline=None)
def test_any_split_yields_same_messages(msgs: list[dict], cuts: list[int]) -> None:
    # integers outside msgpack's 64-bit range cannot be encoded: drop them.
    msgs = [{k: v for k, v in m.items() if not isinstance(v, int) or -(2**63) <= v < 2**64} for m in msgs]
    stream = b"".join(encode_frame(m) for m in msgs)
    dec = FrameDecoder()
    out: list[dict] = []
    prev = 0
    for c in sorted(min(c, len(stream)) for c in cuts) + [len(stream)]:
        out += dec.feed(stream[prev:c])
        prev = c
    assert out == msgs


def test_oversize_length_rejected_before_body_arrives() -> None:
    dec = FrameDecoder(max_frame_bytes=1024)
    with pytest.raises(ProtocolViolation) as ei:
        dec.feed((1025).to_bytes(4, "big"))  # header only: no body was sent at all
    assert ei.value.code == "TOO_LARGE"
    assert isinstance(ei.value.error(), TooLarge)
    # exactly the limit is fine
    body = msgpack.packb({"x": b"a" * 1000})
    assert len(body) <= 1024
    assert FrameDecoder(max_frame_bytes=len(body)).feed(_frame_raw(body)) == [{"x": b"a" * 1000}]


def test_default_limit_is_8_mib() -> None:
    assert MAX_FRAME_BYTES == 8 * 1024 * 1024
    with pytest.raises(ProtocolViolation) as ei:
        FrameDecoder().feed((MAX_FRAME_BYTES + 1).to_bytes(4, "big") + b"\x80")
    assert ei.value.code == "TOO_LARGE"


def test_oversize_after_valid_frames_in_same_chunk() -> None:
    dec = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(ProtocolViolation) as ei:
        dec.feed(encode_frame({"id": 1}) + (10**6).to_bytes(4, "big"))
    assert ei.value.code == "TOO_LARGE"


@pytest.mark.parametrize(
    "body",
    [
        b"",  # empty frame
        b"\xc1",  # never-used msgpack byte
        b"\x92\x01",  # truncated array
        b"\x81\xa1a\x01\x02",  # trailing data after the map
        b"\xdd\xff\xff\xff\xff",  # array claiming 4G elements in a 5-byte frame
        b"\x81\xc4\x01k\x01",  # map with a bytes key
    ],
)
def test_garbage_is_bad_request(body: bytes) -> None:
    with pytest.raises(ProtocolViolation) as ei:
        FrameDecoder().feed(_frame_raw(body))
    assert ei.value.code == "BAD_REQUEST"
    assert ei.value.request_id is None


@pytest.mark.parametrize("value", [[1, 2], "hello", 5, None, b"bytes"])
def test_non_map_frame_is_bad_request(value: object) -> None:
    with pytest.raises(ProtocolViolation) as ei:
        FrameDecoder().feed(_frame_raw(msgpack.packb(value, use_bin_type=True)))
    assert ei.value.code == "BAD_REQUEST"
    assert "expected a map" in ei.value.message


def test_deep_nesting_is_bad_request_not_a_crash() -> None:
    body = b"\x91" * 100_000 + b"\x80"
    with pytest.raises(ProtocolViolation) as ei:
        FrameDecoder().feed(_frame_raw(b"\x81\xa1a" + body))
    assert ei.value.code == "BAD_REQUEST"


def test_parse_request_ok_and_default_args() -> None:
    assert parse_request({"id": 7, "op": "stats"}) == Request(7, "stats", {})
    assert parse_request({"id": 7, "op": "stats", "args": None}) == Request(7, "stats", {})
    req = parse_request({"id": 0, "op": "get", "args": {"id": "a"}})
    assert (req.id, req.op, req.args) == (0, "get", {"id": "a"})


@pytest.mark.parametrize(
    "msg,request_id",
    [
        ({"op": "stats"}, None),
        ({"id": "1", "op": "stats"}, None),
        ({"id": True, "op": "stats"}, None),
        ({"id": -1, "op": "stats"}, None),
        ({"id": 2**64, "op": "stats"}, None),
        ({"id": 3}, 3),
        ({"id": 3, "op": 5}, 3),
        ({"id": 3, "op": "drop_tables"}, 3),
        ({"id": 3, "op": "get", "args": [1]}, 3),
        ({"id": 3, "op": "get", "args": {1: 2}}, 3),
    ],
)
def test_parse_request_rejects(msg: dict, request_id: int | None) -> None:
    with pytest.raises(ProtocolViolation) as ei:
        parse_request(msg)
    assert ei.value.code == "BAD_REQUEST"
    assert ei.value.request_id == request_id


def test_every_op_the_codec_accepts_has_a_server_handler() -> None:
    from cluster.server import Node

    assert OPS == set(Node._handlers) | {"hello"}


def test_responses() -> None:
    assert response_ok(3, {"state": "queued"}) == {"id": 3, "ok": {"state": "queued"}}
    err = response_err(4, BadRequest("priority must be an integer"))
    assert err == {"id": 4, "err": ["BAD_REQUEST", "priority must be an integer", None]}
    assert FrameDecoder().feed(encode_frame(err)) == [err]


def test_request_frame_matches_generic_encoding() -> None:
    args = {"job": {"id": "x", "type": "t", "args": [1, "b", b"c", None, 2.5]}}
    assert encode_request_frame(9, "submit", pack_args("submit", args)) == encode_frame(
        {"id": 9, "op": "submit", "args": args}
    )


def test_pack_args_errors() -> None:
    with pytest.raises(BadRequest, match="cannot encode"):
        pack_args("submit", {"job": {"args": {1, 2}}})
    with pytest.raises(TooLarge):
        pack_args("submit", {"blob": b"x" * MAX_FRAME_BYTES})


# ------------------------------------------------------------------ JobSpec building


def test_spec_defaults_and_conversion() -> None:
    spec = job_spec_from_options("text.wordcount", {"text": "a b"}, id="j1")
    assert spec == {
        "id": "j1", "type": "text.wordcount", "args": {"text": "a b"},
        "queue": "default", "priority": 0, "max_attempts": 3,
    }
    spec = job_spec_from_options(
        "t", None, id="j2", queue="q", priority=-5, max_attempts=1,
        timeout=1.5, delay=0.25, backoff=2, unique_key="u",
    )
    assert spec["args"] == {}
    assert (spec["timeout_ms"], spec["delay_ms"], spec["backoff_ms"]) == (1500, 250, 2000)
    assert (spec["queue"], spec["priority"], spec["max_attempts"], spec["unique_key"]) == ("q", -5, 1, "u")
    assert "run_at_ms" not in spec


def test_spec_generates_distinct_ids() -> None:
    a, b = job_spec_from_options("t"), job_spec_from_options("t")
    assert len(a["id"]) == 32 and a["id"] != b["id"]


def test_spec_run_at_epoch_and_datetime() -> None:
    assert job_spec_from_options("t", id="x", run_at=1700000000.5)["run_at_ms"] == 1700000000500
    when = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    assert job_spec_from_options("t", id="x", run_at=when)["run_at_ms"] == int(when.timestamp() * 1000)
    assert job_spec_from_options("t", id="x", delay=dt.timedelta(seconds=3))["delay_ms"] == 3000


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"priority": "high"}, "priority must be an integer"),
        ({"priority": 1.5}, "priority must be an integer"),
        ({"priority": True}, "priority must be an integer"),
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"timeout": "5"}, "timeout must be a number"),
        ({"delay": -1}, "delay must be >= 0"),
        ({"delay": float("nan")}, "delay must be a number"),
        ({"backoff": float("inf")}, "backoff must be a number"),
        ({"delay": 1, "run_at": 5}, "either delay or run_at"),
        ({"run_at": "tomorrow"}, "run_at must be epoch seconds"),
        ({"queue": ""}, "queue must be a non-empty string"),
        ({"id": ""}, "job id must be a non-empty string"),
        ({"id": "x" * 201}, "job id must be at most 200"),
        ({"unique_key": 5}, "unique_key must be a non-empty string"),
    ],
)
def test_spec_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        job_spec_from_options("t", {}, **kwargs)


def test_spec_bad_type() -> None:
    with pytest.raises(BadRequest, match="job type must be a non-empty string"):
        job_spec_from_options(None, {})  # type: ignore[arg-type]


def test_spec_from_mapping() -> None:
    spec = job_spec_from_mapping({"type": "t", "args": [1], "id": "m", "delay": 1})
    assert spec == {"id": "m", "type": "t", "args": [1], "queue": "default", "priority": 0,
                    "max_attempts": 3, "delay_ms": 1000}
    with pytest.raises(BadRequest, match=r"jobs\[2\]: unknown option\(s\) prio"):
        job_spec_from_mapping({"type": "t", "prio": 1}, "jobs[2]")
    with pytest.raises(BadRequest, match="missing 'type'"):
        job_spec_from_mapping({"args": {}})
    with pytest.raises(BadRequest, match=r"jobs\[0\]: priority must be an integer"):
        job_spec_from_mapping({"type": "t", "priority": "x"}, "jobs[0]")
    with pytest.raises(BadRequest, match="must be a dict"):
        job_spec_from_mapping(["t"])


def test_parse_nodes() -> None:
    assert parse_nodes("127.0.0.1:7700, 127.0.0.1:7701,") == ["127.0.0.1:7700", "127.0.0.1:7701"]
    assert parse_nodes(["h:1", "h:1", "[::1]:9"]) == ["h:1", "[::1]:9"]
    for bad in ["", "nohost", "h:0", "h:99999", "h:port", ":7700", ["h:1", 5]]:
        with pytest.raises(BadRequest):
            parse_nodes(bad)  # type: ignore[arg-type]
