"""``direct_reply_node``: which broker node a Direct Reply-to name points at, read as RabbitMQ
writes it, so a name nobody's broker could have written is refused before it is used."""

from __future__ import annotations

import asyncio
import base64
from typing import cast

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel
from pamqp.commands import Basic

from service.broker.replies import (
    COPY_BUDGET_TIMEOUTS,
    COPY_RETRY_PAUSE_S,
    ReplyCopies,
    direct_reply_node,
)

# Written by RabbitMQ 3.10 (NEW_PID_EXT with a "reply@<hash>" node), as a consumer of
# amq.rabbitmq.reply-to saw it.
GENUINE = "amq.rabbitmq.reply-to.g1h2AA1yZXBseUA5MjQ4ODg0AABrxwAAAABrESWy.JsYosOMYhTfGdXqv441U9A=="


def pid(node: bytes, tag: bytes = b"X", atom: int = 118, tail: int | None = None) -> str:
    width = 2 if atom in (100, 118) else 1
    numbers = b"\0" * (tail if tail is not None else 12 if tag == b"X" else 9)
    raw = b"\x83" + tag + bytes([atom]) + len(node).to_bytes(width, "big") + node + numbers
    return base64.b64encode(raw).decode()


def name(encoded_pid: str) -> str:
    return f"amq.rabbitmq.reply-to.{encoded_pid}.key"


def test_a_name_the_broker_wrote_names_its_node() -> None:
    assert direct_reply_node(GENUINE) == "reply@9248884"


@pytest.mark.parametrize(
    ("encoded", "node"),
    [
        (pid(b"rabbit@host"), "rabbit@host"),
        (pid(b"rabbit@host", b"g"), "rabbit@host"),
        (pid(b"rabbit@h", atom=119), "rabbit@h"),
    ],
    ids=["new-pid", "old-pid", "short-atom"],
)
def test_every_shape_the_broker_writes_is_read(encoded: str, node: str) -> None:
    assert direct_reply_node(name(encoded)) == node


@pytest.mark.parametrize(
    "reply_to",
    [
        "orders.replies",
        "amq.rabbitmq.reply-to",
        "amq.rabbitmq.reply-to.garbage",
        "amq.rabbitmq.reply-to.garbage.key",
        f"amq.rabbitmq.reply-to.{pid(b'rabbit@host')}",  # no key
        name(pid(b"nohost")),  # not a node name
        name(pid(b"rabbit@host", b"h")),  # not a pid
        # Shapes RabbitMQ 3.10 answers by closing the publisher's connection:
        name(pid(b"rabbit@host", atom=100)),  # the node as a Latin-1 atom
        name(pid(b"rabbit@host", tail=11)),  # numbers cut short
        name(pid(b"rabbit@host", tail=13)),  # a byte too many
        name(pid(b"rabbit@host", b"g", tail=12)),
        "amq.rabbitmq.reply-to." + base64.b64encode(b"\x83X\x76\x00\xffab").decode() + ".k",
    ],
)
def test_anything_else_is_no_direct_reply_name(reply_to: str) -> None:
    assert direct_reply_node(reply_to) is None


class _Unconfirmed:
    """A channel whose broker never confirms: each publish times out after its timeout, as
    aio-pika's does on a node cut off from its cluster."""

    def __init__(self) -> None:
        self.default_exchange = self
        self.is_closed = False
        self.publishes = 0

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, mandatory: bool, timeout: float
    ) -> None:
        self.publishes += 1
        await asyncio.wait_for(asyncio.Event().wait(), timeout)


async def test_a_copy_that_is_never_confirmed_gives_up_within_its_budget() -> None:
    """The copy is sent while its command is unacked: retries and switches to other nodes
    (here: a switch that never gets an answer) must not hold that command for minutes."""
    copies = ReplyCopies(["amqp://a/", "amqp://b/"], timeout_s=0.05, order="listed")
    channel = _Unconfirmed()
    copies._channel = cast(AbstractChannel, channel)
    switches = 0

    async def switch_to_a_silent_node(generation: int) -> None:
        nonlocal switches
        switches += 1
        await asyncio.Event().wait()

    copies._switch = switch_to_a_silent_node  # type: ignore[method-assign]
    budget = COPY_BUDGET_TIMEOUTS * 0.05
    outcome = await asyncio.wait_for(
        copies.send(aio_pika.Message(b"{}"), "replies-of-p"), timeout=20 * budget
    )
    assert outcome == "failed"
    assert channel.publishes >= 1 and switches >= 1


class _NackedAtFirst(_Unconfirmed):
    """A channel whose broker refuses the first sends at once (a nack, as from a quorum queue
    between two leaders), then confirms."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    async def publish(
        self, message: aio_pika.Message, routing_key: str, *, mandatory: bool, timeout: float
    ) -> None:
        self.publishes += 1
        if self.publishes <= self.refusals:
            raise aio_pika.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=self.publishes))


async def test_a_copy_refused_at_once_is_sent_again_after_a_pause_not_in_a_burst() -> None:
    """Four sends within a few milliseconds would all meet the same leader election: the
    sends after a refusal wait, so the copy outlasts a refusal of that length."""
    pauses: list[float] = []

    async def pause(seconds: float) -> None:
        pauses.append(seconds)

    copies = ReplyCopies(["amqp://a/"], timeout_s=10.0, order="listed", pause=pause)
    channel = _NackedAtFirst(refusals=3)
    copies._channel = cast(AbstractChannel, channel)
    outcome = await copies.send(aio_pika.Message(b"{}"), "replies-of-p")
    assert outcome == "sent"
    assert channel.publishes == 4
    assert pauses == [COPY_RETRY_PAUSE_S, 2 * COPY_RETRY_PAUSE_S, 4 * COPY_RETRY_PAUSE_S]
