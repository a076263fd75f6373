"""A producer that writes AMQP 0-9-1 frames itself, and the hostile frames it sends.

No client library writes a header timestamp past the year 9999, a table nested a thousand
levels deep or a reply-to that is not UTF-8; a hostile producer can. ``RawProducer`` speaks
the protocol over a plain socket (pamqp marshals the method frames; the content header's
properties are the bytes a case gives), with publisher confirms, so a test knows the broker
took each message before it looks for what the service made of it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

import pamqp.frame
from pamqp import commands
from pamqp.header import ProtocolHeader

__all__ = [
    "FRAME_CASES",
    "FrameCase",
    "RawProducer",
    "array",
    "entry",
    "longstr",
    "nested",
    "raw_properties",
    "table",
]

FRAME_END: Final = b"\xce"
# The user the tests connect as: RabbitMQ checks a message's user_id against it.
PRODUCER: Final = b"guest"
_F = TypeVar("_F")
# Flags of the basic properties, in wire order (AMQP 0-9-1, 4.2.6.1).
_FLAGS: Final = {
    "content_type": 1 << 15,
    "content_encoding": 1 << 14,
    "headers": 1 << 13,
    "delivery_mode": 1 << 12,
    "priority": 1 << 11,
    "correlation_id": 1 << 10,
    "reply_to": 1 << 9,
    "expiration": 1 << 8,
    "message_id": 1 << 7,
    "timestamp": 1 << 6,
    "type": 1 << 5,
    "user_id": 1 << 4,
    "app_id": 1 << 3,
}
_SHORT: Final = {
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "type",
    "user_id",
    "app_id",
}


def longstr(value: bytes) -> bytes:
    """A long string's payload (its length, then the bytes)."""
    return struct.pack(">I", len(value)) + value


def entry(key: bytes, tag: bytes, payload: bytes) -> bytes:
    """One field-table entry: a short-string name, a type tag, the value's bytes."""
    return bytes([len(key)]) + key + tag + payload


def table(*entries: bytes) -> bytes:
    """A field table's payload (its length, then the entries)."""
    body = b"".join(entries)
    return struct.pack(">I", len(body)) + body


def array(*values: bytes) -> bytes:
    """A field array's payload: each value is a tag followed by its bytes."""
    body = b"".join(values)
    return struct.pack(">I", len(body)) + body


def nested(depth: int, leaf: bytes = b"") -> bytes:
    """A table ``depth`` levels deep under the name ``k`` (the payload of an ``F`` value)."""
    inner = table(leaf) if leaf else table()
    for _ in range(depth - 1):
        inner = table(entry(b"k", b"F", inner))
    return inner


def raw_properties(
    *,
    headers: bytes | None = None,
    delivery_mode: int | None = None,
    priority: int | None = None,
    timestamp: int | None = None,
    user_id: bytes | None = PRODUCER,
    **short: bytes,
) -> bytes:
    """The property flags and values of a content header, as given (short strings as bytes,
    ``headers`` as a table payload made with ``table``); ``user_id`` is the tests' broker user
    unless given (RabbitMQ checks it)."""
    unknown = set(short) - _SHORT
    if unknown:
        raise TypeError(f"not a short-string property: {sorted(unknown)}")
    if user_id is not None:
        short["user_id"] = user_id
    values = {**short, "headers": headers, "delivery_mode": delivery_mode}
    values.update(priority=priority, timestamp=timestamp)
    flags = 0
    parts: list[bytes] = []
    for name, flag in _FLAGS.items():
        value = values.get(name)
        if value is None:
            continue
        flags |= flag
        if name in _SHORT:
            assert isinstance(value, bytes)
            parts.append(bytes([len(value)]) + value)
        elif name == "headers":
            assert isinstance(value, bytes)
            parts.append(value)
        elif name == "timestamp":
            assert isinstance(value, int)
            parts.append(struct.pack(">Q", value))
        else:
            assert isinstance(value, int)
            parts.append(bytes([value]))
    return struct.pack(">H", flags) + b"".join(parts)


@dataclass(frozen=True)
class FrameCase:
    """One message whose AMQP properties no client library would write."""

    label: str
    properties: bytes
    body: bytes = b'{"request_id": "frame-case"}'
    # What the parked message's reason must name (a property or a header).
    names: Sequence[str] = field(default_factory=tuple)


def _cases() -> list[FrameCase]:
    json = b"application/json"
    big_t = struct.pack(">Q", 2**62)
    return [
        FrameCase(
            "header timestamp past year 9999",
            raw_properties(content_type=json, headers=table(entry(b"when", b"T", big_t))),
            names=["when"],
        ),
        FrameCase(
            "header timestamp of 2**64 - 1",
            raw_properties(
                content_type=json,
                headers=table(entry(b"when", b"T", struct.pack(">Q", 2**64 - 1))),
            ),
            names=["when"],
        ),
        FrameCase(
            "header table nested 1,000 levels",
            raw_properties(content_type=json, headers=table(entry(b"deep", b"F", nested(1000)))),
            names=["deep"],
        ),
        FrameCase(
            "header array nested 1,000 levels",
            raw_properties(
                content_type=json,
                headers=table(entry(b"deep", b"A", _nested_array(1000))),
            ),
            names=["deep"],
        ),
        FrameCase(
            "header name that is not UTF-8",
            raw_properties(
                content_type=json, headers=table(entry(b"\xff\xfe", b"S", longstr(b"x")))
            ),
            names=["headers"],
        ),
        FrameCase(
            "nested header name that is not UTF-8",
            raw_properties(
                content_type=json,
                headers=table(entry(b"outer", b"F", table(entry(b"\xc3", b"t", b"\x01")))),
            ),
            names=["outer"],
        ),
        FrameCase(
            "timestamp property past year 9999",
            raw_properties(content_type=json, timestamp=2**62),
            names=["timestamp"],
        ),
        FrameCase(
            "reply_to that is not UTF-8",
            raw_properties(content_type=json, reply_to=b"\xff\xfeq"),
            names=["reply_to"],
        ),
        FrameCase(
            "correlation_id that is not UTF-8",
            raw_properties(content_type=json, correlation_id=b"\xc3\x28"),
            names=["correlation_id"],
        ),
        FrameCase(
            "content_type that is not UTF-8",
            raw_properties(content_type=b"application/\xffjson"),
            names=["content_type"],
        ),
        FrameCase(
            "40,000 header values",
            raw_properties(
                content_type=json,
                headers=table(
                    entry(b"many", b"A", array(*([b"V"] * 40_000))),
                ),
            ),
            names=["many"],
        ),
        FrameCase(
            "two bad headers among good ones",
            raw_properties(
                content_type=json,
                correlation_id=b"kept",
                headers=table(
                    entry(b"good", b"S", longstr(b"yes")),
                    entry(b"when", b"T", big_t),
                    entry(b"also-good", b"I", struct.pack(">i", -7)),
                    entry(b"deep", b"F", nested(200)),
                ),
            ),
            names=["when", "deep"],
        ),
    ]


