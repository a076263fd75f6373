"""The simulator's HTTP server: DigitalOcean's Databases endpoints over real HTTP (aiohttp).

Every ``/v2`` request goes through the same steps, in the order the real API applies them
as far as a client can tell: added latency, bearer auth, the rate limit (per token),
injected faults, then the endpoint. Each answer carries the ``ratelimit-*`` headers and an
``x-request-id``. ``GET /_simulator/stats`` is the one path outside the real API.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Final

import msgspec
from aiohttp import web

from contracts.digitalocean import (
    ApiErrorBody,
    CaCertificate,
    CaResponse,
    DatabaseCluster,
    DatabaseClusterCreate,
    DatabaseClusterList,
    DatabaseClusterResponse,
    DatabaseName,
    DatabaseNameResponse,
    DatabaseUserResponse,
)
from service.simulator.account import Account, decode_body
from service.simulator.clusters import ClusterRecord, hidden
from service.simulator.config import SimulatorConfig
from service.simulator.credentials import CA_CERTIFICATE_B64
from service.simulator.errors import ApiError
from service.simulator.options import document_as_of
from service.simulator.ratelimit import SlidingWindowLimiter
from service.simulator.stats import DROPPED, SimulatorStats, StatsRecorder

__all__ = ["STATS_PATH", "Simulator"]

STATS_PATH: Final = "/_simulator/stats"
_JSON: Final = "application/json"
# Requests made with the configured token share one bucket; anyone else is limited by address.
_ACCOUNT_BUCKET: Final = "account"
_UNAUTHORIZED: Final = ApiError(401, "unauthorized", "Unable to authenticate you.")
_SHUTDOWN_TIMEOUT_S: Final = 0.25

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger(__name__)


def _json(status: int, payload: object) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(payload), content_type=_JSON, charset="utf-8"
    )


def _error(error: ApiError, request_id: str) -> web.Response:
    body = ApiErrorBody(id=error.error_id, message=error.message, request_id=request_id)
    return _json(error.status, body)


class Simulator:
    """A local DigitalOcean Databases API (see ``SimulatorConfig`` for its knobs).

    State (clusters, rate-limit windows, stats) lives in this object, not in the HTTP
    listener: ``stop()`` then ``start()`` (or ``pause()``/``resume()``, which keep the port)
    takes the API away and brings it back with every cluster where it was.
    """

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = config if config is not None else SimulatorConfig()
        self._rng = random.Random(self._config.seed)
        # Windows run on the monotonic clock; headers speak Unix time.
        epoch_offset = time.time() - time.monotonic()
        self.account = Account(self._rng)
        self.limiter = SlidingWindowLimiter(self._config, epoch_offset)
        self._stats = StatsRecorder()
        self._adding_users: set[str] = set()  # clusters with a user creation in progress
        self._runner: web.AppRunner | None = None
        self._host: str | None = None
        self._port: int | None = None

    # --- configuration and hooks for tests ------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        """The live config: change its fields (or replace it) between requests."""
        return self._config

    @config.setter
    def config(self, config: SimulatorConfig) -> None:
        self._config = config
        self.limiter.config = config

    def stats(self) -> SimulatorStats:
        """What the simulator has seen so far."""
        now = time.monotonic()
        return self._stats.snapshot(
            self.account.statuses(now), self.limiter.windows(_ACCOUNT_BUCKET, now)
        )

    def handed_out(self) -> list[DatabaseCluster]:
        """Every cluster with the passwords that work now: what the POST answers handed out
        (a GET hides MongoDB's). For tests that check the credentials a client announced."""
        now = time.monotonic()
        return [record.to_api(now) for record in self.account]

    def force_status(self, cluster_id: str, status: str) -> None:
        """Pin a cluster's status (``online``, ``creating``, ``resizing``...); ``KeyError``
        if there is no such cluster."""
        self.account.record(cluster_id).forced_status = status

    def stick(self, cluster_id: str) -> None:
        """Keep a cluster in ``creating`` for ever, as a stuck real one does."""
        record = self.account.record(cluster_id)
        record.forced_status = None
        record.ready_at = None

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the listener (kept while paused, so clients can retry)."""
        if self._host is None or self._port is None:
            raise RuntimeError("the simulator has not been started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def running(self) -> bool:
        """Whether the HTTP listener is up."""
        return self._runner is not None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (0: any free port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        runner = web.AppRunner(
            self._build_app(),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        address = runner.addresses[0]
        self._runner = runner
        self._host, self._port = host, int(address[1])
        return self.base_url

    async def stop(self) -> None:
        """Close the listener and every open connection; state is kept for a restart."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def pause(self) -> None:
        """Take the API away (connections are refused); ``resume()`` brings it back."""
        await self.stop()

    async def resume(self) -> str:
        """Listen again on the same host and port as before ``pause()``."""
        if self._host is None or self._port is None:
            raise RuntimeError("the simulator has not been started")
        return await self.start(self._host, self._port)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- HTTP -----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._api_middleware])
        router = app.router
        router.add_get(STATS_PATH, self._handle_stats)
        # Before /v2/databases/{id}, which would otherwise take "options" for an id.
        router.add_get("/v2/databases/options", self._handle_options)
        router.add_post("/v2/databases", self._handle_create)
        router.add_get("/v2/databases", self._handle_list)
        router.add_get("/v2/databases/{id}", self._handle_get)
        router.add_delete("/v2/databases/{id}", self._handle_delete)
        router.add_get("/v2/databases/{id}/ca", self._handle_ca)
        router.add_post("/v2/databases/{id}/users", self._handle_add_user)
        router.add_get("/v2/databases/{id}/users", self._handle_list_users)
        router.add_get("/v2/databases/{id}/users/{user}", self._handle_get_user)
        router.add_post("/v2/databases/{id}/dbs", self._handle_add_database)
        router.add_post("/v2/databases/{id}/users/{user}/reset_auth", self._handle_reset_auth)
        router.add_route("*", "/v2/{tail:.*}", self._handle_unknown)
        return app

    @staticmethod
    def _endpoint(request: web.Request) -> str:
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else request.path
        if canonical == "/v2/{tail}":
            return "other"
        return f"{request.method} {canonical}"

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        # Constant time, so a caller cannot find the token one character at a time.
        return hmac.compare_digest(token.strip().encode(), self._config.token.encode())

    @web.middleware
    async def _api_middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/v2/"):
            return await handler(request)
        config = self._config
        stats = self._stats
        endpoint = self._endpoint(request)
        request_id = str(uuid.uuid4())
        if config.latency_s > 0:
            # The body is in before the slowness, as on the real API: a client that gives
            # up during the latency does not undo a create it already sent.
            await request.read()
            stats.faults["latency"] += 1
            await asyncio.sleep(config.latency_s)

        authorized = self._authorized(request)
        bucket = _ACCOUNT_BUCKET if authorized else f"anonymous:{request.remote}"
        decision = self.limiter.acquire(bucket, time.monotonic())
        headers = decision.headers()
        headers["x-request-id"] = request_id
        if not decision.allowed:
            stats.rate_limited[decision.exhausted or "minute"] += 1
            error = ApiError(429, "too_many_requests", "API rate limit exceeded.")
            return self._answer(endpoint, _error(error, request_id), headers)
        if not authorized:
            return self._answer(endpoint, _error(_UNAUTHORIZED, request_id), headers)

        rng = self._rng
        if config.drop_fraction > 0 and rng.random() < config.drop_fraction:
            if rng.random() < config.drop_after_effect_fraction:
                # The request takes effect, then the answer is lost: a create that did
                # create the cluster although its client saw only a broken connection.
                await self._handle(handler, request, request_id)
            stats.faults["dropped"] += 1
            stats.call(endpoint, DROPPED)
            if request.transport is not None:
                request.transport.abort()
            # Never written: the connection is gone.
            return web.Response(status=204)
        if config.fail_500_fraction > 0 and rng.random() < config.fail_500_fraction:
            stats.faults["server_error"] += 1
            error = ApiError(500, "server_error", "Unexpected server-side error")
            return self._answer(endpoint, _error(error, request_id), headers)
        if config.fail_429_fraction > 0 and rng.random() < config.fail_429_fraction:
            stats.faults["too_many_requests"] += 1
            headers.update({"ratelimit-remaining": "0", "retry-after": "1"})
            error = ApiError(429, "too_many_requests", "API rate limit exceeded.")
            return self._answer(endpoint, _error(error, request_id), headers)
        response = await self._handle(handler, request, request_id)
        return self._answer(endpoint, response, headers)

    async def _handle(
        self, handler: Handler, request: web.Request, request_id: str
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return _error(error, request_id)
        except Exception:
            # A bug in the simulator still answers with DigitalOcean's error body.
            log.exception("simulator endpoint failed")
            return _error(ApiError(500, "server_error", "Unexpected server-side error"), request_id)

    def _answer(
        self, endpoint: str, response: web.StreamResponse, headers: dict[str, str]
    ) -> web.StreamResponse:
        response.headers.update(headers)
        self._stats.call(endpoint, response.status)
        return response

    # --- endpoints ------------------------------------------------------------------------

    async def _handle_stats(self, request: web.Request) -> web.Response:
        # No auth: it holds counts only, never a credential, and serves tests on loopback.
        return _json(200, self.stats())

    async def _handle_options(self, request: web.Request) -> web.Response:
        today = self._config.options_date or datetime.now(UTC).date()
        return _json(200, document_as_of(today))

    def _reveals(self, cluster: ClusterRecord | None, *, post: bool) -> bool:
        """Whether an answer shows passwords: never to a read-only token; for MongoDB
        only in the answer to the POST that made them."""
        if self._config.read_only_token:
            return False
        return post or cluster is None or not cluster.hides_passwords

    async def _handle_create(self, request: web.Request) -> web.Response:
        body = decode_body(await request.read(), DatabaseClusterCreate)
        now = time.monotonic()
        cluster = self.account.create(body, now, self._config)
        reveal = self._reveals(cluster, post=True)
        return _json(201, DatabaseClusterResponse(database=cluster.to_api(now, reveal=reveal)))

    async def _handle_list(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        tag = request.query.get("tag_name") or None
        clusters = self.account.listed(now, self._config, tag)
        # An empty list rather than null: the spec's schema types `databases` as an array.
        return _json(
            200,
            DatabaseClusterList(
                databases=[c.to_api(now, reveal=self._reveals(c, post=False)) for c in clusters]
            ),
        )

    async def _handle_get(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        cluster = self.account.find(request.match_info["id"], now, self._config)
        reveal = self._reveals(cluster, post=False)
        return _json(200, DatabaseClusterResponse(database=cluster.to_api(now, reveal=reveal)))

    async def _handle_delete(self, request: web.Request) -> web.Response:
        self.account.delete(request.match_info["id"], time.monotonic(), self._config)
        return web.Response(status=204)

    async def _handle_ca(self, request: web.Request) -> web.Response:
        self.account.find(request.match_info["id"], time.monotonic(), self._config)
        return _json(200, CaResponse(ca=CaCertificate(certificate=CA_CERTIFICATE_B64)))

    async def _handle_add_user(self, request: web.Request) -> web.Response:
        raw = await request.read()
        cluster_id = request.match_info["id"]
        cluster = self.account.find(cluster_id, time.monotonic(), self._config)
        if cluster_id in self._adding_users:
            # Two user creations on one cluster at once: the real API fails one with a 5xx.
            raise ApiError(500, "server_error", "Unexpected server-side error")
        self._adding_users.add(cluster_id)
        try:
            if self._config.user_create_s > 0:
                await asyncio.sleep(self._config.user_create_s)
            user = self.account.add_user(cluster_id, raw, time.monotonic(), self._config)
        finally:
            self._adding_users.discard(cluster_id)
        if not self._reveals(cluster, post=True):
            user = hidden(user)
        return _json(201, DatabaseUserResponse(user=user))

    async def _handle_list_users(self, request: web.Request) -> web.Response:
        cluster = self.account.find(request.match_info["id"], time.monotonic(), self._config)
        reveal = self._reveals(cluster, post=False)
        users = [u if reveal else hidden(u) for u in cluster.users]
        return _json(200, {"users": users})

    async def _handle_get_user(self, request: web.Request) -> web.Response:
        cluster = self.account.find(request.match_info["id"], time.monotonic(), self._config)
        user = next((u for u in cluster.users if u.name == request.match_info["user"]), None)
        if user is None:
            raise ApiError(404, "not_found", "user not found")
        if not self._reveals(cluster, post=False):
            user = hidden(user)
        return _json(200, DatabaseUserResponse(user=user))

    async def _handle_reset_auth(self, request: web.Request) -> web.Response:
        raw = await request.read()
        cluster_id, user_name = request.match_info["id"], request.match_info["user"]
        cluster = self.account.find(cluster_id, time.monotonic(), self._config)
        user = self.account.reset_password(
            cluster_id, user_name, raw, time.monotonic(), self._config
        )
        if not self._reveals(cluster, post=True):
            user = hidden(user)
        return _json(200, DatabaseUserResponse(user=user))

    async def _handle_add_database(self, request: web.Request) -> web.Response:
        raw = await request.read()
        name = self.account.add_database(
            request.match_info["id"], raw, time.monotonic(), self._config
        )
        return _json(201, DatabaseNameResponse(db=DatabaseName(name=name)))

    async def _handle_unknown(self, request: web.Request) -> web.Response:
        raise ApiError(404, "not_found", "The resource you requested could not be found.")
