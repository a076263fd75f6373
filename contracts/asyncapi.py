"""The AsyncAPI 3 document of the provisioner, and one JSON Schema per message.

Every payload schema is generated from the Structs with ``msgspec.json.schema_components``,
never written by hand, so the document cannot drift from what ``decode_command`` accepts
and what the service publishes. Two adjustments follow from how the Structs are used:

* the command is strict end to end (``decode_command`` reports unknown fields at every
  level), so every object reachable from ``ProvisionDatabase`` gets
  ``additionalProperties: false``, including the small structs that are lenient as types;
* a field that the encoder always writes (a Struct without ``omit_defaults`` whose default
  is not ``UNSET``) is marked required, so the event schemas promise what CloudEvents
  requires (``specversion``, ``source``...) and what subscribers can rely on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import msgspec
import msgspec.inspect as mi
import msgspec.structs
import msgspec.yaml

from contracts.commands import COMMAND_CONTENT_TYPE, ProvisionDatabase
from contracts.digitalocean import (
    DatabaseClusterCreate,
    DatabaseConnection,
    DatabaseUserCreate,
    MySQLSettings,
)
from contracts.errors import FieldError
from contracts.events import (
    EVENT_CONTENT_TYPE,
    EVENT_TYPES,
    ConnectionReady,
    ConnectionReadyData,
    Event,
    Failed,
    FailedData,
    Rejected,
    RejectedData,
    StatusChanged,
    StatusChangedData,
)

__all__ = [
    "ASYNCAPI_VERSION",
    "COMMAND_EXCHANGE",
    "COMMAND_ROUTING_KEY",
    "EVENT_EXCHANGE",
    "JSON_SCHEMA_DIALECT",
    "MESSAGE_TYPES",
    "REJECTED_QUEUE",
    "REJECTION_REASON_HEADER",
    "REQUEST_QUEUE",
    "YamlNotInstalled",
    "build_document",
    "dump",
    "message_schemas",
    "write_schemas",
]

ASYNCAPI_VERSION: Final = "3.0.0"
JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
AMQP_BINDING_VERSION: Final = "0.3.0"

# The broker names of design.md's message flow.
COMMAND_EXCHANGE: Final = "provisioner.commands"
COMMAND_ROUTING_KEY: Final = "database.cluster.create"
REQUEST_QUEUE: Final = "provisioner.requests"
EVENT_EXCHANGE: Final = "provisioner.events"
REJECTED_QUEUE: Final = "provisioner.rejected"
REJECTION_REASON_HEADER: Final = "x-rejection-reason"

# One JSON Schema (and one AsyncAPI message) per wire message, keyed by Struct name.
MESSAGE_TYPES: Final[dict[str, type[ProvisionDatabase] | type[Event]]] = {
    ProvisionDatabase.__name__: ProvisionDatabase,
    **{cls.__name__: cls for cls in EVENT_TYPES},
}

_COMPONENT_REF: Final = "#/components/schemas/{name}"
_DEFS_REF: Final = "#/$defs/{name}"


class YamlNotInstalled(RuntimeError):
    """YAML output was asked for but PyYAML is not importable."""


# --- schemas ------------------------------------------------------------------------------


def _struct_classes(types: list[Any]) -> dict[str, type]:
    """Every Struct class reachable from ``types``, keyed by the name msgspec gives it."""
    found: dict[str, type] = {}

    def visit(t: mi.Type) -> None:
        if isinstance(t, mi.StructType):
            if t.cls.__name__ in found:
                return
            found[t.cls.__name__] = t.cls
            for field in t.fields:
                visit(field.type)
        elif isinstance(t, mi.UnionType):
            for option in t.types:
                visit(option)
        elif isinstance(t, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
            visit(t.item_type)
        elif isinstance(t, mi.DictType):
            visit(t.key_type)
            visit(t.value_type)

    for info in mi.multi_type_info(types):
        visit(info)
    return found


def _require_encoded_fields(schemas: dict[str, Any], classes: dict[str, type]) -> None:
    """Mark as required every field the encoder always writes."""
    for name, cls in classes.items():
        assert issubclass(cls, msgspec.Struct)
        if cls.__struct_config__.omit_defaults:
            continue
        schema = schemas[name]
        required = list(schema.get("required", []))
        for field in msgspec.structs.fields(cls):
            # An UNSET default means "absent from the JSON"; every other value is written.
            if field.encode_name not in required and field.default is not msgspec.UNSET:
                required.append(field.encode_name)
        schema["required"] = required


def _subschemas(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``schema`` and every schema nested in it, without following ``$ref``."""
    yield schema
    children: list[Any] = [
        *schema.get("properties", {}).values(),
        *schema.get("anyOf", []),
        *schema.get("oneOf", []),
        *schema.get("allOf", []),
        schema.get("items"),
        schema.get("additionalProperties"),
    ]
    for child in children:
        if isinstance(child, dict):
            yield from _subschemas(child)


