"""The watch message: a cluster being followed, held by RabbitMQ between looks.

Internal to the service (replicas of the same version read it); ``v`` lets a newer
replica read an older one's watches during a rolling upgrade.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from msgspec import Struct

from contracts.commands import RequestId
from contracts.digitalocean import DatabaseUserCreate
from contracts.names import PRODUCER_HEADER

__all__ = [
    "APP_ID",
    "ATTEMPT_HEADER",
    "FIRST_ATTEMPT_HEADER",
    "OVERSIZED_CONTENT_TYPE",
    "PRODUCER_HEADER",
    "WATCH_CONTENT_TYPE",
    "WATCH_VERSION",
    "OversizedRecord",
    "WatchState",
    "decode_stamp",
    "decode_watch",
    "encode_oversized",
    "encode_stamp",
    "encode_watch",
    "request_id_in_prefix",
]

# The AMQP app_id of everything the service publishes.
APP_ID: Final = "provisioner"
# The command's attempt number travels in this header through the retry delay queues.
ATTEMPT_HEADER: Final = "x-provisioner-attempt"
# When the command's first attempt ran (epoch seconds), carried through its retries.
FIRST_ATTEMPT_HEADER: Final = "x-provisioner-first-attempt-at"
WATCH_CONTENT_TYPE: Final = "application/vnd.provisioner.watch+json"
OVERSIZED_CONTENT_TYPE: Final = "application/vnd.provisioner.oversized+json"
# 2: watches name their producer and may carry a recipient key. 3: they may carry kept
# passwords (sealed) and warnings. A replica leaves a watch of a newer version to a replica
# that knows it (an older one would drop what it cannot read: a kept password for ever).
WATCH_VERSION: Final = 3


def encode_stamp(seconds: float) -> str:
    """An instant (epoch seconds) for an AMQP header: a string, since AMQP tables carry a
    Python float as 32 bits, far too coarse for epoch seconds."""
    return f"{seconds:.3f}"


def decode_stamp(value: object) -> float | None:
    """An instant written by ``encode_stamp``; None when the header is absent or unreadable."""
    if value is None:
        return None
    try:
        return float(str(value))
    except ValueError:
        return None


class WatchState(Struct, kw_only=True, omit_defaults=True):
    """Everything needed to follow one cluster to ``connection_ready`` on any replica."""

    v: int = WATCH_VERSION
    request_id: str
    cluster_id: str
    name: str
    engine: str
    region: str
    status: str | None
    deadline: float  # wall-clock epoch seconds
    accepted_at: float  # wall-clock epoch seconds the create was accepted
    phase: Literal["creating", "finishing"] = "creating"
    users: list[DatabaseUserCreate] = []
    db_names: list[str] = []
    metadata: dict[str, str] | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    finish_attempts: int = 0
    producer: str | None = None  # the RabbitMQ user whose request this is
    recipient_public_key: str | None = None  # seal connection_ready's secrets to this key
    # Passwords only a POST answer carried (MongoDB's), by user name, sealed for the service
    # itself (``service.provisioning.credentials``): never in plaintext in the broker.
    kept: str | None = None
    credentials_reset: bool = False  # a kept password came from a reset (see ConnectionReady)
    # When this watch first lacked a password (wall clock): it resets only a grace later.
    missing_since: float | None = None
    warnings: list[str] = []  # the command's, repeated on each of its events
    # The W3C trace context of the command's span: each watch step is a span of its trace,
    # on whichever replica it runs (service/tracing.py).
    traceparent: str | None = None
    tracestate: str | None = None


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WatchState)


def encode_watch(watch: WatchState) -> bytes:
    """The watch message body."""
    return _encoder.encode(watch)


def decode_watch(body: bytes) -> WatchState:
    """Read a watch message; raises ``msgspec.DecodeError`` / ``ValidationError``."""
    return _decoder.decode(body)


class OversizedRecord(Struct, kw_only=True):
    """What the parking queue holds of a command over the size limit, in place of the
    command: why, how big, whose (the producer's RabbitMQ user), its ``request_id`` when the
    first bytes tell it, its content type, and its first bytes (as text) for a person to
    recognise it."""

    reason: str
    size: int
    producer: str | None
    request_id: str | None
    content_type: str | None
    head: str


def encode_oversized(record: OversizedRecord) -> bytes:
    """The parked record's body."""
    return _encoder.encode(record)


def request_id_in_prefix(data: bytes) -> str | None:
    """The top-level ``request_id`` of a JSON object of which ``data`` is the start, when
    those bytes hold all of it and it is a valid request id; None otherwise.

    A small scanner, not a parser: it follows strings and nesting only far enough to tell a
    key of the top-level object from one deeper in (``metadata`` may hold a ``request_id``
    too), and stops at the end of the bytes it has.
    """
    text = data.decode("utf-8", "replace")
    containers: list[str] = []
    expect_key = False
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            end = _string_end(text, i)
            if end < 0:
                return None
            if expect_key and containers == ["{"]:
                colon = _skip_space(text, end + 1)
                if (
                    colon < len(text)
                    and text[colon] == ":"
                    and _string(text[i : end + 1]) == ("request_id")
                ):
                    start = _skip_space(text, colon + 1)
                    if start >= len(text) or text[start] != '"':
                        return None
                    stop = _string_end(text, start)
                    return _request_id(text[start : stop + 1]) if stop >= 0 else None
            expect_key = False
            i = end + 1
            continue
        if char in "{[":
            containers.append(char)
            expect_key = char == "{"
        elif char in "}]":
            if containers:
                containers.pop()
            expect_key = False
        elif char == ",":
            expect_key = bool(containers) and containers[-1] == "{"
        elif char == ":":
            expect_key = False
        i += 1
    return None


def _string_end(text: str, start: int) -> int:
    """The index of the quote that closes the JSON string opening at ``start``, or -1."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i
        i += 1
    return -1


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def _string(literal: str) -> str | None:
    try:
        value = msgspec.json.decode(literal)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, str) else None


def _request_id(literal: str) -> str | None:
    value = _string(literal)
    try:
        return msgspec.convert(value, RequestId)
    except msgspec.ValidationError:
        return None
