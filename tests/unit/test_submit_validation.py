"""A built-in job type's args are checked by the leader before it proposes
(cluster/jobargs.py): a real `Node` on a `LocalReplica` over loopback,
through the client library; and the CLI's `--arg` / `--arg-json` parsing."""
from __future__ import annotations

import asyncio
import functools
import socket
from pathlib import Path
from typing import Any

import click
import pytest

from cli.main import arg_hint, build_args
from cluster.client import AsyncClient
from cluster.config import ClusterConfig, NodeSpec
from cluster.errors import BadRequest
from cluster.server import Node
from replication.local import LocalReplica
from replication.machine import JobMachine

TOKEN = "tok"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_a_node(test: Any) -> None:
    """Run `test(client, node)` against a fresh single node."""
    async def go() -> None:
        spec = NodeSpec(1, f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}")
        cfg = ClusterConfig(secret="s" * 16, token=TOKEN, data_dir=Path("/nonexistent"), durability="none",
                            nodes=(spec,))
        node = Node(cfg, 1, JobMachine(), functools.partial(LocalReplica, address=spec.raft))
        stop = asyncio.Event()
        serving = asyncio.create_task(node.serve(stop))
        try:
            async with AsyncClient([spec.client], token=TOKEN) as client:
                await test(client, node)
        finally:
            stop.set()
            await serving
    asyncio.run(go())


async def _ids(client: AsyncClient) -> list[str]:
    return sorted(job["id"] for job in (await client.request("list", {}))["jobs"])


def test_a_bad_submit_is_refused_naming_the_argument_and_nothing_is_queued() -> None:
    async def test(client: AsyncClient, node: Node) -> None:
        for args, says in [({"n": "1000"}, "math.primes: 'n' must be an integer between 0 and 50000000, got '1000'"),
                           ({}, "math.primes: missing required argument 'n'"),
                           ({"n": 10, "lst": True}, "math.primes: unknown argument 'lst' (expected: list, n)"),
                           ({"n": -1}, "math.primes: 'n' must be an integer between")]:
            with pytest.raises(BadRequest) as info:
                await client.submit("math.primes", args, id="bad")
            assert info.value.message.startswith(says), info.value.message
        assert await _ids(client) == []
        assert node.errors.get("BAD_REQUEST") == 4
        # Good args, a custom type's anything and util.noop's anything go through.
        assert await client.submit("math.primes", {"n": 10}, id="good") == "good"
        assert await client.submit("images.thumbnail", {"size": "big"}, id="custom") == "custom"
        assert await client.submit("util.noop", {"n": "x"}, id="noop") == "noop"
        assert await _ids(client) == ["custom", "good", "noop"]
    on_a_node(test)


def test_submit_many_refuses_only_the_bad_items() -> None:
    async def test(client: AsyncClient, node: Node) -> None:
        specs = [{"id": "a", "type": "text.wordcount", "args": {"text": "one two"}},
                 {"id": "b", "type": "text.wordcount", "args": {"text": 5}},
                 {"id": "c", "type": "mine.custom", "args": {"text": 5}},
                 {"id": "d", "type": "util.sleep", "args": {"seconds": 99999}}]
        results = (await client.request("submit_many", {"jobs": specs}))["results"]
        assert [r.get("id") for r in results] == ["a", None, "c", None]
        assert results[1] == {"error": "BAD_REQUEST",
                              "message": "text.wordcount: 'text' must be a string, got 5"}
        assert results[3]["error"] == "BAD_REQUEST" and "'seconds' must be a number" in results[3]["message"]
        assert await _ids(client) == ["a", "c"]
        # The client names the refused item; the rest were submitted.
        more = [{"id": "e", "type": "util.noop"}, {"id": "f", "type": "math.factorial", "args": {"n": 1.5}}]
        with pytest.raises(BadRequest) as info:
            await client.submit_many(more)
        assert info.value.message == "jobs[1]: math.factorial: 'n' must be an integer between 0 and 100000, got 1.5"
        assert [r.get("id") for r in info.value.extra["results"]] == ["e", None]
        assert await _ids(client) == ["a", "c", "e"]
        # Every item bad: nothing proposed, each answered.
        results = (await client.request("submit_many", {"jobs": [specs[1], specs[3]]}))["results"]
        assert [r["error"] for r in results] == ["BAD_REQUEST", "BAD_REQUEST"]
        assert await _ids(client) == ["a", "c", "e"]
        # A good item depending on a refused one depends on a job that will
        # never exist: the batch is refused as a whole, as the machine does.
        dag = [{"id": "p", "type": "math.primes", "args": {"n": "x"}},
               {"id": "q", "type": "util.noop", "depends_on": ["p"]}]
        with pytest.raises(BadRequest, match="'q'.* depends on unknown job 'p'"):
            await client.request("submit_many", {"jobs": dag})
        assert await _ids(client) == ["a", "c", "e"]
    on_a_node(test)


