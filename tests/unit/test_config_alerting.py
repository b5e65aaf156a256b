"""The `[alerting]` table of the cluster config (cluster/config.py AlertingConfig)."""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from cluster.config import AlertingConfig, ConfigError, config_from_dict, render_config

BASE: dict[str, Any] = {"secret": "s" * 20, "token": "Tok-abcdefghijklmnopqrstuvwxyz0123", "data_dir": "/tmp/raftq",
                        "durability": "none", "nodes": [{"id": 1, "client": "127.0.0.1:7700", "raft": "127.0.0.1:7800"}]}


def test_defaults_without_the_table_and_no_table_rendered() -> None:
    cfg = config_from_dict(BASE, Path("/tmp"))
    assert cfg.alerting == AlertingConfig()
    assert "[alerting]" not in render_config(cfg)


def test_the_table_is_read_and_rendered_back() -> None:
    table = {"smtp_host": "mail.internal", "smtp_port": 2525, "from": "raftq@example.com", "interval_s": 2,
             "timeout_s": 3.5, "retry_base_s": 0.5, "retry_max_s": 30}
    cfg = config_from_dict({**BASE, "alerting": table}, Path("/tmp"))
    assert cfg.alerting == AlertingConfig(smtp_host="mail.internal", smtp_port=2525, sender="raftq@example.com",
                                          interval_s=2, timeout_s=3.5, retry_base_s=0.5, retry_max_s=30)
    assert config_from_dict(tomllib.loads(render_config(cfg)), Path("/tmp")) == cfg


@pytest.mark.parametrize("table, message", [
    ({"smtp_port": 0}, "alerting.smtp_port: must be a port 1..65535, got 0"),
    ({"smtp_port": "25"}, "alerting.smtp_port: must be a port"),
    ({"smtp_host": ""}, "alerting.smtp_host: must be a host name"),
    ({"from": "raftq"}, "alerting.from: must be an email address"),
    ({"from": "a@b\nBcc: c@d"}, "alerting.from: must be an email address"),
    ({"interval_s": 0}, "alerting.interval_s: must be a positive number, got 0"),
    ({"retry_max_s": -1}, "alerting.retry_max_s: must be a positive number"),
    ({"smtp_user": "x"}, "alerting.smtp_user: unknown key (known: from, interval_s,"),
])
def test_a_bad_value_is_one_line_naming_the_key(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({**BASE, "alerting": table}, Path("/tmp"))
    assert str(info.value).startswith(message)


def test_the_table_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"alerting: must be a table \(\[alerting\]\)"):
        config_from_dict({**BASE, "alerting": 5}, Path("/tmp"))
