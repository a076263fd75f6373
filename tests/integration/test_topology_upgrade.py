"""Queues made by an earlier version, before the group size and the watch queue's single
active consumer were declared: the service still starts on them, and a fresh vhost gets both."""

from __future__ import annotations

import pytest
from aio_pika.abc import AbstractRobustConnection

from service.broker.topology import GROUP_SIZE, SINGLE_ACTIVE, Topology, declare, declare_queue

pytestmark = pytest.mark.integration


async def test_queues_made_before_the_new_arguments_are_used_as_they_are(
    amqp: AbstractRobustConnection,
) -> None:
    topology = Topology()
    channel = await amqp.channel()
    old_watch = {
        k: v
        for k, v in topology.queue(topology.watch_queue).arguments.items()
        if k not in (GROUP_SIZE, SINGLE_ACTIVE)
    }
    await channel.declare_queue(topology.watch_queue, durable=True, arguments=old_watch)
    lines = await declare(channel, topology)
    watch_line = next(line for line in lines if line.startswith(f"queue {topology.watch_queue}:"))
    assert "exists without" in watch_line
    assert GROUP_SIZE in watch_line and SINGLE_ACTIVE in watch_line
    # A consumer declares it the same way, and consumes.
    queue, kept = await declare_queue(channel, topology.queue(topology.watch_queue))
    assert sorted(kept) == sorted([GROUP_SIZE, SINGLE_ACTIVE])

    async def ignore(_: object) -> None:
        return None

    assert await queue.consume(ignore)
    # Every other queue was new: declared with both.
    requests = next(line for line in lines if line.startswith(f"queue {topology.requests_queue}:"))
    assert f"{GROUP_SIZE}=3" in requests and "exists without" not in requests
    await channel.close()


async def test_an_argument_that_really_differs_still_fails(amqp: AbstractRobustConnection) -> None:
    topology = Topology()
    channel = await amqp.channel()
    await channel.declare_queue(
        topology.requests_queue, durable=True, arguments={"x-queue-type": "classic"}
    )
    with pytest.raises(Exception, match="inequivalent arg"):
        await declare(channel, topology)
