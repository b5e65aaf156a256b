"""cluster/config.py: loading, validation messages, rendering, the dev layout."""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from pathlib import Path

import pytest

from cluster.config import (
    ClusterConfig,
    ConfigError,
    NodeSpec,
    dev_config,
    load_config,
    render_config,
)

SECRET = "0123456789abcdef-secret"
TOKEN = "unit-test-token-Fk29xQv7Lm3Z"  # strong enough for the config-load rule

GOOD = f"""
secret = "{SECRET}"
token = "{TOKEN}"
data_dir = "data"
durability = "fsync"
max_live_jobs = 500
retention_s = 60.5
lease_ttl_s = 7

[[nodes]]
id = 1
client = "127.0.0.1:7700"
raft = "127.0.0.1:7800"
http = "127.0.0.1:7900"

[[nodes]]
id = 2
client = "127.0.0.1:7701"
raft = "127.0.0.1:7801"
"""


def write(tmp_path: Path, text: str, name: str = "cluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_good_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.secret == SECRET and cfg.token == TOKEN and cfg.durability == "fsync"
    assert cfg.max_live_jobs == 500 and cfg.retention_s == 60.5 and cfg.lease_ttl_s == 7
    assert cfg.max_frame_bytes == 8 * 1024 * 1024  # default
    assert (cfg.max_args_bytes, cfg.max_result_bytes, cfg.max_entry_bytes) == (2**20, 2**20, 4 * 2**20)  # defaults
    assert (cfg.max_held_jobs, cfg.max_held_bytes, cfg.min_schedule_interval_s) == (2_000_000, 2**30, 1.0)
    assert cfg.nodes == (
        NodeSpec(1, "127.0.0.1:7700", "127.0.0.1:7800", "127.0.0.1:7900"),
        NodeSpec(2, "127.0.0.1:7701", "127.0.0.1:7801", None),
    )
    assert cfg.node(2).raft == "127.0.0.1:7801"
    assert cfg.client_addresses() == ["127.0.0.1:7700", "127.0.0.1:7701"]


def test_relative_data_dir_is_resolved_against_the_file_not_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, GOOD)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(os.path.relpath(path))
    assert cfg.data_dir == (sub / "data").resolve()
    assert cfg.node_data_dir(2) == (sub / "data" / "node-2").resolve()


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace('data_dir = "data"', f'data_dir = "{tmp_path}/abs"')))
    assert cfg.data_dir == tmp_path / "abs"


def test_unknown_node_id_is_a_config_error(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=r"node id 9 is not in the config \(known ids: 1, 2\)"):
        cfg.node(9)
    with pytest.raises(ConfigError, match="node id 9"):
        cfg.node_data_dir(9)


def test_render_then_load_gives_an_equal_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    again = load_config(write(tmp_path, render_config(cfg), "again.toml"))
    assert again == cfg


def test_render_escapes_awkward_strings(tmp_path: Path) -> None:
    cfg = dataclasses.replace(
        load_config(write(tmp_path, GOOD)),
        secret='quote " back \\ newline \n del \x7f tab \t emoji \U0001F600 long enough',
        token='é quote " back \\ ünïcødé 0123456789 ABC',
        data_dir=tmp_path / 'odd "dir"',
        durability="none",
    )
    assert load_config(write(tmp_path, render_config(cfg), "odd.toml")) == cfg


