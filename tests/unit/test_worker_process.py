"""Process-pool jobs run in their own child processes (worker/process.py): a job past
its timeout, cancelled, or whose lease is lost is terminated and its PID is gone
when its slot is freed; progress comes up the pipe; a crashed child is a
retryable failure; at most `processes` children run at once.

Handlers are module-level so the child can import them by reference. Each
writes its PID to a file so the test can check the real process.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.unit.worker_node import WorkerNode, scenario, until
from worker.context import JobContext, JobSettings
from worker.process import ProcessRun, pid_alive
from worker.registry import Registry
from worker.runner import Worker


def spin(args: dict, ctx: JobContext) -> str:
    """Write our PID, report progress, then run until stopped (or `seconds`)."""
    Path(args["pid_dir"], f"{ctx.id}.pid").write_text(str(os.getpid()))
    if args.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx.progress(0.25, "spinning")
    end = time.monotonic() + args.get("seconds", 60)
    try:
        while time.monotonic() < end:
            time.sleep(0.01)
    finally:
        # Runs on SIGTERM (JobCancelled is raised in the handler): cleanup happens.
        Path(args["pid_dir"], f"{ctx.id}.cleanup").write_text("done")
    ctx.progress(1.0, "done")
    return "finished"


def crash(args: dict, ctx: JobContext) -> None:
    os._exit(3)


def interval(args: dict, ctx: JobContext) -> str:
    start = time.time()
    time.sleep(args["seconds"])
    Path(args["dir"], ctx.id).write_text(f"{start} {time.time()}")
    return "ok"


def settings_echo(args: dict, ctx: JobContext) -> dict:
    return {"root": str(ctx.settings.data_root), "hosts": list(ctx.settings.allow_hosts), "id": ctx.id,
            "attempt": ctx.attempt}


def _registry() -> Registry:
    reg = Registry()
    reg.add("p.spin", spin, pool="process")
    reg.add("p.crash", crash, pool="process")
    reg.add("p.echo", settings_echo, pool="process")
    reg.add("p.interval", interval, pool="process")
    return reg


def _pid(pid_dir: Path, jid: str) -> int | None:
    f = pid_dir / f"{jid}.pid"
    return int(f.read_text()) if f.exists() and f.read_text() else None


def test_process_job_killed_at_its_timeout(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    seen: dict[str, int] = {}

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        # A generous timeout: a cold forkserver on a loaded box may take over a
        # second to start the child, and the timeout counts from the lease.
        await node.submit("p.spin", {"pid_dir": str(pid_dir)}, id="slow", timeout=4.0)
        await until(lambda: _pid(pid_dir, "slow"), timeout=20, what="child start")
        seen["pid"] = _pid(pid_dir, "slow")  # type: ignore[assignment]
        assert pid_alive(seen["pid"])
        await until(lambda: node.reports, timeout=10, what="timeout report")
        await until(lambda: worker.free_slots == 2, timeout=10, what="slot freed")
        # The slot is freed only after the child was reaped: its PID is gone.
        assert not pid_alive(seen["pid"])

    _, node, _ = scenario(tmp_path, body, _registry(), processes=2)
    assert node.reports == [("fail", "slow", 1, "timeout after 4s")]
    assert node.retryable["slow"] is True
    assert (pid_dir / "slow.cleanup").read_text() == "done", "SIGTERM let the handler's finally run"


def test_running_process_job_cancelled_and_progress_forwarded(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        jid = await node.submit("p.spin", {"pid_dir": str(pid_dir)}, id="c1")
        await until(lambda: node.job(jid)["progress"] == [0.25, "spinning"], timeout=20,
                    what="progress from the child via heartbeat")
        pid = _pid(pid_dir, jid)
        assert pid is not None and pid_alive(pid)
        await node.cancel(jid)
        await until(lambda: worker.free_slots == 2, timeout=10, what="slot freed after cancel")
        assert not pid_alive(pid)

    _, node, worker = scenario(tmp_path, body, _registry(), processes=1)
    assert node.reports == [] and worker.stats["dropped"] == 1


def test_child_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    run = ProcessRun(spin, {"pid_dir": str(pid_dir), "ignore_term": True}, ("stubborn", 1, "p.spin", str(tmp_path)),
                     JobSettings(data_root=tmp_path))
    box: dict[str, Any] = {}

    def go() -> None:
        try:
            box["result"] = run.execute()
        except BaseException as exc:  # noqa: BLE001 - recorded for the asserts
            box["error"] = exc

    t = threading.Thread(target=go)
    t.start()
    deadline = time.monotonic() + 20
    while _pid(pid_dir, "stubborn") is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = _pid(pid_dir, "stubborn")
    assert pid is not None
    time.sleep(0.1)  # let it install SIG_IGN (it writes the PID file first)
    t0 = time.monotonic()
    run.stop()
    t.join(10)
    assert not t.is_alive() and not pid_alive(pid)
    assert 0.9 <= time.monotonic() - t0 < 5, "SIGKILL follows about a second after SIGTERM"
    assert run.exitcode == -signal.SIGKILL
    assert type(box["error"]).__name__ == "JobCancelled"


def test_crashed_child_is_a_retryable_failure_and_context_is_passed(tmp_path: Path) -> None:
    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        await node.submit("p.crash", {}, id="boom")
        await node.submit("p.echo", {}, id="echo")
        await until(lambda: len(node.reports) == 2, timeout=30, what="two reports")

    _, node, worker = scenario(tmp_path, body, _registry(), processes=2, data_root=tmp_path,
                               allow_hosts=("loopback", "10.0.0.0/8"))
    got = {r[1]: r[3] for r in node.reports}
    assert got["boom"].startswith("ProcessDied: job process") and "exit code 3" in got["boom"]
    assert node.retryable["boom"] is True
    assert got["echo"] == {"root": str(tmp_path.resolve()), "hosts": ["loopback", "10.0.0.0/8"], "id": "echo",
                           "attempt": 1}


def test_at_most_processes_children_at_once(tmp_path: Path) -> None:
    out_dir = tmp_path / "intervals"
    out_dir.mkdir()

    async def body(node: WorkerNode, worker: Worker, _: Registry) -> None:
        for i in range(4):
            await node.submit("p.interval", {"dir": str(out_dir), "seconds": 0.3}, id=f"s{i}")
        await until(lambda: len(node.reports) == 4, timeout=30, what="four reports")

    _, node, _ = scenario(tmp_path, body, _registry(), threads=4, processes=2)
    assert sorted(r[3] for r in node.reports) == ["ok"] * 4
    spans = [tuple(map(float, f.read_text().split())) for f in out_dir.iterdir()]
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    assert peak == 2, f"4 slots but 2 processes: expected 2 children at once, saw {peak}"


@pytest.mark.parametrize("bad", [{"data_root": "/definitely/not/here"}, {"allow_hosts": ["bad host"]}])
def test_bad_settings_are_config_errors(tmp_path: Path, bad: dict) -> None:
    from worker.config import ConfigError, WorkerConfig

    with pytest.raises(ConfigError):
        WorkerConfig(cluster=["127.0.0.1:1"], **bad)
