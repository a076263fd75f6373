"""Responses are decoded leniently: what DigitalOcean adds later must not break the service.

The read models ignore unknown fields and keep open sets (status, engine) as strings. A
list response with one odd cluster must still decode, or the watcher goes blind to every
cluster of the tick.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from contracts import InvalidCommand, decode_command
from contracts.digitalocean import (
    ApiErrorBody,
    DatabaseClusterList,
    DatabaseClusterResponse,
    DatabaseOptions,
)


def cluster(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30",
        "name": "orders",
        "engine": "pg",
        "num_nodes": 1,
        "size": "db-s-1vcpu-1gb",
        "region": "nyc3",
        "status": "creating",
    }
    body.update(fields)
    return body


def decode_list(*clusters: dict[str, Any]) -> DatabaseClusterList:
    return msgspec.json.decode(
        msgspec.json.encode({"databases": list(clusters)}), type=DatabaseClusterList
    )


def test_unknown_fields_at_every_level_of_a_cluster_are_ignored() -> None:
    body = cluster(
        storage_tier="premium",
        connection={"host": "h", "port": 25060, "sni": "x"},
        users=[{"name": "doadmin", "role": "primary", "mfa": True}],
        maintenance_window={"day": "monday", "hour": "01:00", "timezone": "UTC"},
    )
    (decoded,) = decode_list(body).databases or []
    assert decoded.connection is not None and decoded.connection.port == 25060
    assert decoded.users is not None and decoded.users[0].role == "primary"


def test_status_and_engine_that_digitalocean_adds_later_still_decode() -> None:
    (decoded,) = decode_list(cluster(status="upgrading", engine="clickhouse")).databases or []
    assert decoded.status == "upgrading"
    assert decoded.engine == "clickhouse"


def test_a_list_without_clusters_may_be_null() -> None:
    assert decode_list().databases == []
    null: DatabaseClusterList = msgspec.json.decode(
        b'{"databases": null}', type=DatabaseClusterList
    )
    assert null.databases is None


def test_options_for_an_engine_added_later_still_decode() -> None:
    body = {"options": {"clickhouse": {"regions": ["nyc3"], "versions": ["24"], "layouts": []}}}
    options = msgspec.json.decode(msgspec.json.encode(body), type=DatabaseOptions)
    assert options.options["clickhouse"].versions == ["24"]


def test_error_body_without_request_id_decodes() -> None:
    body = msgspec.json.decode(b'{"id": "not_found", "message": "gone"}', type=ApiErrorBody)
    assert body.request_id is None


# A user or setting the API returns with a value the spec does not list yet.
NEW_VALUES_IN_USER_SETTINGS = [
    pytest.param({"mysql_settings": {"auth_plugin": "sha256_password"}}, id="mysql-auth-plugin"),
    pytest.param(
        {"settings": {"acl": [{"topic": "t", "permission": "describe"}]}}, id="kafka-permission"
    ),
    pytest.param(
        {"settings": {"opensearch_acl": [{"index": "i", "permission": "monitor"}]}},
        id="opensearch-permission",
    ),
    pytest.param({"settings": {"mongo_user_settings": {"role": "clusterAdmin"}}}, id="mongo-role"),
]


@pytest.mark.parametrize("user_fields", NEW_VALUES_IN_USER_SETTINGS)
def test_a_user_setting_value_added_later_does_not_break_the_cluster_list(
    user_fields: dict[str, Any],
) -> None:
    odd = cluster(name="odd", users=[{"name": "u", **user_fields}])
    clusters = decode_list(cluster(), odd).databases or []
    assert [c.name for c in clusters] == ["orders", "odd"]


def test_service_cnames_the_request_side_would_refuse_do_not_break_a_response() -> None:
    odd = cluster(do_settings={"service_cnames": ["legacy_name.internal"]})
    response = msgspec.json.decode(
        msgspec.json.encode({"database": odd}), type=DatabaseClusterResponse
    )
    assert response.database.do_settings is not None


@pytest.mark.parametrize(
    ("engine", "user_fields"),
    [
        ("mysql", {"mysql_settings": {"auth_plugin": "sha256_password"}}),
        ("kafka", {"settings": {"acl": [{"topic": "t", "permission": "describe"}]}}),
        ("opensearch", {"settings": {"opensearch_acl": [{"index": "i", "permission": "monitor"}]}}),
        ("mongodb", {"settings": {"mongo_user_settings": {"role": "clusterAdmin"}}}),
    ],
)
def test_the_same_values_are_still_refused_in_a_command(
    engine: str, user_fields: dict[str, Any]
) -> None:
    # Lenient where DigitalOcean sends, strict where a producer sends.
    body = {
        "request_id": "r",
        "cluster": {
            "name": "n",
            "engine": engine,
            "num_nodes": 1,
            "size": "s",
            "region": "r",
            "users": [{"name": "u", **user_fields}],
        },
    }
    with pytest.raises(InvalidCommand) as caught:
        decode_command(msgspec.json.encode(body))
    (error,) = caught.value.errors
    assert error.path.startswith("$.cluster.users[0].")
    assert "Expected one of" in error.message
