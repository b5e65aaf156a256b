"""Worker hooks: the events a run produces, in order, and hooks that misbehave
or cannot be loaded. Runs the real Worker on a real node (tests/unit/worker_node.py)."""
from __future__ import annotations

import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest

from worker.attempt import Outcome
from worker.config import ConfigError
from worker.context import JobContext
from worker.hooks import HookChain, HookLoadError, WorkerHooks, load_hooks
from worker.registry import Registry
from worker.runner import Worker
from tests.unit.worker_node import WorkerNode, make_config, scenario, until


class Recorder(WorkerHooks):
    """Every event as a tuple; outcomes as "ok"/"fail"/None."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def on_leased(self, job_id: str, attempt: int, job_type: str) -> None:
        self.events.append(("leased", job_id, attempt, job_type))

    def on_started(self, job_id: str, attempt: int, job_type: str) -> None:
        self.events.append(("started", job_id, attempt, job_type))

    def on_finished(self, job_id: str, attempt: int, job_type: str, outcome: Outcome | None,
                    duration_s: float) -> None:
        assert duration_s >= 0
        kind = None if outcome is None else ("ok" if outcome.ok else "fail")
        self.events.append(("finished", job_id, attempt, kind))

    def on_reported(self, job_id: str, attempt: int, state: str) -> None:
        self.events.append(("reported", job_id, attempt, state))

    def on_report_dropped(self, job_id: str, attempt: int, reason: str) -> None:
        self.events.append(("dropped", job_id, attempt, reason.split(":")[0]))

    def on_lease_lost(self, job_id: str, attempt: int, reason: str) -> None:
        self.events.append(("lease_lost", job_id, attempt, reason))

    def of(self, job_id: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[1] == job_id]


def _registry(release: threading.Event) -> Registry:
    reg = Registry()

    @reg.job("t.ok")
    def ok(args: dict, ctx: JobContext) -> int:
        return 1

    @reg.job("t.bad")
    def bad(args: dict, ctx: JobContext) -> int:
        raise ValueError("nope")

    @reg.job("t.gated")
    def gated(args: dict, ctx: JobContext) -> int:
        release.wait(10)
        return 2

    @reg.job("t.wait")
    def wait(args: dict, ctx: JobContext) -> int:
        while not ctx.cancelled:
            ctx.wait(0.02)
        return 3

    return reg


def test_each_attempt_reports_its_events_in_order(tmp_path: Path) -> None:
    rec = Recorder()
    release = threading.Event()

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit("t.ok", id="ok")
        await node.submit("t.bad", id="bad", max_attempts=1)
        await until(lambda: node.state("ok") == "succeeded" and node.state("bad") == "failed", what="reports")
        # Cancelled while it runs, with heartbeats refused: the worker hears
        # of it only as the answer to its report.
        with node.refuse("heartbeat"):
            await node.submit("t.gated", id="fenced")
            await until(lambda: ("started", "fenced", 1, "t.gated") in rec.events, what="started")
            await node.cancel("fenced")
            release.set()
            await until(lambda: rec.of("fenced")[-1:] == [("dropped", "fenced", 1, "LEASE_LOST")], what="drop")
        await node.submit("t.wait", id="cancelled")
        await until(lambda: ("started", "cancelled", 1, "t.wait") in rec.events, what="started")
        await node.cancel("cancelled")
        await until(lambda: worker.free_slots == 2, what="slot released")

    code, _, _ = scenario(tmp_path, body, _registry(release), hooks=[rec])
    assert code == 0
    assert rec.of("ok") == [("leased", "ok", 1, "t.ok"), ("started", "ok", 1, "t.ok"),
                            ("finished", "ok", 1, "ok"), ("reported", "ok", 1, "succeeded")]
    assert rec.of("bad")[2:] == [("finished", "bad", 1, "fail"), ("reported", "bad", 1, "failed")]
    assert rec.of("fenced")[2:] == [("finished", "fenced", 1, "ok"), ("dropped", "fenced", 1, "LEASE_LOST")]
    assert rec.of("cancelled")[2:] == [("lease_lost", "cancelled", 1, "cancelled"),
                                       ("finished", "cancelled", 1, None)]


def test_a_failing_hook_is_logged_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(WorkerHooks):
        def on_reported(self, job_id: str, attempt: int, state: str) -> None:
            raise RuntimeError("observer bug")

    rec = Recorder()

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit("t.ok", id="a")
        await until(lambda: ("reported", "a", 1, "succeeded") in rec.events, what="report")

    code, node, _ = scenario(tmp_path, body, _registry(threading.Event()), hooks=[Broken(), rec])
    assert code == 0 and node.state("a") == "succeeded"
    assert "worker hook on_reported failed" in caplog.text


def test_a_chain_calls_only_the_hooks_that_override_an_event() -> None:
    rec = Recorder()
    chain = HookChain([WorkerHooks(), rec])
    chain.on_leased("j", 1, "t")
    chain.on_heartbeat_error(OSError("down"), 3)  # nobody overrides it: the no-op
    assert rec.events == [("leased", "j", 1, "t")]
    assert HookChain([]).on_leased.__func__ is WorkerHooks.on_leased  # type: ignore[attr-defined]


def test_load_hooks_takes_an_instance_or_a_class_and_names_what_is_wrong() -> None:
    mod = types.ModuleType("fake_hooks_mod")
    mod.Recorder = Recorder  # type: ignore[attr-defined]
    mod.instance = Recorder()  # type: ignore[attr-defined]
    mod.not_hooks = 42  # type: ignore[attr-defined]
    sys.modules["fake_hooks_mod"] = mod
    try:
        assert isinstance(load_hooks("fake_hooks_mod:Recorder"), Recorder)
        assert load_hooks("fake_hooks_mod:instance") is mod.instance  # type: ignore[attr-defined]
        for ref, words in (("fake_hooks_mod", "module:attribute"), ("fake_hooks_mod:missing", "no attribute"),
                           ("fake_hooks_mod:not_hooks", "not a worker.hooks.WorkerHooks"),
                           ("no_such_module_xyz:X", "cannot import")):
            with pytest.raises(HookLoadError, match=words):
                load_hooks(ref)
    finally:
        del sys.modules["fake_hooks_mod"]


def test_config_refuses_a_hook_reference_that_is_not_module_attribute(tmp_path: Path) -> None:
    assert make_config(tmp_path, hooks=("a.b:C",)).hooks == ("a.b:C",)
    with pytest.raises(ConfigError, match="hooks: 'a.b' is not module:attribute"):
        make_config(tmp_path, hooks=("a.b",))
