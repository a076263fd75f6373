"""The rules a type cannot hold (contracts/rules.py), through ``decode_command``.

Each rule is pinned by the exact JSON path of its error and the words a person needs to
fix the command: which field, which engine, what to do instead.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from contracts import FieldError, InvalidCommand, decode_command
from contracts.digitalocean import ENGINES, DatabaseClusterCreate
from contracts.rules import check_cluster

CREATABLE = sorted(set(ENGINES) - {"redis"})
NO_USERS = ("redis", "valkey")


def cluster(**fields: Any) -> dict[str, Any]:
    """A valid pg create body with ``fields`` changed."""
    body: dict[str, Any] = {
        "name": "orders",
        "engine": "pg",
        "num_nodes": 1,
        "size": "db-s-1vcpu-1gb",
        "region": "nyc3",
    }
    body.update(fields)
    return body


def encode(body: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"request_id": "req-1", "cluster": body})


def errors_of(body: dict[str, Any]) -> list[FieldError]:
    with pytest.raises(InvalidCommand) as caught:
        decode_command(encode(body))
    assert caught.value.errors, "InvalidCommand without errors"
    return caught.value.errors


def error_at(errors: list[FieldError], path: str) -> str:
    """The message of the one error at ``path``."""
    found = [e.message for e in errors if e.path == path]
    assert len(found) == 1, f"expected one error at {path}, got {errors}"
    return found[0]


def test_redis_create_is_refused_with_the_date_and_the_replacement() -> None:
    errors = errors_of(cluster(engine="redis"))
    message = error_at(errors, "$.cluster.engine")
    assert "redis" in message
    assert "no longer" in message
    assert "2025-04-30" in message
    assert "valkey" in message
    assert len(errors) == 1


def test_valkey_create_is_accepted() -> None:
    assert decode_command(encode(cluster(engine="valkey"))).cluster.engine == "valkey"


@pytest.mark.parametrize("engine", NO_USERS)
def test_backup_restore_is_refused_where_there_are_no_backups(engine: str) -> None:
    errors = errors_of(cluster(engine=engine, backup_restore={"database_name": "old"}))
    message = error_at(errors, "$.cluster.backup_restore")
    assert "backups are not supported" in message
    assert f"`{engine}`" in message


@pytest.mark.parametrize("engine", ["pg", "mysql", "advanced_pg", "mongodb"])
def test_backup_restore_is_accepted_where_there_are_backups(engine: str) -> None:
    body = cluster(
        engine=engine,
        num_nodes=3,
        backup_restore={"database_name": "old", "backup_created_at": "2019-01-31T19:25:22Z"},
    )
    restored = decode_command(encode(body)).cluster.backup_restore
    assert restored is not None and restored.database_name == "old"


@pytest.mark.parametrize("engine", NO_USERS)
def test_users_are_refused_without_user_management(engine: str) -> None:
    errors = errors_of(cluster(engine=engine, users=[{"name": "app"}]))
    message = error_at(errors, "$.cluster.users")
    assert "user management is not supported" in message
    assert f"`{engine}`" in message
    assert "remove `users`" in message


@pytest.mark.parametrize("engine", NO_USERS)
def test_db_names_are_refused_without_database_management(engine: str) -> None:
    errors = errors_of(cluster(engine=engine, db_names=["app"]))
    message = error_at(errors, "$.cluster.db_names")
    assert "database management is not supported" in message
    assert f"`{engine}`" in message
    assert "remove `db_names`" in message


# setting -> (where it sits in a user, the user, the engines it belongs to)
USER_SETTINGS: dict[str, tuple[str, dict[str, Any], set[str]]] = {
    "mysql_settings": (
        "mysql_settings",
        {"name": "u", "mysql_settings": {"auth_plugin": "mysql_native_password"}},
        {"mysql", "advanced_mysql"},
    ),
    "pg_allow_replication": (
        "settings.pg_allow_replication",
        {"name": "u", "settings": {"pg_allow_replication": True}},
        {"pg", "advanced_pg"},
    ),
    "opensearch_acl": (
        "settings.opensearch_acl",
        {"name": "u", "settings": {"opensearch_acl": [{"index": "logs-*", "permission": "read"}]}},
        {"opensearch"},
    ),
    "acl": (
        "settings.acl",
        {"name": "u", "settings": {"acl": [{"topic": "orders", "permission": "produce"}]}},
        {"kafka"},
    ),
    "mongo_user_settings": (
        "settings.mongo_user_settings",
        {"name": "u", "settings": {"mongo_user_settings": {"role": "readOnly"}}},
        {"mongodb"},
    ),
    "readonly": ("readonly", {"name": "u", "readonly": True}, {"mongodb"}),
}


@pytest.mark.parametrize("engine", sorted(set(CREATABLE) - set(NO_USERS)))
@pytest.mark.parametrize("setting", list(USER_SETTINGS))
def test_engine_specific_user_setting_is_accepted_only_on_its_engines(
    setting: str, engine: str
) -> None:
    where, user, engines = USER_SETTINGS[setting]
    num_nodes = 3 if engine.startswith("advanced_") else 1
    body = cluster(engine=engine, num_nodes=num_nodes, users=[user])
    if engine in engines:
        assert decode_command(encode(body)).cluster.users is not None
        return
    errors = errors_of(body)
    assert len(errors) == 1
    message = error_at(errors, f"$.cluster.users[0].{where}")
    assert f"`{setting}` applies only to" in message
    for allowed in engines:
        assert f"`{allowed}`" in message
    assert f"not `{engine}`" in message


def test_each_engine_specific_setting_is_reported_at_its_own_user() -> None:
    users = [
        {"name": "a"},
        {"name": "b", "settings": {"acl": [{"topic": "t", "permission": "admin"}]}},
        {
            "name": "c",
            "readonly": False,
            "mysql_settings": {"auth_plugin": "mysql_native_password"},
        },
    ]
    errors = errors_of(cluster(engine="pg", users=users))
    assert sorted(e.path for e in errors) == [
        "$.cluster.users[1].settings.acl",
        "$.cluster.users[2].mysql_settings",
        "$.cluster.users[2].readonly",
    ]


@pytest.mark.parametrize("nodes", [1, 2, 3])
def test_advanced_pg_takes_one_two_or_three_nodes(nodes: int) -> None:
    command = decode_command(encode(cluster(engine="advanced_pg", num_nodes=nodes)))
    assert command.cluster.num_nodes == nodes


@pytest.mark.parametrize("nodes", [4, 5, 9])
def test_advanced_pg_refuses_more_than_three_nodes(nodes: int) -> None:
    message = error_at(
        errors_of(cluster(engine="advanced_pg", num_nodes=nodes)), "$.cluster.num_nodes"
    )
    assert "`advanced_pg`" in message
    assert "1, 2 or 3 nodes" in message
    assert f"not {nodes}" in message


@pytest.mark.parametrize("nodes", [1, 3])
def test_advanced_mysql_takes_one_or_three_nodes(nodes: int) -> None:
    command = decode_command(encode(cluster(engine="advanced_mysql", num_nodes=nodes)))
    assert command.cluster.num_nodes == nodes


@pytest.mark.parametrize("nodes", [2, 4])
def test_advanced_mysql_refuses_two_nodes(nodes: int) -> None:
    message = error_at(
        errors_of(cluster(engine="advanced_mysql", num_nodes=nodes)), "$.cluster.num_nodes"
    )
    assert "`advanced_mysql`" in message
    assert "1 or 3 nodes" in message
    assert f"not {nodes}" in message


@pytest.mark.parametrize("engine", ["pg", "mysql", "kafka"])
def test_node_count_rule_leaves_standard_engines_to_the_options_check(engine: str) -> None:
    assert decode_command(encode(cluster(engine=engine, num_nodes=6))).cluster.num_nodes == 6


def test_duplicate_user_name_points_at_the_second_user_and_names_the_first() -> None:
    users = [{"name": "app"}, {"name": "reporting"}, {"name": "app"}]
    errors = errors_of(cluster(users=users))
    message = error_at(errors, "$.cluster.users[2].name")
    assert "duplicate user name" in message
    assert "'app'" in message
    assert "users[0]" in message
    assert len(errors) == 1


def test_duplicate_database_name_points_at_the_second_one() -> None:
    errors = errors_of(cluster(db_names=["orders", "billing", "orders"]))
    message = error_at(errors, "$.cluster.db_names[2]")
    assert "duplicate database name" in message
    assert "'orders'" in message
    assert "db_names[0]" in message


@pytest.mark.parametrize("blank", ["", " ", "\t"])
def test_empty_database_name_is_refused(blank: str) -> None:
    message = error_at(errors_of(cluster(db_names=["orders", blank])), "$.cluster.db_names[1]")
    assert "database name must not be empty" in message


def test_every_broken_rule_is_reported_at_once() -> None:
    errors = errors_of(
        cluster(
            engine="redis",
            backup_restore={"database_name": "old"},
            users=[{"name": "app"}],
            db_names=["orders"],
        )
    )
    assert sorted(e.path for e in errors) == [
        "$.cluster.backup_restore",
        "$.cluster.db_names",
        "$.cluster.engine",
        "$.cluster.users",
    ]


def test_rule_errors_of_users_nodes_and_databases_come_together() -> None:
    errors = errors_of(
        cluster(
            engine="advanced_mysql",
            num_nodes=2,
            users=[{"name": "a", "settings": {"pg_allow_replication": True}}, {"name": "a"}],
            db_names=["x", "x", ""],
        )
    )
    assert sorted(e.path for e in errors) == [
        "$.cluster.db_names[1]",
        "$.cluster.db_names[2]",
        "$.cluster.num_nodes",
        "$.cluster.users[0].settings.pg_allow_replication",
        "$.cluster.users[1].name",
    ]


def test_check_cluster_on_a_bare_create_body_uses_paths_from_its_root() -> None:
    body = DatabaseClusterCreate(name="cache", engine="redis", num_nodes=1, size="s", region="r")
    assert check_cluster(body) == [
        FieldError(
            "$.engine",
            "DigitalOcean no longer creates Caching (`redis`) clusters since 2025-04-30; "
            "use `valkey` instead",
        )
    ]


def test_a_valid_body_breaks_no_rule() -> None:
    body = DatabaseClusterCreate(
        name="orders", engine="mysql", num_nodes=2, size="s", region="r", db_names=["a", "b"]
    )
    assert check_cluster(body) == []
