"""Reading AMQP content frames with bounds, so that no message can cost the connection.

Below aio-pika, aiormq reads each frame whole and hands it to pamqp to decode. pamqp 4.0.1
decodes a content header's properties (the AMQP ``headers`` table among them) with no bound:
a timestamp past the year 9999 raises, a table nested a thousand levels deep recurses until
``RecursionError``, a key or short string that is not UTF-8 raises, and every nested value
copies the rest of the frame. aiormq 7.2.4 closes the whole connection on any of these, before
aio-pika or the service could see the message, and the broker hands it to the next consumer,
who closes in turn. The body is read whole, whatever its size.

This module replaces those two steps, and nothing else:

* ``decode_content_header``, a decoder of our own for the content header frame (bounded depth
  and value count, linear in the frame, never raising for what a broker passes on). What it
  cannot read is left out, property by property and header by header, and the reasons travel
  with the message as a :class:`WireNote` in its headers, so that the consumer can park it.
  It is put in front of ``pamqp.frame.unmarshal`` for content header frames only.
* a bounded read of a delivered body (``aiormq.channel.Channel._read_content``): a body larger
  than the limit is read frame by frame and only its first :data:`HEAD_BYTES` are kept; the
  note carries the size the producer sent.

A :class:`WireNote` is an object no AMQP decoder produces, so a producer cannot forge one by
naming a header :data:`NOTE_HEADER`. ``tests/unit/test_frames.py`` checks the decoder against
pamqp's on every valid table and pins the library code this relies on; docs/architecture.md
explains the choice and docs/upstream-amqp-frames.md is the report drafted for upstream.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from collections.abc import Mapping, MutableMapping
from typing import Any, Final

import aiormq.channel
import pamqp.encode
import pamqp.frame
from aiormq.abc import DeliveredMessage
from pamqp import commands, constants, exceptions
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

__all__ = [
    "HEAD_BYTES",
    "MAX_TABLE_DEPTH",
    "MAX_TABLE_VALUES",
    "NOTE_HEADER",
    "WireNote",
    "body_limit",
    "decode_content_header",
    "install",
    "portable_headers",
    "take_note",
]

NOTE_HEADER: Final = "x-provisioner-wire-note"
"""The header under which a :class:`WireNote` travels from the frame to the consumer."""

MAX_TABLE_DEPTH: Final = 16
"""Tables and arrays a header value may nest (RabbitMQ's own ``x-death`` uses three)."""

MAX_TABLE_VALUES: Final = 2048
"""Values a message's headers may hold in all: each becomes a Python object that lives as long
as the message, and a 128 KiB frame could otherwise make 40,000 of them."""

HEAD_BYTES: Final = 8 * 1024
"""What is kept of a body over the limit: enough to read a ``request_id`` near the start."""

MAX_REASONS: Final = 8

_BASIC_CLASS_ID: Final = commands.Basic.frame_id


class WireNote:
    """What the frame layer could not hand on whole: the properties it left out (and why),
    and the size of a body of which only the first :data:`HEAD_BYTES` were kept."""

    __slots__ = ("body_size", "unreadable")

    def __init__(self, unreadable: tuple[tuple[str, str], ...] = (), body_size: int | None = None):
        self.unreadable = unreadable  # (where, why): ("headers['x-trace']", "nested ...")
        self.body_size = body_size

    def __repr__(self) -> str:
        return f"WireNote(unreadable={self.unreadable!r}, body_size={self.body_size!r})"


def take_note(headers: MutableMapping[str, Any] | None) -> WireNote | None:
    """Remove the frame layer's note from ``headers`` (in place) and return it, if any.
    A header of that name with any other value is the producer's and stays."""
    if not headers:
        return None
    note = headers.get(NOTE_HEADER)
    if isinstance(note, WireNote):
        del headers[NOTE_HEADER]
        return note
    return None


# --- the decoder ------------------------------------------------------------------------------


class _Unreadable(Exception):
    """Why one value cannot be read."""


class _Budget:
    """Values left for this message's headers."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_TABLE_VALUES

    def take(self) -> None:
        if self.left <= 0:
            raise _Unreadable(f"takes the headers past {MAX_TABLE_VALUES} values")
        self.left -= 1


_U8 = struct.Struct("B")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")

# Fixed-size field values: tag -> (struct, converter). pamqp's meanings, including its
# reading of "l" and "L" both as signed 64-bit.
_FIXED: Final[dict[int, struct.Struct]] = {
    ord("b"): _I8,
    ord("B"): _U8,
    ord("s"): _I16,
    ord("u"): _U16,
    ord("I"): _I32,
    ord("i"): _U32,
    ord("l"): _I64,
    ord("L"): _I64,
    ord("f"): _F32,
    ord("d"): _F64,
}


def _need(end: int, pos: int, size: int) -> None:
    if pos + size > end:
        raise _Unreadable("is truncated")


def _length(buf: memoryview, pos: int, end: int) -> int:
    _need(end, pos, 4)
    size: int = _U32.unpack_from(buf, pos)[0]
    _need(end, pos + 4, size)
    return size


def _timestamp(raw: int) -> datetime.datetime:
    # pamqp's reading: above 2106 the number is taken as milliseconds.
    seconds = raw / 1000.0 if raw > 0xFFFFFFFF else raw
    try:
        return datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    except (ValueError, OverflowError, OSError):
        raise _Unreadable(f"{raw} is out of range for a timestamp") from None


def _value(buf: memoryview, pos: int, end: int, depth: int, budget: _Budget) -> tuple[Any, int]:
    """One field value at ``pos`` (its type tag first); the value and the position after it."""
    _need(end, pos, 1)
    tag = buf[pos]
    pos += 1
    budget.take()
    fixed = _FIXED.get(tag)
    if fixed is not None:
        _need(end, pos, fixed.size)
        return fixed.unpack_from(buf, pos)[0], pos + fixed.size
    if tag == 0x74:  # t
        _need(end, pos, 1)
        return buf[pos] != 0, pos + 1
    if tag == 0x53:  # S
        size = _length(buf, pos, end)
        raw = bytes(buf[pos + 4 : pos + 4 + size])
        try:
            return raw.decode("utf-8"), pos + 4 + size
        except UnicodeDecodeError:
            return raw, pos + 4 + size  # as pamqp: a long string that is not UTF-8 is bytes
    if tag == 0x78:  # x
        size = _length(buf, pos, end)
        return bytearray(buf[pos + 4 : pos + 4 + size]), pos + 4 + size
    if tag == 0x54:  # T
        _need(end, pos, 8)
        return _timestamp(_U64.unpack_from(buf, pos)[0]), pos + 8
    if tag == 0x44:  # D
        _need(end, pos, 5)
        places = buf[pos]
        raw = _I32.unpack_from(buf, pos + 1)[0]
        return decimal.Decimal(raw) * (decimal.Decimal(10) ** -places), pos + 5
    if tag in (0x56, 0x00):  # V, and NUL as pamqp reads it
        return None, pos
    if tag in (0x46, 0x41):  # F, A
        size = _length(buf, pos, end)
        if depth > MAX_TABLE_DEPTH:
            raise _Unreadable(f"is nested deeper than {MAX_TABLE_DEPTH} levels")
        start, stop = pos + 4, pos + 4 + size
        if tag == 0x46:
            return _table(buf, start, stop, depth + 1, budget), stop
        return _array(buf, start, stop, depth + 1, budget), stop
    raise _Unreadable(f"has the unknown field type {bytes([tag])!r}")


def _key(buf: memoryview, pos: int, end: int) -> tuple[bytes, int]:
    _need(end, pos, 1)
    size = buf[pos]
    _need(end, pos + 1, size)
    return bytes(buf[pos + 1 : pos + 1 + size]), pos + 1 + size


def _table(buf: memoryview, pos: int, end: int, depth: int, budget: _Budget) -> dict[str, Any]:
    table: dict[str, Any] = {}
    while pos < end:
        raw_key, pos = _key(buf, pos, end)
        try:
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            raise _Unreadable("has a field name that is not UTF-8") from None
        table[key], pos = _value(buf, pos, end, depth, budget)
    return table


def _array(buf: memoryview, pos: int, end: int, depth: int, budget: _Budget) -> list[Any]:
    items: list[Any] = []
    while pos < end:
        item, pos = _value(buf, pos, end, depth, budget)
        items.append(item)
    return items


def _skip(buf: memoryview, pos: int, end: int) -> int | None:
    """The position after the value at ``pos``, by its length alone; None when even that
    cannot be told (an unknown type, a length past the table)."""
    if pos >= end:
        return None
    tag = buf[pos]
    pos += 1
    fixed = _FIXED.get(tag)
    size: int | None
    if fixed is not None:
        size = fixed.size
    elif tag == 0x74:
        size = 1
    elif tag == 0x54:
        size = 8
    elif tag == 0x44:
        size = 5
    elif tag in (0x56, 0x00):
        size = 0
    elif tag in (0x53, 0x78, 0x46, 0x41):
        if pos + 4 > end:
            return None
        size = 4 + _U32.unpack_from(buf, pos)[0]
    else:
        size = None
    if size is None or pos + size > end:
        return None
    return pos + size


def _quoted(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    return repr(text if len(text) <= 64 else text[:64] + "…")


def _headers(buf: memoryview, pos: int, end: int, reasons: list[tuple[str, str]]) -> dict[str, Any]:
    """The ``headers`` table, leaving out each entry that cannot be read (with its reason)."""
    budget = _Budget()
    table: dict[str, Any] = {}
    while pos < end:
        try:
            raw_key, pos = _key(buf, pos, end)
        except _Unreadable:
            reasons.append(("headers", "the table is truncated; its last entries are left out"))
            break
        where = f"headers[{_quoted(raw_key)}]"
        try:
            value, after = _value(buf, pos, end, 1, budget)
            key = raw_key.decode("utf-8")
        except UnicodeDecodeError:
            reasons.append((where, "the header name is not UTF-8"))
            pos = after
            continue
        except _Unreadable as exc:
            reasons.append((where, f"the value {exc}"))
            skipped = _skip(buf, pos, end)
            if skipped is None:
                reasons.append(("headers", "the entries after it cannot be told apart"))
                break
            pos = skipped
            continue
        table[key] = value
        pos = after
    return table


def _short_string(buf: memoryview, pos: int, end: int) -> tuple[str, int]:
    raw, after = _key(buf, pos, end)
    try:
        return raw.decode("utf-8"), after
    except UnicodeDecodeError:
        raise _Unreadable("is not UTF-8") from None


# Each property with its flag and wire type, in wire order, as pamqp describes them.
_PROPERTIES: Final[tuple[tuple[str, int, str], ...]] = tuple(
    (name, commands.Basic.Properties.flags[name], getattr(commands.Basic.Properties, "_" + name))
    for name in commands.Basic.Properties.__slots__
)
_KNOWN_KINDS: Final = frozenset({"shortstr", "table", "octet", "timestamp"})


def _property(
    name: str, kind: str, buf: memoryview, pos: int, end: int, reasons: list[tuple[str, str]]
) -> tuple[Any, int]:
    """One property's value and the position after it. A value that cannot be read is None
    (with its reason); a property whose length cannot be told raises, since nothing after
    it can be found."""
    if kind == "table":
        size = _length(buf, pos, end)
        return _headers(buf, pos + 4, pos + 4 + size, reasons), pos + 4 + size
    if kind == "shortstr":
        _need(end, pos, 1)
        after = pos + 1 + buf[pos]
        _need(end, pos, after - pos)
        try:
            text, _ = _short_string(buf, pos, end)
        except _Unreadable as exc:
            reasons.append((name, f"the value {exc}"))
            return None, after
        if name == "expiration" and not _is_number(text):
            reasons.append((name, f"{_quoted(text.encode())} is not a number of milliseconds"))
            return None, after
        return text, after
    if kind == "octet":
        _need(end, pos, 1)
        octet = buf[pos]
        if name == "delivery_mode" and octet > 2:
            reasons.append((name, f"{octet} is not 1 (transient) or 2 (persistent)"))
            return None, pos + 1
        return octet, pos + 1
    _need(end, pos, 8)  # timestamp
    try:
        return _timestamp(_U64.unpack_from(buf, pos)[0]), pos + 8
    except _Unreadable as exc:
        reasons.append((name, f"the value {exc}"))
        return None, pos + 8


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def decode_content_header(payload: bytes | memoryview) -> ContentHeader:
    """A content header frame's payload as pamqp's ``ContentHeader``.

    Raises ``pamqp.exceptions.UnmarshalingException`` only when the fixed part (class, weight,
    body size, property flags) is short, which no broker sends. Everything else that cannot be
    read is left out, and a :class:`WireNote` under :data:`NOTE_HEADER` in the headers says
    what and why.
    """
    buf = memoryview(payload)
    end = len(buf)
    try:
        class_id, weight, body_size = struct.unpack_from(">HHQ", buf, 0)
        pos, flags, word = 12, 0, 0
        while True:
            part = _U16.unpack_from(buf, pos)[0]
            pos += 2
            flags |= part << (word * 16)
            if not part & 1:
                break
            word += 1
    except struct.error as exc:
        raise exceptions.UnmarshalingException("ContentHeader", exc) from exc
    properties = commands.Basic.Properties()
    reasons: list[tuple[str, str]] = []
    for name, flag, kind in _PROPERTIES:
        if not flags & flag:
            continue
        try:
            value, pos = _property(name, kind, buf, pos, end, reasons)
        except _Unreadable:
            reasons.append((name, "is truncated; the properties after it are left out"))
            break
        if value is not None:
            setattr(properties, name, value)
    header = ContentHeader(weight=weight, body_size=body_size, properties=properties)
    header.class_id = class_id
    if reasons:
        if len(reasons) > MAX_REASONS:
            more = len(reasons) - MAX_REASONS + 1
            reasons = [*reasons[: MAX_REASONS - 1], ("headers", f"{more} more left out")]
        _note(properties, WireNote(unreadable=tuple(reasons)))
    return header


def _note(properties: commands.Basic.Properties, note: WireNote) -> None:
    headers = dict(properties.headers or {})
    earlier = headers.get(NOTE_HEADER)
    if isinstance(earlier, WireNote):
        note = WireNote(earlier.unreadable + note.unreadable, note.body_size or earlier.body_size)
    headers[NOTE_HEADER] = note  # type: ignore[assignment]
    properties.headers = headers


def portable_headers(headers: Mapping[str, object]) -> tuple[dict[str, Any], list[str]]:
    """The headers that pamqp writes back as the same values, and the names of the others.

    pamqp writes every float as 32 bits (a double of 1e300 cannot be written at all), a
    timestamp in whole seconds (one read as milliseconds comes back different), no ``bytes``,
    and field names cut at 128 bytes; a copy that carried such a header would fail or lie.
    """
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in headers.items():
        try:
            if len(key.encode("utf-8")) > 128:
                raise ValueError("name too long")
            written = pamqp.encode.encode_table_value(value)  # type: ignore[arg-type]
            read, end = _value(memoryview(written), 0, len(written), 1, _Budget())
            same = end == len(written) and _same(read, value)
        except (TypeError, ValueError, OverflowError, struct.error, _Unreadable, RecursionError):
            same = False
        if same:
            kept[key] = value
        else:
            dropped.append(key)
    return kept, dropped


def _same(read: Any, value: Any) -> bool:
    """Equal and of the same kind, all the way down (``True`` is not ``1`` here)."""
    if isinstance(value, dict):
        return (
            isinstance(read, dict)
            and read.keys() == value.keys()
            and all(_same(read[k], value[k]) for k in value)
        )
    if isinstance(value, list):
        return (
            isinstance(read, list)
            and len(read) == len(value)
            and all(_same(a, b) for a, b in zip(read, value, strict=True))
        )
    return type(read) is type(value) and bool(read == value)


# --- where it plugs in ------------------------------------------------------------------------

_pamqp_unmarshal: Final = pamqp.frame.unmarshal
_aiormq_read_content: Final = aiormq.channel.Channel._read_content
_limit: int | None = None


def _unmarshal(data_in: bytes) -> tuple[int, int, pamqp.frame.FrameTypes]:
    """``pamqp.frame.unmarshal`` with content header frames read by our decoder."""
    if len(data_in) > constants.FRAME_HEADER_SIZE and data_in[0] == constants.FRAME_HEADER:
        _, channel_id, size = struct.unpack_from(">BHI", data_in, 0)
        end = constants.FRAME_HEADER_SIZE + size
        if size and len(data_in) > end and data_in[end] == constants.FRAME_END:
            payload = memoryview(data_in)[constants.FRAME_HEADER_SIZE : end]
            return end + 1, channel_id, decode_content_header(payload)
    return _pamqp_unmarshal(data_in)


async def _read_content(
    channel: aiormq.channel.Channel,
    frame: Any,
    header: ContentHeader,
) -> DeliveredMessage:
    """aiormq's body read, keeping only the head of a delivered body over the limit."""
    limit = _limit
    if limit is None or header.body_size <= limit or not isinstance(frame, commands.Basic.Deliver):
        return await _aiormq_read_content(channel, frame, header)
    head = bytearray()
    received = 0
    while received < header.body_size:
        content = await channel._get_frame()
        if not isinstance(content, ContentBody):
            raise ValueError(f"Unexpected {type(content).__name__} frame inside a body")
        chunk = content.value or b""
        if not chunk:
            break
        if len(head) < HEAD_BYTES:
            head += chunk[: HEAD_BYTES - len(head)]
        received += len(chunk)
    _note(header.properties, WireNote(body_size=header.body_size))
    return DeliveredMessage(delivery=frame, header=header, body=bytes(head), channel=channel)


def body_limit() -> int | None:
    """The largest delivered body read whole in this process (None: not installed)."""
    return _limit


def install(max_body_bytes: int) -> None:
    """Put the bounded decoder and the bounded body read in place (idempotent). A body larger
    than ``max_body_bytes`` (the largest any caller asked for) keeps its head only."""
    global _limit
    _check_library()
    pamqp.frame.unmarshal = _unmarshal
    aiormq.channel.Channel._read_content = _read_content  # type: ignore[method-assign,assignment]
    _limit = max(_limit or 0, max_body_bytes)


def _check_library() -> None:
    """Refuse to start on a library that no longer has the shape this module replaces."""
    unknown = {kind for _, _, kind in _PROPERTIES} - _KNOWN_KINDS
    if unknown:
        raise RuntimeError(f"pamqp describes AMQP properties of unknown types: {sorted(unknown)}")
    if not callable(getattr(aiormq.channel.Channel, "_get_frame", None)):
        raise RuntimeError("aiormq.channel.Channel has no _get_frame: see service/broker/frames.py")
    if _BASIC_CLASS_ID != 60:
        raise RuntimeError("pamqp's Basic class id is not 60")
