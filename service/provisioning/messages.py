"""The watch message: a cluster being followed, held by RabbitMQ between looks.

Internal to the service (replicas of the same version read it); ``v`` lets a newer
replica read an older one's watches during a rolling upgrade.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from msgspec import Struct

from contracts.digitalocean import DatabaseUserCreate

__all__ = [
    "APP_ID",
    "ATTEMPT_HEADER",
    "FIRST_ATTEMPT_HEADER",
    "PRODUCER_HEADER",
    "REJECTION_HEADER",
    "WATCH_CONTENT_TYPE",
    "WATCH_VERSION",
    "WatchState",
    "decode_stamp",
    "decode_watch",
    "encode_stamp",
    "encode_watch",
]

# The AMQP app_id of everything the service publishes.
APP_ID: Final = "provisioner"
# The command's attempt number travels in this header through the retry delay queues.
ATTEMPT_HEADER: Final = "x-provisioner-attempt"
REJECTION_HEADER: Final = "x-rejection-reason"
# When the command's first attempt ran (epoch seconds), carried through its retries.
FIRST_ATTEMPT_HEADER: Final = "x-provisioner-first-attempt-at"
WATCH_CONTENT_TYPE: Final = "application/vnd.provisioner.watch+json"
# 2: watches name their producer and may carry a recipient key. A replica leaves a watch of a
# newer version to a replica that knows it (an older one would drop what it cannot read).
WATCH_VERSION: Final = 2
# On a command the service sends on (a retry, a parked copy): the producer it came from. The
# copy's AMQP user_id is the service's own (RabbitMQ allows no other), so the header says whose
# request it is; it is believed only on messages whose user_id is the service's.
PRODUCER_HEADER: Final = "x-provisioner-producer"


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


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WatchState)


def encode_watch(watch: WatchState) -> bytes:
    """The watch message body."""
    return _encoder.encode(watch)


def decode_watch(body: bytes) -> WatchState:
    """Read a watch message; raises ``msgspec.DecodeError`` / ``ValidationError``."""
    return _decoder.decode(body)