# Each entry: how to break GOOD, and a fragment the one-line message must hold.
BAD_CASES = [
    ("missing secret", lambda t: t.replace(f'secret = "{SECRET}"', ""), "secret: required key is missing"),
    ("empty secret", lambda t: t.replace(f'"{SECRET}"', '""'), "secret: must be a non-empty string"),
    ("short secret", lambda t: t.replace(f'"{SECRET}"', '"short"'), "secret: must be at least 16 characters"),
    ("secret not a string", lambda t: t.replace(f'"{SECRET}"', "12"), "secret: must be a string"),
    ("no credential", lambda t: t.replace(f'token = "{TOKEN}"', ""), "credentials: none configured"),
    ("empty token", lambda t: t.replace(f'token = "{TOKEN}"', 'token = ""'), "token: must be a non-empty string"),
    ("missing data_dir", lambda t: t.replace('data_dir = "data"', ""), "data_dir: required key is missing"),
    ("bad durability", lambda t: t.replace('"fsync"', '"sometimes"'), "durability: must be \"fsync\" or \"none\""),
    ("unknown key", lambda t: t.replace("durability", "colour = 1\ndurability"), "colour: unknown key"),
    ("bad max_live_jobs", lambda t: t.replace("max_live_jobs = 500", "max_live_jobs = 0"), "max_live_jobs: must be a positive integer"),
    ("bad retention", lambda t: t.replace("retention_s = 60.5", 'retention_s = "1d"'), "retention_s: must be a positive number"),
    ("bad lease ttl", lambda t: t.replace("lease_ttl_s = 7", "lease_ttl_s = -1"), "lease_ttl_s: must be a positive number"),
    ("lease ttl under the shortest lease", lambda t: t.replace("lease_ttl_s = 7", "lease_ttl_s = 0.05"),
     r"lease_ttl_s: must be 0.1..86400 seconds"),
    ("no nodes", lambda t: t[: t.index("[[nodes]]")], "nodes: at least one [[nodes]] entry is required"),
    ("duplicate id", lambda t: t.replace("id = 2", "id = 1"), "nodes.id: duplicate node id 1"),
    ("zero id", lambda t: t.replace("id = 2", "id = 0"), "nodes[1].id: must be a positive integer"),
    ("missing raft", lambda t: t.replace('raft = "127.0.0.1:7801"', ""), "nodes[1].raft: required key is missing"),
    ("unknown node key", lambda t: t.replace("id = 2", "id = 2\nweight = 3"), "nodes[1].weight: unknown key"),
    ("no port", lambda t: t.replace('"127.0.0.1:7701"', '"127.0.0.1"'), "nodes[1].client: expected an address \"host:port\""),
    ("no host", lambda t: t.replace('"127.0.0.1:7701"', '":7701"'), "nodes[1].client: expected an address"),
    ("port zero", lambda t: t.replace('"127.0.0.1:7801"', '"127.0.0.1:0"'), "nodes[1].raft: port must be 1..65535, got 0"),
    ("port too big", lambda t: t.replace('"127.0.0.1:7801"', '"127.0.0.1:70000"'), "nodes[1].raft: port must be 1..65535, got 70000"),
    ("address reused across nodes", lambda t: t.replace('"127.0.0.1:7701"', '"127.0.0.1:7700"'),
     "nodes[id=2].client: address '127.0.0.1:7700' is already used by nodes[id=1].client"),
    ("address reused within a node", lambda t: t.replace('"127.0.0.1:7900"', '"127.0.0.1:7800"'),
     "nodes[id=1].http: address '127.0.0.1:7800' is already used by nodes[id=1].raft"),
    ("nodes not tables", lambda t: t[: t.index("[[nodes]]")] + "nodes = [1]\n", "nodes[0]: must be a table"),
    ("bad toml", lambda t: t + "\n[[nodes]\n", "invalid TOML"),
    # size and admission limits: positive, and nested so a legal command fits an entry and a frame
    ("bad max_held_jobs", lambda t: t.replace("lease_ttl_s = 7", "lease_ttl_s = 7\nmax_held_jobs = 0"),
     "max_held_jobs: must be a positive integer"),
    ("bad max_held_bytes", lambda t: t.replace("lease_ttl_s = 7", "lease_ttl_s = 7\nmax_held_bytes = 1.5"),
     "max_held_bytes: must be a positive integer"),
    ("bad min interval", lambda t: t.replace("lease_ttl_s = 7", "lease_ttl_s = 7\nmin_schedule_interval_s = 0"),
     "min_schedule_interval_s: must be a positive number"),
    ("args cap over the entry cap", lambda t: t.replace("lease_ttl_s = 7", "lease_ttl_s = 7\nmax_args_bytes = 4194304"),
     "max_args_bytes: 4194304 leaves no room in max_entry_bytes = 4194304"),
    ("result cap over the entry cap",
     lambda t: t.replace("lease_ttl_s = 7", "lease_ttl_s = 7\nmax_entry_bytes = 1048576"),
     "max_args_bytes: 1048576 leaves no room in max_entry_bytes = 1048576"),
    ("frame too small for an entry", lambda t: t.replace("lease_ttl_s = 7", "lease_ttl_s = 7\nmax_frame_bytes = 4194304"),
     "max_frame_bytes: 4194304 is too small for max_entry_bytes = 4194304"),
]


