"""``decode_command``: what a producer hears about a command that is not right.

Bytes that are not JSON, JSON that is not a command, unknown and read-only fields at
every level, wrong types and bounds: each is an ``InvalidCommand`` whose errors name the
exact JSON path, every one of them at once, and never an exception of another type.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from contracts import MAX_COMMAND_BYTES, FieldError, InvalidCommand, decode_command
from contracts.digitalocean import DatabaseClusterCreate, DatabaseUserCreate, FirewallRuleCreate
from contracts.rules import READ_ONLY_FIELDS

VALID: dict[str, Any] = {
    "request_id": "req-1",
    "cluster": {
        "name": "orders",
        "engine": "kafka",
        "num_nodes": 3,
        "size": "gd-2vcpu-8gb",
        "region": "nyc3",
        "rules": [{"type": "ip_addr", "value": "192.168.1.1"}],
        "autoscale": {"storage": {"enabled": True, "threshold_percent": 80}},
        "do_settings": {"service_cnames": ["db.example.com"]},
        "backup_restore": {"database_name": "old"},
        "users": [
            {
                "name": "app",
                "settings": {"acl": [{"topic": "orders", "permission": "produce"}]},
            }
        ],
        "db_names": ["orders"],
    },
    "metadata": {"team": "orders"},
    "timeout_s": 1800,
}


def valid() -> dict[str, Any]:
    return copy.deepcopy(VALID)


def encode(document: Any) -> bytes:
    return msgspec.json.encode(document)


def errors_of(data: bytes, **kwargs: Any) -> list[FieldError]:
    with pytest.raises(InvalidCommand) as caught:
        decode_command(data, **kwargs)
    assert caught.value.errors, "InvalidCommand without errors"
    return caught.value.errors


def only_error(data: bytes, **kwargs: Any) -> FieldError:
    errors = errors_of(data, **kwargs)
    assert len(errors) == 1, errors
    return errors[0]


def put(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set ``value`` at a dotted path such as ``cluster.users.0.settings``."""
    *parents, last = path.split(".")
    node: Any = document
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return document


def test_the_base_command_is_valid() -> None:
    command = decode_command(encode(VALID))
    assert command.request_id == "req-1"
    assert command.cluster.users is not None and command.cluster.users[0].name == "app"


# --- bytes that are not JSON ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"\xff\xfe\x00", 0),
        (b"\x80", 0),
        (b'{"request_id": "\xc3\x28"}', 16),
        (b'{"a": "ok", "\xe2\x82": 1}', 13),
    ],
    ids=["utf16-bom", "lone-continuation", "bad-continuation-in-string", "truncated-in-key"],
)
def test_invalid_utf8_is_an_invalid_command_naming_the_byte(data: bytes, offset: int) -> None:
    # The same words on every supported msgspec version (0.23 words its own error otherwise).
    error = only_error(data)
    assert error.path == "$"
    assert error.message == f"invalid UTF-8 at byte {offset}"


def test_invalid_utf8_inside_a_string_says_utf8() -> None:
    error = only_error(b'{"request_id": "\xc3\x28", "cluster": {}}')
    assert error.path == "$"
    assert "invalid UTF-8" in error.message


def test_invalid_utf8_error_points_at_the_byte_in_the_message() -> None:
    data = b'{"request_id": "\xc3\x28", "cluster": {}}'
    assert data.index(b"\xc3") == 16
    assert only_error(data).message == "invalid UTF-8 at byte 16"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "truncated"),
        (b'{"request_id": "r"', "truncated"),
        (b'{"request_id": "r"} trailing', "trailing"),
        (b"{'request_id': 'r'}", "malformed"),
        (b"NaN", "malformed"),
        (b'{"a": 1,}', "malformed"),
    ],
    ids=["empty", "truncated", "trailing", "single-quotes", "nan", "trailing-comma"],
)
def test_invalid_json_is_an_invalid_command_at_the_root(data: bytes, words: str) -> None:
    error = only_error(data)
    assert error.path == "$"
    assert error.message.startswith("invalid JSON")
    assert words in error.message.lower()


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_deeply_nested_json_is_an_invalid_command(opening: bytes) -> None:
    error = only_error(opening * 100_000)
    assert error.path == "$"
    assert "nested too deeply" in error.message or "invalid JSON" in error.message


def test_deeply_nested_value_inside_a_command_is_an_invalid_command() -> None:
    nested = b'{"request_id": "r", "metadata": {"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"
    error = only_error(nested)
    assert error.path == "$"
    assert "nested too deeply" in error.message


def test_body_over_max_bytes_is_refused_before_parsing() -> None:
    data = encode(VALID)
    error = only_error(data, max_bytes=len(data) - 1)
    assert error.path == "$"
    assert f"{len(data)} bytes" in error.message
    assert f"limit is {len(data) - 1}" in error.message


