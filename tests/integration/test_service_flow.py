"""The service end to end: real RabbitMQ in, the simulator over HTTP, events back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import aio_pika
import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.digitalocean import DatabaseClusterCreate
from contracts.events import ConnectionReady, Failed, Rejected, StatusChanged
from service.broker.topology import message_count
from service.digitalocean import DigitalOceanClient
from service.provisioning.commands import owner_tag, request_tag, spec_tag
from service.simulator import Simulator, SimulatorConfig
from tests.fixtures.broker import EventRecorder
from tests.fixtures.engines import ENGINE_SAMPLES
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import (
    all_final,
    command,
    final,
    get_all,
    publish,
    running_service,
    settings_for,
    wait_until,
)

CREATE = "POST /v2/databases"

pytestmark = pytest.mark.integration


async def test_every_engine_reaches_connection_ready_with_users_and_databases(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.5, not_found_grace_s=0.3))
    ids = {engine: f"every-{engine}" for engine in ENGINE_SAMPLES}
    async with running_service(settings_for(amqp_url, sim)):
        for engine, rid in ids.items():
            await publish(amqp, command(rid, engine))
        seen = await events.wait_for(all_final(list(ids.values())), timeout=60)

    for engine, rid in ids.items():
        ready = final(seen, rid)
        assert isinstance(ready, ConnectionReady), f"{engine}: {ready}"
        data = ready.data
        sample = ENGINE_SAMPLES[engine]
        wanted_users = {u["name"] for u in sample.get("users", [])}
        got_users = {u.name: u for u in data.users}
        assert wanted_users <= set(got_users), engine
        assert all(got_users[name].password for name in wanted_users), engine
        assert set(sample.get("db_names", [])) <= set(data.db_names), engine
        assert data.ca_certificate, engine
        assert data.connection is not None and data.connection.password, engine
        statuses = [
            (e.data.previous_status, e.data.status)
            for e in events.of(rid)
            if isinstance(e, StatusChanged)
        ]
        assert statuses == [(None, "creating"), ("creating", "online")], engine
        # the users and databases really exist on the (simulated) DigitalOcean side
        async with DigitalOceanClient(sim.base_url, sim.config.token) as client:
            cluster = await client.get_cluster(data.cluster_id)
        assert wanted_users <= {u.name for u in cluster.users or []}
        assert set(sample.get("db_names", [])) <= set(cluster.db_names or [])
    assert sim.stats().clusters.get("online") == len(ids)


async def test_bad_command_is_rejected_with_every_error_parked_and_no_api_call(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.2))
    bad = {
        "metadata": {"team": "orders"},
        "request_id": "bad-1",
        "cluster": {
            "name": "x",
            "engine": "redis",
            "region": "nyc3",
            "size": "db-s-1vcpu-1gb",
            "num_node": 1,
            "status": "online",
        },
    }
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, bad)
        await publish(amqp, b"\xff not json", content_type="application/json")
        await publish(amqp, b"<xml/>", content_type="application/xml")
        seen = await events.wait_for(lambda evs: len(evs) >= 3, timeout=20)

    rejected = [e for e in seen if isinstance(e, Rejected)]
    assert len(rejected) == 3
    by_id = {e.data.request_id: e for e in rejected}
    assert by_id["bad-1"].data.metadata == {"team": "orders"}
    paths = {err.path for err in by_id["bad-1"].data.errors}
    assert {"$.cluster.num_node", "$.cluster.status", "$.cluster.num_nodes"} <= paths
    parked = await get_all(amqp, "provisioner.rejected")
    assert len(parked) == 3
    bodies = {m.body for m in parked}
    assert json.dumps(bad).encode() in bodies
    reasons = [json.loads(m.headers["x-rejection-reason"]) for m in parked]
    assert all(reason and "path" in reason[0] for reason in reasons)
    assert sim.stats().count(CREATE) == 0, sim.stats().calls


async def _precreate(sim: Simulator, cmd: dict[str, Any], tags: list[str]) -> str:
    """The cluster as an earlier delivery (or someone else) left it."""
    fields = {k: v for k, v in cmd["cluster"].items() if k not in ("users", "db_names")}
    body = msgspec.convert({**fields, "tags": tags}, DatabaseClusterCreate)
    async with DigitalOceanClient(sim.base_url, sim.config.token) as client:
        return (await client.create_cluster(body)).id


async def test_redelivered_command_adopts_existing_cluster(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """A crash between the POST and the ack leaves a cluster and an unacked command; the
    redelivery must adopt that cluster, not create a second one."""
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    cmd = command("adopt-1", "pg")
    spec = spec_tag("provisioner", msgspec.convert(cmd["cluster"], DatabaseClusterCreate))
    cluster_id = await _precreate(
        sim, cmd, ["provisioner", request_tag("provisioner", "guest", "adopt-1"), spec]
    )
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, cmd)
        seen = await events.wait_for(all_final(["adopt-1"]), timeout=30)

    ready = final(seen, "adopt-1")
    assert isinstance(ready, ConnectionReady)
    assert ready.data.cluster_id == cluster_id
    assert sim.stats().clusters == {"online": 1}


async def test_name_taken_by_another_cluster_fails_instead_of_adopting(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    cmd = command("taken-1", "pg")
    await _precreate(sim, cmd, ["provisioner", request_tag("provisioner", "guest", "someone-else")])
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, cmd)
        seen = await events.wait_for(all_final(["taken-1"]), timeout=30)
    failed = final(seen, "taken-1")
    assert isinstance(failed, Failed)
    assert failed.data.reason == "api_error"
    assert "taken" in failed.data.message
    assert failed.data.api_error is not None and failed.data.api_error.status == 422


async def test_request_id_reused_for_a_different_cluster_fails_and_creates_nothing(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    first = command("reused-1", "pg")
    second = command("reused-1", "pg", cluster={"name": "another-name"})
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, first)
        await events.wait_for(all_final(["reused-1"]), timeout=30)
        await publish(amqp, second)
        seen = await events.wait_for(
            lambda evs: any(isinstance(e, Failed) for e in evs), timeout=30
        )
    failed = next(e for e in seen if isinstance(e, Failed))
    assert failed.data.reason == "request_conflict"
    assert "already used" in failed.data.message
    assert sim.stats().clusters == {"online": 1}
    assert sim.stats().count(CREATE) == 1


async def test_ambiguous_create_whose_cluster_is_not_listed_yet_is_adopted_later(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """The POST creates the cluster but the answer is lost; the retry meets 422 while the
    fresh cluster is still missing from the list: look again, adopt, never fail."""
    sim = await simulator_factory(
        SimulatorConfig(ready_after_s=0.5, not_found_grace_s=1.5, drop_fraction=1.0)
    )
    settings = settings_for(amqp_url, sim, retry_delays_s=(0.3, 0.3, 0.5, 0.5, 1.0, 1.0, 1.0))
    async with running_service(settings):
        await publish(amqp, command("lost-answer-1", "pg"))
        await wait_until(lambda: sim.stats().count(CREATE) >= 1, timeout=40)
        sim.config.drop_fraction = 0.0
        seen = await events.wait_for(all_final(["lost-answer-1"]), timeout=40)
    assert isinstance(final(seen, "lost-answer-1"), ConnectionReady)
    assert sim.stats().count(CREATE, 422) >= 1  # the retry did meet the taken name
    assert sim.stats().clusters == {"online": 1}


async def test_a_second_copy_on_another_replica_adopts_a_cluster_not_listed_yet(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """A producer that re-publishes after a broker cut sends two copies; two replicas take
    one each, and the second meets 422 while the first's cluster is not listed yet."""
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.5, not_found_grace_s=1.5))
    settings = settings_for(amqp_url, sim, retry_delays_s=(0.3, 0.5, 1.0, 1.0, 1.0))
    cmd = command("two-copies-1", "mysql")
    async with running_service(settings), running_service(settings):
        await publish(amqp, cmd)
        await publish(amqp, cmd)
        await events.wait_for(
            lambda evs: sum(isinstance(e, ConnectionReady) for e in evs) >= 2, timeout=40
        )
    assert not any(isinstance(e, Failed) for e in events.events)
    assert sim.stats().count(CREATE, 422) >= 1  # the copies did race
    assert sim.stats().clusters == {"online": 1}


