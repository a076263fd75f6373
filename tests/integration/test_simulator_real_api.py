"""The simulator as DigitalOcean really behaves where the spec says nothing or contradicts
itself; each test names its public source (see docs/reliability.md, "Where the real API
differs from the spec")."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from typing import Any

import pytest

from service.simulator import Simulator
from service.simulator.options import options_as_of
from tests.fixtures.simulator import SimulatorFactory, api_session
from tests.fixtures.spec import SpecResolver
from tests.integration.test_simulator import call, wait_until
from tests.unit.test_contracts_examples import _request_examples

pytestmark = pytest.mark.integration

JsonObject = dict[str, Any]
MONGO = {
    "name": "docs",
    "engine": "mongodb",
    "region": "nyc3",
    "size": "db-s-1vcpu-1gb",
    "num_nodes": 3,
    "version": "7.0",
}
PG = {"name": "backend", "engine": "pg", "region": "nyc3", "size": "db-s-2vcpu-4gb", "num_nodes": 2}
TODAY = date(2026, 12, 3)


def passwords(cluster: JsonObject) -> list[str]:
    """Every password a cluster answer carries (connections and users)."""
    found = [
        cluster[key]["password"]
        for key in ("connection", "private_connection", "standby_connection")
        if cluster.get(key)
    ]
    return found + [u.get("password", "") for u in cluster.get("users") or []]


async def online(simulator: Simulator, cluster_id: str) -> None:
    async def is_online() -> bool:
        async with api_session(simulator) as session:
            _, body, _ = await call(session, "GET", f"/v2/databases/{cluster_id}")
        return bool(body["database"]["status"] == "online")

    await wait_until(is_online)


# --- MongoDB passwords: only in POST answers (PR #614, issue #814) -------------------------


async def test_mongodb_passwords_are_only_in_the_answers_to_posts(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.05)
    async with api_session(simulator) as session:
        status, created, _ = await call(session, "POST", "/v2/databases", json=MONGO)
        assert status == 201
        cluster = created["database"]
        admin = cluster["connection"]["password"]
        assert admin.startswith("AVNS_")
        assert f":{admin}@" in cluster["connection"]["uri"]
        await online(simulator, cluster["id"])
        _, got, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
        _, listed, _ = await call(session, "GET", "/v2/databases")
        status, added, _ = await call(
            session, "POST", f"/v2/databases/{cluster['id']}/users", json={"name": "reader"}
        )
        assert status == 201
        _, again, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
        _, users, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}/users")
        _, reader, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}/users/reader")
        status, reset, _ = await call(
            session, "POST", f"/v2/databases/{cluster['id']}/users/reader/reset_auth", json={}
        )
        assert status == 200
    for answer in (got["database"], listed["databases"][0], again["database"]):
        assert set(passwords(answer)) == {""}
        assert answer["connection"]["uri"].startswith("mongodb+srv://doadmin@")
    assert {u["password"] for u in users["users"]} == {""}
    assert reader["user"]["password"] == ""
    assert added["user"]["password"].startswith("AVNS_")
    assert reset["user"]["password"].startswith("AVNS_")
    assert reset["user"]["password"] != added["user"]["password"]


async def test_a_reset_of_the_admin_gives_the_cluster_a_new_password(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.05)
    async with api_session(simulator) as session:
        _, created, _ = await call(session, "POST", "/v2/databases", json=PG)
        cluster_id = created["database"]["id"]
        old = created["database"]["connection"]["password"]
        await online(simulator, cluster_id)
        status, reset, _ = await call(
            session, "POST", f"/v2/databases/{cluster_id}/users/doadmin/reset_auth"
        )
        missing, _, _ = await call(
            session, "POST", f"/v2/databases/{cluster_id}/users/nobody/reset_auth"
        )
        _, got, _ = await call(session, "GET", f"/v2/databases/{cluster_id}")
    assert status == 200
    assert missing == 404
    new = reset["user"]["password"]
    assert new != old
    assert got["database"]["connection"]["password"] == new
    assert f":{new}@" in got["database"]["connection"]["uri"]


# --- a read-only token gets empty passwords (issue #1165) ---------------------------------


async def test_a_read_only_token_gets_empty_passwords_everywhere(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.05, read_only_token=True)
    async with api_session(simulator) as session:
        status, created, _ = await call(session, "POST", "/v2/databases", json=PG)
        assert status == 201
        cluster_id = created["database"]["id"]
        await online(simulator, cluster_id)
        _, added, _ = await call(
            session, "POST", f"/v2/databases/{cluster_id}/users", json={"name": "app"}
        )
        _, got, _ = await call(session, "GET", f"/v2/databases/{cluster_id}")
    assert set(passwords(created["database"])) == {""}
    assert set(passwords(got["database"])) == {""}
    assert added["user"]["password"] == ""


# --- "online" is not yet usable (issue #493, PR #1027) -------------------------------------


async def test_user_and_database_calls_fail_while_a_new_cluster_settles(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.05, unsettled_s=0.6, seed=7)
    async with api_session(simulator) as session:
        _, created, _ = await call(session, "POST", "/v2/databases", json=PG)
        cluster_id = created["database"]["id"]
        await online(simulator, cluster_id)
        early = []
        for name in ("a", "b", "c", "d", "e", "f"):
            status, _, _ = await call(
                session, "POST", f"/v2/databases/{cluster_id}/users", json={"name": name}
            )
            early.append(status)
            db_status, _, _ = await call(
                session, "POST", f"/v2/databases/{cluster_id}/dbs", json={"name": name}
            )
            early.append(db_status)

        async def settled() -> bool:
            status, _, _ = await call(
                session, "POST", f"/v2/databases/{cluster_id}/users", json={"name": "late"}
            )
            return status == 201

        await wait_until(settled, timeout=5.0, every=0.1)
    assert set(early) <= {404, 412, 500, 503}
    assert len(set(early)) >= 2  # more than one kind of failure is drawn


async def test_concurrent_user_creation_on_one_cluster_fails_with_a_server_error(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.05, user_create_s=0.3)
    async with api_session(simulator) as session:
        _, created, _ = await call(session, "POST", "/v2/databases", json=PG)
        cluster_id = created["database"]["id"]
        await online(simulator, cluster_id)
        results = await asyncio.gather(
            *(
                call(session, "POST", f"/v2/databases/{cluster_id}/users", json={"name": n})
                for n in ("one", "two", "three")
            )
        )
        one_at_a_time = [
            (await call(session, "POST", f"/v2/databases/{cluster_id}/users", json={"name": n}))[0]
            for n in ("four", "five")
        ]
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [201, 500, 500]
    assert one_at_a_time == [201, 201]


# --- options kept consistent with the date -------------------------------------------------


@pytest.mark.parametrize("days", range(0, 365 * 8, 61))
def test_options_never_offer_a_version_past_its_end_of_availability(days: int) -> None:
    today = date(2024, 1, 1) + timedelta(days=days)
    options = options_as_of(today)
    for engine, offer in options.options.items():
        availability = {v.version: v for v in options.version_availability.get(engine, [])}
        for version in offer.versions:
            end = availability[version].end_of_availability if version in availability else None
            assert end is None or date.fromisoformat(end[:10]) > today, (engine, version)
        if offer.versions:
            assert offer.default_version in offer.versions, engine
        else:
            assert engine == "redis" and offer.default_version is None


async def test_kafka_is_offered_with_its_newest_version_whatever_the_date(
    simulator_factory: SimulatorFactory,
) -> None:
    # The snapshot's only Kafka version ended its availability in 2025: the engine is alive
    # (no end of life), so the newest version stays offered and default, without the date.
    simulator = await simulator_factory(options_date=TODAY)
    async with api_session(simulator) as session:
        _, body, _ = await call(session, "GET", "/v2/databases/options")
    assert body["options"]["kafka"]["versions"] == ["3.8"]
    assert body["options"]["kafka"]["default_version"] == "3.8"
    assert body["version_availability"]["kafka"][0]["end_of_availability"] is None
    assert body["options"]["pg"]["versions"] == ["15", "16", "17"]  # 13, 14 have ended


async def test_create_refuses_a_version_past_its_end_of_availability_with_422(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(options_date=TODAY)
    async with api_session(simulator) as session:
        status, body, _ = await call(session, "POST", "/v2/databases", json={**PG, "version": "14"})
        redis, redis_body, _ = await call(
            session, "POST", "/v2/databases", json={**PG, "name": "r", "engine": "redis"}
        )
    assert status == 422
    assert body["id"] == "unprocessable_entity"
    assert body["message"] == (
        "pg version 14 reached its end of availability on 2026-05-12; available: 15, 16, 17"
    )
    assert redis == 422
    assert "no longer creates" in redis_body["message"]


# --- where the spec contradicts itself, the options win ------------------------------------


async def test_spec_create_examples_that_the_options_refuse_get_422_naming_the_rule(
    simulator_factory: SimulatorFactory, do_spec: SpecResolver
) -> None:
    # The spec's Advanced Edition examples ask for db-s-2vcpu-4gb, which its own options
    # example does not list for those engines; its pg examples ask for version 14, past its
    # end of availability (2026-05-12) in the same document. The simulator follows the options
    # it serves, as DigitalOcean does.
    simulator = await simulator_factory(options_date=TODAY)
    refused: dict[str, str] = {}
    accepted: list[str] = []
    async with api_session(simulator) as session:
        for name, example in _request_examples(do_spec, "databases_create_cluster"):
            body = {k: v for k, v in example.items() if k != "backup_restore"}
            body["name"] = f"ex-{len(refused) + len(accepted)}"
            status, answer, _ = await call(session, "POST", "/v2/databases", json=body)
            if status == 201:
                accepted.append(name)
            else:
                assert status == 422, (name, answer)
                refused[name] = answer["message"]
    assert refused["Create a New PostgreSQL Advanced Edition Cluster"] == (
        "invalid size 'db-s-2vcpu-4gb' for 3-node 'advanced_pg' clusters"
    )
    assert refused["Create a New MySQL Advanced Edition Cluster"] == (
        "invalid size 'db-s-2vcpu-4gb' for 3-node 'advanced_mysql' clusters"
    )
    assert "Create a Single-Node MySQL Advanced Edition Cluster" in refused
    assert refused["Create a New Database Cluster"].startswith("pg version 14 reached its end")
    assert accepted == []
