"""Every request and response example in the DigitalOcean spec decodes, losing nothing.

Request examples go through ``decode_command`` (types and rules); response examples are
decoded from JSON bytes into the type the client will use, then re-encoded: every value of
the example must come back, so no field of a real response is silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts import decode_command
from contracts.digitalocean import (
    ENGINES,
    ApiErrorBody,
    CaResponse,
    DatabaseClusterCreate,
    DatabaseClusterList,
    DatabaseClusterResponse,
    DatabaseCreate,
    DatabaseNameResponse,
    DatabaseOptions,
    DatabaseUserCreate,
    DatabaseUserResponse,
)
from contracts.errors import InvalidCommand
from tests.fixtures.spec import SpecResolver
from tests.unit.test_contracts_spec import operation_part

CREATABLE = sorted(set(ENGINES) - {"redis"})
WITH_USERS = sorted(set(ENGINES) - {"redis", "valkey"})

# Which engines each add-user example of the spec is for (from its title and description).
USER_EXAMPLE_ENGINES: dict[str, set[str]] = {
    "Add New User": set(WITH_USERS),
    "Add New User with MySQL Auth Plugin": {"mysql", "advanced_mysql"},
    "Add New Read Only User (MongoDB Only)": {"mongodb"},
    "Add New User that is restricted to a database (MongoDB Only)": {"mongodb"},
    "Add New User for Postgres with replication rights": {"pg", "advanced_pg"},
    "Add New User with Kafka ACLs": {"kafka"},
}


def _examples(media: dict[str, Any]) -> list[tuple[str, Any]]:
    if "example" in media:
        return [("example", media["example"])]
    return [(name, ex["value"]) for name, ex in media.get("examples", {}).items()]


def _request_examples(do_spec: SpecResolver, operation: str) -> list[tuple[str, Any]]:
    body = operation_part(do_spec, operation, "requestBody")
    found = _examples(body["content"]["application/json"])
    assert found, f"{operation} has no request example"
    return found


def _response_examples(do_spec: SpecResolver, operation: str, status: str) -> list[tuple[str, Any]]:
    response = operation_part(do_spec, operation, "responses")[status]
    found = _examples(response["content"]["application/json"])
    assert found, f"{operation} {status} has no example"
    return found


def _as_json(value: Any) -> Any:
    """What the example looks like on the wire (YAML may have parsed timestamps)."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _lost(example: Any, decoded: Any, path: str = "$") -> list[str]:
    """Paths where a value of ``example`` is missing or different in ``decoded``."""
    if isinstance(example, dict):
        if not isinstance(decoded, dict):
            return [path]
        return [
            p
            for key, value in example.items()
            for p in (
                _lost(value, decoded[key], f"{path}.{key}") if key in decoded else [f"{path}.{key}"]
            )
        ]
    if isinstance(example, list):
        if not isinstance(decoded, list) or len(decoded) != len(example):
            return [path]
        return [
            p
            for i, (a, b) in enumerate(zip(example, decoded, strict=True))
            for p in _lost(a, b, f"{path}[{i}]")
        ]
    return [] if example == decoded else [path]


def _command(cluster: Any, request_id: str = "spec-example") -> bytes:
    return msgspec.json.encode({"request_id": request_id, "cluster": cluster})


def test_every_create_example_decodes_as_a_command_and_round_trips(do_spec: SpecResolver) -> None:
    examples = _request_examples(do_spec, "databases_create_cluster")
    assert len(examples) >= 7
    for name, example in examples:
        wire = _as_json(example)
        command = decode_command(_command(wire))
        assert isinstance(command.cluster, DatabaseClusterCreate), name
        assert _lost(wire, msgspec.to_builtins(command.cluster)) == [], name


def test_create_examples_cover_backup_restore_rules_and_cnames(do_spec: SpecResolver) -> None:
    clusters = [
        decode_command(_command(_as_json(ex))).cluster
        for _, ex in _request_examples(do_spec, "databases_create_cluster")
    ]
    assert any(c.backup_restore is not None for c in clusters)
    assert any(c.rules for c in clusters)
    assert any(c.do_settings is not None and c.do_settings.service_cnames for c in clusters)
    assert {c.engine for c in clusters} >= {"pg", "advanced_pg", "advanced_mysql"}


