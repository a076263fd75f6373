"""The DigitalOcean simulator over real HTTP on loopback: endpoints, rules, limits, faults."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from service.simulator import Simulator, SimulatorConfig
from tests.fixtures.simulator import SimulatorFactory, api_session

pytestmark = pytest.mark.integration

JsonObject = dict[str, Any]

PG = {"name": "backend", "engine": "pg", "region": "nyc3", "size": "db-s-2vcpu-4gb", "num_nodes": 2}


def cluster_body(**fields: Any) -> JsonObject:
    return {**PG, **fields}


async def wait_until(
    condition: Callable[[], Awaitable[bool]], timeout: float = 5.0, every: float = 0.02
) -> None:
    """Poll ``condition`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(every)


async def call(
    session: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with session.request(method, path, **kwargs) as response:
        body = await response.json() if response.content_length else None
        return response.status, body, response.headers


async def create(session: aiohttp.ClientSession, **fields: Any) -> JsonObject:
    status, body, _ = await call(session, "POST", "/v2/databases", json=cluster_body(**fields))
    assert status == 201, body
    cluster: JsonObject = body["database"]
    return cluster


async def online_cluster(simulator: Simulator, **fields: Any) -> JsonObject:
    async with api_session(simulator) as session:
        cluster = await create(session, **fields)
    simulator.force_status(cluster["id"], "online")
    return cluster


# --- the endpoints ---------------------------------------------------------------------------


async def test_create_answers_201_with_a_full_cluster_in_creating(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        status, body, headers = await call(
            session, "POST", "/v2/databases", json=cluster_body(tags=["production"])
        )
    assert status == 201
    db = body["database"]
    assert db["status"] == "creating"
    assert (db["name"], db["engine"], db["region"], db["size"], db["num_nodes"]) == (
        "backend",
        "pg",
        "nyc3",
        "db-s-2vcpu-4gb",
        2,
    )
    assert db["version"] == "17"  # the engine's default_version in the options
    assert db["semantic_version"].startswith("17.")
    assert db["tags"] == ["production"]
    assert db["db_names"] == ["defaultdb"]
    assert db["created_at"].endswith("Z")
    assert db["users"] == [
        {"name": "doadmin", "role": "primary", "password": db["connection"]["password"]}
    ]
    assert {"day", "hour"} <= db["maintenance_window"].keys()
    assert db["project_id"] and db["private_network_uuid"]
    assert headers["x-request-id"]


async def test_cluster_turns_online_after_ready_after(simulator_factory: SimulatorFactory) -> None:
    simulator = await simulator_factory(ready_after_s=0.3)
    async with api_session(simulator) as session:
        started = time.monotonic()
        cluster = await create(session)

        async def is_online() -> bool:
            _, body, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
            return bool(body["database"]["status"] == "online")

        assert not await is_online()
        await wait_until(is_online)
    assert time.monotonic() - started >= 0.3


async def test_ready_jitter_spreads_ready_times_within_the_configured_bound(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=1.0, ready_jitter_s=0.5)
    async with api_session(simulator) as session:
        ids = [(await create(session, name=f"db-{i}"))["id"] for i in range(10)]
    records = [simulator.account.record(i) for i in ids]
    delays = [r.ready_at - r.created_mono for r in records if r.ready_at is not None]
    assert len(delays) == 10
    assert all(1.0 <= d <= 1.5 for d in delays)
    assert len(set(delays)) == len(delays)


async def test_stuck_cluster_stays_creating_while_others_come_online(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.1, stuck_fraction=1.0)
    async with api_session(simulator) as session:
        stuck = await create(session, name="stuck")
        simulator.config.stuck_fraction = 0.0
        healthy = await create(session, name="healthy")

        async def healthy_online() -> bool:
            _, body, _ = await call(session, "GET", f"/v2/databases/{healthy['id']}")
            return bool(body["database"]["status"] == "online")

        await wait_until(healthy_online)
        _, body, _ = await call(session, "GET", f"/v2/databases/{stuck['id']}")
    assert body["database"]["status"] == "creating"
    assert simulator.stats().clusters == {"creating": 1, "online": 1}


async def test_stick_and_force_status_hooks_pin_a_cluster(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.0)
    async with api_session(simulator) as session:
        cluster = await create(session)
        simulator.stick(cluster["id"])
        _, body, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
        assert body["database"]["status"] == "creating"
        simulator.force_status(cluster["id"], "resizing")
        _, body, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
        assert body["database"]["status"] == "resizing"
    with pytest.raises(KeyError):
        simulator.stick("no-such-cluster")


async def test_fresh_cluster_answers_404_and_is_unlisted_during_the_grace(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(not_found_grace_s=0.4)
    async with api_session(simulator) as session:
        created_at = time.monotonic()
        cluster = await create(session)
        status, body, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
        assert status == 404
        assert body["id"] == "not_found"
        _, listed, _ = await call(session, "GET", "/v2/databases")
        assert listed["databases"] == []

        async def found() -> bool:
            status, _, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
            return status == 200

        await wait_until(found)
        assert time.monotonic() - created_at >= 0.4
        _, listed, _ = await call(session, "GET", "/v2/databases")
    assert [c["id"] for c in listed["databases"]] == [cluster["id"]]


async def test_list_filters_by_tag_name(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        a = await create(session, name="a", tags=["provisioner", "team-a"])
        await create(session, name="b", tags=["team-b"])
        c = await create(session, name="c", tags=["provisioner"])
        await create(session, name="d")
        _, managed, _ = await call(
            session, "GET", "/v2/databases", params={"tag_name": "provisioner"}
        )
        _, everything, _ = await call(session, "GET", "/v2/databases")
        _, nothing, _ = await call(session, "GET", "/v2/databases", params={"tag_name": "absent"})
    assert [x["id"] for x in managed["databases"]] == [a["id"], c["id"]]
    assert [x["name"] for x in everything["databases"]] == ["a", "b", "c", "d"]
    assert nothing == {"databases": []}


async def test_get_unknown_cluster_is_404_with_the_error_body(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        status, body, _ = await call(
            session, "GET", "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
        )
    assert status == 404
    assert body["id"] == "not_found"
    assert body["message"] == "cluster not found"
    assert body["request_id"]


async def test_delete_answers_204_and_frees_the_name(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        cluster = await create(session)
        async with session.delete(f"/v2/databases/{cluster['id']}") as response:
            assert response.status == 204
            assert await response.read() == b""
        status, _, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
        assert status == 404
        status, _, _ = await call(session, "DELETE", f"/v2/databases/{cluster['id']}")
        assert status == 404
        again = await create(session)
    assert again["id"] != cluster["id"]


async def test_options_are_the_spec_example_as_of_the_simulators_date(
    simulator: Simulator,
) -> None:
    # The spec's example lists redis with its end of availability (2025-04-30) and end of
    # life: by any date after them the engine stays listed, with nothing to create.
    async with api_session(simulator) as session:
        status, body, _ = await call(session, "GET", "/v2/databases/options")
    assert status == 200
    assert set(body["options"]) == {
        "kafka",
        "mongodb",
        "mysql",
        "advanced_mysql",
        "opensearch",
        "pg",
        "advanced_pg",
        "redis",
        "valkey",
    }
    assert body["options"]["pg"]["default_version"] == "17"
    assert "nyc3" in body["options"]["pg"]["regions"]
    assert body["options"]["redis"]["versions"] == []
    assert "default_version" not in body["options"]["redis"]
    redis = body["version_availability"]["redis"]
    assert redis == [
        {
            "end_of_life": "2025-06-30T00:00:00Z",
            "end_of_availability": "2025-04-30T00:00:00Z",
            "version": "7",
            "default": False,
        }
    ]


async def test_ca_is_a_base64_pem_certificate_that_ssl_loads(simulator: Simulator) -> None:
    cluster = await online_cluster(simulator)
    async with api_session(simulator) as session:
        status, body, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}/ca")
        missing, _, _ = await call(session, "GET", "/v2/databases/nope/ca")
    assert status == 200
    pem = base64.b64decode(body["ca"]["certificate"]).decode()
    assert pem.startswith("-----BEGIN CERTIFICATE-----")
    context = ssl.create_default_context(cadata=pem)
    assert len(context.get_ca_certs()) == 1
    assert missing == 404


# --- how clusters look, per engine -----------------------------------------------------------

ENGINE_CASES = [
    pytest.param("pg", "nyc3", "db-s-1vcpu-1gb", 1, "postgresql://", "defaultdb", id="pg"),
    pytest.param(
        "advanced_pg", "nyc3", "gd-2vcpu-8gb", 3, "postgresql://", "defaultdb", id="advanced_pg"
    ),
    pytest.param("mysql", "ams3", "db-s-1vcpu-1gb", 1, "mysql://", "defaultdb", id="mysql"),
    pytest.param("mongodb", "fra1", "db-s-1vcpu-1gb", 3, "mongodb+srv://", "admin", id="mongodb"),
    pytest.param("valkey", "sgp1", "db-s-1vcpu-1gb", 1, "rediss://", None, id="valkey"),
    pytest.param("opensearch", "lon1", "db-s-2vcpu-4gb", 1, "https://", None, id="opensearch"),
    pytest.param("kafka", "tor1", "gd-2vcpu-8gb", 3, None, None, id="kafka"),
]


@pytest.mark.parametrize(("engine", "region", "size", "nodes", "scheme", "database"), ENGINE_CASES)
async def test_connection_details_look_real_for_each_engine(
    simulator: Simulator,
    engine: str,
    region: str,
    size: str,
    nodes: int,
    scheme: str | None,
    database: str | None,
) -> None:
    async with api_session(simulator) as session:
        db = await create(
            session, name=f"{engine}-1", engine=engine, region=region, size=size, num_nodes=nodes
        )
    conn = db["connection"]
    password = conn["password"]
    assert len(password) >= 16
    assert conn["ssl"] is True
    assert conn["host"].startswith(f"{engine.replace('_', '-')}-1-do-user-")
    assert conn["host"].endswith(".db.ondigitalocean.com")
    assert db["private_connection"]["host"] == f"private-{conn['host']}"
    assert db["private_connection"]["password"] == password
    if scheme is None:
        assert "uri" not in conn
    else:
        assert conn["uri"].startswith(f"{scheme}{conn['user']}:{password}@{conn['host']}")
    assert conn.get("database") == database
    assert db.get("db_names") == ([database] if database else None)
    admin = db["users"][0]
    assert (admin["name"], admin["role"], admin["password"]) == (conn["user"], "primary", password)
    assert ("ui_connection" in db) == (engine == "opensearch")
    assert ("schema_registry_connection" in db) == (engine == "kafka")
    if engine == "kafka":
        assert admin["access_cert"].startswith("-----BEGIN CERTIFICATE-----")
        assert admin["access_key"].startswith("-----BEGIN PRIVATE KEY-----")


async def test_uris_carry_the_engine_specific_ssl_parameters(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        pg = await create(session, name="p", num_nodes=1, size="db-s-1vcpu-1gb")
        my = await create(session, name="m", engine="mysql", num_nodes=1, size="db-s-1vcpu-1gb")
    assert pg["connection"]["uri"].endswith(":25060/defaultdb?sslmode=require")
    assert my["connection"]["uri"].endswith(":25060/defaultdb?ssl-mode=REQUIRED")


async def test_standby_connections_only_for_multi_node_clusters(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        single = await create(session, name="single", num_nodes=1, size="db-s-1vcpu-1gb")
        pair = await create(session, name="pair", num_nodes=2)
    assert "standby_connection" not in single
    assert "standby_private_connection" not in single
    host = pair["connection"]["host"]
    assert pair["standby_connection"]["host"] == f"replica-{host}"
    assert pair["standby_private_connection"]["host"] == f"private-replica-{host}"


async def test_every_cluster_gets_its_own_password(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        passwords = {
            (await create(session, name=f"db-{i}"))["connection"]["password"] for i in range(5)
        }
    assert len(passwords) == 5


# --- create validation ------------------------------------------------------------------------

INVALID_CREATES = [
    pytest.param({"engine": "oracle"}, "engine", id="unknown-engine"),
    pytest.param(
        {"engine": "redis", "size": "db-s-1vcpu-1gb", "num_nodes": 1}, "redis", id="redis-ended"
    ),
    pytest.param({"region": "mars1"}, "region", id="region"),
    pytest.param({"size": "db-s-64vcpu-1tb"}, "size", id="size"),
    pytest.param({"size": "db-s-1vcpu-1gb"}, "size", id="size-not-in-2-node-layout"),
    pytest.param({"version": "9"}, "version", id="version"),
    pytest.param({"num_nodes": 4}, "num_nodes", id="node-count"),
    pytest.param(
        {"engine": "advanced_mysql", "num_nodes": 2}, "nodes", id="advanced-mysql-2-nodes"
    ),
    pytest.param({"num_nodes": 0}, "num_nodes", id="zero-nodes"),
    pytest.param({"num_nodes": "2"}, "num_nodes", id="node-count-as-string"),
    pytest.param({"name": ""}, "name", id="empty-name"),
    pytest.param({"users": [{"name": "app"}]}, "users", id="users-not-in-create-body"),
    pytest.param({"db_names": ["app"]}, "db_names", id="db-names-not-in-create-body"),
    pytest.param({"status": "online"}, "status", id="read-only-field"),
    pytest.param(
        {"backup_restore": {"database_name": "ghost"}}, "ghost", id="restore-from-nothing"
    ),
]


@pytest.mark.parametrize(("fields", "mentions"), INVALID_CREATES)
async def test_invalid_create_is_422_unprocessable_entity(
    simulator: Simulator, fields: JsonObject, mentions: str
) -> None:
    async with api_session(simulator) as session:
        status, body, _ = await call(session, "POST", "/v2/databases", json=cluster_body(**fields))
    assert status == 422, body
    assert body["id"] == "unprocessable_entity"
    assert mentions in body["message"]
    assert body["request_id"]
    assert simulator.stats().clusters_total == 0


async def test_missing_required_field_is_422(simulator: Simulator) -> None:
    body = {k: v for k, v in PG.items() if k != "region"}
    async with api_session(simulator) as session:
        status, error, _ = await call(session, "POST", "/v2/databases", json=body)
    assert (status, error["id"]) == (422, "unprocessable_entity")
    assert "region" in error["message"]


async def test_taken_name_is_422_and_creates_nothing(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        await create(session)
        status, body, _ = await call(
            session, "POST", "/v2/databases", json=cluster_body(engine="mysql")
        )
    assert (status, body["id"]) == (422, "unprocessable_entity")
    assert body["message"] == "cluster name is not available"
    assert simulator.stats().clusters_total == 1


async def test_unparseable_body_is_400_bad_request(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        status, body, _ = await call(
            session,
            "POST",
            "/v2/databases",
            data=b"{not json",
            headers={"Content-Type": "application/json"},
        )
    assert (status, body["id"]) == (400, "bad_request")


async def test_restore_from_an_existing_cluster_is_accepted(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        await create(session)
        restored = await create(
            session, name="backend-restored", backup_restore={"database_name": "backend"}
        )
    assert restored["status"] == "creating"


# --- users and databases ----------------------------------------------------------------------


async def test_add_user_answers_201_with_a_generated_password(simulator: Simulator) -> None:
    cluster = await online_cluster(simulator)
    async with api_session(simulator) as session:
        path = f"/v2/databases/{cluster['id']}/users"
        status, first, _ = await call(session, "POST", path, json={"name": "app"})
        _, second, _ = await call(session, "POST", path, json={"name": "reporting"})
        _, listed, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
    assert status == 201
    assert first["user"]["name"] == "app"
    assert first["user"]["role"] == "normal"
    assert first["user"]["password"] != second["user"]["password"]
    assert first["user"]["password"] != cluster["connection"]["password"]
    assert [u["name"] for u in listed["database"]["users"]] == ["doadmin", "app", "reporting"]


async def test_add_existing_user_is_422(simulator: Simulator) -> None:
    cluster = await online_cluster(simulator)
    async with api_session(simulator) as session:
        path = f"/v2/databases/{cluster['id']}/users"
        await call(session, "POST", path, json={"name": "app"})
        status, body, _ = await call(session, "POST", path, json={"name": "app"})
        admin, _, _ = await call(session, "POST", path, json={"name": "doadmin"})
    assert (status, body["id"], admin) == (422, "unprocessable_entity", 422)


async def test_user_and_database_on_a_creating_cluster_are_409_conflict(
    simulator: Simulator,
) -> None:
    async with api_session(simulator) as session:
        cluster = await create(session)
        users, body, _ = await call(
            session, "POST", f"/v2/databases/{cluster['id']}/users", json={"name": "a"}
        )
        dbs, _, _ = await call(
            session, "POST", f"/v2/databases/{cluster['id']}/dbs", json={"name": "a"}
        )
    assert (users, dbs) == (409, 409)
    assert body["id"] == "conflict"


async def test_user_and_database_on_unknown_cluster_are_404(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        users, _, _ = await call(session, "POST", "/v2/databases/nope/users", json={"name": "a"})
        dbs, _, _ = await call(session, "POST", "/v2/databases/nope/dbs", json={"name": "a"})
    assert (users, dbs) == (404, 404)


async def test_valkey_refuses_user_and_database_management(simulator: Simulator) -> None:
    cluster = await online_cluster(simulator, engine="valkey", size="db-s-1vcpu-1gb", num_nodes=1)
    async with api_session(simulator) as session:
        users, body, _ = await call(
            session, "POST", f"/v2/databases/{cluster['id']}/users", json={"name": "a"}
        )
        dbs, _, _ = await call(
            session, "POST", f"/v2/databases/{cluster['id']}/dbs", json={"name": "a"}
        )
    assert (users, dbs) == (422, 422)
    assert "not supported" in body["message"]


async def test_kafka_user_gets_client_certificate_key_and_acl_ids(simulator: Simulator) -> None:
    cluster = await online_cluster(simulator, engine="kafka", size="gd-2vcpu-8gb", num_nodes=3)
    acl = [{"topic": "events", "permission": "produce"}]
    async with api_session(simulator) as session:
        status, body, _ = await call(
            session,
            "POST",
            f"/v2/databases/{cluster['id']}/users",
            json={"name": "app", "settings": {"acl": acl}},
        )
    user = body["user"]
    assert status == 201
    assert user["access_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert user["access_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert user["settings"]["acl"][0]["id"]
    assert user["settings"]["acl"][0]["topic"] == "events"


async def test_mysql_user_reports_its_auth_plugin(simulator: Simulator) -> None:
    cluster = await online_cluster(simulator, engine="mysql", size="db-s-1vcpu-1gb", num_nodes=1)
    async with api_session(simulator) as session:
        path = f"/v2/databases/{cluster['id']}/users"
        _, default, _ = await call(session, "POST", path, json={"name": "a"})
        _, native, _ = await call(
            session,
            "POST",
            path,
            json={"name": "b", "mysql_settings": {"auth_plugin": "mysql_native_password"}},
        )
    assert default["user"]["mysql_settings"] == {"auth_plugin": "caching_sha2_password"}
    assert native["user"]["mysql_settings"] == {"auth_plugin": "mysql_native_password"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"name": "a", "mysql_settings": {"auth_plugin": "mysql_native_password"}},
            id="mysql-on-pg",
        ),
        pytest.param({"name": "a", "readonly": True}, id="readonly-on-pg"),
        pytest.param({"name": "a", "password": "chosen"}, id="read-only-password"),
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({}, id="no-name"),
    ],
)
async def test_invalid_user_body_is_422(simulator: Simulator, body: JsonObject) -> None:
    cluster = await online_cluster(simulator)
    async with api_session(simulator) as session:
        status, error, _ = await call(
            session, "POST", f"/v2/databases/{cluster['id']}/users", json=body
        )
    assert (status, error["id"]) == (422, "unprocessable_entity")


async def test_add_database_answers_201_and_lists_it(simulator: Simulator) -> None:
    cluster = await online_cluster(simulator)
    async with api_session(simulator) as session:
        path = f"/v2/databases/{cluster['id']}/dbs"
        status, body, _ = await call(session, "POST", path, json={"name": "orders"})
        taken, _, _ = await call(session, "POST", path, json={"name": "orders"})
        default_taken, _, _ = await call(session, "POST", path, json={"name": "defaultdb"})
        _, got, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
    assert (status, body) == (201, {"db": {"name": "orders"}})
    assert (taken, default_taken) == (422, 422)
    assert got["database"]["db_names"] == ["defaultdb", "orders"]


# --- auth -------------------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "/v2/databases"),
    ("POST", "/v2/databases"),
    ("GET", "/v2/databases/options"),
    ("GET", "/v2/databases/x"),
    ("DELETE", "/v2/databases/x"),
    ("GET", "/v2/databases/x/ca"),
    ("POST", "/v2/databases/x/users"),
    ("POST", "/v2/databases/x/dbs"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", "Bearer ", "Basic c2ltLXRva2Vu", "sim-token"],
    ids=["missing", "wrong", "empty", "basic", "no-scheme"],
)
async def test_every_endpoint_refuses_a_missing_or_wrong_token_with_401(
    simulator: Simulator, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with (
        aiohttp.ClientSession(base_url=simulator.base_url) as session,
        session.request(method, path, headers=headers, json=PG) as response,
    ):
        body = await response.json()
        assert response.status == 401
        assert response.headers["ratelimit-limit"] == "5000"
    assert body["id"] == "unauthorized"
    assert body["message"] == "Unable to authenticate you."
    assert simulator.stats().clusters_total == 0


async def test_unknown_api_path_is_404_not_found(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        status, body, _ = await call(session, "GET", "/v2/droplets")
    assert (status, body["id"]) == (404, "not_found")


# --- rate limits ------------------------------------------------------------------------------


async def test_every_response_carries_the_ratelimit_headers(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        before = time.time()
        seen = [
            (await call(session, "GET", "/v2/databases"))[2],
            (await call(session, "GET", "/v2/databases/missing"))[2],
            (await call(session, "POST", "/v2/databases", json={}))[2],
        ]
    assert [h["ratelimit-remaining"] for h in seen] == ["4999", "4998", "4997"]
    for headers in seen:
        assert headers["ratelimit-limit"] == "5000"
        reset = int(headers["ratelimit-reset"])
        # The oldest request expires one hour after it was made.
        assert before + 3600 <= reset <= time.time() + 3601


async def test_burst_past_the_minute_limit_gets_429_with_retry_after(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(rate_limit_per_minute=5, minute_window_s=0.5)
    async with api_session(simulator) as session:
        statuses = [(await call(session, "GET", "/v2/databases/options"))[0] for _ in range(5)]
        last_accepted = time.monotonic()
        status, body, headers = await call(session, "GET", "/v2/databases/options")
        refused_again, _, _ = await call(session, "GET", "/v2/databases")
        assert statuses == [200] * 5
        assert status == 429
        assert body["id"] == "too_many_requests"
        assert body["message"] == "API rate limit exceeded."
        assert headers["retry-after"] == "1"
        assert headers["ratelimit-remaining"] == "0"
        assert refused_again == 429
        stats = simulator.stats()
        assert (stats.rate_limited, stats.minute_window.used, stats.minute_window.peak) == (2, 5, 5)
        # Once the window has slid past the burst, requests are accepted again.
        await asyncio.sleep(max(0.0, last_accepted + 0.5 - time.monotonic()))
        status, _, headers = await call(session, "GET", "/v2/databases")
    assert status == 200
    assert "retry-after" not in headers
    assert headers["ratelimit-remaining"] == str(5000 - 6)


async def test_exhausted_hour_is_429_too(simulator_factory: SimulatorFactory) -> None:
    simulator = await simulator_factory(rate_limit_per_hour=3, hour_window_s=30.0)
    async with api_session(simulator) as session:
        remaining = [
            (await call(session, "GET", "/v2/databases"))[2]["ratelimit-remaining"]
            for _ in range(3)
        ]
        status, body, headers = await call(session, "GET", "/v2/databases")
    assert remaining == ["2", "1", "0"]
    assert (status, body["id"]) == (429, "too_many_requests")
    assert headers["ratelimit-limit"] == "3"
    assert 1 <= int(headers["retry-after"]) <= 30
    assert simulator.stats().rate_limited_by_window == {"hour": 1}


async def test_wrong_token_does_not_spend_the_account_budget(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(rate_limit_per_minute=2)
    async with api_session(simulator, token="intruder") as intruder:
        for _ in range(3):
            await call(intruder, "GET", "/v2/databases")
    async with api_session(simulator) as session:
        statuses = [(await call(session, "GET", "/v2/databases"))[0] for _ in range(2)]
    assert statuses == [200, 200]


# --- faults -----------------------------------------------------------------------------------


async def test_fail_500_fraction_answers_server_error_and_can_be_switched_off(
    simulator: Simulator,
) -> None:
    simulator.config.fail_500_fraction = 1.0
    async with api_session(simulator) as session:
        status, body, headers = await call(session, "POST", "/v2/databases", json=PG)
        assert (status, body["id"]) == (500, "server_error")
        assert headers["ratelimit-limit"] == "5000"
        assert simulator.stats().clusters_total == 0  # a 500 changes nothing
        simulator.config.fail_500_fraction = 0.0
        status, _, _ = await call(session, "POST", "/v2/databases", json=PG)
    assert status == 201
    assert simulator.stats().faults == {"server_error": 1}


async def test_fail_429_fraction_answers_429_with_retry_after_1(simulator: Simulator) -> None:
    simulator.config.fail_429_fraction = 1.0
    async with api_session(simulator) as session:
        status, body, headers = await call(session, "GET", "/v2/databases")
    assert (status, body["id"], headers["retry-after"]) == (429, "too_many_requests", "1")
    stats = simulator.stats()
    assert stats.faults == {"too_many_requests": 1}
    assert (stats.too_many_requests, stats.rate_limited) == (1, 0)


async def test_fractions_between_0_and_1_fault_some_requests_and_not_others(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(fail_500_fraction=0.5)
    async with api_session(simulator) as session:
        statuses = [(await call(session, "GET", "/v2/databases"))[0] for _ in range(60)]
    assert 10 < statuses.count(500) < 50
    assert statuses.count(500) + statuses.count(200) == 60


async def test_latency_delays_every_api_answer(simulator: Simulator) -> None:
    simulator.config.latency_s = 0.25
    async with api_session(simulator) as session:
        started = time.monotonic()
        status, _, _ = await call(session, "GET", "/v2/databases")
    assert status == 200
    assert time.monotonic() - started >= 0.25
    assert simulator.stats().faults == {"latency": 1}


async def test_dropped_create_closes_the_connection_yet_creates_the_cluster(
    simulator: Simulator,
) -> None:
    simulator.config.drop_fraction = 1.0
    async with api_session(simulator) as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(session, "POST", "/v2/databases", json=PG)
        simulator.config.drop_fraction = 0.0
        _, listed, _ = await call(session, "GET", "/v2/databases")
        status, body, _ = await call(session, "POST", "/v2/databases", json=PG)
    assert [c["name"] for c in listed["databases"]] == ["backend"]
    assert (status, body["message"]) == (422, "cluster name is not available")
    assert simulator.stats().count("POST /v2/databases", "dropped") == 1


async def test_dropped_create_before_effect_creates_nothing(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(drop_fraction=1.0, drop_after_effect_fraction=0.0)
    async with api_session(simulator) as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await call(session, "POST", "/v2/databases", json=PG)
    assert simulator.stats().clusters_total == 0
    assert simulator.stats().faults == {"dropped": 1}


# --- lifecycle and stats ----------------------------------------------------------------------


async def test_paused_simulator_refuses_connections_and_resumes_with_its_clusters(
    simulator: Simulator,
) -> None:
    url = simulator.base_url
    async with api_session(simulator) as session:
        cluster = await create(session)
        await simulator.pause()
        assert not simulator.running
        with pytest.raises(aiohttp.ClientConnectionError):
            await call(session, "GET", f"/v2/databases/{cluster['id']}")
        assert await simulator.resume() == url
        status, body, _ = await call(session, "GET", f"/v2/databases/{cluster['id']}")
    assert status == 200
    assert body["database"]["connection"] == cluster["connection"]


async def test_stats_count_calls_per_endpoint_and_status(simulator: Simulator) -> None:
    async with api_session(simulator) as session:
        cluster = await create(session)
        await call(session, "GET", f"/v2/databases/{cluster['id']}")
        await call(session, "GET", f"/v2/databases/{cluster['id']}")
        await call(session, "GET", "/v2/databases/missing")
        await call(session, "POST", "/v2/databases", json=PG)
        async with session.get("/_simulator/stats") as response:
            served = await response.json()
    stats = simulator.stats()
    assert stats.calls == {
        "POST /v2/databases": {"201": 1, "422": 1},
        "GET /v2/databases/{id}": {"200": 2, "404": 1},
    }
    assert stats.count("GET /v2/databases/{id}") == 3
    assert stats.requests == 5
    assert stats.clusters == {"creating": 1}
    assert (stats.minute_window.used, stats.hour_window.used) == (5, 5)
    assert served["calls"] == stats.calls
    assert served["minute_window"]["limit"] == 250
    assert served["too_many_requests"] == 0


async def test_stats_path_needs_no_token_and_is_not_rate_limited(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(rate_limit_per_minute=1)
    async with aiohttp.ClientSession(base_url=simulator.base_url) as session:
        for _ in range(3):
            async with session.get("/_simulator/stats") as response:
                assert response.status == 200
    assert simulator.stats().requests == 0


async def test_replacing_the_config_at_runtime_reaches_the_rate_limit(simulator: Simulator) -> None:
    simulator.config = SimulatorConfig(rate_limit_per_minute=1, seed=1)
    async with api_session(simulator) as session:
        first, _, _ = await call(session, "GET", "/v2/databases")
        second, _, _ = await call(session, "GET", "/v2/databases")
    assert (first, second) == (200, 429)


async def test_a_thousand_clusters_come_online_without_a_task_each(
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.0, rate_limit_per_minute=5000)
    before = len(asyncio.all_tasks())
    async with api_session(simulator) as session:
        for i in range(1000):
            await create(session, name=f"db-{i}", num_nodes=1, size="db-s-1vcpu-1gb")
        assert len(asyncio.all_tasks()) <= before + 1
        _, listed, _ = await call(session, "GET", "/v2/databases")
    assert len(listed["databases"]) == 1000
    assert {c["status"] for c in listed["databases"]} == {"online"}
