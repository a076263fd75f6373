"""The DigitalOcean client against the simulator over real HTTP on loopback.

Each call and each error type, the exact requests the client sends (seen by a recording
proxy between the two), retries of 5xx and dropped connections, the ambiguous create, and
that neither the token nor a password from a response reaches a log line or an error.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import msgspec
import pytest
from aiohttp import ClientSession, ClientTimeout, web
from structlog.testing import capture_logs

from contracts.digitalocean import (
    DatabaseCluster,
    DatabaseClusterCreate,
    DatabaseUserCreate,
    FirewallRuleCreate,
)
from service.digitalocean import (
    TRANSPORT_ERROR,
    AmbiguousCreate,
    ApiError,
    ClientError,
    DigitalOceanClient,
    NotFound,
    RateLimited,
    RateLimiter,
    ResponseDecodeError,
    RetryPolicy,
    ServerError,
    TransportError,
    Unauthorized,
    Unprocessable,
    default_user_agent,
)
from service.simulator import Simulator
from tests.fixtures.simulator import SimulatorFactory

pytestmark = pytest.mark.integration

TOKEN: Final = "dop_v1_" + "5eC12e7" * 9 + "a"
MANAGED_TAG: Final = "provisioner"
# Retries without the production delays, so that fault tests stay fast.
QUICK_RETRY: Final = RetryPolicy(max_attempts=6, base_delay_s=0.01, max_delay_s=0.05)


def request_for(name: str, **fields: Any) -> DatabaseClusterCreate:
    """A command's cluster as a producer sends it, with the parts the create cannot take."""
    return DatabaseClusterCreate(
        name=name,
        engine="pg",
        num_nodes=fields.pop("num_nodes", 1),
        size=fields.pop("size", "db-s-1vcpu-1gb"),
        region="nyc1",
        version="16",
        tags=["team-orders"],
        users=[DatabaseUserCreate(name="app")],
        db_names=["orders"],
        **fields,
    )