@pytest.mark.parametrize("fault", ["fail_500_fraction", "fail_429_fraction"])
async def test_transient_api_errors_retry_through_the_delay_queue_then_succeed(
    fault: str,
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    setattr(sim.config, fault, 1.0)
    settings = settings_for(amqp_url, sim, retry_delays_s=(0.3, 0.3, 0.3, 0.3, 0.3))
    async with running_service(settings):
        await publish(amqp, command("flaky-1", "mysql"))
        await wait_until(lambda: sim.stats().count(CREATE) >= 1, timeout=40)
        setattr(sim.config, fault, 0.0)
        seen = await events.wait_for(all_final(["flaky-1"]), timeout=30)
    assert isinstance(final(seen, "flaky-1"), ConnectionReady)
    assert sim.stats().count(CREATE) >= 2, sim.stats().calls
    assert sim.stats().clusters == {"online": 1}


async def test_retries_exhausted_end_in_failed(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3, fail_500_fraction=1.0))
    settings = settings_for(amqp_url, sim, retry_delays_s=(0.1, 0.1))
    async with running_service(settings):
        await publish(amqp, command("doomed-1", "pg"))
        seen = await events.wait_for(all_final(["doomed-1"]), timeout=30)
    failed = final(seen, "doomed-1")
    assert isinstance(failed, Failed)
    assert failed.data.reason == "retries_exhausted"
    assert failed.data.attempts == 3
    assert failed.data.api_error is not None and failed.data.api_error.status == 500


