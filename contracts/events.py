"""Events the provisioner publishes: CloudEvents 1.0, structured JSON mode.

Every event is one Struct whose CloudEvents ``type`` is its msgspec tag, so one decoder
reads them all (``decode_event``) and a subscriber can ``match`` on the class. The
``type`` is also the routing key on the ``provisioner.events`` topic exchange.

Event ids are deterministic: the same request and the same transition always give the
same id, so a subscriber deduplicates redeliveries on (``source``, ``id``). A request is a
producer's: ``producer`` (the RabbitMQ user that sent the command) and ``request_id`` together
name it, and both go into the ids, so two producers' requests never share one.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from contracts.digitalocean import DatabaseConnection, DatabaseUser, ServiceConnection
from contracts.errors import FieldError

__all__ = [
    "EVENT_CONTENT_TYPE",
    "EVENT_TYPES",
    "ApiErrorDetail",
    "ConnectionReady",
    "ConnectionReadyData",
    "Event",
    "Failed",
    "FailedData",
    "FailureReason",
    "Rejected",
    "RejectedData",
    "StatusChanged",
    "StatusChangedData",
    "decode_event",
    "encode_event",
    "event_id",
]

EVENT_CONTENT_TYPE: Final = "application/cloudevents+json"
DEFAULT_SOURCE: Final = "/provisioner"
# Fixed forever: changing it changes every event id and breaks deduplication.
_ID_NAMESPACE: Final = uuid.UUID("6f1d3c8e-2b7a-5e4f-9a61-0c5d8e2f4b17")

FailureReason = Literal[
    "timeout",  # the cluster was not online before the request's deadline
    "api_error",  # DigitalOcean refused the request (a 4xx other than 429)
    "retries_exhausted",  # 429/5xx/transport failures outlasted every attempt
    "finishing",  # a user, database or the CA could not be had once online
    "request_conflict",  # the request_id was used before with a different cluster body
    "credentials_unavailable",  # DigitalOcean showed empty passwords (a read-only token)
]


Producer = Annotated[
    str,
    Meta(
        description="The RabbitMQ user that sent the command (its AMQP user_id, checked by the "
        "broker): whose request this is. A request is (producer, request_id)."
    ),
]
Warnings = Annotated[
    list[str],
    Meta(
        description="What the request should know but that did not stop it, one sentence "
        "each: a version near or past its end of availability or end of life."
    ),
]
SealedBox = Annotated[
    str,
    Meta(
        description="With secrets=sealed: standard base64 of a libsodium sealed box "
        "(crypto_box_seal) for the command's recipient_public_key, whose plaintext is a JSON "
        "object holding every secret left out of this data, at the same paths."
    ),
]


def event_id(request_id: str, transition: str, producer: str | None = None) -> str:
    """The deterministic id of one transition of one producer's request."""
    name = f"{request_id}\x00{transition}"
    if producer is not None:
        name = f"{producer}\x00{name}"
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def _now() -> datetime:
    return datetime.now(UTC)


class ApiErrorDetail(Struct, omit_defaults=True):
    """What DigitalOcean said when it refused a call."""

    status: int
    id: str | None = None
    message: str | None = None
    request_id: str | None = None


class StatusChangedData(Struct, omit_defaults=True):
    """A cluster moved from ``previous_status`` (null before it existed) to ``status``."""

    request_id: str
    cluster_id: str
    name: str
    engine: str
    status: str
    previous_status: str | None = None
    warnings: Warnings = []
    producer: Producer | None = None
    metadata: dict[str, str] | None = None


class ConnectionReadyData(Struct, omit_defaults=True):
    """The cluster is online and finished: how to connect to it.

    With ``PROVISIONER_EVENT_SECRETS=omit`` passwords, keys and URIs that embed a password
    are left out and ``secrets`` says ``omitted``. When the command carried a
    ``recipient_public_key`` they are left out too, ``secrets`` says ``sealed`` and
    ``sealed_secrets`` holds them in a sealed box only that key's owner can open
    (``contracts.open_sealed_secrets``).
    """

    request_id: str
    cluster_id: str
    name: str
    engine: str
    region: str
    connection: DatabaseConnection | None = None
    private_connection: DatabaseConnection | None = None
    standby_connection: DatabaseConnection | None = None
    standby_private_connection: DatabaseConnection | None = None
    ui_connection: ServiceConnection | None = None
    schema_registry_connection: ServiceConnection | None = None
    users: list[DatabaseUser] = []
    db_names: list[str] = []
    ca_certificate: str | None = None
    secrets: Literal["included", "omitted", "sealed"] = "included"
    sealed_secrets: SealedBox | None = None
    warnings: Warnings = []
    producer: Producer | None = None
    metadata: dict[str, str] | None = None


