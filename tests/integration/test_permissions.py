"""The least-privilege broker layout of docs/security.md, proved on a real RabbitMQ.

The fixture runs the ``rabbitmqctl set_permissions`` and ``set_topic_permissions`` lines of
docs/security.md as they are written (only the virtual host and the user names are swapped for
this test's own), so the documented layout is the tested one. Then each user does what it may
and is refused (``ACCESS_REFUSED``, 403) what it may not.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelAccessRefused

from contracts.events import (
    ConnectionReady,
    Rejected,
    StatusChanged,
    StatusChangedData,
    encode_event,
)
from service.broker.topology import message_count
from service.simulator import SimulatorConfig
from tests.fixtures.permissions import (
    DOC_VHOST,
    ROUTING_KEY,
    Inbox,
    Layout,
    connected,
    documented_commands,
    final_types,
    message,
)
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import command, running_service, settings_for

pytestmark = pytest.mark.integration

USERS: Final = (
    "provisioner",
    "orders-producer",
    "billing-producer",
    "orders-events",
    "audit-events",
)
OPERATOR: Final = "provisioner-operator"


async def refused(
    connection: AbstractConnection, action: Callable[[AbstractChannel], Awaitable[Any]]
) -> None:
    """``action`` on a fresh confirming channel ends in ACCESS_REFUSED."""
    channel = await connection.channel(publisher_confirms=True)
    with pytest.raises(ChannelAccessRefused):
        await asyncio.wait_for(action(channel), timeout=10)


async def publish_to(channel: AbstractChannel, exchange: str, routing_key: str) -> None:
    if exchange == "":
        await channel.default_exchange.publish(message(), routing_key, timeout=10)
        return
    target = await channel.get_exchange(exchange)
    await target.publish(message(), routing_key, timeout=10)


async def consume(channel: AbstractChannel, queue: str) -> None:
    async def ignore(incoming: AbstractIncomingMessage) -> None:
        await incoming.nack(requeue=True)

    declared = await channel.get_queue(queue)
    await declared.consume(ignore)


async def get_one(channel: AbstractChannel, queue: str) -> None:
    declared = await channel.get_queue(queue)
    await declared.get(fail=False, timeout=5)


async def bind(channel: AbstractChannel, queue: str, exchange: str, routing_key: str) -> None:
    declared = await channel.declare_queue(queue, exclusive=True)
    await declared.bind(exchange, routing_key)


def test_the_security_doc_sets_up_every_user_it_describes() -> None:
    commands = documented_commands()
    added = {args[2] for args in commands if args[1] == "add_user"}
    granted = {args[4] for args in commands if args[1] == "set_permissions"}
    assert added == granted == {*USERS, OPERATOR}
    for args in commands:
        if args[1] in ("set_permissions", "set_topic_permissions"):
            assert args[2:4] == ["-p", DOC_VHOST]
            for pattern in args[-3 if args[1] == "set_permissions" else -2 :]:
                assert pattern.startswith("^"), f"unanchored pattern {pattern!r} in {args}"


async def test_the_service_provisions_with_only_its_own_permissions(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    settings = settings_for(layout["provisioner"].url, sim)
    team, audit, replies = Inbox(), Inbox(), Inbox(acks=False)
    async with (
        running_service(settings) as service,
        connected(layout["orders-events"]) as subscriber,
        connected(layout["audit-events"]) as auditor,
        connected(layout["orders-producer"]) as producer,
        connected(layout[OPERATOR]) as operator,
    ):
        sub_channel = await subscriber.channel()
        queue = await sub_channel.declare_queue("events.orders.all", exclusive=True)
        await queue.bind("provisioner.events", "database.cluster.#")
        await queue.consume(team.on_message)
        audit_channel = await auditor.channel()
        audit_queue = await audit_channel.declare_queue("events.audit.status", exclusive=True)
        await audit_queue.bind("provisioner.events", "database.cluster.status_changed")
        await audit_queue.consume(audit.on_message)

        # Direct Reply-to: the producer gets its copies with no queue of its own.
        channel = await producer.channel(publisher_confirms=True)
        reply_queue = await channel.get_queue("amq.rabbitmq.reply-to")
        await reply_queue.consume(replies.on_message, no_ack=True)
        commands = await channel.get_exchange("provisioner.commands")
        good = command("least-privilege", "mysql")
        bad = {"request_id": "least-privilege-bad", "cluster": {"engine": "pg"}}
        for body in (good, bad):
            await commands.publish(
                message(
                    json.dumps(body).encode(),
                    reply_to="amq.rabbitmq.reply-to",
                    user_id=layout["orders-producer"].name,
                ),
                ROUTING_KEY,
                timeout=10,
            )
        await team.wait_for(
            lambda evs: (
                "database.cluster.connection_ready" in final_types(evs, "least-privilege")
                and "database.cluster.rejected" in final_types(evs, "least-privilege-bad")
            ),
            timeout=30,
        )
        await replies.wait_for(
            lambda evs: any(isinstance(e, ConnectionReady) for e in evs), timeout=10
        )
        await audit.wait_for(lambda evs: len(evs) >= 2, timeout=10)
        operator_channel = await operator.channel()
        parked = await (await operator_channel.get_queue("provisioner.rejected")).get(timeout=5)
        await parked.ack()
        assert all(service.readiness().values()), service.readiness()

    assert parked.headers and "x-rejection-reason" in parked.headers
    assert {type(e) for e in replies.events} >= {StatusChanged, ConnectionReady}
    assert any(isinstance(e, Rejected) for e in replies.events)
    assert {e.routing_key for e in audit.events} == {"database.cluster.status_changed"}


async def test_a_producer_may_publish_commands_and_nothing_else(layout: Layout) -> None:
    async with connected(layout["orders-producer"]) as producer:
        channel = await producer.channel(publisher_confirms=True)
        await publish_to(channel, "provisioner.commands", ROUTING_KEY)
        await refused(producer, lambda ch: consume(ch, "provisioner.requests"))
        await refused(producer, lambda ch: get_one(ch, "provisioner.rejected"))
        await refused(producer, lambda ch: consume(ch, "provisioner.watch"))
        await refused(producer, lambda ch: ch.declare_queue("orders.snoop", exclusive=True))
        await refused(producer, lambda ch: ch.declare_queue(exclusive=True))
        await refused(producer, lambda ch: publish_to(ch, "provisioner.events", "database.x"))
        # The default exchange would reach every queue: the watch queue, the requests queue.
        await refused(producer, lambda ch: publish_to(ch, "", "provisioner.requests"))
        await refused(producer, lambda ch: publish_to(ch, "", "provisioner.watch"))
    admin = await aio_pika.connect(layout.admin_url)
    assert await message_count(admin, "provisioner.requests") == 1  # the one it may send
    await (await (await admin.channel()).get_queue("provisioner.requests")).purge()
    await admin.close()


async def test_a_subscriber_reads_its_own_queues_and_can_neither_publish_nor_snoop(
    layout: Layout,
) -> None:
    inbox = Inbox()
    async with connected(layout["orders-events"]) as subscriber:
        channel = await subscriber.channel()
        queue = await channel.declare_queue("events.orders.ready", exclusive=True)
        await queue.bind("provisioner.events", "database.cluster.#")
        await queue.consume(inbox.on_message)
        guest = await aio_pika.connect(layout.admin_url)
        guest_channel = await guest.channel()
        events = await guest_channel.get_exchange("provisioner.events")
        event = StatusChanged.of(
            StatusChangedData(
                request_id="r-1", cluster_id="c-1", name="orders", engine="pg", status="creating"
            )
        )
        await events.publish(aio_pika.Message(encode_event(event)), event.routing_key)
        await guest.close()
        await inbox.wait_for(lambda evs: len(evs) == 1, timeout=10)

        await refused(subscriber, lambda ch: publish_to(ch, "provisioner.commands", ROUTING_KEY))
        await refused(subscriber, lambda ch: publish_to(ch, "provisioner.events", "database.x"))
        await refused(subscriber, lambda ch: publish_to(ch, "", "provisioner.requests"))
        await refused(subscriber, lambda ch: publish_to(ch, "", "events.orders.ready"))
        await refused(subscriber, lambda ch: consume(ch, "provisioner.requests"))
        await refused(subscriber, lambda ch: get_one(ch, "provisioner.rejected"))
        await refused(subscriber, lambda ch: ch.declare_queue("events.billing.q", exclusive=True))
        await refused(
            subscriber,
            lambda ch: bind(ch, "events.orders.tap", "provisioner.commands", ROUTING_KEY),
        )


@pytest.mark.parametrize(
    ("routing_key", "allowed"),
    [
        ("database.cluster.status_changed", True),
        ("database.cluster.rejected", True),
        ("database.cluster.failed", True),
        ("database.cluster.connection_ready", False),
        ("database.cluster.#", False),
        ("#", False),
    ],
)
async def test_a_listener_kept_from_credentials_cannot_bind_connection_ready(
    routing_key: str, allowed: bool, layout: Layout
) -> None:
    async with connected(layout["audit-events"]) as auditor:

        async def attempt(channel: AbstractChannel) -> None:
            await bind(channel, "events.audit.q", "provisioner.events", routing_key)

        if allowed:
            await attempt(await auditor.channel())
        else:
            await refused(auditor, attempt)


async def test_an_operator_reads_the_parking_and_dead_letter_queues_only(layout: Layout) -> None:
    async with connected(layout[OPERATOR]) as operator:
        channel = await operator.channel()
        await get_one(channel, "provisioner.rejected")
        await get_one(channel, "provisioner.dead-letter")
        await refused(operator, lambda ch: get_one(ch, "provisioner.requests"))
        await refused(operator, lambda ch: publish_to(ch, "", "provisioner.requests"))
        await refused(operator, lambda ch: publish_to(ch, "provisioner.commands", ROUTING_KEY))
