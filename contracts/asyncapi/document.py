"""The AsyncAPI 3 document of the provisioner: its channels, operations and messages.

The payload schemas come from ``schemas.py`` and the examples from ``examples.py``; this
module says what travels where on the broker.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, Literal

import msgspec
import msgspec.yaml

from contracts.asyncapi.examples import example_command, example_events
from contracts.asyncapi.schemas import COMPONENT_REF, MESSAGE_TYPES, generated
from contracts.commands import COMMAND_CONTENT_TYPE, ProvisionDatabase
from contracts.events import EVENT_CONTENT_TYPE, EVENT_TYPES, Event
from contracts.names import (
    COMMAND_EXCHANGE,
    COMMAND_ROUTING_KEY,
    EVENT_EXCHANGE,
    PRODUCER_HEADER,
    REJECTED_QUEUE,
    REJECTION_REASON_HEADER,
    REQUEST_QUEUE,
)

__all__ = ["ASYNCAPI_VERSION", "YamlNotInstalled", "build_document", "dump"]

ASYNCAPI_VERSION: Final = "3.0.0"
AMQP_BINDING_VERSION: Final = "0.3.0"


class YamlNotInstalled(RuntimeError):
    """YAML output was asked for but PyYAML is not importable."""


def _builtins(value: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(value))


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
        "payload": {"$ref": COMPONENT_REF.format(name=cls.__name__)},
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


# The message keys a channel lists its events under, and their short names.
_EVENT_KEYS: Final = [_message_key(cls.__name__) for cls in EVENT_TYPES]
_COMMAND_KEY: Final = _message_key(ProvisionDatabase.__name__)


def _messages(events: dict[str, Event]) -> dict[str, Any]:
    """The document's messages: the command, the parked command, each event."""
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
            "payload": {"$ref": COMPONENT_REF.format(name=ProvisionDatabase.__name__)},
            "examples": [{"name": "mysql", "payload": _builtins(example_command())}],
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
                    PRODUCER_HEADER: {
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
    return messages


def _channels(events: dict[str, Event], vhost: str) -> dict[str, Any]:
    """Where each message travels: exchanges, routing keys, queues."""
    short_names = [_event_short_name(cls) for cls in EVENT_TYPES]
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
                _COMMAND_KEY: {"$ref": f"#/components/messages/{ProvisionDatabase.__name__}"}
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
                for key, cls in zip(_EVENT_KEYS, EVENT_TYPES, strict=True)
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
                for key, cls in zip(_EVENT_KEYS, EVENT_TYPES, strict=True)
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
    return channels


def _operations() -> dict[str, Any]:
    """What the service receives and sends, channel by channel."""
    operations: dict[str, Any] = {
        "receiveProvisionDatabase": {
            "action": "receive",
            "title": "Provision a database cluster",
            "summary": "Validate the command, create the cluster, follow it until it is online.",
            "channel": {"$ref": "#/channels/commands"},
            "messages": _channel_messages([_COMMAND_KEY], "commands"),
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
            "reply": {
                "address": {
                    "description": "The command's AMQP `reply_to` property.",
                    "location": "$message.header#/reply_to",
                },
                "channel": {"$ref": "#/channels/replyTo"},
                "messages": _channel_messages(_EVENT_KEYS, "replyTo"),
            },
        },
        "sendEvents": {
            "action": "send",
            "title": "Publish events",
            "summary": "Each status change, then connection_ready, rejected or failed.",
            "channel": {"$ref": "#/channels/events"},
            "messages": _channel_messages(_EVENT_KEYS, "events"),
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
            "messages": _channel_messages(_EVENT_KEYS, "replyTo"),
        },
        "parkRejectedCommand": {
            "action": "send",
            "title": "Park a rejected command",
            "summary": "Move a refused command, unchanged, to the parking queue.",
            "channel": {"$ref": "#/channels/rejected"},
            "messages": _channel_messages(["rejectedCommand"], "rejected"),
        },
    }
    return operations


def build_document(
    *, version: str = "0.1.0", host: str = "localhost:5672", vhost: str = "/"
) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of the service, for the broker at ``host``."""
    roots, schemas = generated(list(MESSAGE_TYPES.values()), COMPONENT_REF)
    del roots  # each message refers to its component by name
    events = example_events()
    channels = _channels(events, vhost)
    operations = _operations()
    messages = _messages(events)
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