def _nested_array(depth: int) -> bytes:
    inner = array()
    for _ in range(depth - 1):
        inner = array(b"A" + inner)
    return inner


FRAME_CASES: Final = _cases()


class RawProducer:
    """An AMQP 0-9-1 producer on a plain socket: one channel, publisher confirms."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._frame_max = 131072
        self._published = 0
        self._confirmed = 0

    @classmethod
    async def connect(
        cls, host: str, port: int, vhost: str, *, user: str, password: str
    ) -> RawProducer:
        """Open a connection and a confirming channel (number 1)."""
        reader, writer = await asyncio.open_connection(host, port)
        producer = cls(reader, writer)
        writer.write(ProtocolHeader().marshal())
        await producer._expect(0, commands.Connection.Start)
        producer._send(
            0,
            commands.Connection.StartOk(
                client_properties={"product": "tests.hostile.wire"},
                mechanism="PLAIN",
                response=f"\0{user}\0{password}",
                locale="en_US",
            ),
        )
        tune = await producer._expect(0, commands.Connection.Tune)
        producer._frame_max = tune.frame_max or producer._frame_max
        producer._send(
            0,
            commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=producer._frame_max, heartbeat=0
            ),
        )
        producer._send(0, commands.Connection.Open(virtual_host=vhost))
        await producer._expect(0, commands.Connection.OpenOk)
        producer._send(1, commands.Channel.Open())
        await producer._expect(1, commands.Channel.OpenOk)
        producer._send(1, commands.Confirm.Select())
        await producer._expect(1, commands.Confirm.SelectOk)
        return producer

    def _send(self, channel: int, frame: pamqp.frame.FrameTypes) -> None:
        self._writer.write(pamqp.frame.marshal(frame, channel))

    async def _read(self) -> tuple[int, object]:
        head = await self._reader.readexactly(7)
        size = struct.unpack(">I", head[3:7])[0]
        rest = await self._reader.readexactly(size + 1)
        _, channel, frame = pamqp.frame.unmarshal(head + rest)
        return channel, frame

    async def _expect(self, channel: int, kind: type[_F]) -> _F:
        while True:
            number, frame = await self._read()
            if isinstance(frame, commands.Connection.Close | commands.Channel.Close):
                raise ConnectionError(f"the broker closed: {frame.reply_text}")
            if number == channel and isinstance(frame, kind):
                return frame

    def send_message(
        self, properties: bytes, body: bytes, *, exchange: str, routing_key: str
    ) -> None:
        """Write one publish (method, content header with ``properties``, body frames)."""
        self._send(1, commands.Basic.Publish(exchange=exchange, routing_key=routing_key))
        payload = struct.pack(">HHQ", 60, 0, len(body)) + properties
        self._writer.write(struct.pack(">BHI", 2, 1, len(payload)) + payload + FRAME_END)
        chunk = self._frame_max - 8
        for start in range(0, len(body), chunk):
            part = body[start : start + chunk]
            self._writer.write(struct.pack(">BHI", 3, 1, len(part)) + part + FRAME_END)
        self._published += 1

    async def confirm_all(self) -> None:
        """Wait until the broker confirmed every message sent so far; a nack raises."""
        await self._writer.drain()
        while self._confirmed < self._published:
            number, frame = await self._read()
            if isinstance(frame, commands.Connection.Close | commands.Channel.Close):
                raise ConnectionError(f"the broker closed: {frame.reply_text}")
            if number != 1:
                continue
            if isinstance(frame, commands.Basic.Nack):
                raise ConnectionError(f"the broker refused message {frame.delivery_tag}")
            if isinstance(frame, commands.Basic.Ack):
                tag = frame.delivery_tag
                self._confirmed = tag if frame.multiple else max(self._confirmed, tag)

    async def publish(
        self,
        properties: bytes,
        body: bytes,
        *,
        exchange: str = "provisioner.commands",
        routing_key: str = "database.cluster.create",
    ) -> None:
        """Publish one message and wait for the broker's confirm."""
        self.send_message(properties, body, exchange=exchange, routing_key=routing_key)
        await self.confirm_all()

    async def close(self) -> None:
        """Close the connection politely."""
        try:
            close = commands.Connection.Close(
                reply_code=200, reply_text="bye", class_id=0, method_id=0
            )
            self._send(0, close)
            await self._writer.drain()
            await asyncio.wait_for(self._expect(0, commands.Connection.CloseOk), 5)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writer.close()