class RejectedData(Struct, omit_defaults=True):
    """A command was invalid; ``errors`` names every bad field. No API call was made."""

    errors: list[FieldError]
    request_id: str | None = None
    producer: Producer | None = None
    metadata: dict[str, str] | None = None


class FailedData(Struct, omit_defaults=True):
    """A valid request could not be completed; the cluster, if any, is left as it is."""

    request_id: str
    reason: FailureReason
    message: str
    cluster_id: str | None = None
    step: str | None = None
    attempts: int | None = None
    api_error: ApiErrorDetail | None = None
    producer: Producer | None = None
    metadata: dict[str, str] | None = None


class _CloudEvent(Struct, kw_only=True, tag_field="type"):
    specversion: Literal["1.0"] = "1.0"
    id: str
    source: str = DEFAULT_SOURCE
    subject: str | UnsetType = UNSET
    time: datetime = msgspec.field(default_factory=_now)
    datacontenttype: Literal["application/json"] = "application/json"
    # The CloudEvents distributed-tracing extension: the W3C trace context of the publish
    # that sent this event (https://www.w3.org/TR/trace-context/), so a subscriber's spans
    # join the request's trace. Not part of the event's identity (``id``).
    traceparent: (
        Annotated[str, Meta(pattern=r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")]
        | UnsetType
    ) = UNSET
    tracestate: Annotated[str, Meta(max_length=512)] | UnsetType = UNSET

    @property
    def routing_key(self) -> str:
        """The routing key on ``provisioner.events``: the CloudEvents ``type``."""
        tag = type(self).__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class StatusChanged(_CloudEvent, tag="database.cluster.status_changed"):
    """``database.cluster.status_changed``"""

    data: StatusChangedData

    @classmethod
    def of(cls, data: StatusChangedData, *, source: str = DEFAULT_SOURCE) -> StatusChanged:
        """The event for this transition, with its deterministic id."""
        transition = f"status:{data.previous_status or ''}->{data.status}"
        return cls(
            id=event_id(data.request_id, transition, data.producer),
            source=source,
            subject=data.request_id,
            data=data,
        )


class ConnectionReady(_CloudEvent, tag="database.cluster.connection_ready"):
    """``database.cluster.connection_ready``"""

    data: ConnectionReadyData

    @classmethod
    def of(
        cls,
        data: ConnectionReadyData,
        *,
        source: str = DEFAULT_SOURCE,
        credentials: str | None = None,
    ) -> ConnectionReady:
        """The event for this request, with its deterministic id. ``credentials`` names
        passwords the service had to make anew (a reset) after an earlier announcement may
        have gone out: the event then has an id of its own (transition
        ``connection_ready:<credentials>``), so a subscriber that deduplicates on (``source``,
        ``id``) takes the new passwords instead of dropping them as a redelivery."""
        transition = (
            "connection_ready" if credentials is None else f"connection_ready:{credentials}"
        )
        return cls(
            id=event_id(data.request_id, transition, data.producer),
            source=source,
            subject=data.request_id,
            data=data,
        )


class Rejected(_CloudEvent, tag="database.cluster.rejected"):
    """``database.cluster.rejected``"""

    data: RejectedData

    @classmethod
    def of(cls, data: RejectedData, body: bytes, *, source: str = DEFAULT_SOURCE) -> Rejected:
        """The event for this message; the id follows the request id and the exact body,
        since a rejected message may not even carry a readable ``request_id``."""
        digest = hashlib.sha256(body).hexdigest()
        return cls(
            id=event_id(data.request_id or "", f"rejected:{digest}", data.producer),
            source=source,
            subject=data.request_id if data.request_id is not None else UNSET,
            data=data,
        )


class Failed(_CloudEvent, tag="database.cluster.failed"):
    """``database.cluster.failed``"""

    data: FailedData

    @classmethod
    def of(cls, data: FailedData, *, source: str = DEFAULT_SOURCE) -> Failed:
        """The event for this request, with its deterministic id."""
        return cls(
            id=event_id(data.request_id, "failed", data.producer),
            source=source,
            subject=data.request_id,
            data=data,
        )


Event = StatusChanged | ConnectionReady | Rejected | Failed
EVENT_TYPES: Final[tuple[type[Event], ...]] = (StatusChanged, ConnectionReady, Rejected, Failed)

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """Structured-mode CloudEvents JSON."""
    return _encoder.encode(event)


def decode_event(data: bytes | bytearray | memoryview) -> Event:
    """Read any provisioner event; raises ``msgspec.DecodeError`` (or ``ValidationError``)."""
    return _decoder.decode(data)