def test_body_of_exactly_max_bytes_is_accepted() -> None:
    data = encode(VALID)
    assert decode_command(data, max_bytes=len(data)).request_id == "req-1"


def test_default_limit_is_one_mebibyte() -> None:
    padding = "x" * MAX_COMMAND_BYTES
    error = only_error(encode({**VALID, "metadata": {"pad": padding}}))
    assert f"limit is {MAX_COMMAND_BYTES}" in error.message


@pytest.mark.parametrize("buffer", [bytearray, memoryview])
def test_accepts_any_bytes_like_buffer(buffer: type) -> None:
    assert decode_command(buffer(encode(VALID))).request_id == "req-1"


@pytest.mark.parametrize("document", [[], None, "command", 1.5, 7, True])
def test_json_that_is_not_an_object_is_refused_at_the_root(document: Any) -> None:
    error = only_error(encode(document))
    assert error.path == "$"
    assert "Expected `object`" in error.message


# --- unknown and read-only fields ---------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected_path"),
    [
        ("", "$.priority"),
        ("cluster", "$.cluster.priority"),
        ("cluster.rules.0", "$.cluster.rules[0].priority"),
        ("cluster.autoscale", "$.cluster.autoscale.priority"),
        ("cluster.autoscale.storage", "$.cluster.autoscale.storage.priority"),
        ("cluster.do_settings", "$.cluster.do_settings.priority"),
        ("cluster.backup_restore", "$.cluster.backup_restore.priority"),
        ("cluster.users.0", "$.cluster.users[0].priority"),
        ("cluster.users.0.settings", "$.cluster.users[0].settings.priority"),
        ("cluster.users.0.settings.acl.0", "$.cluster.users[0].settings.acl[0].priority"),
    ],
)
def test_unknown_field_is_named_with_its_path_at_every_level(
    where: str, expected_path: str
) -> None:
    document = valid()
    node: Any = document
    for part in filter(None, where.split(".")):
        node = node[int(part)] if part.isdigit() else node[part]
    node["priority"] = "high"
    error = only_error(encode(document))
    assert error.path == expected_path
    assert "unknown field `priority`" in error.message


@pytest.mark.parametrize(
    ("container", "user"),
    [
        ("mysql_settings", {"name": "u", "mysql_settings": {"auth_plugin": "x", "extra": 1}}),
        (
            "settings.mongo_user_settings",
            {"name": "u", "settings": {"mongo_user_settings": {"extra": 1}}},
        ),
        (
            "settings.opensearch_acl[0]",
            {"name": "u", "settings": {"opensearch_acl": [{"index": "i", "extra": 1}]}},
        ),
    ],
)
def test_unknown_field_in_engine_specific_user_settings_is_named(
    container: str, user: dict[str, Any]
) -> None:
    document = put(valid(), "cluster.users", [user])
    errors = errors_of(encode(document))
    assert f"$.cluster.users[0].{container}.extra" in [e.path for e in errors]


def test_num_node_typo_is_an_error_that_suggests_num_nodes() -> None:
    document = valid()
    document["cluster"]["num_node"] = document["cluster"].pop("num_nodes")
    errors = errors_of(encode(document))
    typo = next(e for e in errors if e.path == "$.cluster.num_node")
    assert "unknown field `num_node`" in typo.message
    assert "did you mean `num_nodes`?" in typo.message
    missing = next(e for e in errors if e.path == "$.cluster.num_nodes")
    assert "required field `num_nodes` is missing" in missing.message


def test_unknown_field_that_is_not_an_identifier_is_quoted_in_the_path() -> None:
    document = valid()
    document["cluster"]["num nodes"] = 3
    assert only_error(encode(document)).path == '$.cluster["num nodes"]'


@pytest.mark.parametrize("field", sorted(READ_ONLY_FIELDS[DatabaseClusterCreate]))
def test_read_only_cluster_field_is_called_read_only(field: str) -> None:
    document = put(valid(), f"cluster.{field}", "value-from-a-get")
    error = only_error(encode(document))
    assert error.path == f"$.cluster.{field}"
    assert f"`{field}` is read-only" in error.message
    assert "unknown" not in error.message


@pytest.mark.parametrize("field", sorted(READ_ONLY_FIELDS[FirewallRuleCreate]))
def test_read_only_firewall_rule_field_is_called_read_only(field: str) -> None:
    document = put(valid(), f"cluster.rules.0.{field}", "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30")
    error = only_error(encode(document))
    assert error.path == f"$.cluster.rules[0].{field}"
    assert f"`{field}` is read-only" in error.message