def test_every_add_user_example_decodes_and_fits_exactly_its_engines(
    do_spec: SpecResolver,
) -> None:
    for name, example in _request_examples(do_spec, "databases_add_user"):
        user = msgspec.json.decode(msgspec.json.encode(example), type=DatabaseUserCreate)
        assert user.name == example["name"]
        assert name in USER_EXAMPLE_ENGINES, f"new add-user example {name!r}: which engines?"
        accepted = set()
        for engine in CREATABLE:
            cluster = {
                "name": "db",
                "engine": engine,
                "num_nodes": 1,
                "size": "db-s-1vcpu-1gb",
                "region": "nyc3",
                "users": [example],
            }
            try:
                decode_command(_command(cluster))
            except InvalidCommand:
                continue
            accepted.add(engine)
        assert accepted == USER_EXAMPLE_ENGINES[name], name


def test_add_database_example_decodes(do_spec: SpecResolver) -> None:
    for _, example in _request_examples(do_spec, "databases_add"):
        db = msgspec.json.decode(msgspec.json.encode(example), type=DatabaseCreate)
        assert msgspec.to_builtins(db) == example
        cluster = {
            "name": "db",
            "engine": "pg",
            "num_nodes": 1,
            "size": "s",
            "region": "nyc3",
            "db_names": [example["name"]],
        }
        assert decode_command(_command(cluster)).cluster.db_names == [example["name"]]


@pytest.mark.parametrize(
    ("operation", "status", "response_type"),
    [
        ("databases_create_cluster", "201", DatabaseClusterResponse),
        ("databases_get_cluster", "200", DatabaseClusterResponse),
        ("databases_list_clusters", "200", DatabaseClusterList),
        ("databases_list_options", "200", DatabaseOptions),
        ("databases_get_ca", "200", CaResponse),
        ("databases_add_user", "201", DatabaseUserResponse),
        ("databases_add", "201", DatabaseNameResponse),
    ],
)
def test_every_response_example_decodes_without_losing_a_value(
    do_spec: SpecResolver, operation: str, status: str, response_type: type
) -> None:
    for name, example in _response_examples(do_spec, operation, status):
        wire = msgspec.json.encode(example)
        decoded: Any = msgspec.json.decode(wire, type=response_type)
        assert _lost(_as_json(example), msgspec.to_builtins(decoded)) == [], name


def test_cluster_example_decodes_to_typed_connection_and_users(do_spec: SpecResolver) -> None:
    ((_, example),) = _response_examples(do_spec, "databases_create_cluster", "201")
    cluster = msgspec.json.decode(msgspec.json.encode(example), type=DatabaseClusterResponse)
    db = cluster.database
    assert db.status == "creating"
    assert db.connection is not None and db.connection.port == 25060
    assert db.standby_private_connection is not None
    assert db.users is not None and db.users[0].role == "primary"
    assert db.created_at is not None and db.created_at.year == 2019
    assert db.maintenance_window is not None and db.maintenance_window.pending is True


def _shared_response_files(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "shared" / "responses").glob("*.yml"))


ERROR_RESPONSES = [
    "bad_request",
    "conflict",
    "forbidden",
    "not_found",
    "server_error",
    "too_many_requests",
    "unauthorized",
    "unexpected_error",
    "unprocessable_entity",
]


@pytest.mark.parametrize("response", ERROR_RESPONSES)
def test_every_shared_error_example_decodes_as_the_error_body(
    do_spec: SpecResolver, response: str
) -> None:
    path = do_spec.root / "shared" / "responses" / f"{response}.yml"
    media = do_spec.resolve(do_spec.load(path), path)["content"]["application/json"]
    for _, example in _examples(media):
        body = msgspec.json.decode(msgspec.json.encode(example), type=ApiErrorBody)
        assert body.id == example["id"]
        assert _lost(example, msgspec.to_builtins(body)) == []


def test_every_shared_response_with_a_body_is_checked(do_spec: SpecResolver) -> None:
    with_body = []
    for name in _shared_response_files(do_spec.root):
        path = do_spec.root / "shared" / "responses" / f"{name}.yml"
        if "content" in do_spec.load(path):
            with_body.append(name)
    assert sorted(with_body) == ERROR_RESPONSES


def test_round_trip_check_reports_a_value_the_decoder_drops(do_spec: SpecResolver) -> None:
    # The check above must be able to fail: a field the read model does not know is lost.
    ((_, example),) = _response_examples(do_spec, "databases_get_cluster", "200")
    example = _as_json(example)
    example["database"]["storage_tier"] = "premium"
    decoded: DatabaseClusterResponse = msgspec.json.decode(
        msgspec.json.encode(example), type=DatabaseClusterResponse
    )
    assert _lost(example, msgspec.to_builtins(decoded)) == ["$.database.storage_tier"]
