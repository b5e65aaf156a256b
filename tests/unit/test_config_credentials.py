"""Credentials in the cluster config: [[credentials]], the legacy token, the
strength rule at config load, raftq dev's credentials, and the op table."""
from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from cluster import protocol
from cluster.config import (
    TOKEN_RECIPE,
    ClusterConfig,
    ConfigError,
    Credential,
    NodeSpec,
    check_token_strength,
    dev_config,
    load_config,
    render_config,
    token_bits,
)
from cluster.ops import ROLES
from cluster.roles import OP_ROLES, Credentials

SECRET = "0123456789abcdef-secret"
API = "api-token-Xq93vLm2Pz7Rk4Tw"
CI = "ci-token-Jh5sWd8Nc3Fb6Ye1"
LEGACY = "legacy-token-Bv4Kq8Zr2Mx6Tn9"

HEAD = f"""
secret = "{SECRET}"
data_dir = "/tmp/raftq-test"
durability = "none"

[[nodes]]
id = 1
client = "127.0.0.1:7700"
raft = "127.0.0.1:7800"
"""

CREDENTIALS = f"""
[[credentials]]
name = "api"
token = "{API}"
roles = ["producer"]
queues = ["emails", "reports"]

[[credentials]]
name = "ci"
token = "{CI}"
roles = ["producer", "admin"]
"""


def load(tmp_path: Path, text: str) -> ClusterConfig:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return load_config(path)


def test_credentials_load_with_their_roles_and_queues(tmp_path: Path) -> None:
    cfg = load(tmp_path, HEAD + CREDENTIALS)
    assert cfg.token is None
    assert cfg.credentials == (
        Credential(name="api", token=API, roles=("producer",), queues=("emails", "reports")),
        Credential(name="ci", token=CI, roles=("producer", "admin"), queues=None),
    )
    assert load(tmp_path, render_config(cfg)) == cfg


def test_the_legacy_token_is_a_credential_with_every_role(tmp_path: Path) -> None:
    cfg = load(tmp_path, f'token = "{LEGACY}"\n' + HEAD + CREDENTIALS)
    legacy = cfg.all_credentials()[0]
    assert (legacy.name, legacy.token, legacy.roles, legacy.queues) == ("token", LEGACY, ROLES, None)
    assert [c.name for c in cfg.all_credentials()] == ["token", "api", "ci"]
    access = Credentials(cfg.all_credentials()).resolve(LEGACY)
    assert access is not None and access.ops == frozenset(protocol.OPS) and access.queues is None
    assert load(tmp_path, render_config(cfg)) == cfg


def test_tokens_resolve_to_their_credentials_access(tmp_path: Path) -> None:
    creds = Credentials(load(tmp_path, HEAD + CREDENTIALS).all_credentials())
    api, ci = creds.resolve(API), creds.resolve(CI)
    assert api is not None and api.name == "api" and api.queues == frozenset({"emails", "reports"})
    assert "submit" in api.ops and "lease" not in api.ops and "queue_limit" not in api.ops
    assert ci is not None and {"submit", "queue_limit", "schedule_add"} <= ci.ops and "lease" not in ci.ops
    for wrong in (API[:-1], API + "x", "", None, 7, CI.upper()):
        assert creds.resolve(wrong) is None


# Each entry: how to break HEAD + CREDENTIALS, and a fragment the one-line message must hold.
BAD_CASES = [
    ("no credential at all", lambda t: HEAD, "credentials: none configured; add a [[credentials]] entry"),
    ("unknown role", lambda t: t.replace('["producer"]', '["reader"]'),
     "credentials[0].roles: a non-empty list of distinct roles out of producer, worker, admin, got ['reader']"),
    ("no roles", lambda t: t.replace('["producer"]', "[]"), "credentials[0].roles: a non-empty list"),
    ("a role twice", lambda t: t.replace('["producer"]', '["producer", "producer"]'), "credentials[0].roles"),
    ("roles a string", lambda t: t.replace('["producer"]', '"producer"'),
     "credentials[0].roles: must be a list of strings, got 'producer'"),
    ("a role that is a table", lambda t: t.replace('["producer"]', "[{a = 1}]"), "credentials[0].roles"),
    ("empty queues", lambda t: t.replace('["emails", "reports"]', "[]"),
     "credentials[0].queues: a non-empty list of distinct queue names (leave it out for every queue)"),
    ("an empty queue name", lambda t: t.replace('"reports"', '""'), "credentials[0].queues"),
    ("missing token", lambda t: t.replace(f'token = "{API}"', ""), "credentials[0].token: required key is missing"),
    ("missing name", lambda t: t.replace('name = "ci"', ""), "credentials[1].name: required key is missing"),
    ("bad name", lambda t: t.replace('name = "ci"', 'name = "c i"'), "credentials[1].name: 1-64 letters"),
    ("duplicate name", lambda t: t.replace('name = "ci"', 'name = "api"'), "credentials[1].name: 'api' is already used"),
    ("the legacy name", lambda t: t.replace('name = "ci"', 'name = "token"'), "credentials[1].name: 'token' is already used"),
    ("duplicate token", lambda t: t.replace(CI, API), "credentials[1].token: the same token as credentials[0]"),
    ("token of the legacy token", lambda t: f'token = "{API}"\n' + t, "credentials[0].token: the same token as token"),
    ("unknown key", lambda t: t.replace('name = "ci"', 'name = "ci"\nrole = "admin"'), "credentials[1].role: unknown key"),
    ("not a table", lambda t: 'credentials = ["x"]\n' + HEAD, "credentials[0]: must be a table"),
    ("weak credential", lambda t: t.replace(API, "api-token"),
     f"credentials[0].token: too weak (about 53 random bits, need 128); generate one with: {TOKEN_RECIPE}"),
    ("weak legacy token", lambda t: 'token = "dev"\n' + t, "token: too weak (about 14 random bits, need 128)"),
    ("long but repetitive", lambda t: t.replace(CI, "abcabcabcabcabcabcabcabcabcabcabcabcabc"),
     "credentials[1].token: too weak (3 distinct characters, need 8)"),
    ("token over the hello frame", lambda t: t.replace(CI, CI * 80), "credentials[1].token: at most 1024 characters"),
]


