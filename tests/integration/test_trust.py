"""Many teams, one token: every attack of docs/security.md's threat model, tried for real.

Each test runs the service as the documented ``provisioner`` user against the simulator, with
the documented producers (``orders-producer``, ``billing-producer``) and subscribers, each with
exactly the permissions docs/security.md gives it, in a virtual host of this module's own. Each
attack is tried the way a hostile producer would, and fails; the legitimate request beside it
still reaches ``connection_ready``, and nothing is lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import aio_pika
import msgspec
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.exceptions import ChannelPreconditionFailed

from contracts import new_keypair, open_sealed_secrets
from contracts.digitalocean import DatabaseCluster, DatabaseUserCreate
from contracts.events import ConnectionReady, Event, Failed, Rejected
from service.app import Service
from service.broker.topology import message_count
from service.digitalocean import DigitalOceanClient
from service.provisioning.commands import owner_tag, request_tag
from service.provisioning.messages import PRODUCER_HEADER, WatchState, encode_watch
from service.simulator import Simulator, SimulatorConfig
from tests.fixtures.permissions import (
    ROUTING_KEY,
    BrokerUser,
    Inbox,
    Layout,
    connected,
    rabbitmqctl,
)
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import command, running_service, settings_for
from tests.integration.test_examples import PYTHON_EXAMPLE, node, run_example

pytestmark = pytest.mark.integration

DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"
# A Direct Reply-to name as RabbitMQ writes them, naming a node no broker has: RabbitMQ 3.10
# closes the connection of whoever publishes to it (INTERNAL_ERROR).
FORGED_DIRECT_REPLY: Final = (
    "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyODY2MTYzOQAAC1oAAAAAAAAABg==.Zxa5yNz+EtNJLVAhj6HG6w=="
)


class Producer:
    """A producer as docs/security.md sets one up: it may publish commands, and hears its
    replies through Direct Reply-to on the channel it publishes on."""

    def __init__(self, user: BrokerUser, connection: AbstractConnection) -> None:
        self.user = user
        self.connection = connection
        self.replies = Inbox(acks=False)
        self._channel: AbstractChannel | None = None

    async def channel(self) -> AbstractChannel:
        if self._channel is None:
            self._channel = await self.connection.channel(publisher_confirms=True)
            queue = await self._channel.declare_queue(DIRECT_REPLY_TO, passive=True)
            await queue.consume(self.replies.on_message, no_ack=True)
        return self._channel

    async def send(
        self,
        body: dict[str, Any] | bytes,
        *,
        reply_to: str | None = DIRECT_REPLY_TO,
        user_id: str | None = "",
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish a command as this producer (``user_id=""``: its own user name)."""
        channel = await self.channel()
        exchange = await channel.get_exchange("provisioner.commands", ensure=False)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await exchange.publish(
            aio_pika.Message(
                payload,
                content_type="application/json",
                reply_to=reply_to,
                correlation_id=str(uuid.uuid4()),
                user_id=self.user.name if user_id == "" else user_id,
                headers=headers,
            ),
            ROUTING_KEY,
            timeout=10,
        )


class World:
    """The service, its simulator, two producers and a subscriber that sees every event."""

    def __init__(
        self,
        layout: Layout,
        sim: Simulator,
        service: Service,
        orders: Producer,
        billing: Producer,
        everything: Inbox,
    ) -> None:
        self.layout = layout
        self.sim = sim
        self.service = service
        self.orders = orders
        self.billing = billing
        self.everything = everything

    async def final(self, producer: str, request_id: str, timeout: float = 30) -> Event:
        """The request's final event, as every subscriber sees it."""

        def ended(events: list[Event]) -> bool:
            return _final(events, producer, request_id) is not None

        await self.everything.wait_for(ended, timeout)
        found = _final(self.everything.events, producer, request_id)
        assert found is not None
        return found

    async def clusters(self) -> list[DatabaseCluster]:
        async with DigitalOceanClient(self.sim.base_url, self.sim.config.token) as client:
            return await client.list_clusters()


