"""``PROVISIONER_EVENT_SECRETS``: what ``connection_ready`` carries of the generated secrets.

With ``omit`` no event (on the exchange or in a reply copy) holds a password, a Kafka access
key, or a URI with a password: every secret the simulator generated is looked for in the raw
bytes of every event, in the forms it could take there (as is, JSON-escaped, URL-encoded).
With the default, ``include``, subscribers get exactly the credentials DigitalOcean returned.
Either way the service's own log of the run holds none of them.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final
from urllib.parse import quote, urlsplit

import msgspec
import pytest
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from contracts.digitalocean import DatabaseCluster, DatabaseConnection, ServiceConnection
from contracts.events import ConnectionReady, decode_event
from service.observability import configure_logging
from service.simulator import Simulator, SimulatorConfig
from tests.fixtures.broker import EventRecorder
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import (
    all_final,
    command,
    final,
    publish,
    running_service,
    settings_for,
)

pytestmark = pytest.mark.integration

# Every shape of credentials the simulator hands out: database URIs, mongodb+srv, Kafka
# access keys, the OpenSearch dashboard's https URI, standby connections (pg with 2 nodes).
ENGINES: Final = ("pg", "mysql", "valkey", "mongodb", "kafka", "opensearch")


def generated_secrets(clusters: list[DatabaseCluster]) -> set[str]:
    """Every password and private key the API returned for ``clusters``."""
    found: set[str] = set()
    for cluster in clusters:
        connections = (
            cluster.connection,
            cluster.private_connection,
            cluster.standby_connection,
            cluster.standby_private_connection,
            cluster.ui_connection,
            cluster.schema_registry_connection,
        )
        for connection in connections:
            if connection is not None and connection.password:
                found.add(connection.password)
        for user in cluster.users or []:
            found.update(v for v in (user.password, user.access_key) if v)
    return found


def forms(secret: str) -> set[bytes]:
    """How ``secret`` could appear in a JSON body: as is, JSON-escaped, URL-encoded, and each
    long line of a PEM key on its own."""
    shapes = {secret, msgspec.json.encode(secret).decode()[1:-1], quote(secret, safe="")}
    shapes |= {line for line in secret.splitlines() if len(line) >= 16 and "-----" not in line}
    return {shape.encode() for shape in shapes}


async def clusters_of(sim: Simulator) -> list[DatabaseCluster]:
    """The clusters with the passwords the API handed out (a GET hides MongoDB's)."""
    return sim.handed_out()


@contextmanager
def logged_to(buffer: io.StringIO) -> Iterator[None]:
    """The run's log lines (DEBUG and up, libraries included) into ``buffer``."""
    root = logging.getLogger()
    level = root.level
    configure_logging("json", "DEBUG", stream=buffer)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_provisioner_handler", False)]:
            root.removeHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()


async def provision_every_engine(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    sim: Simulator,
    policy: str,
) -> tuple[list[ConnectionReady], list[bytes]]:
    """Provision one cluster per engine (the pg one with a reply queue); return the
    connection_ready events and the raw bytes of every event and reply copy."""
    ids = [f"secrets-{engine}" for engine in ENGINES]
    channel = await amqp.channel()
    replies = await channel.declare_queue(f"guest.replies.{uuid.uuid4().hex}", exclusive=True)
    copies: list[bytes] = []

    async def on_reply(message: AbstractIncomingMessage) -> None:
        copies.append(message.body)
        await message.ack()

    await replies.consume(on_reply)
    async with running_service(settings_for(amqp_url, sim, event_secrets=policy)):
        for engine, rid in zip(ENGINES, ids, strict=True):
            reply_to = replies.name if engine == "pg" else None
            await publish(amqp, command(rid, engine), reply_to=reply_to, correlation_id=rid)
        seen = await events.wait_for(all_final(ids), timeout=60)
    await channel.close()
    ready = [final(seen, rid) for rid in ids]
    assert all(isinstance(e, ConnectionReady) for e in ready), ready
    assert any(isinstance(decode_event(c), ConnectionReady) for c in copies)
    bodies = [m.body for m in events.messages] + copies
    return [e for e in ready if isinstance(e, ConnectionReady)], bodies


async def test_omit_publishes_connection_ready_without_any_generated_secret(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    log = io.StringIO()
    with logged_to(log):
        ready, bodies = await provision_every_engine(amqp_url, amqp, events, sim, "omit")
    secrets = generated_secrets(await clusters_of(sim))
    assert len(secrets) >= len(ENGINES)  # the check below looks for something real

    for event in ready:
        data = event.data
        assert data.secrets == "omitted"
        connections: list[DatabaseConnection | ServiceConnection | None] = [
            data.connection,
            data.private_connection,
            data.standby_connection,
            data.standby_private_connection,
            data.ui_connection,
            data.schema_registry_connection,
        ]
        assert data.connection is not None and data.connection.host  # still says where
        for connection in [c for c in connections if c is not None]:
            assert connection.password is None
            if connection.uri:
                assert urlsplit(connection.uri).password is None, connection.uri
        assert data.users, data.engine
        for user in data.users:
            assert user.password is None and user.access_key is None
    leaked = [
        (i, secret[:8])
        for i, body in enumerate(bodies)
        for secret in secrets
        if any(shape in body for shape in forms(secret))
    ]
    assert leaked == []
    assert not [s[:8] for s in secrets if any(f.decode() in log.getvalue() for f in forms(s))]


async def test_include_by_default_gives_subscribers_the_credentials_digitalocean_returned(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    assert settings_for(amqp_url, sim).event_secrets == "include"
    log = io.StringIO()
    with logged_to(log):
        ready, _ = await provision_every_engine(amqp_url, amqp, events, sim, "include")
    by_id = {c.id: c for c in await clusters_of(sim)}

    for event in ready:
        data = event.data
        cluster = by_id[data.cluster_id]
        assert data.secrets == "included"
        assert data.connection == cluster.connection
        assert data.connection is not None and data.connection.password
        if data.connection.uri:
            assert urlsplit(data.connection.uri).password == data.connection.password
        returned = {u.name: u for u in cluster.users or []}
        for user in data.users:
            assert user.password and user.password == returned[user.name].password
            assert user.access_key == returned[user.name].access_key
        if data.engine == "kafka":
            assert all(u.access_key for u in data.users)
    # Subscribers get them; the log never does.
    secrets = generated_secrets(list(by_id.values()))
    assert not [s[:8] for s in secrets if any(f.decode() in log.getvalue() for f in forms(s))]
