"""One round trip tells a producer everything: rule errors come with the type errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts import InvalidCommand, decode_command


def _errors(cluster: dict[str, Any]) -> dict[str, str]:
    body = json.dumps({"request_id": "r-1", "cluster": cluster}).encode()
    with pytest.raises(InvalidCommand) as caught:
        decode_command(body)
    return {e.path: e.message for e in caught.value.errors}


BASE = {"name": "a", "size": "db-s-1vcpu-1gb", "region": "nyc3", "num_nodes": 1}


def test_a_typo_and_a_refused_engine_are_reported_together() -> None:
    errors = _errors({**BASE, "engine": "redis", "num_node": 1})
    assert "did you mean `num_nodes`" in errors["$.cluster.num_node"]
    assert "valkey" in errors["$.cluster.engine"]


def test_a_user_setting_on_the_wrong_engine_is_reported_beside_a_type_error() -> None:
    errors = _errors(
        {
            **BASE,
            "engine": "pg",
            "storage_size_mib": "lots",
            "users": [{"name": "u", "mysql_settings": {"auth_plugin": "mysql_native_password"}}],
        }
    )
    assert "Expected `int`" in errors["$.cluster.storage_size_mib"]
    assert "`advanced_mysql` and `mysql` clusters" in errors["$.cluster.users[0].mysql_settings"]


def test_rules_still_run_when_a_user_is_broken() -> None:
    errors = _errors(
        {
            **BASE,
            "engine": "valkey",
            "backup_restore": {"database_name": "old"},
            "users": [{"name": 7}],
        }
    )
    assert "Expected `str`" in errors["$.cluster.users[0].name"]
    assert "backups are not supported" in errors["$.cluster.backup_restore"]


def test_no_rule_error_is_invented_from_a_missing_field() -> None:
    cluster = {**BASE, "engine": "advanced_pg"}
    del cluster["num_nodes"]
    errors = _errors(cluster)
    assert list(errors) == ["$.cluster.num_nodes"]
    assert "missing" in errors["$.cluster.num_nodes"]


def test_an_unknown_engine_reports_the_engine_and_no_rules() -> None:
    errors = _errors({**BASE, "engine": "oracle", "db_names": ["a", "a"]})
    assert list(errors) == ["$.cluster.engine"]
