"""Worker options derive from their one declaration on WorkerConfig: the
`raftq worker` flags, `raftq dev`'s pass-through and docs/worker-options.md."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from click.testing import CliRunner

from cli.dev import dev
from cli.main import worker
from cli.worker_options import config_kwargs, render_doc, worker_argv
from replication.model import MAX_LEASE_MS, MIN_LEASE_MS
from worker.config import OPTIONS, WorkerConfig

REPO = Path(__file__).resolve().parents[2]


def test_the_docs_table_is_the_generated_one() -> None:
    doc = (REPO / "docs" / "worker-options.md").read_text()
    assert doc == render_doc(), "regenerate it: python -m cli.worker_options > docs/worker-options.md"


def test_every_declared_option_is_a_worker_flag_and_dev_passes_through_all_it_does_not_set() -> None:
    declared = {f.name for f in fields(WorkerConfig) if f.metadata["option"].cli}
    passed = {f.name for f in fields(WorkerConfig) if f.metadata["option"].cli and f.metadata["option"].dev}
    worker_params = {p.name for p in worker.params}
    dev_params = {p.name for p in dev.params}
    assert worker_params == declared | {"cluster", "token", "tls_ca", "tls_cert", "tls_key"}  # shared connection options
    assert passed <= dev_params and not (declared - passed) & dev_params
    assert {"name", "workdir", "data_root", "smtp_password", "metrics_port", "metrics_host"} == declared - passed
    flags = {opt for p in worker.params for opt in p.opts}
    for flag in ("--lease-ttl", "--grace", "--import", "--allow-host", "--threads", "--max-extract-ratio"):
        assert flag in flags  # the names users already type


def test_worker_argv_parses_back_to_the_same_config_kwargs(tmp_path: Path) -> None:
    values = {"queues": "a,b", "threads": 8, "lease_ttl_s": 2.5, "imports": ("m1", "m2"),
              "allow_hosts": ("loopback", "10.0.0.0/8"), "smtp_ssl": True, "smtp_starttls": False,
              "workdir": tmp_path, "cpu": 1.5, "name": None}
    argv = worker_argv(values)
    assert "--name" not in argv and argv.count("--import") == 2 and "--no-smtp-starttls" in argv
    ctx = worker.make_context("worker", list(argv))
    parsed = {k: v for k, v in ctx.params.items() if k not in ("cluster", "token")}
    expected = config_kwargs(values)
    assert config_kwargs(parsed) == expected
    assert expected["imports"] == ("m1", "m2") and "name" not in expected


def test_bounds_are_checked_once_with_one_line_naming_the_field(tmp_path: Path) -> None:
    runner = CliRunner()
    for argv, words in ((["--threads", "0"], "threads must be an integer between 1 and 1024"),
                        (["--smtp-port", "70000"], "smtp_port must be an integer between 1 and 65535"),
                        (["--cpu", "0"], "cpu must be a number of CPUs between 0 and 4096")):
        result = runner.invoke(worker, ["--cluster", "127.0.0.1:1", "--token", "t", "--data-root", str(tmp_path), *argv])
        assert result.exit_code == 1, result.output
        assert words in result.output and "Traceback" not in result.output


def test_dev_refuses_a_bad_worker_option_before_starting_anything(tmp_path: Path) -> None:
    data = tmp_path / "d"
    result = CliRunner().invoke(dev, ["--data-dir", str(data), "--port", "47300", "--threads", "0"])
    assert result.exit_code == 1, result.output
    assert "threads must be an integer between 1 and 1024" in result.output
    assert not (data / "cluster.toml").exists() and not (data / "logs").exists(), "nothing was started"


def test_every_lease_ttl_a_worker_accepts_is_one_the_cluster_grants() -> None:
    bounds = OPTIONS["lease_ttl_s"]
    assert MIN_LEASE_MS <= bounds.lo * 1000 and bounds.hi * 1000 <= MAX_LEASE_MS
    shortest = WorkerConfig(cluster=("127.0.0.1:1",), lease_ttl_s=bounds.lo)  # its default heartbeat is valid too
    assert shortest.lease_ttl_ms >= MIN_LEASE_MS and shortest.heartbeat_s < shortest.lease_ttl_s
