"""JSON Schemas generated from the contract Structs, with two adjustments.

Every payload schema comes from ``msgspec.json.schema_components``, never written by hand,
so it cannot drift from what ``decode_command`` accepts and what the service publishes.
msgspec's output is adjusted where it says less than the Structs do:

* the command is strict end to end (``decode_command`` reports unknown fields at every
  level), so every object reachable from ``ProvisionDatabase`` gets
  ``additionalProperties: false``, including the small structs that are lenient as types;
* a field that the encoder always writes (a Struct without ``omit_defaults`` whose default
  is not ``UNSET``) is marked required, so the event schemas promise what CloudEvents
  requires (``specversion``, ``source``...) and what subscribers can rely on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import msgspec.inspect as mi
import msgspec.structs

from contracts.commands import ProvisionDatabase
from contracts.events import EVENT_TYPES, Event

__all__ = [
    "COMPONENT_REF",
    "JSON_SCHEMA_DIALECT",
    "MESSAGE_TYPES",
    "generated",
    "message_schemas",
    "write_schemas",
]

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

# One JSON Schema (and one AsyncAPI message) per wire message, keyed by Struct name.
MESSAGE_TYPES: Final[dict[str, type[ProvisionDatabase] | type[Event]]] = {
    ProvisionDatabase.__name__: ProvisionDatabase,
    **{cls.__name__: cls for cls in EVENT_TYPES},
}

# Where a schema refers to another: inside the AsyncAPI document, or inside one file.
COMPONENT_REF: Final = "#/components/schemas/{name}"
_DEFS_REF: Final = "#/$defs/{name}"


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


def generated(types: list[Any], ref_template: str) -> tuple[list[Any], dict[str, Any]]:
    """msgspec's schemas for ``types`` (roots and components), adjusted as the module
    docstring says."""
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
        (root,), defs = generated([cls], _DEFS_REF)
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
