"""The bounded AMQP content-header decoder, what it leaves out and why, and the library code
it stands in for (pinned, so that an upgrade of pamqp, aiormq or aio-pika is looked at)."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import inspect
import struct
from typing import Any

import aio_pika.message
import aiormq.channel
import aiormq.connection
import pamqp.decode
import pamqp.frame
import pamqp.header
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp.header import ContentHeader

from service.broker import frames
from service.broker.frames import (
    MAX_TABLE_DEPTH,
    MAX_TABLE_VALUES,
    NOTE_HEADER,
    WireNote,
    decode_content_header,
    portable_headers,
    take_note,
)
from service.provisioning.messages import request_id_in_prefix
from tests.hostile.wire import FRAME_CASES, array, entry, longstr, nested, raw_properties, table

# --- the library code this relies on -------------------------------------------------------

# sha256 of the source each piece had in pamqp 4.0.1, aiormq 7.2.4 and aio-pika 10.2.1 (the
# locked versions). When one changes, read it against service/broker/frames.py before
# updating its hash here: the decoder must still return what pamqp's would, aiormq must still
# call pamqp.frame.unmarshal for every frame and Channel._read_content for every body, and
# aio-pika must still build its message from the content header's properties.
PINNED = {
    "pamqp.frame.unmarshal": "400fbda67c8aa154",
    "pamqp.frame._unmarshal_header_frame": "ee1469a64be19bdf",
    "pamqp.header.ContentHeader": "f913c147a552bb72",
    "pamqp.commands.Basic.Properties": "a4b6f31e53f46d18",
    "pamqp.decode": "a6d7bbbed4cb37f4",
    "aiormq.connection.FrameReceiver.get_frame": "3adff046743a2328",
    "aiormq.channel.Channel._read_content": "0fc20efc56f8c5f6",
    "aiormq.channel.Channel._on_deliver_frame": "3cb7bf324f3af08d",
    "aiormq.channel.Channel._get_frame": "8309963cc284ea5f",
    "aio_pika.message.IncomingMessage.__init__": "9446f6677a25159f",
}


def _sources() -> dict[str, object]:
    return {
        "pamqp.frame.unmarshal": frames._pamqp_unmarshal,
        "pamqp.frame._unmarshal_header_frame": pamqp.frame._unmarshal_header_frame,
        "pamqp.header.ContentHeader": pamqp.header.ContentHeader,
        "pamqp.commands.Basic.Properties": commands.Basic.Properties,
        "pamqp.decode": pamqp.decode,
        "aiormq.connection.FrameReceiver.get_frame": aiormq.connection.FrameReceiver.get_frame,
        "aiormq.channel.Channel._read_content": frames._aiormq_read_content,
        "aiormq.channel.Channel._on_deliver_frame": aiormq.channel.Channel._on_deliver_frame,
        "aiormq.channel.Channel._get_frame": aiormq.channel.Channel._get_frame,
        "aio_pika.message.IncomingMessage.__init__": aio_pika.message.IncomingMessage.__init__,
    }


@pytest.mark.parametrize("name", sorted(PINNED))
def test_library_code_the_frame_layer_replaces_is_the_code_it_was_written_against(
    name: str,
) -> None:
    source = inspect.getsource(_sources()[name])  # type: ignore[arg-type]
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert digest == PINNED[name], (
        f"{name} changed (sha256 {digest}): check service/broker/frames.py against it, "
        "then update PINNED in tests/unit/test_frames.py"
    )


def test_aiormq_reads_every_frame_through_pamqp_frame_unmarshal() -> None:
    # The call site the decoder is put in front of: looked up on the module at each call.
    assert "pamqp.frame.unmarshal(" in inspect.getsource(aiormq.connection.FrameReceiver)


def test_install_puts_both_pieces_in_place_and_keeps_the_largest_limit() -> None:
    frames.install(4096)
    frames.install(1024)
    assert pamqp.frame.unmarshal is frames._unmarshal
    assert aiormq.channel.Channel._read_content is frames._read_content
    limit = frames.body_limit()
    assert limit is not None and limit >= 4096


# --- the decoder against pamqp's on what both can read ------------------------------------

keys = st.text(min_size=1, max_size=10).filter(lambda k: len(k.encode()) <= 128)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=20)
    | st.floats(width=32, allow_nan=False)
    | st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        max_value=datetime.datetime(2100, 1, 1),
        timezones=st.just(datetime.UTC),
    ).map(lambda d: d.replace(microsecond=0))
    | st.binary(max_size=10).map(bytearray)
    | st.decimals(places=2, min_value=-(10**6), max_value=10**6).filter(lambda d: d.is_finite())
)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)
property_sets = st.fixed_dictionaries(
    {},
    optional={
        "content_type": st.text(max_size=20),
        "content_encoding": st.text(max_size=10),
        "headers": st.dictionaries(keys, values, max_size=6),
        "delivery_mode": st.sampled_from([1, 2]),
        "priority": st.integers(0, 9),
        "correlation_id": st.text(max_size=40),
        "reply_to": st.text(max_size=40),
        "expiration": st.integers(0, 10**9).map(str),
        "message_id": st.text(max_size=40),
        "timestamp": st.datetimes(
            min_value=datetime.datetime(1970, 1, 1),
            max_value=datetime.datetime(2100, 1, 1),
            timezones=st.just(datetime.UTC),
        ).map(lambda d: d.replace(microsecond=0)),
        "message_type": st.text(max_size=20),
        "user_id": st.text(max_size=20),
        "app_id": st.text(max_size=20),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(property_sets, st.integers(0, 2**40))
def test_decoder_reads_whatever_pamqp_writes_as_pamqp_reads_it(
    fields: dict[str, Any], body_size: int
) -> None:
    written = pamqp.frame.marshal(
        ContentHeader(body_size=body_size, properties=commands.Basic.Properties(**fields)), 1
    )
    _, _, theirs = frames._pamqp_unmarshal(written)
    assert isinstance(theirs, ContentHeader)
    ours = decode_content_header(written[7:-1])
    assert ours.body_size == theirs.body_size == body_size
    assert ours.properties == theirs.properties
    assert NOTE_HEADER not in (ours.properties.headers or {})


def test_decoder_reads_the_long_string_that_is_not_utf8_as_bytes_as_pamqp_does() -> None:
    payload = _payload(raw_properties(headers=table(entry(b"k", b"S", longstr(b"\xff")))))
    assert decode_content_header(payload).properties.headers == {"k": b"\xff"}


def test_decoder_reads_a_millisecond_timestamp_as_pamqp_does() -> None:
    millis = 1_700_000_000_123
    payload = _payload(raw_properties(headers=table(entry(b"t", b"T", struct.pack(">Q", millis)))))
    read = decode_content_header(payload).properties.headers
    assert read == {"t": datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC)}


# --- what it cannot read ------------------------------------------------------------------------


def _payload(properties: bytes, body_size: int = 10) -> bytes:
    return struct.pack(">HHQ", 60, 0, body_size) + properties


def _note(header: ContentHeader) -> WireNote:
    note = (header.properties.headers or {}).get(NOTE_HEADER)
    assert isinstance(note, WireNote), header.properties.headers
    return note


@pytest.mark.parametrize("case", FRAME_CASES, ids=lambda c: c.label)
def test_every_hostile_case_is_read_with_a_note_naming_what_was_left_out(case: Any) -> None:
    header = decode_content_header(_payload(case.properties))
    where = " ".join(w for w, _ in _note(header).unreadable)
    for name in case.names:
        assert name in where, (case.label, _note(header))
    # What aio-pika then builds from it does not raise either.
    delivered = aiormq.abc.DeliveredMessage(
        delivery=commands.Basic.Deliver(delivery_tag=1),
        header=header,
        body=b"{}",
        channel=None,  # type: ignore[arg-type]
    )
    aio_pika.message.IncomingMessage(delivered)


def test_good_headers_beside_bad_ones_are_kept() -> None:
    case = next(c for c in FRAME_CASES if c.label == "two bad headers among good ones")
    header = decode_content_header(_payload(case.properties))
    headers = dict(header.properties.headers or {})
    note = take_note(headers)
    assert headers == {"good": "yes", "also-good": -7}
    assert header.properties.correlation_id == "kept"
    assert note is not None and [w for w, _ in note.unreadable] == [
        "headers['when']",
        "headers['deep']",
    ]


def test_nesting_is_read_to_the_limit_and_no_further() -> None:
    deepest = _payload(raw_properties(headers=table(entry(b"d", b"F", nested(MAX_TABLE_DEPTH)))))
    assert NOTE_HEADER not in (decode_content_header(deepest).properties.headers or {})
    deeper = _payload(raw_properties(headers=table(entry(b"d", b"F", nested(MAX_TABLE_DEPTH + 1)))))
    assert "nested deeper" in _note(decode_content_header(deeper)).unreadable[0][1]


def test_values_are_counted_across_every_header() -> None:
    half = MAX_TABLE_VALUES // 2
    payload = _payload(
        raw_properties(
            headers=table(
                entry(b"a", b"A", array(*([b"V"] * half))),
                entry(b"b", b"A", array(*([b"V"] * half))),
            )
        )
    )
    note = _note(decode_content_header(payload))
    assert [w for w, _ in note.unreadable] == ["headers['b']"]


def test_unknown_field_type_leaves_out_the_rest_of_the_table_it_cannot_walk() -> None:
    payload = _payload(
        raw_properties(
            headers=table(entry(b"a", b"t", b"\x01"), entry(b"b", b"?", b"x"), b"junk"),
            reply_to=b"after",
        )
    )
    header = decode_content_header(payload)
    assert header.properties.reply_to == "after"  # the table's own length still holds
    assert (header.properties.headers or {}).get("a") is True
    assert "unknown field type" in " ".join(why for _, why in _note(header).unreadable)


def test_delivery_mode_other_than_1_or_2_and_a_non_numeric_expiration_are_left_out() -> None:
    # RabbitMQ refuses both at publish; the decoder does not rely on it.
    header = decode_content_header(_payload(raw_properties(delivery_mode=7, expiration=b"soon")))
    assert header.properties.delivery_mode is None
    assert header.properties.expiration is None
    assert [w for w, _ in _note(header).unreadable] == ["delivery_mode", "expiration"]


def test_a_truncated_property_list_keeps_what_came_before() -> None:
    properties = raw_properties(correlation_id=b"kept", reply_to=b"cut", user_id=None)[:-2]
    header = decode_content_header(_payload(properties))
    assert header.properties.correlation_id == "kept"
    assert [w for w, _ in _note(header).unreadable] == ["reply_to"]


def test_short_fixed_part_is_still_an_unmarshaling_error() -> None:
    with pytest.raises(pamqp.exceptions.UnmarshalingException):
        decode_content_header(b"\x00\x3c\x00")


def test_reasons_are_bounded() -> None:
    bad = [entry(f"k{i}".encode(), b"T", struct.pack(">Q", 2**63)) for i in range(100)]
    note = _note(decode_content_header(_payload(raw_properties(headers=table(*bad)))))
    assert len(note.unreadable) == frames.MAX_REASONS
    assert "more left out" in note.unreadable[-1][1]


def test_a_producer_header_named_like_the_note_is_just_a_header() -> None:
    headers: dict[str, object] = {NOTE_HEADER: "forged"}
    assert take_note(headers) is None
    assert headers == {NOTE_HEADER: "forged"}


def test_the_frame_wrapper_reads_header_frames_itself_and_passes_the_others_on() -> None:
    case = FRAME_CASES[0]
    payload = _payload(case.properties)
    frame = struct.pack(">BHI", 2, 5, len(payload)) + payload + b"\xce"
    consumed, channel, header = frames._unmarshal(frame)
    assert (consumed, channel) == (len(frame), 5)
    assert isinstance(header, ContentHeader) and _note(header)
    method = pamqp.frame.marshal(commands.Basic.Ack(delivery_tag=3), 1)
    assert isinstance(frames._unmarshal(method)[2], commands.Basic.Ack)


# --- what is written back -------------------------------------------------------------------


def test_only_headers_that_are_written_back_as_they_came_are_portable() -> None:
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    kept, dropped = portable_headers(
        {
            "count": 3,
            "flag": True,
            "text": "x",
            "half": 0.5,
            "when": moment,
            "raw": bytearray(b"\x00"),
            "price": decimal.Decimal("1.25"),
            "x-death": [{"count": 1, "time": moment, "routing-keys": ["q"]}],
            "huge": 1e300,  # pamqp writes floats as 32 bits: it cannot
            "tenth": 0.1,  # written as 32 bits it comes back another number
            "millis": moment.replace(microsecond=123000),  # written in whole seconds
            "bytes": b"\xff",  # pamqp writes no bytes
            "n" * 200: 1,  # pamqp cuts names at 128 bytes
        }
    )
    assert set(kept) == {"count", "flag", "text", "half", "when", "raw", "price", "x-death"}
    assert dropped == ["huge", "tenth", "millis", "bytes", "n" * 200]


# --- the request id at the start of an oversized command --------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b'{"request_id": "orders-1", "cluster": {"name": "x', "orders-1"),
        (b'{"metadata": {"request_id": "no"}, "request_id": "yes"', "yes"),
        (b'{"cluster": {"name": "\\"request_id\\": \\"no\\""}, "request_id": "a\\u0041"', "aA"),
        (b'{"cluster": {"users": [{"request_id": "no"}]}, "request_id":"ok" ', "ok"),
        (b'{"request_id": "cut off', None),
        (b'{"request_id": 12}', None),
        (b'{"request_id": "a\\nb"}', None),  # not a valid request id
        (b'[{"request_id": "in an array"}]', None),
        (b'{"cluster": {"name": "x"', None),
        (b"\xff\xfe not json", None),
    ],
)
def test_request_id_is_read_from_the_first_bytes_only_at_the_top_level(
    head: bytes, expected: str | None
) -> None:
    assert request_id_in_prefix(head) == expected
