"""The alert duty on a real Node over a LocalReplica (cluster/alerting.py): rules
through the client, transitions through the log, deliveries to a real HTTP
receiver and a real SMTP server, retries, `--for`, and the node's checks."""
from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from cluster.alerting import AlertEvaluator
from cluster.client import AsyncClient
from cluster.config import AlertingConfig, ClusterConfig, NodeSpec
from cluster.errors import BadRequest, Conflict, Forbidden, NotFound
from cluster.server import Node
from replication.local import LocalReplica
from replication.machine import JobMachine
from tests.alert_receivers import WebhookReceiver, free_port, smtp_server

TOKEN = "alert-tests"
WAIT_S = 30.0  # a deadline for what must happen, never a measurement


def _config(smtp_port: int = 25, **alerting: Any) -> ClusterConfig:
    spec = NodeSpec(1, f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}")
    return ClusterConfig(secret="s" * 16, token=TOKEN, data_dir=Path("/nonexistent"), durability="none",
                         nodes=(spec,), alerting=AlertingConfig(**{
                             "smtp_port": smtp_port, "interval_s": 0.05, "retry_base_s": 0.05, "retry_max_s": 0.2,
                             "timeout_s": 5, **alerting}))


@contextlib.asynccontextmanager
async def _node(cfg: ClusterConfig) -> AsyncIterator[tuple[Node, AsyncClient]]:
    spec = cfg.nodes[0]
    node = Node(cfg, 1, JobMachine(), functools.partial(LocalReplica, address=spec.raft))
    stop = asyncio.Event()
    serving = asyncio.create_task(node.serve(stop))
    client = AsyncClient([spec.client], token=TOKEN)
    try:
        yield node, client
    finally:
        await client.close()
        stop.set()
        await serving


async def _until(what: str, predicate: Callable[[], Any]) -> Any:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while asyncio.get_running_loop().time() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _rule(node: Node, name: str) -> dict[str, Any]:
    with node.raft.reading() as machine:
        return next(r for r in machine.alerts.view() if r["name"] == name)


def test_a_depth_alert_fires_once_survives_a_failing_receiver_and_resolves() -> None:
    async def go() -> None:
        with WebhookReceiver(fail_first=3).running() as hook:
            async with _node(_config()) as (node, client):
                assert await client.alert_add("deep", "depth(q) > 1", webhook=hook.url) == {
                    "name": "deep", "created": True}
                for _ in range(3):
                    await client.submit("t", queue="q")
                await _until("the firing delivered", lambda: hook.bodies())
                await _until("the delivery recorded", lambda: _rule(node, "deep")["undelivered"] == 0)
                [firing] = hook.bodies()
                assert hook.tries() == 4  # three refusals, then the one that got through
                assert {a["id"] for a in hook.attempts} == {"deep/1"}  # every retry is the same notification
                assert (firing["alert"], firing["state"], firing["seq"], firing["condition"], firing["detail"]) == (
                    "deep", "firing", 1, "depth(q) > 1", "depth(q) = 3")
                # Still true: nothing more is recorded or sent.
                await client.submit("t", queue="q")
                for _ in range(10):
                    await node.alerting.evaluate()
                assert _rule(node, "deep")["firing"] and len(hook.bodies()) == 1
                for job in (await client.list(queue="q"))["jobs"]:
                    await client.cancel(job["id"])
                await _until("the resolution delivered", lambda: len(hook.bodies()) == 2)
                resolved = hook.bodies()[1]
                assert (resolved["id"], resolved["state"], resolved["detail"]) == ("deep/2", "resolved", "depth(q) = 0")
                await _until("the delivery recorded", lambda: _rule(node, "deep")["undelivered"] == 0)
                assert not _rule(node, "deep")["firing"]
    asyncio.run(go())


def test_removing_a_rule_stops_retrying_its_notifications() -> None:
    async def go() -> None:
        with WebhookReceiver(fail_first=10**9).running() as hook:
            async with _node(_config()) as (node, client):
                await client.alert_add("gone", "depth(q) > 0", webhook=hook.url)
                await client.submit("t", queue="q")
                await _until("retries", lambda: hook.tries() >= 2)
                task = node.alerting._deliveries["gone"]
                await client.alert_remove("gone")
                await _until("the delivery given up", task.done)
                with node.raft.reading() as machine:
                    assert machine.alerts.pending_view() == []
    asyncio.run(go())


def test_an_email_alert_is_mailed_through_the_configured_smtp_server() -> None:
    async def go() -> None:
        with smtp_server() as (port, box):
            async with _node(_config(smtp_port=port, sender="raftq@cluster.test")) as (node, client):
                await client.alert_add("stuck", "no_worker(q)", email="ops@example.com")
                await client.submit("t", queue="q")
                [msg] = await _until("the mail", box.received)
                assert msg["To"] == "ops@example.com" and msg["From"] == "raftq@cluster.test"
                assert msg["Subject"] == "[raftq] stuck firing: no_worker(q)"
                assert msg["X-Raftq-Alert-Id"] == "stuck/1"
                assert "q: 1 job(s) waiting or running, no registered worker" in msg.get_content()
    asyncio.run(go())