class Observed:
    """A ``CallObserver`` that keeps every (operation, status, seconds) it is told."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []

    def __call__(self, operation: str, status: str, seconds: float) -> None:
        self.calls.append((operation, status, seconds))

    def statuses(self, operation: str) -> list[str]:
        return [status for op, status, _ in self.calls if op == operation]


def client_for(simulator: Simulator | str, token: str = TOKEN, **kwargs: Any) -> DigitalOceanClient:
    base_url = simulator if isinstance(simulator, str) else simulator.base_url
    kwargs.setdefault("retry", QUICK_RETRY)
    return DigitalOceanClient(base_url, token, **kwargs)


async def wait_online(client: DigitalOceanClient, cluster_id: str) -> DatabaseCluster:
    """Poll until the cluster is online (bounded: the simulator's clusters take 0.2 s)."""
    deadline = time.monotonic() + 10.0
    while True:
        cluster = await client.get_cluster(cluster_id)
        if cluster.status == "online":
            return cluster
        assert time.monotonic() < deadline, f"cluster stayed {cluster.status}"
        await asyncio.sleep(0.05)


class Recorded(msgspec.Struct):
    """One request as it left the client."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


ResponseRewrite = Callable[[Recorded, int, bytes], tuple[int, bytes]]


class RecordingProxy:
    """A loopback HTTP server in front of the simulator: it keeps every request exactly as
    the client sent it and passes it on (optionally rewriting the answer)."""

    _PASSED_BACK: Final = (
        "content-type",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
        "x-request-id",
    )

    def __init__(self, upstream: str, rewrite: ResponseRewrite | None = None) -> None:
        self.upstream = upstream
        self.rewrite = rewrite
        self.requests: list[Recorded] = []
        self.base_url = ""
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._session = ClientSession(timeout=ClientTimeout(total=10))
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.base_url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        recorded = Recorded(
            method=request.method,
            path_qs=request.raw_path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
        )
        self.requests.append(recorded)
        forwarded = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "content-type", "accept", "user-agent")
        }
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            data=recorded.body or None,
            headers=forwarded,
        ) as upstream:
            status, body = upstream.status, await upstream.read()
            headers = {k: v for k, v in upstream.headers.items() if k.lower() in self._PASSED_BACK}
        if self.rewrite is not None:
            status, body = self.rewrite(recorded, status, body)
        headers.pop("Content-Length", None)
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def sim(simulator_factory: SimulatorFactory) -> Simulator:
    return await simulator_factory(token=TOKEN)


@pytest.fixture
async def proxy(sim: Simulator) -> AsyncIterator[RecordingProxy]:
    recording = RecordingProxy(sim.base_url)
    await recording.start()
    try:
        yield recording
    finally:
        await recording.stop()


# --- every call, and what goes over the wire ----------------------------------------------


async def test_create_sends_exactly_the_api_body_with_token_user_agent_and_json(
    proxy: RecordingProxy,
) -> None:
    observed = Observed()
    request = request_for(
        "orders-db", rules=[FirewallRuleCreate(type="ip_addr", value="192.0.2.10")]
    )
    body = request.api_body(managed_tag=MANAGED_TAG)
    async with client_for(proxy.base_url, observer=observed) as client:
        cluster = await client.create_cluster(body)

    (sent,) = proxy.requests
    assert (sent.method, sent.path_qs) == ("POST", "/v2/databases")
    assert sent.body == msgspec.json.encode(body)
    assert msgspec.json.decode(sent.body) == {
        "name": "orders-db",
        "engine": "pg",
        "num_nodes": 1,
        "size": "db-s-1vcpu-1gb",
        "region": "nyc1",
        "version": "16",
        "tags": ["team-orders", MANAGED_TAG],
        "rules": [{"type": "ip_addr", "value": "192.0.2.10"}],
    }
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["user-agent"] == default_user_agent()
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "application/json"

    assert cluster.name == "orders-db"
    assert cluster.status == "creating"
    assert cluster.tags == ["team-orders", MANAGED_TAG]
    assert cluster.connection is not None and cluster.connection.password
    (call,) = observed.calls
    assert call[:2] == ("create_cluster", "201")
    assert call[2] > 0


async def test_each_read_call_decodes_its_answer(sim: Simulator, proxy: RecordingProxy) -> None:
    async with client_for(proxy.base_url) as client:
        created = await client.create_cluster(
            request_for("reads").api_body(managed_tag=MANAGED_TAG)
        )
        await client.create_cluster(request_for("untagged").api_body())

        got = await client.get_cluster(created.id)
        assert (got.id, got.name, got.engine) == (created.id, "reads", "pg")

        managed = await client.list_clusters(tag_name=MANAGED_TAG)
        assert [c.name for c in managed] == ["reads"]
        everything = await client.list_clusters()
        assert sorted(c.name for c in everything) == ["reads", "untagged"]
        assert await client.list_clusters(tag_name="team a&b=c") == []

        options = await client.get_options()
        assert "16" in options.options["pg"].versions
        assert "nyc1" in options.options["pg"].regions

        ca = await client.get_ca(created.id)
        assert ca.certificate

    paths = [(r.method, r.path_qs) for r in proxy.requests]
    assert paths[2:] == [
        ("GET", f"/v2/databases/{created.id}"),
        ("GET", "/v2/databases?tag_name=provisioner"),
        ("GET", "/v2/databases"),
        ("GET", "/v2/databases?tag_name=team%20a%26b%3Dc"),
        ("GET", "/v2/databases/options"),
        ("GET", f"/v2/databases/{created.id}/ca"),
    ]
    assert all(r.body == b"" for r in proxy.requests[2:])


async def test_add_user_and_add_database_send_their_bodies_and_return_what_was_made(
    proxy: RecordingProxy,
) -> None:
    async with client_for(proxy.base_url) as client:
        created = await client.create_cluster(request_for("finish").api_body())
        await wait_online(client, created.id)
        proxy.requests.clear()

        user = await client.add_user(created.id, DatabaseUserCreate(name="app"))
        database = await client.add_database(created.id, "orders")

    assert user.name == "app"
    assert user.password
    assert database.name == "orders"
    sent_user, sent_db = proxy.requests
    assert (sent_user.method, sent_user.path_qs) == ("POST", f"/v2/databases/{created.id}/users")
    assert sent_user.body == b'{"name":"app"}'
    assert (sent_db.method, sent_db.path_qs) == ("POST", f"/v2/databases/{created.id}/dbs")
    assert sent_db.body == b'{"name":"orders"}'


async def test_path_parameters_are_quoted(proxy: RecordingProxy) -> None:
    async with client_for(proxy.base_url) as client:
        with pytest.raises(NotFound):
            await client.get_cluster("../options?x=1")
    assert proxy.requests[-1].path_qs == "/v2/databases/..%2Foptions%3Fx%3D1"


async def test_delete_removes_the_cluster(sim: Simulator) -> None:
    async with client_for(sim) as client:
        created = await client.create_cluster(request_for("doomed").api_body())
        await client.delete_cluster(created.id)
        with pytest.raises(NotFound) as caught:
            await client.get_cluster(created.id)
        with pytest.raises(NotFound):
            await client.delete_cluster(created.id)
    assert caught.value.operation == "get_cluster"
    assert sim.stats().clusters_total == 0


async def test_delete_whose_first_answer_was_lost_counts_the_404_on_retry_as_done(
    sim: Simulator,
) -> None:
    statuses: list[str] = []

    def observe(operation: str, status: str, seconds: float) -> None:
        statuses.append(f"{operation} {status}")
        if status == TRANSPORT_ERROR:
            sim.config.drop_fraction = 0.0  # only the first attempt loses its answer

    async with client_for(sim, observer=observe) as client:
        created = await client.create_cluster(request_for("delete-once").api_body())
        sim.config.drop_fraction = 1.0  # the delete takes effect, then the connection drops
        await client.delete_cluster(created.id)
    assert statuses == [
        "create_cluster 201",
        f"delete_cluster {TRANSPORT_ERROR}",
        "delete_cluster 404",
    ]
    assert sim.stats().clusters_total == 0


async def test_a_failing_observer_never_fails_the_call(sim: Simulator) -> None:
    def broken(operation: str, status: str, seconds: float) -> None:
        raise ZeroDivisionError

    with capture_logs() as logs:
        async with client_for(sim, observer=broken) as client:
            options = await client.get_options()
    assert "pg" in options.options
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("digitalocean.observer_failed", "warning")
    ]


async def test_call_that_cannot_get_a_slot_in_time_is_refused_locally(sim: Simulator) -> None:
    # One request a minute, and a call may wait at most 0.5 s: the second call is refused by
    # the process itself, at once, without anything sent.
    limiter = RateLimiter(per_minute=1)
    observed = Observed()
    policy = RetryPolicy(max_attempts=3, max_total_s=0.5)
    async with client_for(sim, limiter=limiter, retry=policy, observer=observed) as client:
        await client.get_options()
        started = time.monotonic()
        with pytest.raises(RateLimited) as caught:
            await client.get_options()
        assert time.monotonic() - started < 0.25
    assert caught.value.status is None
    assert 59.0 < caught.value.retry_after_s <= 60.0
    assert observed.statuses("get_options") == ["200"]
    assert sim.stats().count("GET /v2/databases/options") == 1


# --- each error type ----------------------------------------------------------------------


async def test_wrong_token_is_unauthorized_and_neither_token_shows(sim: Simulator) -> None:
    wrong = "dop_v1_" + "0badc0de" * 8
    async with client_for(sim, token=wrong) as client:
        with pytest.raises(Unauthorized) as caught:
            await client.list_clusters()
    error = caught.value
    assert (error.status, error.id, error.operation) == (401, "unauthorized", "list_clusters")
    assert error.message == "Unable to authenticate you."
    assert error.request_id
    for text in (str(error), repr(error)):
        assert wrong not in text
        assert TOKEN not in text


async def test_unknown_cluster_is_not_found_with_the_request_id(sim: Simulator) -> None:
    async with client_for(sim) as client:
        with pytest.raises(NotFound) as caught:
            await client.get_ca("9cc10173-e9ea-4176-9dbc-a4cee4c4ff30")
    assert (caught.value.status, caught.value.id) == (404, "not_found")
    assert caught.value.request_id


async def test_taken_name_is_unprocessable_with_digitaloceans_message(sim: Simulator) -> None:
    async with client_for(sim) as client:
        await client.create_cluster(request_for("twice").api_body())
        with pytest.raises(Unprocessable) as caught:
            await client.create_cluster(request_for("twice").api_body())
    assert (caught.value.status, caught.value.id) == (422, "unprocessable_entity")
    assert caught.value.message == "cluster name is not available"
    assert caught.value.message in str(caught.value)
    assert sim.stats().clusters_total == 1


async def test_finishing_step_on_a_creating_cluster_is_a_client_error(sim: Simulator) -> None:
    sim.config.ready_after_s = 60.0
    async with client_for(sim) as client:
        created = await client.create_cluster(request_for("early").api_body())
        with pytest.raises(ClientError) as caught:
            await client.add_database(created.id, "orders")
    assert caught.value.status == 409


async def test_429_on_create_raises_rate_limited_and_creates_nothing(sim: Simulator) -> None:
    sim.config.fail_429_fraction = 1.0
    observed = Observed()
    async with client_for(sim, observer=observed) as client:
        with pytest.raises(RateLimited) as caught:
            await client.create_cluster(request_for("refused").api_body())
        # The 429 holds every call of the process for its retry-after.
        assert client.limiter.snapshot().blocked_until is not None
    assert caught.value.status == 429
    assert caught.value.retry_after_s == 1.0
    assert observed.statuses("create_cluster") == ["429"]
    assert sim.stats().clusters_total == 0


async def test_500_on_get_is_retried_to_the_limit_then_raised(sim: Simulator) -> None:
    sim.config.fail_500_fraction = 1.0
    observed = Observed()
    policy = RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02)
    with capture_logs() as logs:
        async with client_for(sim, observer=observed, retry=policy) as client:
            with pytest.raises(ServerError) as caught:
                await client.get_options()
    assert (caught.value.status, caught.value.id) == (500, "server_error")
    assert observed.statuses("get_options") == ["500", "500", "500"]
    retries = [e for e in logs if e["event"] == "digitalocean.retry"]
    assert [(e["operation"], e["status"], e["attempt"]) for e in retries] == [
        ("get_options", 500, 1),
        ("get_options", 500, 2),
    ]
    assert all(e["log_level"] == "info" and 0 <= e["delay_s"] <= 0.02 for e in retries)


async def test_500_on_a_finishing_step_is_raised_not_replayed(sim: Simulator) -> None:
    observed = Observed()
    async with client_for(sim, observer=observed) as client:
        created = await client.create_cluster(request_for("finish-500").api_body())
        await wait_online(client, created.id)
        sim.config.fail_500_fraction = 1.0
        with pytest.raises(ServerError):
            await client.add_user(created.id, DatabaseUserCreate(name="app"))
        with pytest.raises(ServerError):
            await client.add_database(created.id, "orders")
    assert observed.statuses("add_user") == ["500"]
    assert observed.statuses("add_database") == ["500"]


# --- faults that are retried, and the create that is not -------------------------------------


async def test_gets_through_server_errors_and_dropped_connections_succeed(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(token=TOKEN, fail_500_fraction=0.3, drop_fraction=0.3, seed=11)
    observed = Observed()
    async with client_for(
        sim,
        observer=observed,
        retry=RetryPolicy(max_attempts=12, base_delay_s=0.005, max_delay_s=0.02),
    ) as client:
        for _ in range(20):
            options = await client.get_options()
            assert "pg" in options.options
    statuses = observed.statuses("get_options")
    assert statuses.count("200") == 20
    assert statuses.count("500") > 0
    assert statuses.count(TRANSPORT_ERROR) > 0
    faults = sim.stats().faults
    assert faults["server_error"] == statuses.count("500")
    assert faults["dropped"] >= 1


async def test_dropped_create_is_ambiguous_and_the_cluster_can_be_found_by_name(
    sim: Simulator,
) -> None:
    sim.config.drop_fraction = 1.0  # the create takes effect, then the connection drops
    observed = Observed()
    async with client_for(sim, observer=observed) as client:
        with pytest.raises(AmbiguousCreate) as caught:
            await client.create_cluster(
                request_for("lost-answer").api_body(managed_tag=MANAGED_TAG)
            )
        sim.config.drop_fraction = 0.0
        found = [c.name for c in await client.list_clusters(tag_name=MANAGED_TAG)]
    error = caught.value
    assert (error.status, error.cluster_name, error.operation) == (
        None,
        "lost-answer",
        "create_cluster",
    )
    assert isinstance(error.__cause__, TransportError)
    # Sent once, never replayed: exactly one cluster exists, and the caller can adopt it.
    assert observed.statuses("create_cluster") == [TRANSPORT_ERROR]
    assert found == ["lost-answer"]
    assert sim.stats().count("POST /v2/databases") == 1


async def test_create_answered_500_is_ambiguous_and_not_replayed(sim: Simulator) -> None:
    sim.config.fail_500_fraction = 1.0
    observed = Observed()
    async with client_for(sim, observer=observed) as client:
        with pytest.raises(AmbiguousCreate) as caught:
            await client.create_cluster(request_for("five-hundred").api_body())
    assert (caught.value.status, caught.value.id) == (500, "server_error")
    assert caught.value.request_id
    assert observed.statuses("create_cluster") == ["500"]


async def test_create_that_times_out_after_sending_is_ambiguous(sim: Simulator) -> None:
    sim.config.latency_s = 0.5
    async with client_for(sim, total_timeout_s=0.2) as client:
        with pytest.raises(AmbiguousCreate) as caught:
            await client.create_cluster(request_for("slow").api_body())
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, TransportError)
    # The request did reach the API before the client gave up on the answer.
    deadline = time.monotonic() + 5.0
    while sim.stats().count("POST /v2/databases") == 0:
        assert time.monotonic() < deadline, "the create never reached the simulator"
        await asyncio.sleep(0.05)


async def test_create_that_never_connected_is_a_transport_error_not_ambiguous() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens there now: the connection is refused, so nothing can have been created.
    async with client_for(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(TransportError) as caught:
            await client.create_cluster(request_for("nowhere").api_body())
    assert type(caught.value) is TransportError
    assert caught.value.maybe_sent is False
    assert TOKEN not in str(caught.value)


async def test_undecodable_success_is_a_decode_error_that_hides_the_body(sim: Simulator) -> None:
    secret = "hunter2-" + "f" * 20

    def garble(request: Recorded, status: int, body: bytes) -> tuple[int, bytes]:
        cluster = {"id": 7, "connection": {"password": secret}}
        # A success whatever the simulator said, with a body that breaks the contract.
        if request.method == "POST":
            return 201, msgspec.json.encode({"database": cluster})
        if request.path_qs == "/v2/databases":
            return 200, msgspec.json.encode({"databases": [cluster]})
        return 200, msgspec.json.encode({"database": cluster})

    proxy = RecordingProxy(sim.base_url, rewrite=garble)
    base_url = await proxy.start()
    try:
        async with client_for(base_url) as client:
            with pytest.raises(ResponseDecodeError) as read_error:
                await client.list_clusters()
            with pytest.raises(ResponseDecodeError) as get_error:
                await client.get_cluster("any")
            with pytest.raises(AmbiguousCreate) as create_error:
                await client.create_cluster(request_for("garbled").api_body())
    finally:
        await proxy.stop()
    assert "$.database" in get_error.value.message
    assert create_error.value.status == 201
    for error in (read_error.value, get_error.value, create_error.value):
        assert secret not in str(error)
        assert secret not in repr(error)


# --- 429s from the window: held, then through --------------------------------------------


async def test_window_429_holds_every_call_for_its_retry_after(
    simulator_factory: SimulatorFactory,
) -> None:
    # The simulator allows 1 request a second; the client believes it may send 100. The
    # create gets a 429 with retry-after 1; the GET after it never sees a 429 of its own,
    # yet it waits out the hold before it is sent, and then it succeeds.
    sim = await simulator_factory(token=TOKEN, rate_limit_per_minute=1, minute_window_s=1.0)
    observed = Observed()
    limiter = RateLimiter(per_minute=100, minute_window_s=1.0)
    async with client_for(sim, observer=observed, limiter=limiter) as client:
        await client.get_options()
        with pytest.raises(RateLimited) as caught:
            await client.create_cluster(request_for("burst").api_body())
        blocked_until = limiter.snapshot().blocked_until
        assert blocked_until is not None
        hold_left = blocked_until - time.time()
        started = time.monotonic()
        await client.get_options()
        waited = time.monotonic() - started
    assert caught.value.retry_after_s == 1.0
    assert hold_left > 0.5
    assert waited >= hold_left - 0.05
    assert observed.statuses("get_options") == ["200", "200"]
    assert observed.statuses("create_cluster") == ["429"]
    assert sim.stats().rate_limited == 1
    assert limiter.snapshot().holds == 1


async def test_429_on_get_is_retried_after_the_hold_and_succeeds(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(token=TOKEN, rate_limit_per_minute=2, minute_window_s=1.0)
    observed = Observed()
    limiter = RateLimiter(per_minute=100, minute_window_s=1.0)
    async with client_for(sim, observer=observed, limiter=limiter) as client:
        started = time.monotonic()
        results = await asyncio.gather(*(client.get_options() for _ in range(3)))
        elapsed = time.monotonic() - started
    assert len(results) == 3
    statuses = observed.statuses("get_options")
    assert statuses.count("200") == 3
    assert statuses.count("429") >= 1
    assert elapsed >= 1.0  # nothing went again before retry-after had passed


# --- secrets ------------------------------------------------------------------------------


async def test_token_and_passwords_never_reach_logs_or_errors(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [TOKEN]
    errors: list[ApiError] = []
    policy = RetryPolicy(max_attempts=10, base_delay_s=0.005, max_delay_s=0.01)

    async def expect_error(call: Any) -> None:
        with pytest.raises(ApiError) as caught:
            await call
        errors.append(caught.value)

    with capture_logs() as logs:
        async with client_for(sim, retry=policy) as client:
            sim.config.fail_500_fraction = 1.0
            await expect_error(client.create_cluster(request_for("secretive-1").api_body()))
            sim.config.fail_500_fraction = 0.0
            sim.config.drop_fraction = 1.0
            await expect_error(client.create_cluster(request_for("secretive-2").api_body()))
            sim.config.drop_fraction = 0.0
            created = await client.create_cluster(request_for("secretive-3").api_body())
            assert created.connection is not None and created.connection.password
            secrets.append(created.connection.password)
            await wait_online(client, created.id)
            user = await client.add_user(created.id, DatabaseUserCreate(name="app"))
            assert user.password
            secrets.append(user.password)
            await expect_error(client.add_user(created.id, DatabaseUserCreate(name="app")))
            sim.config.fail_500_fraction = 0.5
            for _ in range(5):
                cluster = await client.get_cluster(created.id)
                assert cluster.users is not None
                secrets.extend(u.password for u in cluster.users if u.password)
            sim.config.fail_500_fraction = 1.0
            await expect_error(client.get_cluster(created.id))
            await expect_error(client.list_clusters())
        async with client_for(sim, token=TOKEN[:-1] + "b") as wrong:
            sim.config.fail_500_fraction = 0.0
            await expect_error(wrong.get_options())
    # The scenario must have produced the lines and errors it is about.
    events = {entry["event"] for entry in logs}
    assert {"digitalocean.retry", "digitalocean.create_ambiguous"} <= events
    assert [type(e).__name__ for e in errors] == [
        "AmbiguousCreate",
        "AmbiguousCreate",
        "Unprocessable",
        "ServerError",
        "ServerError",
        "Unauthorized",
    ]
    logged = [repr(entry) for entry in logs] + [caplog.text]
    raised = [text for e in errors for text in (str(e), repr(e), repr(e.__cause__))]
    assert len(secrets) >= 3
    for secret in secrets:
        for text in logged + raised:
            assert secret not in text
