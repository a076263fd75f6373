"""A handler whose channel is lost stops before it touches anything again.

When a connection is cut, the broker puts the unacked messages back at once and may give them
to another replica, which works them from the start. A handler that went on working in the
old replica would then race that copy (for a MongoDB watch: both finishing the cluster, each
resetting passwords the other announces). Against a real RabbitMQ, with its connections cut
by ``rabbitmqctl close_all_connections``: the old handler is cancelled before the gate it was
waiting at opens, and the redelivered copy is the one handled.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import cast

import aio_pika
import pytest

from service.broker.consumer import CommandConsumer, WatchConsumer
from service.broker.topology import Topology
from service.metrics import ProvisionerMetrics
from service.provisioning.commands import CommandHandler
from service.provisioning.messages import WatchState, encode_watch
from service.provisioning.outcomes import CommandOutcome, WatchOutcome
from service.provisioning.ports import Delivery
from service.provisioning.watch import WatchHandler
from tests.fixtures.fakes import creating_watch
from tests.fixtures.rabbitmqctl import close_all_connections, queue_depths

pytestmark = pytest.mark.integration

TOPOLOGY = Topology()


class GatedWork:
    """Each delivery's work waits at a gate; what got past it, and what was cancelled."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started: list[bool] = []  # redelivered flag of each run, in order
        self.past_gate: list[bool] = []
        self.cancelled: list[bool] = []
        self._runs: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)

    async def runs(self, count: int) -> None:
        """Until ``count`` runs have started."""
        await self._runs[count].wait()

    async def run(self, redelivered: bool) -> None:
        self.started.append(redelivered)
        self._runs[len(self.started)].set()
        try:
            if not redelivered:  # the first delivery waits; its redelivered copy goes on
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(redelivered)
            raise
        self.past_gate.append(redelivered)


class GatedCommands:
    """A ``CommandHandler`` stand-in: acks each command after its gated work."""

    def __init__(self, work: GatedWork) -> None:
        self.work = work

    async def handle(self, delivery: Delivery) -> CommandOutcome:
        await self.work.run(delivery.redelivered)
        return CommandOutcome("accepted", "ack")


class GatedWatches:
    """A ``WatchHandler`` stand-in: ends each watch after its gated work."""

    def __init__(self, work: GatedWork) -> None:
        self.work = work
        self.redelivered = False

    async def handle_batch(
        self, watches: list[WatchState], *, due: float | None = None
    ) -> list[WatchOutcome]:
        await self.work.run(self.redelivered)
        return [WatchOutcome("ready") for _ in watches]


async def _publish(amqp_url: str, queue: str, body: bytes) -> None:
    """One message, on a connection of its own: the cuts close the test's connections too."""
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(aio_pika.Message(body, user_id="guest"), queue)


async def _empty(vhost: str, queue: str) -> None:
    """Wait (bounded) until the broker counts nothing left in ``queue``."""
    for _ in range(100):
        depth = (await queue_depths(vhost)).get(queue)
        if depth is not None and depth.total == 0:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{queue} still holds {depth}")


async def _cut_and_settle(vhost: str, work: GatedWork, cut: int = 1) -> None:
    """Cut every connection of ``vhost`` while the message of this round waits at the gate;
    wait for its redelivered copy to be worked on, then open the gate."""
    await asyncio.wait_for(work.runs(2 * cut - 1), 10)
    await close_all_connections(vhost, "cut by test")
    await asyncio.wait_for(work.runs(2 * cut), 30)
    work.gate.set()  # a handler still waiting here would now go on: it must not be there


@pytest.mark.parametrize("cuts", [1, 2], ids=["one cut", "a second cut after the reconnect"])
async def test_a_command_handler_whose_connection_is_cut_stops_and_its_copy_is_handled(
    vhost: str, amqp_url: str, cuts: int
) -> None:
    """After the first cut the robust channel is reopened; its handlers are watched as
    closely as the first channel's."""
    work = GatedWork()
    metrics = ProvisionerMetrics()
    service = await aio_pika.connect_robust(amqp_url, reconnect_interval=0.2)
    try:
        channel = await service.channel()
        queue = TOPOLOGY.queue(TOPOLOGY.requests_queue)
        consumer = CommandConsumer(
            channel, queue, 4, cast(CommandHandler, GatedCommands(work)), metrics=metrics
        )
        await consumer.start()
        for cut in range(1, cuts + 1):
            work.gate = asyncio.Event()
            await _publish(amqp_url, queue.name, b"{}")
            await _cut_and_settle(vhost, work, cut)
            await _empty(vhost, queue.name)
    finally:
        await service.close()
    assert work.started == [False, True] * cuts
    assert work.cancelled == [False] * cuts, "a handler outlived the loss of its channel"
    assert work.past_gate == [True] * cuts, "only the redelivered copy may do the work"
    stopped = metrics.registry.get_sample_value(
        "provisioner_handlers_stopped_total", {"consumer": "commands"}
    )
    assert stopped == cuts


async def test_a_watch_batch_whose_connection_is_cut_stops_and_its_copy_is_handled(
    vhost: str, amqp_url: str
) -> None:
    work = GatedWork()
    handler = GatedWatches(work)
    service = await aio_pika.connect_robust(amqp_url, reconnect_interval=0.2)
    try:
        channel = await service.channel()
        queue = TOPOLOGY.queue(TOPOLOGY.watch_queue)
        consumer = WatchConsumer(
            channel,
            queue,
            4,
            cast(WatchHandler, handler),
            trusted_user="guest",
            batch_max=4,
            linger_s=0.01,
        )
        await consumer.start()
        now = time.time()
        watch = creating_watch(1, deadline=now + 600, accepted_at=now)
        await _publish(amqp_url, queue.name, encode_watch(watch))
        await asyncio.wait_for(work.runs(1), 10)
        handler.redelivered = True  # what arrives from now on is the broker's copy
        await _cut_and_settle(vhost, work)
        await _empty(vhost, queue.name)
    finally:
        await service.close()
    assert work.started == [False, True]
    assert work.cancelled == [False], "the first batch was not stopped when its channel died"
    assert work.past_gate == [True], "only the redelivered copy may do the work"