@pytest.mark.parametrize("field", sorted(READ_ONLY_FIELDS[DatabaseUserCreate]))
def test_read_only_user_field_is_called_read_only(field: str) -> None:
    document = put(valid(), f"cluster.users.0.{field}", "s3cr3t-value")
    error = only_error(encode(document))
    assert error.path == f"$.cluster.users[0].{field}"
    assert f"`{field}` is read-only" in error.message


def test_read_only_user_password_value_is_never_echoed() -> None:
    document = put(valid(), "cluster.users.0.password", "hunter2-very-secret")
    with pytest.raises(InvalidCommand) as caught:
        decode_command(encode(document))
    assert "hunter2-very-secret" not in str(caught.value)
    assert "hunter2-very-secret" not in repr(caught.value.errors)


# --- wrong types and bounds ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "expected_path", "words"),
    [
        ("request_id", 5, "$.request_id", "Expected `str`, got `int`"),
        ("request_id", "", "$.request_id", "length >= 1"),
        ("request_id", "r" * 129, "$.request_id", "length <= 128"),
        ("request_id", "a\x01b", "$.request_id", "must not contain control, bidirectional"),
        ("cluster", [], "$.cluster", "Expected `object`, got `array`"),
        ("cluster.num_nodes", "3", "$.cluster.num_nodes", "Expected `int`, got `str`"),
        ("cluster.num_nodes", 3.0, "$.cluster.num_nodes", "Expected `int`, got `float`"),
        ("cluster.num_nodes", True, "$.cluster.num_nodes", "Expected `int`, got `bool`"),
        ("cluster.num_nodes", 0, "$.cluster.num_nodes", ">= 1"),
        ("cluster.engine", "postgres", "$.cluster.engine", '"postgres"'),
        ("cluster.name", None, "$.cluster.name", "Expected `str`, got `null`"),
        ("cluster.tags", "production", "$.cluster.tags", "Expected `array`, got `str`"),
        ("cluster.tags", ["a", 1], "$.cluster.tags[1]", "Expected `str`, got `int`"),
        ("cluster.storage_size_mib", -1, "$.cluster.storage_size_mib", ">= 0"),
        ("cluster.private_network_uuid", "vpc-1", "$.cluster.private_network_uuid", "UUID"),
        ("cluster.rules.0.type", "vpc", "$.cluster.rules[0].type", '"vpc"'),
        ("cluster.rules.0.uuid", "nope", "$.cluster.rules[0].uuid", "must be a lowercase UUID"),
        (
            "cluster.autoscale.storage.enabled",
            "yes",
            "$.cluster.autoscale.storage.enabled",
            "Expected `bool`, got `str`",
        ),
        (
            "cluster.autoscale.storage.threshold_percent",
            96,
            "$.cluster.autoscale.storage.threshold_percent",
            "<= 95",
        ),
        (
            "cluster.autoscale.storage.increment_gib",
            9,
            "$.cluster.autoscale.storage.increment_gib",
            ">= 10",
        ),
        (
            "cluster.do_settings.service_cnames",
            [f"db{i}.example.com" for i in range(17)],
            "$.cluster.do_settings.service_cnames",
            "length <= 16",
        ),
        (
            "cluster.do_settings.service_cnames.0",
            "not a hostname",
            "$.cluster.do_settings.service_cnames[0]",
            "must be an RFC 1123 hostname",
        ),
        (
            "cluster.do_settings.service_cnames.0",
            "a" * 250 + ".com",
            "$.cluster.do_settings.service_cnames[0]",
            "length <= 253",
        ),
        (
            "cluster.backup_restore.backup_created_at",
            "yesterday",
            "$.cluster.backup_restore.backup_created_at",
            "RFC3339",
        ),
        (
            "cluster.users.0.settings.acl.0.permission",
            "read",
            "$.cluster.users[0].settings.acl[0].permission",
            '"read"',
        ),
        ("cluster.users.0.name", "", "$.cluster.users[0].name", "length >= 1"),
        ("metadata.team", 7, '$.metadata["team"]', "Expected `str`, got `int`"),
        ("metadata", {str(i): "v" for i in range(65)}, "$.metadata", "length <= 64"),
        ("timeout_s", 0, "$.timeout_s", ">= 1"),
        ("timeout_s", 8 * 24 * 3600, "$.timeout_s", "<= 604800"),
    ],
)
def test_wrong_type_or_bound_is_reported_at_its_path(
    path: str, value: Any, expected_path: str, words: str
) -> None:
    error = only_error(encode(put(valid(), path, value)))
    assert error.path == expected_path
    assert words in error.message


def test_wrong_enum_value_lists_the_allowed_values() -> None:
    error = only_error(encode(put(valid(), "cluster.engine", "postgres")))
    for engine in ("pg", "mysql", "valkey", "advanced_pg"):
        assert f'"{engine}"' in error.message