@pytest.mark.parametrize(("name", "breaks", "fragment"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_credentials_are_one_line_errors(tmp_path: Path, name: str, breaks: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, breaks(HEAD + CREDENTIALS))  # type: ignore[operator]
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message


def test_token_bits_counts_length_times_the_alphabet_of_the_classes_used() -> None:
    assert token_bits("aaaa") == pytest.approx(4 * 4.700, abs=0.01)        # lowercase: 26
    assert token_bits("aA1") == pytest.approx(3 * 5.954, abs=0.01)         # 26 + 26 + 10
    assert token_bits("a-") == pytest.approx(2 * 5.883, abs=0.01)          # 26 + 33 (punctuation)
    assert token_bits("é1") == pytest.approx(2 * 5.426, abs=0.01)          # 10 + 33 (anything else)
    assert token_bits("") == 0.0


def test_generated_tokens_pass_and_the_recipe_generates_one() -> None:
    for _ in range(200):
        check_token_strength(secrets.token_urlsafe(24), "token")
        check_token_strength(secrets.token_hex(32), "token")
    assert "secrets.token_urlsafe(24)" in TOKEN_RECIPE


def test_a_hand_built_config_is_not_held_to_the_strength_rule() -> None:
    # In-process test nodes use short tokens; every node process loads a file.
    cfg = ClusterConfig(secret=SECRET, token="t", data_dir=Path("/tmp/x"), durability="none",
                        credentials=(Credential("w", "w", ("worker",)),),
                        nodes=(NodeSpec(1, "127.0.0.1:7700", "127.0.0.1:7800"),))
    assert [c.name for c in cfg.all_credentials()] == ["token", "w"]


def test_dev_config_makes_one_strong_credential_per_role_and_keeps_them(tmp_path: Path) -> None:
    first = dev_config(tmp_path)
    assert first.token is None
    assert [(c.name, c.roles, c.queues) for c in first.credentials] == [
        ("dev-producer", ("producer",), None), ("dev-worker", ("worker",), None), ("dev-admin", ("admin",), None)]
    for cred in first.credentials:
        check_token_strength(cred.token, cred.name)
    assert dev_config(tmp_path).credentials != first.credentials  # nothing written yet: fresh ones
    (tmp_path / "cluster.toml").write_text(render_config(first))
    assert dev_config(tmp_path, nodes=5).credentials == first.credentials
    assert load_config(tmp_path / "cluster.toml") == first


def test_dev_config_replaces_the_weak_token_of_a_dev_dir_from_before_roles(tmp_path: Path) -> None:
    (tmp_path / "cluster.toml").write_text(f'secret = "{SECRET}"\ntoken = "dev"\n')
    cfg = dev_config(tmp_path)
    assert cfg.secret == SECRET and cfg.token is None and len(cfg.credentials) == 3
    (tmp_path / "cluster.toml").write_text(render_config(cfg).replace(cfg.credentials[1].token, "weak"))
    again = dev_config(tmp_path)
    assert again.credentials[0] == cfg.credentials[0] and again.credentials[2] == cfg.credentials[2]
    assert again.credentials[1].token not in ("weak", cfg.credentials[1].token)


def test_every_op_has_roles_and_only_known_ones() -> None:
    # An op missing here would be refused to everyone: fail closed, but a bug.
    assert set(OP_ROLES) == protocol.OPS - {"hello"}
    assert all(roles and roles <= set(ROLES) for roles in OP_ROLES.values())
