"""The op table (cluster/ops.py) and what derives from it: the codec's op set,
the server's dispatch, the argument checks both sides run, the contracts doc;
and the vocabulary defined once (wire codes, states, lease limits)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster import errors, ops, protocol
from cluster.client import Client
from cluster.errors import BadRequest
from cluster.server import HEAVY_OPS, POLL_OPS, Node
from replication import codes, model

ROOT = Path(__file__).resolve().parents[2]


def test_every_op_has_known_roles_and_one_kind() -> None:
    for op in ops.OPS.values():
        assert op.roles and op.roles <= set(ops.ROLES), op.name
        assert op.kind in ops.KINDS, op.name
    by_role = {r: {o.name for o in ops.OPS.values() if r in o.roles} for r in ops.ROLES}
    assert by_role["producer"] == {"submit", "submit_many", "get", "wait", "cancel", "list", "stats", "queues",
                                   "schedule_list", "digest", "cluster_status", "workers"}
    assert by_role["worker"] == {"lease", "heartbeat", "complete", "complete_many", "fail", "cluster_status",
                                 "workers"}
    # Only admins manage queues, dead letters, retries and schedules; nobody else runs a job.
    assert {"retry", "requeue_failed", "queue_limit", "schedule_add", "schedule_pause"} <= by_role["admin"]
    assert not by_role["admin"] & {"lease", "heartbeat", "complete", "complete_many", "fail"}


def test_queue_args_name_declared_arguments() -> None:
    for op in ops.OPS.values():
        if op.queue_arg is not None:
            first = op.queue_arg.split(".")[0].removesuffix("[]")
            assert first in {a.name for a in op.args}, op.name


def test_codec_dispatch_and_caps_derive_from_the_table() -> None:
    assert protocol.OPS == set(ops.OPS) | {"hello"}
    assert list(Node._handlers) == list(ops.OPS)
    for name, op in ops.OPS.items():
        assert hasattr(Node, f"_op_{name}") != op.direct, name  # a direct op's command is its args
        if not op.direct:
            assert Node._handlers[name] is getattr(Node, f"_op_{name}")
    assert HEAVY_OPS == {o.name for o in ops.OPS.values() if o.heavy}
    assert POLL_OPS == {"lease", "wait"}


def test_contracts_doc_holds_the_generated_table() -> None:
    doc = (ROOT / "docs" / "contracts.md").read_text()
    start = doc.index(ops.OPS_DOC_BEGIN)
    end = doc.index(ops.OPS_DOC_END) + len(ops.OPS_DOC_END)
    assert doc[start:end] == ops.markdown(), "docs/contracts.md: regenerate with python -m cluster.ops --markdown"


def test_markdown_command_prints_the_table() -> None:
    out = subprocess.run([sys.executable, "-m", "cluster.ops", "--markdown"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == ops.markdown()
    for op in ops.OPS.values():
        assert f"| `{op.name}` | " in out


def test_check_fills_defaults_and_keeps_values() -> None:
    assert ops.check("lease", {"worker": "w"}) == {
        "worker": "w", "queues": ("default",), "max": 1, "wait_s": 5.0, "lease_ms": None, "capacity": None}
    job = {"id": "a", "type": "t"}
    checked = ops.check("submit", {"job": job, "unknown": 1})
    assert checked == {"job": job} and checked["job"] is job
    assert ops.check("get", {"id": "a", "stale_ok": None}) == {"id": "a", "stale_ok": False}


@pytest.mark.parametrize("op, args, message", [
    ("get", {}, "get needs 'id': a string of 1..200 characters"),
    ("get", {"id": ""}, "job id must be"),
    ("get", {"id": "x" * 201}, "job id must be"),
    ("get", {"id": "a", "stale_ok": 1}, "'stale_ok' must be true or false"),
    ("lease", {"worker": "w", "max": True}, "'max' must be an integer in 1..1000"),
    ("lease", {"worker": "w", "max": 2.0}, "'max' must be an integer"),
    ("lease", {"worker": "w", "lease_ms": 99}, "'lease_ms' must be an integer in 100..86400000"),
    ("lease", {"worker": "w", "wait_s": float("nan")}, "'wait_s' must be a number in 0..60"),
    ("lease", {"worker": "w", "queues": "default"}, "'queues' must be a list"),
    ("lease", {"worker": "w", "queues": ["a", ""]}, r"queues\[1\]: 'queue' must be"),
    ("heartbeat", {"worker": "w", "leases": [{"id": "a"}]}, r"leases\[0\]: 'attempt' is required"),
    ("heartbeat", {"worker": "w", "leases": [], "lease_ms": 1}, "'lease_ms' must be an integer in 100"),
    ("complete", {"id": "a", "attempt": "one"}, "'attempt' must be an integer"),
    ("complete_many", {"items": []}, "'items' must be a list of 1..1000"),
    ("complete", {"id": "a", "attempt": 1}, "complete needs 'lease_token': 32 lowercase hex digits"),
    ("complete", {"id": "a", "attempt": 1, "lease_token": "g" * 32}, "'lease_token' must be 32 lowercase hex"),
    ("complete_many", {"items": [7]}, r"items\[0\]: must be a map \{id, attempt, lease_token, result\}"),
    ("fail", {"id": "a", "attempt": 1}, "fail needs 'lease_token'"),
    ("fail", {"id": "a", "attempt": 1, "lease_token": "0" * 32}, "fail needs 'error'"),
    ("list", {"limit": 1001}, "'limit' must be an integer in 1..1000"),
    ("list", {"state": "sleeping"}, "'state' must be one of pending"),
    ("list", {"cursor": "abc"}, "'cursor' must be an integer"),
    ("requeue_failed", {"all": False}, "requeue_failed needs one of 'ids', 'queue', 'all'"),
    ("queue_limit", {"queue": "q", "rate_per_s": 0}, "'rate_per_s' must be a number in 0.001.."),
    ("schedule_pause", {"name": "n" * 151}, "schedule name must be a string of 1..150"),
])
def test_check_refuses_naming_the_argument(op: str, args: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        ops.check(op, args)


def test_clients_run_the_same_check_before_any_io() -> None:
    # Port 1 on loopback: nothing listens, so reaching the network would raise Unavailable.
    c = Client("127.0.0.1:1", timeout_s=0.2)
    for call, message in [
        (lambda: c.lease("w", "q", lease_ms=50), "'lease_ms' must be an integer in 100..86400000"),
        (lambda: c.heartbeat("w", [], lease_ms=50), "'lease_ms' must be an integer in 100..86400000"),
        (lambda: c.list(limit=5000), "'limit' must be an integer in 1..1000"),
        (lambda: c.complete_many([{"id": "a", "attempt": -1}]), r"items\[0\]: 'attempt' must be"),
        (lambda: c.requeue_failed(), "requeue_failed needs one of"),
        (lambda: c.fail("a", 1, None, lease_token="0" * 32), "fail needs 'error'"),  # type: ignore[arg-type]
        (lambda: c.complete("a", 1, lease_token=None), "complete needs 'lease_token'"),  # type: ignore[arg-type]
        (lambda: c.complete("a", 1, lease_token="A" * 32), "'lease_token' must be 32 lowercase hex digits"),
        (lambda: c.heartbeat("w", [{"id": "a", "attempt": 1, "lease_token": "ab"}]),
         r"leases\[0\]: 'lease_token' must be 32 lowercase hex digits"),
        (lambda: c.complete_many([{"id": "a", "attempt": 1}]), r"items\[0\]: 'lease_token' is required"),
    ]:
        with pytest.raises(BadRequest, match=message):
            call()


def test_wire_codes_have_one_class_each() -> None:
    classes = [errors.error_class(code) for code in codes.WIRE_CODES]
    assert [cls.code for cls in classes] == list(codes.WIRE_CODES)
    assert len(set(classes)) == len(classes)
    assert errors.error_class("NO_SUCH_CODE") is errors.Internal
    assert errors.Unavailable.code == codes.UNAVAILABLE not in codes.WIRE_CODES
    # The machine answers with the same strings.
    assert (model.BAD_REQUEST, model.NOT_FOUND, model.LEASE_LOST, model.CONFLICT, model.INTERNAL) == (
        codes.BAD_REQUEST, codes.NOT_FOUND, codes.LEASE_LOST, codes.CONFLICT, codes.INTERNAL)


def test_states_and_lease_limits_are_the_models() -> None:
    from cli import main as cli_main
    from cluster import client, server

    assert cli_main.JOB_STATES is model.STATES
    assert cli_main.FINAL_STATES is client.FINAL_STATES is server.FINAL_STATES is model.FINAL_STATES
    lease_ms = {a.name: a for a in ops.OPS["lease"].args}["lease_ms"]
    heartbeat_ms = {a.name: a for a in ops.OPS["heartbeat"].args}["lease_ms"]
    assert lease_ms.min == heartbeat_ms.min == model.MIN_LEASE_MS
    assert lease_ms.max == heartbeat_ms.max == model.MAX_LEASE_MS