@pytest.mark.parametrize("field", ["name", "engine", "num_nodes", "size", "region"])
def test_missing_required_cluster_field_is_named(field: str) -> None:
    document = valid()
    del document["cluster"][field]
    error = only_error(encode(document))
    assert error.path == f"$.cluster.{field}"
    assert f"required field `{field}` is missing" in error.message


def test_every_structural_error_is_reported_at_once() -> None:
    document = valid()
    cluster = document["cluster"]
    cluster["num_node"] = cluster.pop("num_nodes")
    cluster["status"] = "online"
    cluster["tags"] = "production"
    cluster["rules"][0]["created_at"] = "2019-01-11T18:37:36Z"
    cluster["users"][0]["settings"]["acl"][0]["permission"] = "write"
    document["timeout_s"] = "30"
    errors = errors_of(encode(document))
    assert sorted(e.path for e in errors) == [
        "$.cluster.num_node",
        "$.cluster.num_nodes",
        "$.cluster.rules[0].created_at",
        "$.cluster.status",
        "$.cluster.tags",
        "$.cluster.users[0].settings.acl[0].permission",
        "$.timeout_s",
    ]


def test_invalid_command_message_shows_the_first_errors_and_counts_the_rest() -> None:
    document = valid()
    for i in range(7):
        document["cluster"][f"extra{i}"] = i
    with pytest.raises(InvalidCommand) as caught:
        decode_command(encode(document))
    text = str(caught.value)
    assert text.startswith("invalid command: $.cluster.extra0: unknown field `extra0`")
    assert "(and 2 more)" in text
    assert len(caught.value.errors) == 7


# Spec patterns are ECMA-262 (JSON Schema), where `$` is the end of the input; Python's `$`
# would also match before a trailing newline.
@pytest.mark.parametrize("request_id", ["req-1\n", "req\n1", "\treq"])
def test_request_id_with_a_control_character_is_refused(request_id: str) -> None:
    error = only_error(encode(put(valid(), "request_id", request_id)))
    assert error.path == "$.request_id"
    assert "control, bidirectional or zero-width characters" in error.message


@pytest.mark.parametrize(
    "character",
    [
        "\u202e",
        "\u202a",
        "\u2066",
        "\u200f",
        "\u061c",
        "\u200b",
        "\u200d",
        "\u2060",
        "\ufeff",
        "\x85",
    ],
)
def test_request_id_with_a_bidirectional_or_invisible_character_is_refused(
    character: str,
) -> None:
    error = only_error(encode(put(valid(), "request_id", f"orders{character}db")))
    assert error.path == "$.request_id"
    assert "bidirectional or zero-width" in error.message


@pytest.mark.parametrize(
    ("field", "value", "path"),
    [
        ("cluster.name", "orders\u202edb", "$.cluster.name"),
        ("cluster.tags", ["team", "a\u200bb"], "$.cluster.tags[1]"),
        ("cluster.users", [{"name": "app\u2066"}], "$.cluster.users[0].name"),
        ("cluster.db_names", ["ok", "ledger\u200d"], "$.cluster.db_names[1]"),
        ("metadata", {"tic\u202eket": "x"}, "$.metadata"),
    ],
)
def test_names_and_tags_with_invisible_or_reordering_characters_are_refused(
    field: str, value: object, path: str
) -> None:
    errors = errors_of(encode(put(valid(), field, value)))
    found = [e for e in errors if e.path.startswith(path)]
    assert found, errors
    assert all("bidirectional or zero-width" in e.message for e in found)


@pytest.mark.parametrize(
    ("document", "paths"),
    [
        (
            b'{"request_id": "a", "request_id": "b", "cluster": {}}',
            ["$.request_id"],
        ),
        (
            b'{"request_id": "a", "cluster": {"name": "x", "engine": "pg", "name": "y"}}',
            ["$.cluster.name"],
        ),
        (
            b'{"request_id": "a", "cluster": {"users": [{"name": "u", "name": "v"}]}}',
            ["$.cluster.users[0].name"],
        ),
    ],
)
def test_duplicate_keys_are_a_field_error(document: bytes, paths: list[str]) -> None:
    errors = errors_of(document)
    duplicates = [e.path for e in errors if e.message.startswith("duplicate key")]
    assert duplicates == paths


def test_service_cname_with_a_trailing_newline_is_refused() -> None:
    document = put(valid(), "cluster.do_settings.service_cnames", ["db.example.com\n"])
    error = only_error(encode(document))
    assert error.path == "$.cluster.do_settings.service_cnames[0]"
    assert "RFC 1123 hostname" in error.message


def test_private_network_uuid_may_be_empty_or_a_uuid() -> None:
    for value in ("", "d455e75d-4858-4eec-8c95-da2f0a5f93a7"):
        command = decode_command(encode(put(valid(), "cluster.private_network_uuid", value)))
        assert command.cluster.private_network_uuid == value