async def test_permanent_client_error_fails_with_digitalocean_error_body(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    # A restore the policy allows (the source is the producer's own cluster) but DigitalOcean
    # refuses: the source is a PostgreSQL cluster, the new one MySQL.
    source = command("restore-src", "pg")
    await _precreate(sim, source, ["provisioner", owner_tag("provisioner", "guest")])
    restore = {"backup_restore": {"database_name": source["cluster"]["name"]}}
    cmd = command("restore-1", "mysql", cluster=restore)
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, cmd)
        seen = await events.wait_for(all_final(["restore-1"]), timeout=30)
    failed = final(seen, "restore-1")
    assert isinstance(failed, Failed)
    assert failed.data.reason == "api_error"
    err = failed.data.api_error
    assert err is not None
    assert (err.status, err.id) == (422, "unprocessable_entity")
    assert err.message and source["cluster"]["name"] in err.message
    assert err.request_id


async def test_cluster_stuck_in_creating_fails_with_timeout_at_its_deadline(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.2, stuck_fraction=1.0))
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, command("stuck-1", "valkey", timeout_s=1))
        seen = await events.wait_for(all_final(["stuck-1"]), timeout=30)
    failed = final(seen, "stuck-1")
    assert isinstance(failed, Failed)
    assert failed.data.reason == "timeout"
    assert failed.data.cluster_id
    assert sim.stats().clusters == {"creating": 1}  # left as it is


async def test_reply_to_gets_the_requests_events_with_its_correlation_id(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    channel = await amqp.channel()
    reply = await channel.declare_queue(f"guest.replies.{uuid.uuid4().hex}", exclusive=True)
    correlation_id = str(uuid.uuid4())
    async with running_service(settings_for(amqp_url, sim)):
        await publish(
            amqp, command("reply-1", "pg"), reply_to=reply.name, correlation_id=correlation_id
        )
        await events.wait_for(all_final(["reply-1"]), timeout=30)
    replies: list[aio_pika.abc.AbstractIncomingMessage] = []
    while (message := await reply.get(fail=False, timeout=5)) is not None:
        replies.append(message)
    types = [m.type for m in replies]
    assert types == [
        "database.cluster.status_changed",
        "database.cluster.status_changed",
        "database.cluster.connection_ready",
    ]
    assert {m.correlation_id for m in replies} == {correlation_id}
    await channel.close()


async def test_subscriber_deduplicating_on_event_ids_sees_each_transition_once(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """The same command published twice (a producer's retry) yields one cluster, and the
    events it causes twice carry the same ids."""
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.5))
    cmd = command("twice-1", "pg")
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, cmd)
        await publish(amqp, cmd)
        await events.wait_for(
            lambda evs: sum(isinstance(e, ConnectionReady) for e in evs) >= 2, timeout=30
        )
    seen = events.of("twice-1")
    unique = {(e.source, e.id): e for e in seen}
    transitions = sorted((e.routing_key, getattr(e.data, "status", "")) for e in unique.values())
    assert transitions == [
        ("database.cluster.connection_ready", ""),
        ("database.cluster.status_changed", "creating"),
        ("database.cluster.status_changed", "online"),
    ]
    assert len(seen) > len(unique)  # there were redeliveries to deduplicate
    assert sim.stats().clusters == {"online": 1}


async def test_wrong_token_stops_consuming_and_reports_not_ready(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    settings = settings_for(amqp_url, sim, token="not-the-token")
    async with running_service(settings) as service:
        await publish(amqp, command("unauth-1", "pg"))
        await wait_until(lambda: not service.readiness()["api_token_accepted"], timeout=10)
        assert service.readiness()["consuming"] is False
        url = f"http://127.0.0.1:{service.http_port}/readyz"
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 503
    # the command was not failed or lost: it is back in its queue for a fixed token
    assert await message_count(amqp, "provisioner.requests") == 1