@pytest.mark.parametrize(("breaker", "fragment"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_each_problem_is_one_config_error_naming_the_key(tmp_path: Path, breaker, fragment: str) -> None:
    path = write(tmp_path, breaker(GOOD))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_hand_built_configs_are_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data_dir: must be an absolute path"):
        ClusterConfig(secret=SECRET, token="t", data_dir=Path("rel"), durability="fsync",
                      nodes=(NodeSpec(1, "127.0.0.1:1", "127.0.0.1:2"),))
    with pytest.raises(ConfigError, match="durability"):
        ClusterConfig(secret=SECRET, token="t", data_dir=tmp_path, durability="fast",
                      nodes=(NodeSpec(1, "127.0.0.1:1", "127.0.0.1:2"),))


def test_raft_password_is_a_stable_derivation_distinct_from_the_secret(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    expected = hmac.new(SECRET.encode(), b"raftq raft password v1", hashlib.sha256).hexdigest()
    assert cfg.raft_password == expected
    assert load_config(write(tmp_path, GOOD, "again.toml")).raft_password == expected
    assert cfg.raft_password != cfg.secret and SECRET not in cfg.raft_password
    other = dataclasses.replace(cfg, secret=SECRET + "x")
    assert other.raft_password != cfg.raft_password


def test_dev_config_port_layout(tmp_path: Path) -> None:
    cfg = dev_config(tmp_path / "dev", nodes=3, base_port=20000, durability="none")
    assert [(n.id, n.client, n.raft, n.http) for n in cfg.nodes] == [
        (1, "127.0.0.1:20000", "127.0.0.1:20100", "127.0.0.1:20200"),
        (2, "127.0.0.1:20001", "127.0.0.1:20101", "127.0.0.1:20201"),
        (3, "127.0.0.1:20002", "127.0.0.1:20102", "127.0.0.1:20202"),
    ]
    assert cfg.token is None and cfg.durability == "none"  # credentials: tests/unit/test_config_credentials.py
    assert cfg.data_dir == (tmp_path / "dev").resolve()
    assert len(cfg.secret) >= 16


def test_dev_config_reuses_the_secret_of_an_existing_file(tmp_path: Path) -> None:
    first = dev_config(tmp_path)
    assert dev_config(tmp_path).secret != first.secret  # nothing written yet: a fresh one each time
    (tmp_path / "cluster.toml").write_text(render_config(first))
    second = dev_config(tmp_path, nodes=5, base_port=21000)
    assert second.secret == first.secret
    assert second.raft_password == first.raft_password


def test_dev_config_refuses_to_replace_an_unreadable_secret(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text("secret = [\n")
    with pytest.raises(ConfigError, match="cannot reuse the secret"):
        dev_config(tmp_path)


def test_dev_config_rejects_impossible_layouts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nodes: must be at least 1"):
        dev_config(tmp_path, nodes=0)
    with pytest.raises(ConfigError, match="port: base port 65400"):
        dev_config(tmp_path, base_port=65400)
