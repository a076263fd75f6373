"""The AsyncAPI 3 document of the provisioner, and one JSON Schema per message.

``schemas.py`` generates the payload schemas from the Structs, ``examples.py`` holds the
example messages, ``document.py`` puts them on the broker's channels.
"""

from __future__ import annotations

from contracts.asyncapi.document import ASYNCAPI_VERSION, YamlNotInstalled, build_document, dump
from contracts.asyncapi.schemas import (
    JSON_SCHEMA_DIALECT,
    MESSAGE_TYPES,
    message_schemas,
    write_schemas,
)

__all__ = [
    "ASYNCAPI_VERSION",
    "JSON_SCHEMA_DIALECT",
    "MESSAGE_TYPES",
    "YamlNotInstalled",
    "build_document",
    "dump",
    "message_schemas",
    "write_schemas",
]