def _forbid_unknown_fields(schema: dict[str, Any]) -> None:
    """``additionalProperties: false`` on every Struct object of ``schema``.

    A dict-typed object (such as ``metadata``) already has an ``additionalProperties``
    schema and keeps it.
    """
    for node in _subschemas(schema):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False


# The Structs a command is made of: strict wherever they appear, so the document's
# components and the standalone schemas agree.
_COMMAND_STRUCTS: Final = frozenset(_struct_classes([ProvisionDatabase]))


def _generated(types: list[Any], ref_template: str) -> tuple[list[Any], dict[str, Any]]:
    """msgspec's schemas for ``types``, adjusted as the module docstring says."""
    roots, schemas = msgspec.json.schema_components(types, ref_template=ref_template)
    _require_encoded_fields(schemas, _struct_classes(types))
    for name, schema in schemas.items():
        if name in _COMMAND_STRUCTS:
            _forbid_unknown_fields(schema)
    return list(roots), schemas


def message_schemas() -> dict[str, dict[str, Any]]:
    """One standalone JSON Schema (draft 2020-12, with ``$defs``) per message."""
    out: dict[str, dict[str, Any]] = {}
    for name, cls in MESSAGE_TYPES.items():
        (root,), defs = _generated([cls], _DEFS_REF)
        out[name] = {
            "$schema": JSON_SCHEMA_DIALECT,
            "$id": f"urn:provisioner:schema:{name}",
            "title": name,
            **root,
            "$defs": defs,
        }
    return out


