"""Every range `--help` shows is what the server accepts: a real node takes
each bound, and refuses a value just past it (so the help is not narrower
either). Walks every command, so a new bounded option must be listed here."""
from __future__ import annotations

import asyncio
import functools
import itertools
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from cli.main import raftq
from cluster.client import Client
from cluster.config import ClusterConfig, NodeSpec
from cluster.errors import BadRequest
from cluster.server import Node
from replication.local import LocalReplica
from replication.machine import JobMachine

TOKEN = "ranges-test-token"
_probe_ids = itertools.count()  # every probe its own job id and schedule name: each is a new one

# Options the client keeps to itself (a wait, a call budget, a local setup):
# no server bound applies. Worker options are WorkerConfig's (tests/unit/test_worker_options.py).
CLIENT_SIDE = {"request_timeout", "wait_timeout", "old_timeout@result", "node_id@node", "nodes@dev",
               "workers@dev", "base_port@dev", "startup_timeout@dev",
               "interval@top"}  # top --interval: how often top itself polls


def _submit(client: Client, **options: Any) -> None:
    client.submit("t", {}, id=f"probe-{next(_probe_ids)}", **options)


def _schedule(client: Client, **options: Any) -> None:
    every = options.pop("every", 60.0)
    if "max_catch_up" in options:
        options["misfire"] = "catch_up"
    client.schedule_add(f"probe-{next(_probe_ids)}", "t", {}, every=every, **options)


# (command, param) -> the call of the client library that the command makes with that option's value.
PROBES: dict[tuple[str, str], Callable[[Client, Any], Any]] = {
    ("submit", "priority"): lambda c, v: _submit(c, priority=v),
    ("submit", "max_attempts"): lambda c, v: _submit(c, max_attempts=v),
    ("submit", "delay"): lambda c, v: _submit(c, delay=v),
    ("submit", "run_timeout"): lambda c, v: _submit(c, timeout=v),
    ("submit", "old_timeout"): lambda c, v: _submit(c, timeout=v),
    ("list", "limit"): lambda c, v: c.list(limit=v),
    ("list", "cursor"): lambda c, v: c.list(cursor=v),
    ("dlq list", "limit"): lambda c, v: c.list(state="failed", limit=v),
    ("dlq list", "cursor"): lambda c, v: c.list(state="failed", cursor=v),
    ("queue limit", "max_running"): lambda c, v: c.queue_limit("q", max_running=v),
    ("queue limit", "rate"): lambda c, v: c.queue_limit("q", rate_per_s=v),
    ("schedule add", "every"): lambda c, v: _schedule(c, every=v),
    ("schedule add", "priority"): lambda c, v: _schedule(c, priority=v),
    ("schedule add", "max_attempts"): lambda c, v: _schedule(c, max_attempts=v),
    ("schedule add", "run_timeout"): lambda c, v: _schedule(c, timeout=v),
    ("schedule add", "old_timeout"): lambda c, v: _schedule(c, timeout=v),
    ("schedule add", "max_catch_up"): lambda c, v: _schedule(c, max_catch_up=v),
}


def _bounded_params() -> Iterator[tuple[str, click.Parameter]]:
    def walk(cmd: click.Command, path: str) -> Iterator[tuple[str, click.Parameter]]:
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}".strip())
        elif not path.startswith(("worker", "dev")) or path == "dev":
            for param in cmd.params:
                if isinstance(param.type, (click.IntRange, click.FloatRange)):
                    yield path, param
    yield from walk(raftq, "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def node() -> Iterator[Client]:
    """A real node (on a LocalReplica) in its own thread; a client of it."""
    spec = NodeSpec(1, f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}")
    cfg = ClusterConfig(secret="s" * 16, token=TOKEN, data_dir=Path("/nonexistent"), durability="none",
                        nodes=(spec,), min_schedule_interval_s=0.001)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()

    async def serve() -> None:
        server = Node(cfg, 1, JobMachine(), functools.partial(LocalReplica, address=spec.raft))
        started.set()
        await server.serve(stop)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    started.wait(10)
    client = Client([spec.client], token=TOKEN, timeout_s=10)
    try:
        yield client
    finally:
        client.close()
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def _accepts(client: Client, path: str, name: str, value: Any) -> bool:
    """Does the command's call go through? (BadRequest: refused by the node,
    or before it by the client's copy of the node's check.)"""
    try:
        PROBES[path, name](client, value)
    except BadRequest:
        return False
    return True


# Where --help shows no bound, the server must take any value a client can send.
_UNBOUNDED = 2**62


def _ends(rng: click.IntRange | click.FloatRange) -> tuple[list[Any], list[Any]]:
    """(values inside at each end, values just outside each end) of a range."""
    integer = isinstance(rng, click.IntRange)
    inside: list[Any] = []
    outside: list[Any] = []
    for bound, is_open, step in ((rng.min, rng.min_open, 1), (rng.max, rng.max_open, -1)):
        if bound is None:
            inside.append(-step * _UNBOUNDED if integer else -step * float(_UNBOUNDED))
            continue
        tiny = 1 if integer else max(abs(bound) * 1e-6, 1e-4)
        inside.append(bound + step * tiny if is_open else bound)
        outside.append(bound if is_open else bound - step * tiny)
    return inside, outside


def test_every_bounded_option_is_probed_or_client_side() -> None:
    unknown = [f"{path} --{p.name}" for path, p in _bounded_params()
               if (path, p.name) not in PROBES and p.name not in CLIENT_SIDE and f"{p.name}@{path}" not in CLIENT_SIDE]
    assert not unknown, f"bounded options with neither a probe nor a client-side mark: {unknown}"


@pytest.mark.parametrize("path, name", sorted(PROBES))
def test_help_range_equals_what_the_server_accepts(node: Client, path: str, name: str) -> None:
    [param] = [p for q, p in _bounded_params() if q == path and p.name == name]
    rng = param.type
    assert isinstance(rng, (click.IntRange, click.FloatRange))
    inside, outside = _ends(rng)
    for value in inside:
        assert _accepts(node, path, name, value), f"{path} --{name} {value}: in --help's range, refused"
    for value in outside:
        assert not _accepts(node, path, name, value), f"{path} --{name} {value}: accepted past --help's range"
