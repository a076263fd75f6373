"""Every body the simulator sends validates against the official spec's response schema.

For each endpoint and each status the simulator produces, the schema is the spec's
(``responses[status]``, or ``default`` where the operation lists no such status), resolved
by ``do_spec``. OpenAPI 3.0's ``nullable`` becomes a JSON Schema ``null`` type and
``readOnly`` is dropped (it constrains requests, not responses). Objects are closed
(``additionalProperties: false``), so a field the spec does not define fails too; the
options document stays open because the spec's own example carries a ``default`` flag that
its schema does not list.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import pytest

# No stubs in the dev dependencies (types-jsonschema would add them).
from jsonschema import Draft202012Validator, FormatChecker

from service.simulator import Simulator
from tests.fixtures.simulator import SimulatorFactory, api_session
from tests.fixtures.spec import SpecResolver

pytestmark = pytest.mark.integration

Json = Any
Exchange = Callable[[Simulator, aiohttp.ClientSession], Awaitable[aiohttp.ClientResponse]]

PG = {"name": "backend", "engine": "pg", "region": "nyc3", "size": "db-s-2vcpu-4gb", "num_nodes": 2}
PG_FULL = {
    **PG,
    "version": "16",
    "tags": ["production", "provisioner"],
    "storage_size_mib": 61440,
    "rules": [{"type": "ip_addr", "value": "192.168.1.1", "description": "office"}],
    "do_settings": {"service_cnames": ["db.example.com"]},
}
ENGINES: dict[str, Json] = {
    "mysql": {"engine": "mysql", "size": "db-s-1vcpu-1gb", "num_nodes": 1},
    "mongodb": {"engine": "mongodb", "size": "db-s-1vcpu-1gb", "num_nodes": 3},
    "valkey": {"engine": "valkey", "size": "db-s-1vcpu-2gb", "num_nodes": 2},
    "kafka": {"engine": "kafka", "size": "gd-2vcpu-8gb", "num_nodes": 3},
    "opensearch": {"engine": "opensearch", "size": "db-s-2vcpu-4gb", "num_nodes": 1},
    "advanced_pg": {"engine": "advanced_pg", "size": "gd-2vcpu-8gb", "num_nodes": 3},
}


@dataclass(frozen=True)
class Case:
    """One request and the spec operation and status its answer must match."""

    operation: str
    status: int
    exchange: Exchange
    overrides: dict[str, Any] | None = None


async def _cluster(sim: Simulator, session: aiohttp.ClientSession, **fields: Any) -> str:
    async with session.post("/v2/databases", json={**PG, **fields}) as response:
        assert response.status == 201, await response.text()
        cluster_id: str = (await response.json())["database"]["id"]
    return cluster_id


async def _online(sim: Simulator, session: aiohttp.ClientSession, **fields: Any) -> str:
    cluster_id = await _cluster(sim, session, **fields)
    sim.force_status(cluster_id, "online")
    return cluster_id


def post(path: str, body: Json, *, online: dict[str, Any] | None = None) -> Exchange:
    """POST ``body``; ``{id}`` in ``path`` is an online cluster made with ``online`` fields."""

    async def exchange(sim: Simulator, session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        if "{id}" in path:
            path_ = path.format(id=await _online(sim, session, **(online or {})))
        else:
            path_ = path
        return await session.post(path_, json=body)

    return exchange


def get(path: str, *, setup: dict[str, Any] | None = None, creating: bool = False) -> Exchange:
    """GET ``path``; ``{id}`` is a cluster made with ``setup`` fields (online unless
    ``creating``); with ``setup`` and no ``{id}``, the cluster is made first anyway."""

    async def exchange(sim: Simulator, session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        path_ = path
        if setup is not None:
            make = _cluster if creating else _online
            path_ = path.format(id=await make(sim, session, **setup))
        return await session.get(path_)

    return exchange


def delete(path: str, *, setup: dict[str, Any] | None = None) -> Exchange:
    async def exchange(sim: Simulator, session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        path_ = path.format(id=await _online(sim, session)) if setup is not None else path
        return await session.delete(path_)

    return exchange


def post_bytes(path: str, raw: bytes) -> Exchange:
    async def exchange(sim: Simulator, session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        return await session.post(path, data=raw, headers={"Content-Type": "application/json"})

    return exchange


def on_creating(path: str, body: Json) -> Exchange:
    async def exchange(sim: Simulator, session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        return await session.post(path.format(id=await _cluster(sim, session)), json=body)

    return exchange


def unauthorized(method: str, path: str) -> Exchange:
    async def exchange(sim: Simulator, session: aiohttp.ClientSession) -> aiohttp.ClientResponse:
        return await session.request(method, path, headers={"Authorization": "Bearer nope"})

    return exchange


def _kafka_user() -> Json:
    return {"name": "app", "settings": {"acl": [{"topic": "events.*", "permission": "consume"}]}}


MISSING = "/v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
CLOSED = {"rate_limit_per_minute": 0}
FAILING = {"fail_500_fraction": 1.0}
INJECTED_429 = {"fail_429_fraction": 1.0}

CASES = {
    # POST /v2/databases
    "create-201-pg": Case("databases_create_cluster", 201, post("/v2/databases", PG_FULL)),
    **{
        f"create-201-{engine}": Case(
            "databases_create_cluster",
            201,
            post("/v2/databases", {**PG, "name": f"{engine}-1", "region": "ams3", **fields}),
        )
        for engine, fields in ENGINES.items()
    },
    "create-401": Case("databases_create_cluster", 401, unauthorized("POST", "/v2/databases")),
    "create-400": Case("databases_create_cluster", 400, post_bytes("/v2/databases", b"{,")),
    "create-422-type": Case("databases_create_cluster", 422, post("/v2/databases", "a string")),
    "create-422": Case(
        "databases_create_cluster", 422, post("/v2/databases", {**PG, "region": "mars1"})
    ),
    "create-429": Case("databases_create_cluster", 429, post("/v2/databases", PG), CLOSED),
    "create-429-injected": Case(
        "databases_create_cluster", 429, post("/v2/databases", PG), INJECTED_429
    ),
    "create-500": Case("databases_create_cluster", 500, post("/v2/databases", PG), FAILING),
    # GET /v2/databases
    "list-200": Case(
        "databases_list_clusters", 200, get("/v2/databases", setup={"tags": ["production"]})
    ),
    "list-200-empty": Case("databases_list_clusters", 200, get("/v2/databases")),
    "list-200-kafka": Case(
        "databases_list_clusters", 200, get("/v2/databases", setup=ENGINES["kafka"])
    ),
    "list-401": Case("databases_list_clusters", 401, unauthorized("GET", "/v2/databases")),
    "list-429": Case("databases_list_clusters", 429, get("/v2/databases"), CLOSED),
    "list-500": Case("databases_list_clusters", 500, get("/v2/databases"), FAILING),
    # GET /v2/databases/{id}
    "get-200-creating": Case(
        "databases_get_cluster", 200, get("/v2/databases/{id}", setup={}, creating=True)
    ),
    "get-200-online": Case("databases_get_cluster", 200, get("/v2/databases/{id}", setup={})),
    "get-200-opensearch": Case(
        "databases_get_cluster", 200, get("/v2/databases/{id}", setup=ENGINES["opensearch"])
    ),
    "get-404": Case("databases_get_cluster", 404, get(MISSING)),
    "get-401": Case("databases_get_cluster", 401, unauthorized("GET", MISSING)),
    "get-429": Case("databases_get_cluster", 429, get(MISSING), CLOSED),
    "get-500": Case("databases_get_cluster", 500, get(MISSING), FAILING),
    # DELETE /v2/databases/{id}
    "delete-204": Case("databases_destroy_cluster", 204, delete("/v2/databases/{id}", setup={})),
    "delete-404": Case("databases_destroy_cluster", 404, delete(MISSING)),
    "delete-401": Case("databases_destroy_cluster", 401, unauthorized("DELETE", MISSING)),
    # GET /v2/databases/options
    "options-200": Case("databases_list_options", 200, get("/v2/databases/options")),
    "options-401": Case(
        "databases_list_options", 401, unauthorized("GET", "/v2/databases/options")
    ),
    "options-429": Case("databases_list_options", 429, get("/v2/databases/options"), CLOSED),
    "options-500": Case("databases_list_options", 500, get("/v2/databases/options"), FAILING),
    # GET /v2/databases/{id}/ca
    "ca-200": Case("databases_get_ca", 200, get("/v2/databases/{id}/ca", setup={})),
    "ca-404": Case("databases_get_ca", 404, get(f"{MISSING}/ca")),
    "ca-401": Case("databases_get_ca", 401, unauthorized("GET", f"{MISSING}/ca")),
    # POST /v2/databases/{id}/users
    "user-201-pg": Case(
        "databases_add_user",
        201,
        post(
            "/v2/databases/{id}/users", {"name": "app", "settings": {"pg_allow_replication": True}}
        ),
    ),
    "user-201-mysql": Case(
        "databases_add_user",
        201,
        post("/v2/databases/{id}/users", {"name": "app"}, online=ENGINES["mysql"]),
    ),
    "user-201-kafka": Case(
        "databases_add_user",
        201,
        post("/v2/databases/{id}/users", _kafka_user(), online=ENGINES["kafka"]),
    ),
    "user-201-mongodb": Case(
        "databases_add_user",
        201,
        post(
            "/v2/databases/{id}/users",
            {
                "name": "app",
                "settings": {"mongo_user_settings": {"databases": ["admin"], "role": "readOnly"}},
            },
            online=ENGINES["mongodb"],
        ),
    ),
    "user-201-opensearch": Case(
        "databases_add_user",
        201,
        post(
            "/v2/databases/{id}/users",
            {
                "name": "app",
                "settings": {"opensearch_acl": [{"index": "logs-*", "permission": "read"}]},
            },
            online=ENGINES["opensearch"],
        ),
    ),
    "user-404": Case("databases_add_user", 404, post(f"{MISSING}/users", {"name": "app"})),
    "user-409": Case(
        "databases_add_user", 409, on_creating("/v2/databases/{id}/users", {"name": "app"})
    ),
    "user-422": Case(
        "databases_add_user", 422, post("/v2/databases/{id}/users", {"name": "doadmin"})
    ),
    "user-422-valkey": Case(
        "databases_add_user",
        422,
        post("/v2/databases/{id}/users", {"name": "app"}, online=ENGINES["valkey"]),
    ),
    "user-401": Case("databases_add_user", 401, unauthorized("POST", f"{MISSING}/users")),
    # POST /v2/databases/{id}/dbs
    "db-201": Case("databases_add", 201, post("/v2/databases/{id}/dbs", {"name": "orders"})),
    "db-404": Case("databases_add", 404, post(f"{MISSING}/dbs", {"name": "orders"})),
    "db-409": Case("databases_add", 409, on_creating("/v2/databases/{id}/dbs", {"name": "orders"})),
    "db-422": Case("databases_add", 422, post("/v2/databases/{id}/dbs", {"name": "defaultdb"})),
    "db-401": Case("databases_add", 401, unauthorized("POST", f"{MISSING}/dbs")),
}

OPEN_OPERATIONS = {"databases_list_options"}


def to_json_schema(node: Json, *, closed: bool) -> Json:
    """OpenAPI 3.0 schema -> JSON Schema: ``nullable`` as a null type, no ``readOnly``,
    objects with properties closed if asked."""
    if isinstance(node, list):
        return [to_json_schema(item, closed=closed) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: to_json_schema(value, closed=closed) if key != "example" else value
        for key, value in node.items()
        if key not in ("readOnly", "nullable", "example", "examples")
    }
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if closed and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def responses_of(spec: SpecResolver, operation: str) -> Json:
    """The operation's ``responses``, resolved. Only that part: the operation files also
    point at code samples that the copied spec leaves out."""
    path = spec.root / "resources" / "databases" / f"{operation}.yml"
    return spec.resolve(spec.load(path)["responses"], path)


FORMATS = FormatChecker()


def _is_date_time(value: object) -> bool:
    # jsonschema needs an extra package for RFC 3339; this is enough for what we send.
    return not isinstance(value, str) or (
        "T" in value and datetime.fromisoformat(value).tzinfo is not None
    )


FORMATS.checks("date-time", raises=ValueError)(_is_date_time)


@pytest.mark.parametrize("name", list(CASES))
async def test_response_validates_against_the_spec(
    name: str, simulator_factory: SimulatorFactory, do_spec: SpecResolver
) -> None:
    case = CASES[name]
    simulator = await simulator_factory()
    async with api_session(simulator) as session:
        if case.overrides:
            # Set up the clusters first, then switch the fault on for the request itself.
            exchange = case.exchange
            config = simulator.config

            async def faulted(sim: Simulator, s: aiohttp.ClientSession) -> aiohttp.ClientResponse:
                for key, value in (case.overrides or {}).items():
                    setattr(config, key, value)
                return await exchange(sim, s)

            response = await faulted(simulator, session)
        else:
            response = await case.exchange(simulator, session)
        async with response:
            raw = await response.read()
            status = response.status
            headers = response.headers

    assert status == case.status, raw
    responses = responses_of(do_spec, case.operation)
    spec = responses.get(str(status), responses["default"])
    for header, definition in spec.get("headers", {}).items():
        assert definition["schema"]["type"] == "integer"
        int(headers[header])  # present, and an integer as the spec types it
    if "content" not in spec:
        assert raw == b"", "the spec defines no body for this status"
        return
    assert headers["Content-Type"].startswith("application/json")
    schema = to_json_schema(
        spec["content"]["application/json"]["schema"],
        closed=case.operation not in OPEN_OPERATIONS,
    )
    Draft202012Validator(schema, format_checker=FORMATS).validate(json.loads(raw))


def test_cases_cover_every_endpoint_and_status_the_simulator_produces() -> None:
    covered = {(case.operation, case.status) for case in CASES.values()}
    for operation in (
        "databases_create_cluster",
        "databases_list_clusters",
        "databases_get_cluster",
        "databases_list_options",
    ):
        assert {(operation, s) for s in (401, 429, 500)} <= covered
    assert {201, 400, 401, 422, 429, 500} <= {
        s for o, s in covered if o == "databases_create_cluster"
    }
    assert {201, 404, 409, 422} <= {s for o, s in covered if o == "databases_add_user"}
    assert {201, 404, 409, 422} <= {s for o, s in covered if o == "databases_add"}
    assert {204, 404} <= {s for o, s in covered if o == "databases_destroy_cluster"}


def test_translation_turns_nullable_into_a_null_type_and_closes_objects() -> None:
    schema = to_json_schema(
        {
            "type": "object",
            "properties": {
                "tags": {"type": "array", "nullable": True, "readOnly": True},
                "status": {"type": "string", "enum": ["a"], "nullable": True},
            },
        },
        closed=True,
    )
    assert schema == {
        "type": "object",
        "properties": {
            "tags": {"type": ["array", "null"]},
            "status": {"type": ["string", "null"], "enum": ["a", None]},
        },
        "additionalProperties": False,
    }
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"tags": None, "status": None})
    assert not validator.is_valid({"tags": [], "extra": 1})