def write_schemas(directory: Path) -> list[Path]:
    """Write ``message_schemas()`` as ``NAME.schema.json`` files; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in message_schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", "utf-8")
        paths.append(path)
    return paths


# --- examples (real encodings, so the parser checks the schemas against them) -------------

_EXAMPLE_TIME: Final = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
_EXAMPLE_REQUEST: Final = "orders-db-2025-01"
_EXAMPLE_CLUSTER: Final = "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
_EXAMPLE_METADATA: Final = {"team": "orders"}


def _example_command() -> ProvisionDatabase:
    return ProvisionDatabase(
        request_id=_EXAMPLE_REQUEST,
        cluster=DatabaseClusterCreate(
            name="orders",
            engine="mysql",
            num_nodes=2,
            size="db-s-2vcpu-4gb",
            region="nyc3",
            version="8",
            tags=["production"],
            users=[
                DatabaseUserCreate(
                    name="app",
                    mysql_settings=MySQLSettings(auth_plugin="caching_sha2_password"),
                )
            ],
            db_names=["orders"],
        ),
        metadata=_EXAMPLE_METADATA,
    )


def _example_events() -> dict[str, Event]:
    status = StatusChanged.of(
        StatusChangedData(
            request_id=_EXAMPLE_REQUEST,
            cluster_id=_EXAMPLE_CLUSTER,
            name="orders",
            engine="mysql",
            status="online",
            previous_status="creating",
            metadata=_EXAMPLE_METADATA,
        )
    )
    ready = ConnectionReady.of(
        ConnectionReadyData(
            request_id=_EXAMPLE_REQUEST,
            cluster_id=_EXAMPLE_CLUSTER,
            name="orders",
            engine="mysql",
            region="nyc3",
            connection=DatabaseConnection(
                database="defaultdb",
                host="orders-do-user-1-0.db.ondigitalocean.com",
                port=25060,
                user="doadmin",
                ssl=True,
            ),
            db_names=["defaultdb", "orders"],
            secrets="omitted",
            metadata=_EXAMPLE_METADATA,
        )
    )
    body = b'{"request_id": "orders-db-2025-01", "cluster": {"name": "orders", "num_node": 2}}'
    rejected = Rejected.of(
        RejectedData(
            request_id=_EXAMPLE_REQUEST,
            errors=[
                FieldError("$.cluster.num_node", "unknown field `num_node`"),
                FieldError("$.cluster.engine", "required field `engine` is missing"),
            ],
        ),
        body,
    )
    failed = Failed.of(
        FailedData(
            request_id=_EXAMPLE_REQUEST,
            reason="timeout",
            message="the cluster was not online after 1800 s",
            cluster_id=_EXAMPLE_CLUSTER,
            metadata=_EXAMPLE_METADATA,
        )
    )
    events: list[Event] = [status, ready, rejected, failed]
    for event in events:
        event.time = _EXAMPLE_TIME
    return {type(event).__name__: event for event in events}


def _builtins(value: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


# --- the document -------------------------------------------------------------------------

_EVENT_SUMMARIES: Final[dict[str, str]] = {
    "StatusChanged": "The cluster moved from one DigitalOcean status to another.",
    "ConnectionReady": "The cluster is online, its users and databases exist: how to connect.",
    "Rejected": "The command was invalid; every bad field is listed. No API call was made.",
    "Failed": "A valid request could not be completed.",
}


def _event_short_name(cls: type[Event]) -> str:
    tag = cls.__struct_config__.tag
    assert isinstance(tag, str)
    return tag.rsplit(".", 1)[-1]


def _message_key(name: str) -> str:
    return name[0].lower() + name[1:]


# W3C trace context in AMQP headers, as the OpenTelemetry messaging conventions carry it.
TRACE_HEADERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "traceparent": {
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C trace context (https://www.w3.org/TR/trace-context/).",
        },
        "tracestate": {"type": "string", "maxLength": 512},
    },
}


def _event_message(cls: type[Event], example: Event, *, reply: bool) -> dict[str, Any]:
    tag = cls.__struct_config__.tag
    message: dict[str, Any] = {
        "name": tag,
        "title": cls.__name__,
        "summary": _EVENT_SUMMARIES[cls.__name__],
        "description": (
            "The AMQP headers `traceparent` and `tracestate` carry the W3C trace context of "
            "the publish, as the body's CloudEvents `traceparent` extension attribute does."
        ),
        "headers": TRACE_HEADERS,
        "contentType": EVENT_CONTENT_TYPE,
        "payload": {"$ref": _COMPONENT_REF.format(name=cls.__name__)},
        "examples": [{"name": _event_short_name(cls), "payload": _builtins(example)}],
        "bindings": {"amqp": {"bindingVersion": AMQP_BINDING_VERSION}},
    }
    if reply:
        message["correlationId"] = {
            "description": "The AMQP `correlation_id` of the command, copied onto each event.",
            "location": "$message.header#/correlation_id",
        }
    return message


def _channel_messages(keys: list[str], channel: str) -> list[dict[str, str]]:
    return [{"$ref": f"#/channels/{channel}/messages/{key}"} for key in keys]


def build_document(
    *, version: str = "0.1.0", host: str = "localhost:5672", vhost: str = "/"
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the service, for the broker at ``host``."""
    roots, schemas = _generated(list(MESSAGE_TYPES.values()), _COMPONENT_REF)
    del roots  # each message refers to its component by name
    events = _example_events()
    event_keys = [_message_key(cls.__name__) for cls in EVENT_TYPES]
    short_names = [_event_short_name(cls) for cls in EVENT_TYPES]
    command_key = _message_key(ProvisionDatabase.__name__)

    messages: dict[str, Any] = {
        ProvisionDatabase.__name__: {
            "name": COMMAND_ROUTING_KEY,
            "title": ProvisionDatabase.__name__,
            "summary": "Create one DigitalOcean database cluster.",
            "description": (
                "Strict: unknown fields (at any level) and wrong types are errors that name the "
                "JSON path, and the rules of `contracts/rules.py` apply. The AMQP `user_id` "
                "property is required: set it to the RabbitMQ user you connect as (the broker "
                "checks it); it names the producer, and a request is (producer, `request_id`), "
                "`request_id` being the idempotency key. What a producer may ask for is the "
                "deployment's policy to say. A command that carries an AMQP `reply_to` (Direct "
                "Reply-to, or a queue named `<producer>.<anything>` unless the policy says "
                "otherwise) also gets each of its events there, with its `correlation_id`. With "
                "`recipient_public_key`, `connection_ready` carries the credentials only sealed "
                "to that key (`sealed_secrets`)."
            ),
            "headers": {
                **TRACE_HEADERS,
                "description": "Optional W3C trace context: the service continues the "
                "producer's trace (a command without one starts a trace).",
            },
            "contentType": COMMAND_CONTENT_TYPE,
            "payload": {"$ref": _COMPONENT_REF.format(name=ProvisionDatabase.__name__)},
            "examples": [{"name": "mysql", "payload": _builtins(_example_command())}],
            "bindings": {"amqp": {"bindingVersion": AMQP_BINDING_VERSION}},
        },
        "RejectedCommand": {
            "name": "rejected-command",
            "title": "Rejected command",
            "summary": "A command that was refused, parked unchanged for an operator.",
            "description": (
                "The original message body and properties, exactly as the producer sent them "
                f"(it may not even be JSON), with the reason in the `{REJECTION_REASON_HEADER}` "
                "header. The matching `database.cluster.rejected` event lists every error."
            ),
            "headers": {
                "type": "object",
                "properties": {
                    REJECTION_REASON_HEADER: {
                        "type": "string",
                        "description": "Why the command was refused, one line per error.",
                    },
                    "x-provisioner-producer": {
                        "type": "string",
                        "description": "The producer (RabbitMQ user) that sent the command, "
                        "when it carried a user_id.",
                    },
                },
                "required": [REJECTION_REASON_HEADER],
            },
            "payload": {"description": "The original body, unchanged."},
        },
    }
    for cls in EVENT_TYPES:
        messages[cls.__name__] = _event_message(cls, events[cls.__name__], reply=False)

    amqp_exchange = {"durable": True, "autoDelete": False, "vhost": vhost}
    channels: dict[str, Any] = {
        "commands": {
            "address": COMMAND_ROUTING_KEY,
            "title": "Commands",
            "description": (
                f"Producers publish to the direct exchange `{COMMAND_EXCHANGE}` with routing key "
                f"`{COMMAND_ROUTING_KEY}`; it lands in the quorum queue `{REQUEST_QUEUE}` that "
                "the service consumes. Publishing straight to that queue through the default "
                "exchange works too."
            ),
            "messages": {
                command_key: {"$ref": f"#/components/messages/{ProvisionDatabase.__name__}"}
            },
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": COMMAND_EXCHANGE, "type": "direct", **amqp_exchange},
                    # The binding has no field for the queue behind a routing key.
                    "x-queue": {
                        "name": REQUEST_QUEUE,
                        "durable": True,
                        "arguments": {"x-queue-type": "quorum"},
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        },
        "events": {
            "address": "database.cluster.{event}",
            "title": "Events",
            "description": (
                f"CloudEvents 1.0 in structured JSON mode on the topic exchange `{EVENT_EXCHANGE}`;"
                " the routing key is the event's `type`. Ids are deterministic: deduplicate "
                "redeliveries on (`source`, `id`)."
            ),
            "parameters": {
                "event": {
                    "description": "The event's short name: the routing key's last word.",
                    "enum": short_names,
                }
            },
            "messages": {
                key: {"$ref": f"#/components/messages/{cls.__name__}"}
                for key, cls in zip(event_keys, EVENT_TYPES, strict=True)
            },
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": EVENT_EXCHANGE, "type": "topic", **amqp_exchange},
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        },
        "replyTo": {
            "address": None,
            "title": "Reply-to",
            "description": (
                "The queue named by a command's AMQP `reply_to`, through the default exchange: "
                "every event of that request, with the command's `correlation_id`."
            ),
            "messages": {
                key: _event_message(cls, events[cls.__name__], reply=True)
                for key, cls in zip(event_keys, EVENT_TYPES, strict=True)
            },
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": "", "type": "default", "vhost": vhost},
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        },
        "rejected": {
            "address": REJECTED_QUEUE,
            "title": "Parked commands",
            "description": (
                f"Every refused command is moved to the quorum queue `{REJECTED_QUEUE}` for an "
                "operator to inspect; nothing a producer sends is silently dropped."
            ),
            "messages": {"rejectedCommand": {"$ref": "#/components/messages/RejectedCommand"}},
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": REJECTED_QUEUE,
                        "durable": True,
                        "exclusive": False,
                        "autoDelete": False,
                        "vhost": vhost,
                        "x-arguments": {"x-queue-type": "quorum"},
                    },
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        },
    }
    operations: dict[str, Any] = {
        "receiveProvisionDatabase": {
            "action": "receive",
            "title": "Provision a database cluster",
            "summary": "Validate the command, create the cluster, follow it until it is online.",
            "channel": {"$ref": "#/channels/commands"},
            "messages": _channel_messages([command_key], "commands"),
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
            "reply": {
                "address": {
                    "description": "The command's AMQP `reply_to` property.",
                    "location": "$message.header#/reply_to",
                },
                "channel": {"$ref": "#/channels/replyTo"},
                "messages": _channel_messages(event_keys, "replyTo"),
            },
        },
        "sendEvents": {
            "action": "send",
            "title": "Publish events",
            "summary": "Each status change, then connection_ready, rejected or failed.",
            "channel": {"$ref": "#/channels/events"},
            "messages": _channel_messages(event_keys, "events"),
            "bindings": {
                "amqp": {
                    "deliveryMode": 2,
                    "mandatory": False,
                    "bindingVersion": AMQP_BINDING_VERSION,
                }
            },
        },
        "sendReplies": {
            "action": "send",
            "title": "Reply to the producer",
            "summary": "The same events, to the command's reply_to queue.",
            "channel": {"$ref": "#/channels/replyTo"},
            "messages": _channel_messages(event_keys, "replyTo"),
        },
        "parkRejectedCommand": {
            "action": "send",
            "title": "Park a rejected command",
            "summary": "Move a refused command, unchanged, to the parking queue.",
            "channel": {"$ref": "#/channels/rejected"},
            "messages": _channel_messages(["rejectedCommand"], "rejected"),
        },
    }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:provisioner:asyncapi",
        "info": {
            "title": "DigitalOcean database provisioner",
            "version": version,
            "description": (
                "Backend teams get managed databases without calling DigitalOcean themselves. "
                "A producer publishes one `ProvisionDatabase` command; the service validates it "
                "against the DigitalOcean spec, calls `POST /v2/databases`, follows the cluster "
                "from `creating` to `online`, creates the requested users and databases, and "
                "publishes CloudEvents: each status change, then `connection_ready`, or "
                "`rejected` / `failed`. Payload schemas are generated from the `contracts` "
                "Structs."
            ),
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": COMMAND_CONTENT_TYPE,
        "servers": {
            "rabbitmq": {
                "host": host,
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "pathname": vhost,
                "description": "The RabbitMQ broker (quorum queues need RabbitMQ 3.8 or later).",
                "security": [{"$ref": "#/components/securitySchemes/userPassword"}],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "securitySchemes": {
                "userPassword": {
                    "type": "userPassword",
                    "description": "The AMQP user and password of PROVISIONER_AMQP_URL.",
                }
            },
        },
    }


def dump(document: dict[str, Any], fmt: Literal["json", "yaml"]) -> str:
    """``document`` as JSON or YAML text; YAML needs PyYAML (``YamlNotInstalled`` if absent)."""
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    encode: Callable[[Any], bytes] = msgspec.yaml.encode
    try:
        return encode(document).decode()
    except ImportError:
        raise YamlNotInstalled(
            "YAML output needs PyYAML: pip install pyyaml (or use --format json)"
        ) from None
