"""The service against the simulator with DigitalOcean's real behaviours switched on: every
password it announces works, or it says why not. Real RabbitMQ, real HTTP on loopback; the
sources of each behaviour are in docs/reliability.md ("Where the real API differs from the
spec")."""

from __future__ import annotations

import asyncio
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.digitalocean import DatabaseCluster
from contracts.events import ConnectionReady, Failed, StatusChanged, event_id
from service.simulator import SimulatorConfig
from tests.fixtures.broker import EventRecorder, user_of
from tests.fixtures.rabbitmqctl import queue_depths
from tests.fixtures.replicas import Replica
from tests.fixtures.service_process import service_env
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import (
    all_final,
    command,
    final,
    publish,
    running_service,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.integration

CREATE = "POST /v2/databases"
ADD_USER = "POST /v2/databases/{id}/users"
RESET = "POST /v2/databases/{id}/users/{user}/reset_auth"
ENGINES = ("mongodb", "kafka", "pg", "mysql", "valkey", "opensearch")
TWO_MONGO_USERS = {
    "users": [
        {
            "name": "reader",
            "settings": {"mongo_user_settings": {"databases": ["catalog"], "role": "readOnly"}},
        },
        {"name": "writer"},
    ],
    "db_names": ["catalog", "orders"],
}
# A just-online cluster refuses user and database calls for a while; users take a moment to
# create, and a concurrent creation on one cluster would fail.
UNSETTLED = SimulatorConfig(ready_after_s=0.5, unsettled_s=1.0, user_create_s=0.05, seed=13)


async def commands_acknowledged(vhost: str, *, timeout: float) -> None:
    """Wait until no command waits in, or is being handled from, ``provisioner.requests``."""
    deadline = time.monotonic() + timeout
    while True:
        depth = (await queue_depths(unquote(vhost))).get("provisioner.requests")
        if depth is not None and depth.ready == 0 and depth.unacked == 0:
            return
        assert time.monotonic() < deadline, f"commands still in hand: {depth}"
        await asyncio.sleep(0.1)


def engine_command(request_id: str, engine: str) -> dict[str, Any]:
    extra = {"cluster": TWO_MONGO_USERS} if engine == "mongodb" else {}
    return command(request_id, engine, **extra)


def assert_every_password_is_the_one_handed_out(
    ready: ConnectionReady, handed_out: DatabaseCluster
) -> None:
    """Every password of the event (connections, URIs, users) is non-empty and is the one
    DigitalOcean's POST answers handed out for that user."""
    data = ready.data
    truth = {u.name: u.password for u in handed_out.users or []}
    assert all(truth.values())
    connections = [
        data.connection,
        data.private_connection,
        data.standby_connection,
        data.standby_private_connection,
        data.ui_connection,
        data.schema_registry_connection,
    ]
    checked = 0
    for conn in connections:
        if conn is None:
            continue
        assert conn.user is not None and conn.password == truth[conn.user], data.engine
        if conn.uri:
            assert unquote(urlsplit(conn.uri).password or "") == conn.password, data.engine
        checked += 1
    assert checked >= 2, data.engine
    assert data.users, data.engine
    for user in data.users:
        assert user.password and user.password == truth[user.name], (data.engine, user.name)


async def test_every_engine_with_users_gets_the_passwords_the_api_handed_out_however_unsettled(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(UNSETTLED)
    ids = {engine: f"real-{engine}" for engine in ENGINES}
    async with running_service(settings_for(amqp_url, sim)):
        for engine, rid in ids.items():
            await publish(amqp, engine_command(rid, engine))
        seen = await events.wait_for(all_final(list(ids.values())), timeout=90)
    handed_out = {c.name: c for c in sim.handed_out()}
    for engine, rid in ids.items():
        ready = final(seen, rid)
        assert isinstance(ready, ConnectionReady), f"{engine}: {ready}"
        assert_every_password_is_the_one_handed_out(ready, handed_out[ready.data.name])
        wanted = {u["name"] for u in engine_command(rid, engine)["cluster"].get("users", [])}
        assert wanted <= {u.name for u in ready.data.users}, engine
        # Passwords were at hand from the POST answers: no reset, the plain id.
        assert ready.id == event_id(rid, "connection_ready", user_of(amqp)), engine
    # The cluster really was unsettled: user calls were refused, then retried to success.
    stats = sim.stats()
    refused = sum(stats.count(ADD_USER, status) for status in (404, 412, 500, 503))
    refused += sum(
        stats.count("POST /v2/databases/{id}/dbs", status) for status in (404, 412, 500, 503)
    )
    assert refused >= 1, stats.calls
    assert stats.count(RESET) == 0
    # MongoDB 7.0 is past its end of life in the options: said, not refused.
    mongo_events = [e for e in events.of(ids["mongodb"]) if isinstance(e, StatusChanged)]
    assert any("end of life" in w for w in mongo_events[0].data.warnings)


async def test_an_offered_version_past_its_end_of_availability_is_accepted_with_a_warning(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    # Options as DigitalOcean served them on 2025-01-01 offer PostgreSQL 13, whose dates
    # (end of availability 2025-05-13, end of life 2025-11-13) have passed by the service's
    # clock: as with Kafka 3.8 in the spec's snapshot, the API offers it, so the service
    # takes it and says what the dates say.
    sim = await simulator_factory(ready_after_s=0.3, options_date=date(2025, 1, 1))
    rid = "pg13-past-end"
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, command(rid, "pg", cluster={"version": "13"}))
        seen = await events.wait_for(all_final([rid]), timeout=40)
    ready = final(seen, rid)
    assert isinstance(ready, ConnectionReady), ready
    expected = [
        "`pg` version '13' is past its end of availability (2025-05-13); DigitalOcean may "
        "stop offering or supporting it",
        "`pg` version '13' is past its end of life (2025-11-13); DigitalOcean may stop "
        "offering or supporting it",
    ]
    assert ready.data.warnings == expected
    first = next(e for e in events.of(rid) if isinstance(e, StatusChanged))
    assert first.data.warnings == expected


async def test_a_read_only_token_ends_in_failed_naming_the_cause_never_empty_passwords(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(ready_after_s=0.3, read_only_token=True)
    ids = ["ro-pg", "ro-mongodb"]
    # A short finishing budget: the reset comes that long (plus two polls) after the first look.
    async with running_service(settings_for(amqp_url, sim, finish_budget_s=1.0)):
        await publish(amqp, command(ids[0], "pg"))
        await publish(amqp, engine_command(ids[1], "mongodb"))
        seen = await events.wait_for(all_final(ids), timeout=60)
    for rid in ids:
        failed = final(seen, rid)
        assert isinstance(failed, Failed), failed
        assert failed.data.reason == "credentials_unavailable"
        assert "read-only token" in failed.data.message
        assert failed.data.step is not None and failed.data.step.startswith("reset_auth:")
        assert failed.data.cluster_id is not None
    assert not [e for e in seen if isinstance(e, ConnectionReady)]


async def test_mongodb_adopted_after_a_lost_create_answer_gets_passwords_by_a_reset(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """The create's answer (the only one with the admin's password) is lost; the service
    adopts the cluster, resets the password, and announces it under an id of its own."""
    sim = await simulator_factory(
        SimulatorConfig(ready_after_s=0.5, not_found_grace_s=0.5, drop_fraction=1.0)
    )
    rid = "mongo-lost-answer"
    settings = settings_for(
        amqp_url, sim, retry_delays_s=(0.3, 0.3, 0.5, 0.5, 1.0, 1.0), finish_budget_s=1.0
    )
    async with running_service(settings):
        await publish(amqp, engine_command(rid, "mongodb"))
        await wait_until(lambda: sim.stats().count(CREATE) >= 1, timeout=40)
        sim.config.drop_fraction = 0.0
        seen = await events.wait_for(all_final([rid]), timeout=60)
    ready = final(seen, rid)
    assert isinstance(ready, ConnectionReady), ready
    (cluster,) = sim.handed_out()
    assert_every_password_is_the_one_handed_out(ready, cluster)
    assert sim.stats().count(RESET, 200) == 1  # the admin's; the users' came with their POSTs
    # Not the id a connection_ready without a reset has: a subscriber that deduplicates on
    # (source, id) cannot take it for an earlier announcement.
    assert ready.id != event_id(rid, "connection_ready", user_of(amqp))


async def test_mongodb_passwords_survive_replicas_killed_between_create_and_online(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """The only answers with the passwords reach replicas that are then killed: the watches
    carry them sealed, and fresh replicas deliver working passwords without a reset."""
    sim = await simulator_factory(
        SimulatorConfig(ready_after_s=8.0, unsettled_s=0.5, user_create_s=0.05)
    )
    ids = [f"mongo-chaos-{n}" for n in range(4)]
    env = service_env(amqp_url, sim)
    with tempfile.TemporaryDirectory() as tmp:
        replicas = [Replica(f"r{n}", env, Path(tmp) / f"r{n}.log") for n in range(2)]
        try:
            for replica in replicas:
                await replica.start()
            await asyncio.gather(*(r.wait_started(60) for r in replicas))
            for rid in ids:
                await publish(amqp, engine_command(rid, "mongodb"))
            await wait_until(lambda: sim.stats().count(CREATE, 201) == len(ids), timeout=30)
            # Every command acknowledged, so its watch (with the create's answer, sealed) is in
            # the broker: a kill before that would rightly end in an adoption and a reset.
            await commands_acknowledged(urlsplit(amqp_url).path.lstrip("/"), timeout=30)
            assert sim.stats().clusters == {"creating": len(ids)}
            for replica in replicas:
                await replica.kill()
            for replica in replicas:
                await replica.start()
            await asyncio.gather(*(r.wait_started(60) for r in replicas))
            seen = await events.wait_for(all_final(ids), timeout=90)
        finally:
            codes = [await r.terminate(30) for r in replicas]
        logs = "".join((Path(tmp) / f"r{n}.log").read_text(errors="replace") for n in range(2))
    assert codes == [0, 0]
    assert sum(r.kills for r in replicas) == 2
    handed_out = {c.name: c for c in sim.handed_out()}
    for rid in ids:
        ready = final(seen, rid)
        assert isinstance(ready, ConnectionReady), ready
        assert_every_password_is_the_one_handed_out(ready, handed_out[ready.data.name])
    assert sim.stats().count(RESET) == 0  # every password came from its POST answer
    secrets = {u.password for c in handed_out.values() for u in c.users or [] if u.password}
    assert not [s[:8] for s in secrets if s in logs]
