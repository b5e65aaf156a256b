"""The handler registry, argument helpers, load_module and WorkerConfig validation."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest

from worker.config import ConfigError, WorkerConfig
from worker.context import JobContext
from worker.registry import (BadArgument, JobError, LoadError, Registry, RegistryError, check_keys,
                             load_module, require)


def module_level_handler(args: dict, ctx: JobContext) -> int:
    return 1


def other_module_level_handler(args: dict, ctx: JobContext) -> int:
    return 2


def test_decorator_registers_and_returns_the_function() -> None:
    reg = Registry()

    @reg.job("a.b", timeout=5, max_attempts=2)
    def handler(args: dict, ctx: JobContext) -> str:
        return "x"

    assert handler({}, None) == "x"  # unchanged, still callable directly
    jt = reg.get("a.b")
    assert jt is not None and jt.fn is handler and jt.pool == "thread"
    assert jt.timeout_s == 5.0 and jt.max_attempts == 2
    assert "a.b" in reg and len(reg) == 1 and reg.names() == ["a.b"]
    assert reg.get("missing") is None


def test_same_function_twice_is_fine_a_different_one_is_an_error() -> None:
    reg = Registry()
    reg.add("x", module_level_handler)
    reg.add("x", module_level_handler)
    with pytest.raises(RegistryError, match="already registered by .*module_level_handler"):
        reg.add("x", other_module_level_handler)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": ""}, "job type name must be"),
    ({"name": "has space"}, "job type name must be"),
    ({"name": "ok", "pool": "gpu"}, "pool must be 'thread' or 'process', got 'gpu'"),
    ({"name": "ok", "timeout": 0}, "timeout must be a number of seconds > 0, got 0"),
    ({"name": "ok", "max_attempts": 0}, "max_attempts must be an integer >= 1, got 0"),
])
def test_bad_registrations_are_clear(kwargs: dict, message: str) -> None:
    with pytest.raises(RegistryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Registry().add(fn=module_level_handler, **kwargs)


def test_process_handlers_must_be_module_level() -> None:
    reg = Registry()
    reg.add("p.ok", module_level_handler, pool="process")

    def local(args: dict, ctx: JobContext) -> None:
        return None

    with pytest.raises(RegistryError, match="module-level function"):
        reg.add("p.bad", local, pool="process")


def test_copy_is_independent() -> None:
    reg = Registry()
    reg.add("a", module_level_handler)
    other = reg.copy()
    other.add("b", other_module_level_handler)
    assert reg.names() == ["a"] and other.names() == ["a", "b"]


def test_default_registry_decorator() -> None:
    from worker.registry import default_registry, job

    @job("test.registry.default")
    def handler(args: dict, ctx: JobContext) -> None:
        return None

    assert default_registry.get("test.registry.default").fn is handler


def test_job_errors_keep_retryable_across_pickle() -> None:
    err = pickle.loads(pickle.dumps(JobError("no", retryable=False)))
    assert isinstance(err, JobError) and err.retryable is False and str(err) == "no"
    bad = pickle.loads(pickle.dumps(BadArgument("'n' bad")))
    assert isinstance(bad, BadArgument) and bad.retryable is False and str(bad) == "'n' bad"


def test_require_and_check_keys() -> None:
    assert require({"n": 3}, "n", int, min=0) == 3
    assert require({"x": 2}, "x", float) == 2.0
    assert require({}, "x", float, default=None) is None
    assert require(None, "x", str, default="d") == "d"
    assert check_keys({"a": 1}, ["a", "b"]) == {"a": 1}
    with pytest.raises(BadArgument, match=r"^'s' must be a string of length <= 3, got length 5$"):
        require({"s": "hello"}, "s", str, max=3)
    with pytest.raises(BadArgument, match=r"^'n' must be an integer <= 9, got 10$"):
        require({"n": 10}, "n", int, max=9)
    with pytest.raises(BadArgument, match=r"^unknown arguments 'c', 'd' \(expected: a\)$"):
        check_keys({"a": 1, "c": 2, "d": 3}, ["a"])


def test_load_module_from_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "raftq_test_userjobs.py").write_text(
        "from worker.registry import job\n"
        "@job('user.hello')\n"
        "def hello(args, ctx):\n"
        "    return 'hi ' + args.get('name', 'you')\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        mod = load_module("raftq_test_userjobs")
        from worker.registry import default_registry

        assert default_registry.get("user.hello").fn is mod.hello
        assert mod.hello({"name": "ada"}, None) == "hi ada"
    finally:
        sys.modules.pop("raftq_test_userjobs", None)


def test_load_module_errors_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LoadError, match=r"cannot import job module 'no_such_raftq_mod': no module named"):
        load_module("no_such_raftq_mod")
    with pytest.raises(LoadError, match="dotted module name"):
        load_module("not a module")
    (tmp_path / "raftq_test_broken.py").write_text("raise RuntimeError('oops')\n")
    (tmp_path / "raftq_test_badimport.py").write_text("import raftq_missing_dependency\n")
    try:
        with pytest.raises(LoadError, match=r"error while importing job module 'raftq_test_broken': RuntimeError: oops"):
            load_module("raftq_test_broken")
        with pytest.raises(LoadError, match=r"error while importing job module 'raftq_test_badimport'.*raftq_missing_dependency"):
            load_module("raftq_test_badimport")
    finally:
        sys.modules.pop("raftq_test_broken", None)
        sys.modules.pop("raftq_test_badimport", None)


def test_worker_config_defaults(tmp_path: Path) -> None:
    cfg = WorkerConfig(cluster=["127.0.0.1:7700"])
    assert cfg.cluster == ("127.0.0.1:7700",) and cfg.queues == ("default",) and cfg.threads == 4
    assert cfg.heartbeat_s == pytest.approx(10.0) and cfg.lease_ttl_ms == 30000
    assert cfg.name and cfg.processes >= 1 and isinstance(cfg.workdir, Path)
    cfg2 = WorkerConfig(cluster="a:1, b:2", queues="q1,q2", imports=["x.y"], workdir=str(tmp_path))
    assert cfg2.cluster == ("a:1", "b:2") and cfg2.queues == ("q1", "q2") and cfg2.workdir == tmp_path


@pytest.mark.parametrize("kwargs, message", [
    ({"cluster": []}, "cluster must list at least one node address"),
    ({"cluster": ["localhost"]}, "'localhost' is not a host:port address"),
    ({"cluster": ["h:99999"]}, "'h:99999' is not a host:port address"),
    ({"token": ""}, "token must be a non-empty string"),
    ({"queues": ()}, "queues must name at least 1"),
    ({"queues": ("a", "a")}, "queues: duplicate entries a"),
    ({"threads": 0}, "threads must be an integer between 1 and 1024, got 0"),
    ({"threads": True}, "threads must be an integer between 1 and 1024, got True"),
    ({"lease_ttl_s": 0}, "lease_ttl_s must be a number of seconds between 0.2 and 86400, got 0"),
    ({"lease_ttl_s": 3, "heartbeat_s": 3}, "heartbeat_s (3) must be shorter than lease_ttl_s (3)"),
    ({"poll_wait_s": -1}, "poll_wait_s must be a number of seconds between 0 and 300, got -1"),
    ({"grace_s": float("inf")}, "grace_s must be a number of seconds between 0 and 86400, got inf"),
    ({"imports": ["bad name"]}, "imports: 'bad name' is not a dotted module name"),
    ({"name": ""}, "name must be a non-empty string"),
])
def test_worker_config_errors_are_clear(kwargs: dict, message: str) -> None:
    base = {"cluster": ["127.0.0.1:7700"]}
    base.update(kwargs)
    with pytest.raises(ConfigError) as info:
        WorkerConfig(**base)
    assert message in str(info.value)
