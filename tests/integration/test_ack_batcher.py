"""``AckBatcher`` against a real RabbitMQ: messages finished in any order are all acked, a
message still in progress is never covered by another's multiple ack, and a message returned
on its own goes back to the queue. The broker's own counts (``rabbitmqctl list_queues``,
refreshed every few seconds) are the judge."""

from __future__ import annotations

import asyncio
import random

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from service.broker.consumer import AckBatcher
from tests.fixtures.rabbitmqctl import queue_depths

pytestmark = pytest.mark.integration

QUEUE = "test.ack-batcher"
COUNT = 30
QUORUM = {"x-queue-type": "quorum"}


async def _queue_state(vhost: str) -> tuple[int, int]:
    """(ready, unacknowledged) of the test queue, as the broker counts them."""
    depth = (await queue_depths(vhost)).get(QUEUE)
    if depth is None:
        raise AssertionError(f"no queue {QUEUE} in {vhost}")
    return depth.ready, depth.unacked


async def _settles_at(vhost: str, expected: tuple[int, int]) -> None:
    """Wait (bounded) for the broker to count ``expected``: acks are frames it handles in
    its own time."""
    state = (-1, -1)
    for _ in range(50):
        state = await _queue_state(vhost)
        if state == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"queue settled at (ready, unacked) {state}, expected {expected}")


async def _take(
    amqp: AbstractRobustConnection, count: int
) -> tuple[list[AbstractIncomingMessage], AbstractChannel]:
    """``count`` deliveries on a fresh channel, unacked; more are published first."""
    publisher = await amqp.channel(publisher_confirms=True)
    await publisher.declare_queue(QUEUE, durable=True, arguments=QUORUM)
    await asyncio.gather(
        *(
            publisher.default_exchange.publish(aio_pika.Message(str(i).encode()), QUEUE)
            for i in range(count)
        )
    )
    await publisher.close()
    channel = await amqp.channel()
    await channel.set_qos(prefetch_count=count)
    queue = await channel.declare_queue(QUEUE, durable=True, arguments=QUORUM)
    got: list[AbstractIncomingMessage] = []
    full = asyncio.Event()

    async def on_message(message: AbstractIncomingMessage) -> None:
        got.append(message)
        if len(got) >= count:
            full.set()

    tag = await queue.consume(on_message)
    await asyncio.wait_for(full.wait(), 10)
    await queue.cancel(tag)
    return got, channel


async def test_finished_messages_are_acked_and_one_in_progress_never_is(
    vhost: str, amqp: AbstractRobustConnection
) -> None:
    messages, channel = await _take(amqp, COUNT)
    acks = AckBatcher()
    for message in messages:
        acks.delivered(message)
    slow = messages[10]  # still being handled while every other one finishes
    returned = messages[20]  # handled, then sent back on its own
    others = [m for m in messages if m is not slow and m is not returned]
    random.Random(3).shuffle(others)  # they finish in any order
    for n, message in enumerate(others):
        acks.finished(message)
        if n % 7 == 0:
            await asyncio.sleep(0)  # some flushes happen in between
    await returned.nack(requeue=True)
    acks.settled(returned)
    await asyncio.wait_for(acks.drain(), 5)
    # The returned one is ready again; the slow one is still held, unacked.
    await _settles_at(vhost, (1, 1))
    acks.finished(slow)
    await asyncio.wait_for(acks.drain(), 5)
    await _settles_at(vhost, (1, 0))
    await channel.close()
