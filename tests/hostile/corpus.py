"""The hand-written hostile corpus: every kind of bad command a producer (or an attacker with
publish rights) can put on ``provisioner.commands``.

Each case carries the JSON path its rejection must name and, where the words matter, a
fragment of the message, so a test checks that the service said *what* was wrong, not only
that it refused. Cases are built in code rather than kept as files because many are large
(oversized, deeply nested, huge arrays) and are derived from a valid command.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

from contracts.digitalocean import DatabaseClusterCreate, DatabaseUserCreate, FirewallRuleCreate
from contracts.errors import FieldError
from contracts.rules import READ_ONLY_FIELDS
from tests.integration.service_harness import command

__all__ = [
    "JSON",
    "Hostile",
    "child_path",
    "dumps",
    "handwritten",
    "refusal_problem",
    "shown_key",
    "valid_command",
]

JSON: Final = "application/json"


class Hostile(NamedTuple):
    """One hostile message and what its rejection must say."""

    label: str
    """What the case is, for failure messages (``unknown:cluster.users[0].settings``)."""
    body: bytes
    content_type: str | None = JSON
    path: str | None = "$"
    """A path that one of the rejection's errors must have (None: any path)."""
    message: str | None = None
    """Text that the error at ``path`` must contain."""
    decodes: bool = False
    """True when ``decode_command`` accepts the body: only the content type or the service's
    check against DigitalOcean's offer (region, size, version) refuses it."""


