"""docs/events.md cannot drift from the contracts: every example body under an event's heading
decodes as that event and re-encodes to the same JSON, its id is the one the contracts derive,
every ``data`` field is described, and the id recipe the page gives is the real one."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts.events import (
    EVENT_TYPES,
    ConnectionReady,
    Failed,
    Rejected,
    StatusChanged,
    decode_event,
    encode_event,
    event_id,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
EVENT_HEADING = re.compile(r"^## `(database\.cluster\.[a-z_]+)`$")
JSON_BLOCK = re.compile(r"^```json\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TAGS = {str(t.__struct_config__.tag): t for t in EVENT_TYPES}


def sections(text: str) -> tuple[dict[str, str], str]:
    """Each event heading's text up to the next level-2 heading, and all the other text."""
    found: dict[str, str] = {}
    other: list[str] = []
    current: str | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("## "):
            match = EVENT_HEADING.match(line.rstrip("\n"))
            current = match.group(1) if match else None
            if current is not None:
                assert current not in found, f"two sections for {current}"
                found[current] = ""
                continue
        if current is None:
            other.append(line)
        else:
            found[current] += line
    return found, "".join(other)


def examples() -> list[Any]:
    """One pytest param per JSON block under an event heading."""
    found, _ = sections(DOC.read_text())
    return [
        pytest.param(heading, block, id=f"{heading.rsplit('.', 1)[1]}-{n}")
        for heading, text in found.items()
        for n, block in enumerate(JSON_BLOCK.findall(text), start=1)
    ]


def test_every_event_type_has_a_section_with_an_example() -> None:
    found, _ = sections(DOC.read_text())
    assert set(found) == set(TAGS)
    for heading, text in found.items():
        assert JSON_BLOCK.search(text), f"no example body under {heading}"


def test_no_json_example_sits_outside_an_event_section() -> None:
    _, other = sections(DOC.read_text())
    assert JSON_BLOCK.findall(other) == []


@pytest.mark.parametrize(("heading", "block"), examples())
def test_example_decodes_as_the_event_its_heading_names(heading: str, block: str) -> None:
    event = decode_event(block.encode())
    assert event.routing_key == heading
    # The decoder ignores unknown fields; re-encoding shows a misspelt or stale one.
    assert json.loads(encode_event(event)) == json.loads(block)


@pytest.mark.parametrize(("heading", "block"), examples())
def test_example_id_is_the_one_the_contracts_derive(heading: str, block: str) -> None:
    event = decode_event(block.encode())
    match event:
        case StatusChanged():
            assert StatusChanged.of(event.data, source=event.source).id == event.id
        case ConnectionReady():
            assert ConnectionReady.of(event.data, source=event.source).id == event.id
        case Failed():
            assert Failed.of(event.data, source=event.source).id == event.id
        case Rejected():
            # Derived from the rejected message's bytes, which the page does not show.
            assert uuid.UUID(event.id).version == 5
    assert (event.subject or None) == event.data.request_id


def described_fields(section: str) -> list[str]:
    """The first column of the section's ``| `data` field | meaning |`` table."""
    lines = section.splitlines()
    start = lines.index("| `data` field | meaning |")
    names: list[str] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        match = re.match(r"^\| `([a-z_]+)` \|", line)
        assert match is not None, f"not a field row: {line}"
        names.append(match.group(1))
    return names


def test_the_data_table_of_each_event_describes_exactly_its_fields() -> None:
    found, _ = sections(DOC.read_text())
    for heading, text in found.items():
        event_type = msgspec.inspect.type_info(TAGS[heading])
        assert isinstance(event_type, msgspec.inspect.StructType)
        (data,) = [f for f in event_type.fields if f.name == "data"]
        assert isinstance(data.type, msgspec.inspect.StructType)
        assert described_fields(text) == [f.name for f in data.type.fields], heading


def test_the_id_recipe_on_the_page_is_the_contracts_one() -> None:
    text = DOC.read_text()
    namespace = re.search(r"fixed namespace\s+`([0-9a-f-]{36})`", text)
    worked = re.search(
        r'`event_id\("([^"]+)", "([^"]+)", "([^"]+)"\)` is\s+`([0-9a-f-]{36})`', text
    )
    assert namespace is not None and worked is not None
    request_id, transition, producer, expected = worked.groups()
    assert event_id(request_id, transition, producer) == expected
    recipe = uuid.uuid5(
        uuid.UUID(namespace.group(1)), f"{producer}\x00{request_id}\x00{transition}"
    )
    assert str(recipe) == expected


def test_every_envelope_attribute_is_in_the_envelope_table() -> None:
    text = DOC.read_text()
    table = text[text.index("## The envelope") : text.index("## AMQP properties")]
    attributes = {*StatusChanged.__struct_fields__, "type"}
    missing = [a for a in sorted(attributes) if f"| `{a}` |" not in table]
    assert missing == []