def test_for_holds_a_condition_before_it_fires() -> None:
    async def go() -> None:
        with WebhookReceiver().running() as hook:
            async with _node(_config(interval_s=3600)) as (node, client):  # rounds only when the test runs one
                await client.alert_add("held", "depth(q) > 0", webhook=hook.url, for_ms=60_000)
                await client.submit("t", queue="q")
                evaluator: AlertEvaluator = node.alerting
                evaluator._take_over()
                rule = _rule(node, "held")
                assert evaluator._decide(rule, True, 1_000_000) is None        # starts holding
                assert evaluator._decide(rule, True, 1_059_999) is None
                assert evaluator._decide(rule, False, 1_060_000) is None       # broke: starts over
                assert evaluator._decide(rule, True, 1_070_000) is None
                assert evaluator._decide(rule, True, 1_130_000) == "firing"    # held for 60 s
                assert evaluator._decide({**rule, "firing": True}, False, 1_130_001) == "resolved"
                assert hook.bodies() == []
    asyncio.run(go())


def test_a_missed_schedule_firing_fires_until_the_schedule_fires_again() -> None:
    """Admission (max_live_jobs = 1) refuses a firing while the last one's job
    is live: the cluster counts it missed, and the alert fires; once the job
    is gone the next firing runs, and the alert resolves."""
    async def go() -> None:
        with WebhookReceiver().running() as hook:
            cfg = _config()
            async with _node(ClusterConfig(**{**cfg.__dict__, "max_live_jobs": 1})) as (node, client):
                await client.alert_add("late", "schedule_missed(every-second)", webhook=hook.url)
                await client.schedule_add("every-second", "t", every=1.0, queue="s")
                [firing] = await _until("the firing", hook.bodies)
                assert firing["state"] == "firing" and "missed" in firing["detail"]
                with node.raft.reading() as machine:
                    assert machine.get_schedule("every-second")["missed"] >= 1
                for job in (await client.list(queue="s"))["jobs"]:
                    await client.cancel(job["id"])
                await _until("the resolution", lambda: len(hook.bodies()) >= 2)
                await client.schedule_pause("every-second")
                resolved = hook.bodies()[1]
                assert resolved["state"] == "resolved" and resolved["seq"] == firing["seq"] + 1
    asyncio.run(go())


def test_the_node_refuses_bad_rules_before_the_log() -> None:
    async def go() -> None:
        async with _node(_config()) as (node, client):
            with pytest.raises(BadRequest, match="depth needs a comparison"):
                await client.alert_add("x", "depth(q)", webhook="http://127.0.0.1:1/")
            with pytest.raises(BadRequest, match="http:// or https://"):
                await client.alert_add("x", "depth(q) > 1", webhook="file:///etc/passwd")
            with pytest.raises(BadRequest, match="needs one of 'webhook', 'email'"):
                await client.alert_add("x", "depth(q) > 1")
            with pytest.raises(BadRequest, match="exactly one of"):
                await client.alert_add("x", "depth(q) > 1", webhook="http://h/", email="a@b")
            await client.alert_add("x", "depth(q) > 1", webhook="http://127.0.0.1:1/")
            with pytest.raises(Conflict, match="exists with another definition"):
                await client.alert_add("x", "depth(q) > 2", webhook="http://127.0.0.1:1/")
            assert [a["name"] for a in await client.alerts()] == ["x"]
            assert await client.alert_remove("x") == {"name": "x", "removed": True}
            with pytest.raises(NotFound):
                await client.alert_remove("x")
            assert await client.alerts() == []
    asyncio.run(go())


def test_alert_rules_are_for_unscoped_admins() -> None:
    """A producer may not touch them, nor an admin confined to some queues:
    rules are cluster-wide (any queue's figures, the nodes, every target)."""
    async def go() -> None:
        from cluster.config import Credential

        cfg = _config()
        producer = Credential(name="p", token="producer-token", roles=("producer",))
        scoped = Credential(name="a", token="scoped-admin-token", roles=("admin",), queues=("q",))
        cfg = ClusterConfig(**{**cfg.__dict__, "credentials": (producer, scoped)})
        async with _node(cfg):
            for token in ("producer-token", "scoped-admin-token"):
                async with AsyncClient([cfg.nodes[0].client], token=token) as client:
                    calls = (lambda: client.alert_add("x", "depth(q) > 1", webhook="http://h/"),
                             client.alerts, lambda: client.alert_remove("x"))
                    for call in calls:
                        with pytest.raises(Forbidden):
                            await call()
    asyncio.run(go())