def dumps(value: Any) -> bytes:
    """Compact JSON, non-ASCII kept as UTF-8 (as most producers send it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def valid_command(engine: str = "pg", request_id: str = "hostile") -> dict[str, Any]:
    """A valid command, deep-copied so edits never reach the shared samples."""
    return copy.deepcopy(command(request_id, engine))


def _edit(engine: str, edit: Callable[[dict[str, Any]], None]) -> bytes:
    doc = valid_command(engine)
    edit(doc)
    return dumps(doc)


def _set(path: str, value: Any, engine: str = "pg") -> bytes:
    """A valid command with the value at ``path`` (``cluster.users.0.name``) replaced."""

    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return _edit(engine, edit)


def _drop(path: str, engine: str = "pg") -> bytes:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return _edit(engine, edit)


def _json_path(path: str) -> str:
    """``cluster.users.0.name`` -> ``$.cluster.users[0].name``."""
    out = "$"
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def _invalid_json() -> Iterator[Hostile]:
    good = dumps(valid_command())
    malformed = {
        "empty": b"",
        "space": b"   ",
        "open-brace": b"{",
        "close-brace": b"}",
        "open-bracket": b"[",
        "missing-value": b'{"request_id": }',
        "single-quotes": b"{'request_id': 'x'}",
        "trailing-comma": b'{"request_id":"a",}',
        "nan": b"NaN",
        "infinity": b"-Infinity",
        "undefined": b"undefined",
        "nul": b"\x00",
        "two-documents": good + good,
        "trailing-garbage": good + b"x",
        "truncated": good[: len(good) // 2],
        "comment": b"// a comment\n" + good,
        "bom": b"\xef\xbb\xbf" + good,
        "unterminated-string": b'{"request_id": "abc',
        "bad-escape": b'{"request_id": "\\x41"}',
        "lone-surrogate-escape": b'{"request_id": "\\ud800"}',
        "number-out-of-range": b'{"request_id":"a","cluster":{"num_nodes":1e400}}',
        "bare-word": b"provision please",
        "xml": b"<command><request_id>x</request_id></command>",
        "yaml": b"request_id: x\ncluster:\n  engine: pg\n",
        "form": b"request_id=x&engine=pg",
        "hex-number": b'{"request_id":"a","timeout_s":0x10}',
        "leading-zero": b'{"request_id":"a","timeout_s":010}',
        "plus-number": b'{"request_id":"a","timeout_s":+1}',
    }
    for name, body in malformed.items():
        yield Hostile(f"invalid-json:{name}", body, message="invalid JSON")
    not_objects = {
        "null": b"null",
        "true": b"true",
        "zero": b"0",
        "float": b"1.5",
        "string": b'"provision"',
        "array": b"[]",
        "array-of-command": b"[" + good + b"]",
        "command-as-string": json.dumps(good.decode()).encode(),
    }
    for name, body in not_objects.items():
        yield Hostile(f"not-an-object:{name}", body, message="Expected `object`")
    yield Hostile("empty-object", b"{}", path="$.request_id", message="required field")


def _invalid_utf8() -> Iterator[Hostile]:
    good = dumps(valid_command())
    bad = {
        "ff": b"\xff",
        "in-string": b'{"request_id": "\xc3\x28"}',
        "overlong-slash": b'{"request_id": "\xc0\xaf"}',
        "utf8-surrogate": b'{"request_id": "\xed\xa0\x80"}',
        "truncated-multibyte": b'{"request_id": "\xe2\x82"}',
        "in-key": b'{"\xfe\xfe": 1}',
        "latin1-command": json.dumps(
            valid_command(request_id="caf\u00e9"), ensure_ascii=False
        ).encode("latin-1"),
        "utf16-command": good.decode().encode("utf-16"),
        "utf32-command": good.decode().encode("utf-32"),
        "cp1252-quotes": b"\x93request_id\x94",
    }
    for name, body in bad.items():
        yield Hostile(f"utf8:{name}", body, message="invalid")


def _content_types() -> Iterator[Hostile]:
    # A perfectly valid command is still refused when it says it is not JSON.
    good = dumps(valid_command())
    for content_type in (
        "application/xml",
        "text/plain",
        "text/html",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/cloudevents+json",
        "application/json-patch+json",
        "APPLICATION/XML",
        "application/vnd.provisioner.watch+json",
        "json",
        "*/*",
    ):
        yield Hostile(
            f"content-type:{content_type}",
            good,
            content_type,
            message="is not JSON",
            decodes=True,
        )
    yield Hostile(
        "content-type:utf16-declared",
        good.decode().encode("utf-16"),
        "application/json; charset=utf-16",
        message="invalid",
    )


def _oversized(limit: int) -> Iterator[Hostile]:
    good = dumps(valid_command())

    def case(name: str, body: bytes) -> Hostile:
        return Hostile(
            f"oversized:{name}",
            body,
            message=f"message is {len(body)} bytes; the limit is {limit}",
        )

    # Valid JSON, a valid command even: only its size is wrong.
    yield case("padded-valid-command", good + b" " * (limit + 1 - len(good)))
    padded = valid_command()
    padded["metadata"] = {"blob": "x" * (2 * limit)}
    yield case("huge-metadata", dumps(padded))
    yield case("garbage", b"\xff" * (limit + 1))
    yield case("deep-and-big", b"[" * (4 * limit))
    yield case("one-and-a-half-mib", good + b" " * (3 * 512 * 1024 - len(good)))


def _deeply_nested() -> Iterator[Hostile]:
    # Under a 64 KiB limit: too deep for the decoder, small enough to be read.
    yield Hostile("nested:arrays", b"[" * 30_000 + b"]" * 30_000, message="nested too deeply")
    yield Hostile(
        "nested:objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, message="nested too deeply"
    )
    yield Hostile("nested:unclosed", b"[" * 50_000)
    yield Hostile(
        "nested:in-cluster",
        b'{"request_id":"deep","cluster":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
        message="nested too deeply",
    )
    # Shallow enough to decode: refused for its type, at the field.
    nest: Any = "x"
    for _ in range(100):
        nest = [nest]
    yield Hostile(
        "nested:in-tags",
        _set("cluster.tags", [nest]),
        path="$.cluster.tags[0]",
        message="Expected `str`, got `array`",
    )
    yield Hostile(
        "nested:in-metadata",
        _set("metadata", {"k": nest}),
        path='$.metadata["k"]',
        message="Expected `str`",
    )
    yield Hostile(
        "nested:as-cluster", _set("cluster", nest), path="$.cluster", message="Expected `object`"
    )
    deep_object: Any = {}
    for _ in range(200):
        deep_object = {"a": deep_object}
    yield Hostile(
        "nested:objects-in-settings",
        _set("cluster.users.0.settings", deep_object),
        path="$.cluster.users[0].settings.a",
        message="unknown field",
    )


def _huge_arrays() -> Iterator[Hostile]:
    arrays: list[tuple[str, str, Any, int, str, str]] = [
        ("tags-of-ints", "cluster.tags", 1, 20_000, "$.cluster.tags[0]", "Expected `str`"),
        ("users-empty", "cluster.users", {}, 10_000, "$.cluster.users[0].name", "required"),
        ("db-names-ints", "cluster.db_names", 1, 12_000, "$.cluster.db_names[0]", "Expected"),
        ("rules-empty", "cluster.rules", {}, 10_000, "$.cluster.rules[0].type", "required"),
        ("request-id-array", "request_id", "x", 10_000, "$.request_id", "Expected `str`"),
        (
            "service-cnames",
            "cluster.do_settings.service_cnames",
            "db.example.com",
            3_000,
            "$.cluster.do_settings.service_cnames",
            "length <= 16",
        ),
        ("duplicate-db-names", "cluster.db_names", "a", 12_000, "$.cluster.db_names[1]", "dup"),
        (
            "duplicate-users",
            "cluster.users",
            {"name": "a"},
            4_000,
            "$.cluster.users[1].name",
            "duplicate user name",
        ),
    ]
    for name, path, item, count, error_path, message in arrays:
        yield Hostile(
            f"huge-array:{name}", _set(path, [item] * count), path=error_path, message=message
        )
    many_keys = {f"k{i}": "v" for i in range(3_000)}
    yield Hostile(
        "huge-array:metadata-keys",
        _set("metadata", many_keys),
        path="$.metadata",
        message="length <= 64",
    )


# (dotted path, wrong value): every field with a value of a type it does not take.
WRONG_TYPES: Final[list[tuple[str, Any]]] = [
    ("request_id", 5),
    ("request_id", None),
    ("request_id", True),
    ("request_id", []),
    ("request_id", {}),
    ("cluster", "pg"),
    ("cluster", 1),
    ("cluster", []),
    ("cluster", None),
    ("metadata", []),
    ("metadata", "ticket=1"),
    ("metadata", 1),
    ("metadata.k", 1),
    ("metadata.k", None),
    ("metadata.k", ["a"]),
    ("metadata.k", {"a": "b"}),
    ("timeout_s", "60"),
    ("timeout_s", 1.5),
    ("timeout_s", True),
    ("timeout_s", []),
    ("cluster.name", 1),
    ("cluster.name", []),
    ("cluster.name", True),
    ("cluster.engine", 1),
    ("cluster.engine", ["pg"]),
    ("cluster.engine", None),
    ("cluster.num_nodes", "2"),
    ("cluster.num_nodes", 2.5),
    ("cluster.num_nodes", 2.0),
    ("cluster.num_nodes", True),
    ("cluster.num_nodes", [2]),
    ("cluster.num_nodes", None),
    ("cluster.size", 1),
    ("cluster.size", None),
    ("cluster.region", {}),
    ("cluster.version", 17),
    ("cluster.version", 17.0),
    ("cluster.private_network_uuid", 1),
    ("cluster.tags", "a"),
    ("cluster.tags", [1]),
    ("cluster.tags", [None]),
    ("cluster.tags", {"a": "b"}),
    ("cluster.project_id", 1),
    ("cluster.rules", {}),
    ("cluster.rules", ["ip_addr"]),
    ("cluster.storage_size_mib", "10240"),
    ("cluster.storage_size_mib", 1.5),
    ("cluster.autoscale", []),
    ("cluster.autoscale", "on"),
    ("cluster.autoscale.storage", True),
    ("cluster.autoscale.storage.enabled", "true"),
    ("cluster.autoscale.storage.enabled", 1),
    ("cluster.do_settings", "x"),
    ("cluster.do_settings.service_cnames", "db.example.com"),
    ("cluster.backup_restore", "backup-1"),
    ("cluster.backup_restore.database_name", 5),
    ("cluster.users", {}),
    ("cluster.users", "app"),
    ("cluster.users", [1]),
    ("cluster.users.0", "app"),
    ("cluster.users.0.name", 1),
    ("cluster.users.0.name", None),
    ("cluster.users.0.settings", []),
    ("cluster.users.0.settings.pg_allow_replication", "yes"),
    ("cluster.users.0.settings.pg_allow_replication", 0),
    ("cluster.users.0.mysql_settings", "native"),
    ("cluster.db_names", "orders"),
    ("cluster.db_names", [1]),
    ("cluster.db_names", [["orders"]]),
]


_LIST_FIELDS: Final = frozenset(
    {"cluster.tags", "cluster.rules", "cluster.users", "cluster.db_names"}
)


def _wrong_types() -> Iterator[Hostile]:
    for path, value in WRONG_TYPES:
        expected = _json_path(path)
        if path == "metadata.k":
            expected = '$.metadata["k"]'
        elif isinstance(value, list) and value and path in _LIST_FIELDS:
            expected += "[0]"  # the array is fine, its first item is not
        yield Hostile(f"wrong-type:{path}={value!r}", _set(path, value), path=expected)


# (dotted path of an object, engine whose sample has it): every object level of a command.
OBJECT_LEVELS: Final[list[tuple[str, str]]] = [
    ("", "pg"),
    ("cluster", "pg"),
    ("cluster.users.0", "pg"),
    ("cluster.users.1.settings", "pg"),
    ("cluster.users.0.mysql_settings", "mysql"),
    ("cluster.users.0.settings.acl.0", "kafka"),
    ("cluster.users.0.settings.opensearch_acl.0", "opensearch"),
    ("cluster.users.0.settings.mongo_user_settings", "mongodb"),
    ("cluster.rules.0", "pg"),
    ("cluster.autoscale", "pg"),
    ("cluster.autoscale.storage", "pg"),
    ("cluster.do_settings", "pg"),
    ("cluster.backup_restore", "pg"),
]
# Levels the samples lack, added before the unknown or read-only field goes in.
_ADDED: Final[dict[str, Any]] = {
    "rules": [{"type": "ip_addr", "value": "10.0.0.1"}],
    "autoscale": {"storage": {"enabled": True}},
    "do_settings": {"service_cnames": ["db.example.com"]},
    "backup_restore": {"database_name": "orders"},
}
UNKNOWN_KEYS: Final = ["extra", "ключ", "", "a b", "__proto__", "constructor", "$where"]


def _with_field(level: str, engine: str, key: str, value: Any) -> bytes:
    def edit(doc: dict[str, Any]) -> None:
        doc["cluster"].update(copy.deepcopy(_ADDED))
        node: Any = doc
        for part in filter(None, level.split(".")):
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[key] = value

    return _edit(engine, edit)


# Errors quote at most this many characters of a field name a producer sent.
MAX_SHOWN: Final = 64


def shown_key(key: str) -> str:
    """A field name as an error quotes it: whole, or its start and its length."""
    return key if len(key) <= MAX_SHOWN else f"{key[: MAX_SHOWN - 1]}\u2026({len(key)} chars)"


def child_path(path: str, key: str) -> str:
    """The path of ``key`` below ``path`` as errors write it: ``.key`` for a short identifier,
    ``["key"]`` otherwise."""
    if key.isidentifier() and len(key) <= MAX_SHOWN:
        return f"{path}.{key}"
    return f"{path}[{json.dumps(shown_key(key), ensure_ascii=False)}]"


def _unknown_fields() -> Iterator[Hostile]:
    for level, engine in OBJECT_LEVELS:
        base = _json_path(level) if level else "$"
        for key in UNKNOWN_KEYS:
            yield Hostile(
                f"unknown:{level or '$'}[{key!r}]",
                _with_field(level, engine, key, "x"),
                path=child_path(base, key),
                message="unknown field",
            )
    yield Hostile(
        "unknown:typo-num_node",
        _with_field("cluster", "pg", "num_node", 1),
        path="$.cluster.num_node",
        message="did you mean `num_nodes`",
    )


def _read_only_fields() -> Iterator[Hostile]:
    levels: dict[type, tuple[str, str]] = {
        DatabaseClusterCreate: ("cluster", "pg"),
        FirewallRuleCreate: ("cluster.rules.0", "pg"),
        DatabaseUserCreate: ("cluster.users.0", "pg"),
    }
    for struct, names in READ_ONLY_FIELDS.items():
        level, engine = levels[struct]
        for name in sorted(names):
            yield Hostile(
                f"read-only:{level}.{name}",
                _with_field(level, engine, name, "set-by-producer"),
                path=child_path(_json_path(level), name),
                message="read-only",
            )


def _engine_rules() -> Iterator[Hostile]:
    """What a type cannot say (contracts/rules.py), and what only the offer can say."""
    yield Hostile(
        "engine:redis", _set("cluster.engine", "redis", "valkey"), path="$.cluster.engine"
    )
    yield Hostile(
        "engine:users-on-valkey",
        _set("cluster.users", [{"name": "app"}], "valkey"),
        path="$.cluster.users",
        message="not supported",
    )
    yield Hostile(
        "engine:db-names-on-valkey",
        _set("cluster.db_names", ["cache"], "valkey"),
        path="$.cluster.db_names",
    )
    yield Hostile(
        "engine:restore-on-valkey",
        _set("cluster.backup_restore", {"database_name": "x"}, "valkey"),
        path="$.cluster.backup_restore",
    )
    yield Hostile(
        "engine:advanced-mysql-two-nodes",
        _set("cluster.num_nodes", 2, "advanced_mysql"),
        path="$.cluster.num_nodes",
    )
    yield Hostile(
        "engine:advanced-pg-four-nodes",
        _set("cluster.num_nodes", 4, "advanced_pg"),
        path="$.cluster.num_nodes",
    )
    wrong_settings: list[tuple[str, dict[str, Any], str]] = [
        (
            "mysql-settings-on-pg",
            {"mysql_settings": {"auth_plugin": "caching_sha2_password"}},
            "mysql_settings",
        ),
        (
            "replication-on-mysql",
            {"settings": {"pg_allow_replication": True}},
            "settings.pg_allow_replication",
        ),
        (
            "opensearch-acl-on-pg",
            {"settings": {"opensearch_acl": [{"index": "a"}]}},
            "settings.opensearch_acl",
        ),
        (
            "kafka-acl-on-pg",
            {"settings": {"acl": [{"topic": "t", "permission": "admin"}]}},
            "settings.acl",
        ),
        (
            "mongo-on-pg",
            {"settings": {"mongo_user_settings": {"role": "readOnly"}}},
            "settings.mongo_user_settings",
        ),
        ("readonly-on-pg", {"readonly": True}, "readonly"),
    ]
    for name, extra, setting in wrong_settings:
        engine = "mysql" if name == "replication-on-mysql" else "pg"
        yield Hostile(
            f"engine:{name}",
            _set("cluster.users", [{"name": "u", **extra}], engine),
            path=f"$.cluster.users[0].{setting}",
            message="applies only to",
        )
    yield Hostile(
        "engine:empty-db-name",
        _set("cluster.db_names", ["  "]),
        path="$.cluster.db_names[0]",
        message="must not be empty",
    )
    # Valid for the decoder; DigitalOcean's offer (GET /v2/databases/options) refuses them.
    offer: list[tuple[str, str, Any, str]] = [
        ("region", "cluster.region", "mars1", "not offered in region"),
        ("size", "cluster.size", "db-s-64vcpu-999gb", "is not offered"),
        ("version", "cluster.version", "1", "is not offered"),
        ("node-count", "cluster.num_nodes", 7, "nodes, not 7"),
        ("node-count-huge", "cluster.num_nodes", 10**23, "nodes, not"),
    ]
    for name, path, value, message in offer:
        yield Hostile(
            f"offer:{name}", _set(path, value), path=_json_path(path), message=message, decodes=True
        )


def _request_ids() -> Iterator[Hostile]:
    abuse = {
        "empty": "",
        "129-chars": "x" * 129,
        "5000-chars": "x" * 5000,
        "newline": "a\nb",
        "carriage-return": "a\rb",
        "nul": "a\x00b",
        "tab-only": "\t",
        "escape": "a\x1b[31mred",
        "delete": "a\x7f",
        "backspace": " \x08",
        "log-forgery": 'ok\n{"event": "command_accepted", "request_id": "forged"}',
    }
    for name, value in abuse.items():
        yield Hostile(f"request-id:{name}", _set("request_id", value), path="$.request_id")
    yield Hostile(
        "request-id:missing", _drop("request_id"), path="$.request_id", message="required"
    )


def _values() -> Iterator[Hostile]:
    """Out of range, bad patterns, bad enums, empty strings, missing required fields."""
    cases: list[tuple[str, Any, str | None]] = [
        ("cluster.num_nodes", 0, ">= 1"),
        ("cluster.num_nodes", -1, ">= 1"),
        ("timeout_s", 0, ">= 1"),
        ("timeout_s", -5, ">= 1"),
        ("timeout_s", 604_801, "<= 604800"),
        ("timeout_s", 10**20, "<= 604800"),
        ("cluster.storage_size_mib", -1, ">= 0"),
        ("cluster.name", "", "length >= 1"),
        ("cluster.size", "", "length >= 1"),
        ("cluster.region", "", "length >= 1"),
        ("cluster.users.0.name", "", "length >= 1"),
        ("cluster.engine", "PG", "Expected one of"),
        ("cluster.engine", "postgres", "Expected one of"),
        ("cluster.engine", "", "Expected one of"),
        ("cluster.private_network_uuid", "not-a-uuid", "UUID"),
        ("cluster.private_network_uuid", "D455E75D-4858-4EEC-8C95-DA2F0A5F93A7", "UUID"),
        ("cluster.do_settings.service_cnames.0", "not a host", "hostname"),
        ("cluster.do_settings.service_cnames.0", "-bad.example.com", "hostname"),
        ("cluster.do_settings.service_cnames.0", "db.example.com\n", "hostname"),
        ("cluster.backup_restore.backup_created_at", "yesterday", "RFC3339"),
        ("cluster.rules.0.type", "ip", "Expected one of"),
        ("cluster.rules.0.uuid", "x", "UUID"),
        ("cluster.autoscale.storage.threshold_percent", 14, ">= 15"),
        ("cluster.autoscale.storage.threshold_percent", 96, "<= 95"),
        ("cluster.autoscale.storage.increment_gib", 9, ">= 10"),
        ("cluster.autoscale.storage.increment_gib", 501, "<= 500"),
        ("metadata", {f"k{i}": "v" for i in range(65)}, "length <= 64"),
    ]
    for path, value, message in cases:

        def edit(doc: dict[str, Any], path: str = path, value: Any = value) -> None:
            doc["cluster"].update(copy.deepcopy(_ADDED))
            *parents, last = path.split(".")
            node: Any = doc
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if isinstance(node, list):
                node[int(last)] = value
            else:
                node[last] = value

        yield Hostile(
            f"value:{path}={str(value)[:40]!r}",
            _edit("pg", edit),
            path=_json_path(path),
            message=message,
        )
    metadata_keys = {"": "empty key", "k" * 129: "129-char key"}
    for key, name in metadata_keys.items():
        yield Hostile(
            f"metadata:{name}",
            _set("metadata", {key: "v"}),
            path=f"$.metadata[{json.dumps(shown_key(key), ensure_ascii=False)}]",
        )
    yield Hostile(
        "metadata:value-1025",
        _set("metadata", {"k": "v" * 1025}),
        path='$.metadata["k"]',
        message="length <= 1024",
    )
    enums: list[tuple[str, str, Any]] = [
        ("mysql", "cluster.users.0.mysql_settings.auth_plugin", "plain"),
        ("kafka", "cluster.users.0.settings.acl.0.permission", "all"),
        ("mongodb", "cluster.users.0.settings.mongo_user_settings.role", "root"),
        ("opensearch", "cluster.users.0.settings.opensearch_acl.0.permission", "god"),
    ]
    for engine, path, value in enums:
        yield Hostile(
            f"enum:{path}", _set(path, value, engine), path=_json_path(path), message="one of"
        )
    required: list[tuple[str, str]] = [
        ("cluster", "pg"),
        ("cluster.name", "pg"),
        ("cluster.engine", "pg"),
        ("cluster.num_nodes", "pg"),
        ("cluster.size", "pg"),
        ("cluster.region", "pg"),
        ("cluster.users.0.name", "pg"),
        ("cluster.users.0.mysql_settings.auth_plugin", "mysql"),
        ("cluster.users.0.settings.acl.0.topic", "kafka"),
        ("cluster.users.0.settings.acl.0.permission", "kafka"),
    ]
    for path, engine in required:
        yield Hostile(
            f"missing:{path}", _drop(path, engine), path=_json_path(path), message="required"
        )


def refusal_problem(case: Hostile, errors: list[FieldError]) -> str | None:
    """Why ``errors`` do not refuse ``case`` as it must be refused; None when they do.

    Every error needs a path (``$`` or below) and a message; one of them must be at the
    case's path and, if the case says so, contain its message fragment.
    """
    if not errors:
        return f"{case.label}: rejected without errors"
    for error in errors:
        if not error.path.startswith("$") or not error.message:
            return f"{case.label}: error without a path or a message: {error!r}"
    if case.path is None:
        return None
    at_path = [e.message for e in errors if e.path == case.path]
    if not at_path:
        shown = [str(e)[:120] for e in errors[:5]]
        return f"{case.label}: no error at {case.path}; got {shown}"
    if case.message is not None and not any(case.message in m for m in at_path):
        return f"{case.label}: the error at {case.path} does not say {case.message!r}: {at_path}"
    return None


def handwritten(limit: int) -> list[Hostile]:
    """Every hand-written case, for a service whose body limit is ``limit`` bytes."""
    return [
        *_invalid_json(),
        *_invalid_utf8(),
        *_content_types(),
        *_oversized(limit),
        *_deeply_nested(),
        *_huge_arrays(),
        *_wrong_types(),
        *_unknown_fields(),
        *_read_only_fields(),
        *_engine_rules(),
        *_request_ids(),
        *_values(),
    ]
