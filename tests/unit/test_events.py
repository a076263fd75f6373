"""Events: CloudEvents 1.0 structured JSON, one decoder for all, deterministic ids."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from contracts.digitalocean import DatabaseConnection, DatabaseUser
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
    decode_event,
    encode_event,
    event_id,
)

REQUEST = "req-42"
CLUSTER_ID = "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
METADATA = {"team": "orders"}
BODY = b'{"request_id": "req-42", "cluster": {"num_node": 1}}'


def status_changed(previous: str | None = None, status: str = "creating") -> StatusChanged:
    return StatusChanged.of(
        StatusChangedData(
            request_id=REQUEST,
            cluster_id=CLUSTER_ID,
            name="orders",
            engine="pg",
            status=status,
            previous_status=previous,
            metadata=METADATA,
        )
    )


def connection_ready(request_id: str = REQUEST) -> ConnectionReady:
    return ConnectionReady.of(
        ConnectionReadyData(
            request_id=request_id,
            cluster_id=CLUSTER_ID,
            name="orders",
            engine="pg",
            region="nyc3",
            connection=DatabaseConnection(host="h.db.ondigitalocean.com", port=25060, ssl=True),
            users=[DatabaseUser(name="app", role="normal")],
            db_names=["orders"],
            ca_certificate="LS0tLS1CRUdJTi...",
            metadata=METADATA,
        )
    )


def rejected(body: bytes = BODY, request_id: str | None = REQUEST) -> Rejected:
    return Rejected.of(
        RejectedData(
            errors=[FieldError("$.cluster.num_node", "unknown field `num_node`")],
            request_id=request_id,
        ),
        body,
    )


def failed(request_id: str = REQUEST) -> Failed:
    return Failed.of(
        FailedData(
            request_id=request_id,
            reason="timeout",
            message="not online after 1800 s",
            cluster_id=CLUSTER_ID,
            metadata=METADATA,
        )
    )


FACTORIES: dict[str, Callable[[], Event]] = {
    "database.cluster.status_changed": status_changed,
    "database.cluster.connection_ready": connection_ready,
    "database.cluster.rejected": rejected,
    "database.cluster.failed": failed,
}


def test_the_four_event_types_are_the_four_routing_keys_of_the_design() -> None:
    assert {cls.__struct_config__.tag for cls in EVENT_TYPES} == set(FACTORIES)
    assert EVENT_CONTENT_TYPE == "application/cloudevents+json"


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_event_encodes_to_structured_cloudevents_json(kind: str) -> None:
    event = FACTORIES[kind]()
    document = msgspec.json.decode(encode_event(event))
    assert document["specversion"] == "1.0"
    assert document["type"] == kind == event.routing_key
    assert isinstance(document["id"], str) and document["id"]
    assert isinstance(document["source"], str) and document["source"]
    assert document["datacontenttype"] == "application/json"
    sent = datetime.fromisoformat(document["time"])
    assert sent.tzinfo is not None
    assert abs(datetime.now(UTC) - sent) < timedelta(minutes=1)
    assert isinstance(document["data"], dict)
    # CloudEvents attribute names: lower-case letters and digits only.
    assert all(re.fullmatch(r"[a-z0-9]{1,20}", name) for name in document)


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_every_event_carries_the_request_id_and_names_it_as_subject(kind: str) -> None:
    document = msgspec.json.decode(encode_event(FACTORIES[kind]()))
    assert document["data"]["request_id"] == REQUEST
    assert document["subject"] == REQUEST


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_decode_event_round_trips_to_the_same_class(kind: str) -> None:
    event = FACTORIES[kind]()
    decoded = decode_event(encode_event(event))
    assert type(decoded) is type(event)
    assert decoded == event


def test_metadata_of_the_command_is_echoed_in_the_event_data() -> None:
    for kind in ("database.cluster.status_changed", "database.cluster.failed"):
        assert msgspec.json.decode(encode_event(FACTORIES[kind]()))["data"]["metadata"] == METADATA


def test_decode_event_ignores_cloudevents_extension_attributes() -> None:
    document = msgspec.json.decode(encode_event(failed()))
    document["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    decoded = decode_event(msgspec.json.encode(document))
    assert isinstance(decoded, Failed)
    assert decoded.data.reason == "timeout"


def test_decode_event_refuses_an_unknown_type() -> None:
    document: dict[str, Any] = msgspec.json.decode(encode_event(failed()))
    document["type"] = "database.cluster.deleted"
    with pytest.raises(msgspec.ValidationError, match=re.escape("database.cluster.deleted")):
        decode_event(msgspec.json.encode(document))


def test_rejected_event_carries_every_field_error() -> None:
    decoded = decode_event(encode_event(rejected()))
    assert isinstance(decoded, Rejected)
    assert decoded.data.errors == [FieldError("$.cluster.num_node", "unknown field `num_node`")]


def test_same_request_and_transition_give_the_same_id_at_any_time() -> None:
    first = status_changed(None, "creating")
    again = status_changed(None, "creating")
    again.time = first.time + timedelta(hours=1)
    assert first.id == again.id
    assert encode_event(first) != encode_event(again)


def test_a_different_transition_of_the_same_request_gets_a_different_id() -> None:
    ids = {
        status_changed(None, "creating").id,
        status_changed("creating", "online").id,
        status_changed("online", "resizing").id,
        connection_ready().id,
        failed().id,
        rejected().id,
    }
    assert len(ids) == 6


def test_the_same_transition_of_another_request_gets_a_different_id() -> None:
    assert connection_ready("req-1").id != connection_ready("req-2").id
    assert failed("req-1").id != failed("req-2").id
    assert event_id("req-1", "failed") != event_id("req-2", "failed")


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_each_event_id_is_stable_across_calls(kind: str) -> None:
    assert FACTORIES[kind]().id == FACTORIES[kind]().id


def test_event_ids_are_uuids() -> None:
    for factory in FACTORIES.values():
        assert uuid.UUID(factory().id).version == 5


def test_rejected_id_follows_the_exact_body() -> None:
    assert rejected(BODY).id == rejected(BODY).id
    assert rejected(BODY).id != rejected(BODY + b" ").id


def test_rejected_without_a_readable_request_id_has_no_subject_but_a_stable_id() -> None:
    event = rejected(b"\xff not json", request_id=None)
    document = msgspec.json.decode(encode_event(event))
    assert "subject" not in document
    assert "request_id" not in document["data"]
    assert event.id == rejected(b"\xff not json", request_id=None).id


def test_event_id_cannot_be_forged_by_moving_text_between_request_and_transition() -> None:
    assert event_id("a", "bc") != event_id("ab", "c")
