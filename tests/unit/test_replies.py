"""``direct_reply_node``: which broker node a Direct Reply-to name points at, read as RabbitMQ
writes it, so a name nobody's broker could have written is refused before it is used."""

from __future__ import annotations

import base64

import pytest

from service.broker.replies import direct_reply_node

# Written by RabbitMQ 3.10 (NEW_PID_EXT with a "reply@<hash>" node), as a consumer of
# amq.rabbitmq.reply-to saw it.
GENUINE = "amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0AABrxwAAAABrESWy.JsYosOMYhTfGdXqv441U9A=="


def pid(node: bytes, tag: bytes = b"X", atom: int = 118) -> str:
    width = 2 if atom in (100, 118) else 1
    raw = b"\x83" + tag + bytes([atom]) + len(node).to_bytes(width, "big") + node + b"\0" * 12
    return base64.b64encode(raw).decode()


def test_a_name_the_broker_wrote_names_its_node() -> None:
    assert direct_reply_node(GENUINE) == "reply@9248884"


@pytest.mark.parametrize(
    ("name", "node"),
    [
        (f"amq.rabbitmq.reply-to.{pid(b'rabbit@host')}.key", "rabbit@host"),
        (f"amq.rabbitmq.reply-to.{pid(b'rabbit@host', b'g', 100)}.key", "rabbit@host"),
        (f"amq.rabbitmq.reply-to.{pid(b'rabbit@h', atom=119)}.key", "rabbit@h"),
    ],
)
def test_older_and_shorter_encodings_are_read_too(name: str, node: str) -> None:
    assert direct_reply_node(name) == node


@pytest.mark.parametrize(
    "name",
    [
        "orders.replies",
        "amq.rabbitmq.reply-to",
        "amq.rabbitmq.reply-to.garbage",
        "amq.rabbitmq.reply-to.garbage.key",
        f"amq.rabbitmq.reply-to.{pid(b'rabbit@host')}",  # no key
        f"amq.rabbitmq.reply-to.{pid(b'nohost')}.key",  # not a node name
        f"amq.rabbitmq.reply-to.{pid(b'rabbit@host', b'h')}.key",  # not a pid
        "amq.rabbitmq.reply-to." + base64.b64encode(b"\x83X\x76\x00\xffab").decode() + ".k",
    ],
)
def test_anything_else_is_no_direct_reply_name(name: str) -> None:
    assert direct_reply_node(name) is None