def _final(events: list[Event], producer: str, request_id: str) -> Event | None:
    for event in events:
        data = event.data
        if (
            isinstance(event, ConnectionReady | Failed | Rejected)
            and data.request_id == request_id
            and data.producer == producer
        ):
            return event
    return None


def of(events: list[Event], request_id: str) -> list[Event]:
    return [e for e in events if getattr(e.data, "request_id", None) == request_id]


@asynccontextmanager
async def world(
    layout: Layout,
    simulator_factory: SimulatorFactory,
    *,
    ready_after_s: float = 0.3,
    **settings: Any,
) -> AsyncIterator[World]:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=ready_after_s))
    everything = Inbox()
    async with (
        running_service(settings_for(layout["provisioner"].url, sim, **settings)) as service,
        connected(layout["orders-events"]) as subscriber,
        connected(layout["orders-producer"]) as orders,
        connected(layout["billing-producer"]) as billing,
    ):
        channel = await subscriber.channel()
        queue = await channel.declare_queue(
            f"events.orders.all-{uuid.uuid4().hex[:8]}", exclusive=True
        )
        await queue.bind("provisioner.events", "#")
        await queue.consume(everything.on_message)
        yield World(
            layout,
            sim,
            service,
            Producer(layout["orders-producer"], orders),
            Producer(layout["billing-producer"], billing),
            everything,
        )


def rid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def secrets_of(cluster: DatabaseCluster) -> set[str]:
    values = {c.password for c in (cluster.connection, cluster.private_connection) if c}
    values |= {u.password for u in cluster.users or []}
    return {v for v in values if v}


# --- identity ---------------------------------------------------------------------------