def test_a_schedule_of_a_builtin_type_is_checked_when_added() -> None:
    async def test(client: AsyncClient, node: Node) -> None:
        with pytest.raises(BadRequest, match="^util.sleep: 'seconds' must be a number between 0 and 3600, got '5'$"):
            await client.schedule_add("nap", "util.sleep", {"seconds": "5"}, every=60)
        assert await client.schedules() == []
        assert (await client.schedule_add("nap", "util.sleep", {"seconds": 5}, every=60))["created"] is True
        assert (await client.schedule_add("mine", "mine.custom", {"seconds": "5"}, every=60))["created"] is True
    on_a_node(test)


# ---- the command line's arguments


def test_arg_is_always_a_string_and_arg_json_is_typed() -> None:
    assert build_args(("text=5", "flag=true", "list=[1,2]", "empty=", "eq=a=b"), (), None) == {
        "text": "5", "flag": "true", "list": "[1,2]", "empty": "", "eq": "a=b"}
    assert build_args((), ("n=5", "flag=true", "list=[1,2]", "m={\"a\":null}", "s=\"5\""), None) == {
        "n": 5, "flag": True, "list": [1, 2], "m": {"a": None}, "s": "5"}
    # --args-json is the base; the others set keys on top.
    assert build_args(("a=x",), ("b=2",), '{"a": 1, "c": 3}') == {"a": "x", "b": 2, "c": 3}


@pytest.mark.parametrize(("pairs", "json_pairs", "args_json", "says"), [
    (("novalue",), (), None, "--arg 'novalue': expected KEY=VALUE"),
    ((), ("=5",), None, "--arg-json '=5': expected KEY=VALUE"),
    ((), ("n=five",), None, "--arg-json 'n=five': 'five' is not valid JSON"),
    ((), ("n=NaN",), None, "NaN is not allowed"),
    (("n=5",), ("n=5",), None, "argument 'n' is given by both --arg and --arg-json"),
    ((), ("n=5",), "[1]", "--arg-json cannot be combined with --args-json that is not a JSON object"),
])
def test_bad_arg_options_are_input_errors(pairs: tuple[str, ...], json_pairs: tuple[str, ...],
                                          args_json: str | None, says: str) -> None:
    with pytest.raises(click.UsageError) as info:
        build_args(pairs, json_pairs, args_json)
    assert says in info.value.format_message()


def test_a_refused_arg_that_looks_typed_gets_a_hint() -> None:
    refused = BadRequest("math.primes: 'n' must be an integer between 0 and 50000000, got '1000'")
    assert arg_hint(refused, ("n=1000",)).message.endswith(
        "(--arg always gives a string: use --arg-json n=1000)")
    assert arg_hint(refused, ("n=abc",)) is refused  # a real string: no hint
    assert arg_hint(refused, ("other=5",)) is refused  # not the argument refused