async def test_a_command_without_user_id_is_rejected_with_how_to_set_it(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        request = rid("anonymous")
        await w.orders.send(command(request, "valkey"), user_id=None)
        await w.everything.wait_for(lambda evs: bool(of(evs, request)), timeout=30)
        admin = await aio_pika.connect(layout.admin_url)
        try:
            parked = await message_count(admin, "provisioner.rejected")
        finally:
            await admin.close()
    (rejected,) = of(w.everything.events, request)
    assert isinstance(rejected, Rejected)
    assert rejected.data.producer is None
    (error,) = rejected.data.errors
    assert error.path == "properties.user_id"
    assert "user_id" in error.message and "RabbitMQ user you connect as" in error.message
    assert parked >= 1
    assert w.sim.stats().count("POST /v2/databases") == 0
    # Without a producer, the policy cannot allow replies: the rejection is not copied.
    assert of(w.orders.replies.events, request) == []


async def test_rabbitmq_refuses_a_user_id_that_is_not_the_connections(layout: Layout) -> None:
    async with connected(layout["billing-producer"]) as billing:
        channel = await billing.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("provisioner.commands", ensure=False)
        with pytest.raises(ChannelPreconditionFailed):
            await exchange.publish(
                aio_pika.Message(b"{}", user_id=layout["orders-producer"].name),
                ROUTING_KEY,
                timeout=10,
            )


# --- replay and ownership ----------------------------------------------------------------


async def test_a_replayed_command_of_another_producer_gets_nothing_of_its_cluster(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        request = rid("orders-db")
        body = command(request, "pg")
        await w.orders.send(body)
        ready = await w.final(w.orders.user.name, request)
        # Request ids travel in every event and specs are guessable: billing replays it all.
        await w.billing.send(body)
        replay = await w.final(w.billing.user.name, request)
        await w.billing.replies.wait_for(lambda evs: bool(of(evs, request)), timeout=10)
        clusters = await w.clusters()
    assert isinstance(ready, ConnectionReady)
    assert isinstance(replay, Failed)
    assert replay.data.reason == "api_error"
    # Not a word of the other cluster: not its id, not whose it is.
    assert replay.data.cluster_id is None
    assert ready.data.cluster_id not in replay.data.message
    assert w.orders.user.name not in json.dumps(msgspec.to_builtins(replay))
    heard = of(w.billing.replies.events, request)
    assert [type(e) for e in heard] == [Failed]
    passwords = secrets_of(next(c for c in clusters if c.id == ready.data.cluster_id))
    assert passwords
    for event in w.billing.replies.events:
        text = json.dumps(msgspec.to_builtins(event))
        assert not any(p in text for p in passwords)
    assert len(clusters) == 1  # the replay created nothing
    assert ready.id != replay.id


async def test_the_same_request_id_from_two_producers_is_two_requests(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        request = rid("shared-id")
        await w.orders.send(command(request, "valkey", cluster={"name": f"o-{request}"}))
        await w.billing.send(command(request, "valkey", cluster={"name": f"b-{request}"}))
        orders = await w.final(w.orders.user.name, request)
        billing = await w.final(w.billing.user.name, request)
        clusters = await w.clusters()
    assert isinstance(orders, ConnectionReady) and isinstance(billing, ConnectionReady)
    assert orders.data.cluster_id != billing.data.cluster_id
    assert orders.id != billing.id  # neither deduplicates the other away
    tags = {c.name: set(c.tags or []) for c in clusters}
    assert request_tag("provisioner", w.orders.user.name, request) in tags[f"o-{request}"]
    assert request_tag("provisioner", w.billing.user.name, request) in tags[f"b-{request}"]
    assert owner_tag("provisioner", w.billing.user.name) in tags[f"b-{request}"]


async def test_a_forged_producer_header_does_not_make_a_command_someone_elses(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    """The service's retries carry the producer in a header; only the service's own user may
    make the service believe it."""
    async with world(layout, simulator_factory) as w:
        request = rid("orders-db")
        body = command(request, "pg")
        await w.orders.send(body)
        ready = await w.final(w.orders.user.name, request)
        await w.billing.send(body, headers={PRODUCER_HEADER: w.orders.user.name})
        forged = await w.final(w.billing.user.name, request)
    assert isinstance(ready, ConnectionReady)
    assert isinstance(forged, Failed)
    assert forged.data.cluster_id is None
    assert not any(isinstance(e, ConnectionReady) for e in of(w.billing.replies.events, request))


@pytest.mark.parametrize(
    "tag",
    ["provisioner", "provisioner:req:{digest}", "Provisioner:OWNER:{digest}", "provisioner:"],
)
async def test_reserved_tags_are_refused_so_no_producer_can_squat_another_request(
    tag: str, layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        victim = rid("future")
        squat = tag.format(digest=request_tag("provisioner", w.orders.user.name, victim)[20:])
        request = rid("squat")
        await w.billing.send(command(request, "pg", cluster={"tags": ["team-billing", squat]}))
        rejected = await w.final(w.billing.user.name, request)
        # The victim's later command is its own, untouched.
        await w.orders.send(command(victim, "pg"))
        ready = await w.final(w.orders.user.name, victim)
    assert isinstance(rejected, Rejected)
    assert [e.path for e in rejected.data.errors] == ["$.cluster.tags[1]"]
    assert "reserved" in rejected.data.errors[0].message
    assert isinstance(ready, ConnectionReady)
    assert w.sim.stats().clusters == {"online": 1}


async def test_a_producer_can_restore_only_clusters_it_created_itself(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        source = rid("orders-src")
        await w.orders.send(command(source, "pg"))
        src = await w.final(w.orders.user.name, source)
        assert isinstance(src, ConnectionReady)
        restore = {"backup_restore": {"database_name": src.data.name}}
        clone = rid("clone")
        await w.billing.send(command(clone, "pg", cluster=restore))
        refused = await w.final(w.billing.user.name, clone)
        own = rid("own-restore")
        await w.orders.send(command(own, "pg", cluster=restore))
        restored = await w.final(w.orders.user.name, own)
    assert isinstance(refused, Rejected)
    (error,) = refused.data.errors
    assert error.path == "$.cluster.backup_restore.database_name"
    assert "only restore clusters it created" in error.message
    assert isinstance(restored, ConnectionReady)
    assert w.sim.stats().clusters == {"online": 2}


# --- replies ------------------------------------------------------------------------------


async def test_replies_never_go_into_a_queue_the_producer_could_not_write_to(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    admin = await aio_pika.connect(layout.admin_url)
    channel = await admin.channel()
    audit = await channel.declare_queue(f"events.audit.status-{uuid.uuid4().hex[:6]}")
    await audit.bind("provisioner.events", "database.cluster.status_changed")
    work = await channel.declare_queue(f"billing-app.work-{uuid.uuid4().hex[:6]}")
    try:
        async with world(layout, simulator_factory) as w:
            aimed = [rid("at-audit"), rid("at-work")]
            await w.billing.send(command(aimed[0], "valkey"), reply_to=audit.name)
            await w.billing.send(command(aimed[1], "valkey"), reply_to=work.name)
            refused = [await w.final(w.billing.user.name, r) for r in aimed]
            # Its own queue (`<producer>.<anything>`) is allowed, and gets every event.
            mine = await (await w.orders.connection.channel()).declare_queue(
                f"{w.orders.user.name}.replies", exclusive=True
            )
            own = rid("own-queue")
            await w.orders.send(command(own, "valkey"), reply_to=mine.name)
            ready = await w.final(w.orders.user.name, own)

            async def all_three_replied() -> bool:
                return await message_count(w.orders.connection, mine.name) >= 3

            await eventually(all_three_replied, timeout=10)
        audit_left = await message_count(admin, audit.name)
        work_left = await message_count(admin, work.name)
    finally:
        await admin.close()
    for event in refused:
        assert isinstance(event, Rejected)
        assert [e.path for e in event.data.errors] == ["properties.reply_to"]
        assert "may not have replies sent to" in event.data.errors[0].message
    assert work_left == 0
    # The audit queue holds status changes of the one valid request only: nothing was sent
    # there on behalf of the commands that named it.
    assert audit_left == 2
    assert isinstance(ready, ConnectionReady)
    assert w.sim.stats().count("POST /v2/databases") == 1


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout: float) -> None:
    """Ask ``check`` again until it says yes; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.05)


async def test_a_forged_direct_reply_to_name_costs_the_service_nothing(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        connection = w.service._connection
        assert connection is not None
        reconnects: list[object] = []
        connection.reconnect_callbacks.add(lambda *args: reconnects.append(args))
        forged = [rid("forged") for _ in range(3)]
        for request in forged:
            await w.billing.send(command(request, "valkey"), reply_to=FORGED_DIRECT_REPLY)
        honest = rid("honest")
        await w.orders.send(command(honest, "valkey"))
        ends = [await w.final(w.billing.user.name, r) for r in forged]
        ready = await w.final(w.orders.user.name, honest)
        await w.orders.replies.wait_for(
            lambda evs: any(isinstance(e, ConnectionReady) for e in of(evs, honest)), timeout=10
        )
        readiness = w.service.readiness()
    assert all(isinstance(e, ConnectionReady) for e in ends)
    assert isinstance(ready, ConnectionReady)
    assert reconnects == []
    assert all(readiness.values()), readiness


async def genuine_direct_reply_name(url: str) -> str:
    """A Direct Reply-to name as the broker writes it, read off a message to ourselves."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        replies = await channel.declare_queue(DIRECT_REPLY_TO, passive=True)

        async def ignore(message: AbstractIncomingMessage) -> None:
            return None

        await replies.consume(ignore, no_ack=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"x", reply_to=DIRECT_REPLY_TO), queue.name
        )
        message = await queue.get(timeout=5)
        assert message.reply_to is not None
        return message.reply_to
    finally:
        await connection.close()


def cut_short(direct_reply_name: str) -> str:
    """The same node, its pid one byte short: RabbitMQ 3.10 closes the publisher's connection."""
    encoded, key = direct_reply_name.removeprefix(DIRECT_REPLY_TO + ".").split(".", 1)
    raw = base64.b64decode(encoded)[:-1]
    return f"{DIRECT_REPLY_TO}.{base64.b64encode(raw).decode()}.{key}"


async def test_a_malformed_name_on_a_known_node_costs_other_producers_nothing(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        replies = w.service._replies
        assert replies is not None and replies._connection is not None
        reconnects: list[object] = []
        replies._connection.reconnect_callbacks.add(lambda *args: reconnects.append(args))
        first = rid("first")  # makes the node known: its copies go on the shared connection
        await w.orders.send(command(first, "valkey"))
        await w.final(w.orders.user.name, first)
        malformed = cut_short(await genuine_direct_reply_name(layout.admin_url))
        hostile = [rid("hostile") for _ in range(3)]
        for request in hostile:
            await w.billing.send(b"not json", reply_to=malformed)
            await w.billing.send(command(request, "valkey"), reply_to=malformed)
        ends = [await w.final(w.billing.user.name, r) for r in hostile]
        after = rid("after")
        await w.orders.send(command(after, "valkey"))
        await w.final(w.orders.user.name, after)
        await w.orders.replies.wait_for(
            lambda evs: any(isinstance(e, ConnectionReady) for e in of(evs, after)), timeout=10
        )
    # The requests themselves are unharmed; their copies are refused, unsent.
    assert all(isinstance(e, ConnectionReady) for e in ends)
    assert reconnects == []


async def test_forged_nodes_cost_at_most_one_probe_per_producer_now_and_then(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        replies = w.service._replies
        assert replies is not None
        before = replies.probes
        forged = [rid("flood") for _ in range(20)]
        for _ in forged:
            await w.billing.send(b"not json", reply_to=FORGED_DIRECT_REPLY)
        for request in forged:
            await w.billing.send(command(request, "valkey"), reply_to=FORGED_DIRECT_REPLY)
        for request in forged:
            await w.final(w.billing.user.name, request)
        honest = rid("honest")
        await w.orders.send(command(honest, "valkey"))
        await w.final(w.orders.user.name, honest)
        await w.orders.replies.wait_for(
            lambda evs: any(isinstance(e, ConnectionReady) for e in of(evs, honest)), timeout=10
        )
    # billing's flood cost one probe; orders' node was probed (or known) once.
    assert replies.probes - before <= 2


async def test_the_examples_follow_their_own_request_not_another_producers_with_its_id(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    ids = ["orders-db-2026-11", "orders-db-2026-12"]  # the docs' own example ids: guessable
    _, attacker_key = new_keypair()
    small = {"size": "db-s-1vcpu-1gb", "num_nodes": 1, "users": [{"name": "app"}]}
    async with world(layout, simulator_factory, ready_after_s=1.0) as w:
        for i, request in enumerate(ids):  # the attacker goes first, with the victims' ids
            trap = command(request, "valkey", cluster={"name": f"billing-trap-{i}"})
            await w.billing.send({**trap, "recipient_public_key": attacker_key})
        mine = json.dumps(command(ids[0], "pg", cluster={"name": "orders-py", **small}))
        python = await run_example(
            [sys.executable, str(PYTHON_EXAMPLE), "-"], layout.admin_url, stdin=mine.encode()
        )
        mine = json.dumps(command(ids[1], "pg", cluster={"name": "orders-node", **small}))
        nodejs = await run_example(node("-"), layout.admin_url, stdin=mine.encode(), sealed=True)
    for finished, name in ((python, "orders-py"), (nodejs, "orders-node")):
        assert finished.returncode == 0, finished.stderr
        assert {e["data"]["name"] for e in finished.printed() if "name" in e["data"]} == {name}
    assert "cannot open" not in nodejs.stderr


# --- forged internal messages ---------------------------------------------------------------


async def test_a_forged_watch_is_dead_lettered_and_never_announced(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    """A producer given too much (write on the default exchange) forges a watch for another
    team's online cluster, with its own reply_to: the service never acts on it."""
    sloppy = BrokerUser(f"sloppy-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex, layout.vhost)
    rabbitmqctl("add_user", sloppy.name, stdin=f"{sloppy.password}\n")
    rabbitmqctl("set_permissions", "-p", layout.vhost, sloppy.name, ".*", ".*", ".*")
    try:
        async with world(layout, simulator_factory) as w, connected(sloppy) as forger:
            request = rid("orders-db")
            await w.orders.send(command(request, "pg"))
            ready = await w.final(w.orders.user.name, request)
            assert isinstance(ready, ConnectionReady)
            channel = await forger.channel(publisher_confirms=True)
            loot = await channel.declare_queue(f"sloppy-loot-{uuid.uuid4().hex[:6]}")
            watch = WatchState(
                request_id=request,
                cluster_id=ready.data.cluster_id,
                name=ready.data.name,
                engine="pg",
                region="nyc3",
                status="online",
                deadline=9e9,
                accepted_at=0.0,
                phase="finishing",
                users=[DatabaseUserCreate(name="loot")],
                reply_to=loot.name,
                producer=w.orders.user.name,
            )
            admin = await aio_pika.connect(layout.admin_url)
            before = await message_count(admin, "provisioner.dead-letter")
            await channel.default_exchange.publish(
                aio_pika.Message(encode_watch(watch), user_id=sloppy.name),
                "provisioner.watch",
                timeout=10,
            )

            async def dead_lettered() -> bool:
                return await message_count(admin, "provisioner.dead-letter") > before

            await eventually(dead_lettered, timeout=30)
            await admin.close()
            looted = await message_count(forger, loot.name)
            (cluster,) = await w.clusters()
    finally:
        rabbitmqctl("delete_user", sloppy.name)
    assert looted == 0
    assert "loot" not in {u.name for u in cluster.users or []}


async def test_the_services_own_events_looped_back_as_commands_are_dead_lettered(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    """A producer may declare its own queues, and may write to provisioner.commands: a reply
    queue of its own that dead-letters into that exchange loops the service's events back to
    it as commands, still carrying the service's user_id."""
    async with world(layout, simulator_factory) as w:
        channel = await w.orders.connection.channel()
        trap = await channel.declare_queue(
            f"{w.orders.user.name}.trap",
            arguments={
                "x-message-ttl": 0,
                "x-dead-letter-exchange": "provisioner.commands",
                "x-dead-letter-routing-key": ROUTING_KEY,
            },
        )
        admin = await aio_pika.connect(layout.admin_url)
        before = await message_count(admin, "provisioner.dead-letter")
        request = rid("loop")
        await w.orders.send(command(request, "valkey"), reply_to=trap.name)
        ready = await w.final(w.orders.user.name, request)

        async def all_copies_dead_lettered() -> bool:
            return await message_count(admin, "provisioner.dead-letter") >= before + 3

        await eventually(all_copies_dead_lettered, timeout=30)
        await admin.close()
    assert isinstance(ready, ConnectionReady)
    service_user = layout["provisioner"].name
    assert not any(getattr(e.data, "producer", None) == service_user for e in w.everything.events)
    assert not [e for e in w.everything.events if isinstance(e, Rejected)]


# --- sealed credentials -------------------------------------------------------------------


async def test_sealed_credentials_reach_only_their_requester(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    private_key, public_key = new_keypair()
    async with world(layout, simulator_factory) as w:
        request = rid("sealed")
        await w.orders.send(command(request, "pg", recipient_public_key=public_key))
        ready = await w.final(w.orders.user.name, request)
        await w.orders.replies.wait_for(
            lambda evs: any(isinstance(e, ConnectionReady) for e in of(evs, request)), timeout=10
        )
        (cluster,) = await w.clusters()
    assert isinstance(ready, ConnectionReady)
    assert ready.data.secrets == "sealed" and ready.data.sealed_secrets
    handed_out = secrets_of(cluster)
    assert len(handed_out) >= 2  # doadmin's and the app user's
    for event in w.everything.events + w.orders.replies.events:
        text = json.dumps(msgspec.to_builtins(event))
        assert not any(secret in text for secret in handed_out), event.routing_key
    opened = open_sealed_secrets(ready, private_key)
    assert opened.secrets == "included"
    assert opened.connection is not None and cluster.connection is not None
    assert opened.connection.password == cluster.connection.password
    assert opened.connection.uri == cluster.connection.uri
    assert opened.private_connection == cluster.private_connection
    assert {u.name: u.password for u in opened.users} == {
        u.name: u.password for u in cluster.users or []
    }


async def test_sealed_mode_refuses_a_command_without_a_key(
    layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory, event_secrets="sealed") as w:
        request = rid("no-key")
        await w.orders.send(command(request, "valkey"))
        rejected = await w.final(w.orders.user.name, request)
    assert isinstance(rejected, Rejected)
    (error,) = rejected.data.errors
    assert error.path == "$.recipient_public_key"
    assert "provisioner keygen" in error.message


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("A" * 43 + "=", "not a usable X25519 key"),  # all zero: a low-order point
        ("abc", "base64 of a 32-byte X25519 public key"),
    ],
)
async def test_an_unusable_recipient_key_is_a_field_error(
    key: str, words: str, layout: Layout, simulator_factory: SimulatorFactory
) -> None:
    async with world(layout, simulator_factory) as w:
        request = rid("bad-key")
        await w.orders.send(command(request, "valkey", recipient_public_key=key))
        rejected = await w.final(w.orders.user.name, request)
    assert isinstance(rejected, Rejected)
    (error,) = rejected.data.errors
    assert error.path == "$.recipient_public_key"
    assert words in error.message


# --- policy -------------------------------------------------------------------------------


async def test_a_burst_of_commands_cannot_pass_the_clusters_in_flight_limit(
    layout: Layout, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('["*"]\nmax_clusters_in_flight = 1\n')
    async with world(layout, simulator_factory, ready_after_s=3.0, policy_file=str(policy)) as w:
        burst = [rid("burst") for _ in range(8)]
        for request in burst:
            await w.orders.send(command(request, "valkey"))
        ends = [await w.final(w.orders.user.name, r) for r in burst]
    assert sum(isinstance(e, ConnectionReady) for e in ends) == 1
    assert sum(isinstance(e, Rejected) for e in ends) == 7
    assert w.sim.stats().count("POST /v2/databases") == 1


async def test_the_policy_file_limits_what_each_producer_may_ask_for(
    layout: Layout, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    billing = layout["billing-producer"].name
    policy.write_text(
        f"""
["*"]
max_nodes = 2

["{billing}"]
engines = ["valkey"]
regions = ["ams3"]
sizes = ["db-s-1vcpu-1*"]
"""
    )
    async with world(layout, simulator_factory, policy_file=str(policy)) as w:
        denied, allowed, big = rid("denied"), rid("allowed"), rid("big")
        await w.billing.send(command(denied, "pg"))  # engine, region and size at once
        await w.billing.send(command(allowed, "valkey", cluster={"region": "ams3"}))
        await w.orders.send(command(big, "mongodb"))  # three nodes
        refused = await w.final(billing, denied)
        ready = await w.final(billing, allowed)
        too_big = await w.final(w.orders.user.name, big)
    assert isinstance(refused, Rejected)
    paths = [e.path for e in refused.data.errors]
    assert paths == ["$.cluster.engine", "$.cluster.region", "$.cluster.size"]
    assert f"producer {billing!r} may not use engine 'pg'" in refused.data.errors[0].message
    assert isinstance(ready, ConnectionReady)
    assert isinstance(too_big, Rejected)
    assert [e.path for e in too_big.data.errors] == ["$.cluster.num_nodes"]
    assert w.sim.stats().count("POST /v2/databases") == 1


async def test_clusters_in_flight_are_limited_per_producer(
    layout: Layout, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('["*"]\nmax_clusters_in_flight = 1\n')
    async with world(layout, simulator_factory, ready_after_s=3.0, policy_file=str(policy)) as w:
        first, second, other = rid("first"), rid("second"), rid("other")
        await w.orders.send(command(first, "valkey"))
        await w.everything.wait_for(lambda evs: bool(of(evs, first)), timeout=30)
        await w.orders.send(command(second, "valkey"))
        await w.billing.send(command(other, "valkey"))  # its own count
        refused = await w.final(w.orders.user.name, second)
        ready = await w.final(w.orders.user.name, first)
        also_ready = await w.final(w.billing.user.name, other)
    assert isinstance(refused, Rejected)
    (error,) = refused.data.errors
    assert "1 clusters being created" in error.message and "allows 1" in error.message
    assert isinstance(ready, ConnectionReady) and isinstance(also_ready, ConnectionReady)
