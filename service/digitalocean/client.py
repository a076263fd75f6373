"""The DigitalOcean Databases API over aiohttp: calls, retries, rate limiting, typed errors.

One ``aiohttp.ClientSession`` per client; every request first takes a slot from the
process-wide :class:`~service.digitalocean.ratelimit.RateLimiter` and reports its answer's
rate-limit headers back to it. Calls that are safe to send twice (GET, DELETE) are retried on
5xx, 429 and transport failures; POSTs never are (see ``create_cluster``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final, Self, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import msgspec
import structlog
from opentelemetry.trace import Status, StatusCode
from yarl import URL

from contracts.digitalocean import (
    CaCertificate,
    CaResponse,
    DatabaseCluster,
    DatabaseClusterCreate,
    DatabaseClusterList,
    DatabaseClusterResponse,
    DatabaseCreate,
    DatabaseName,
    DatabaseNameResponse,
    DatabaseOptions,
    DatabaseUser,
    DatabaseUserCreate,
    DatabaseUserResponse,
)
from service import __version__
from service.digitalocean.errors import (
    AmbiguousCreate,
    ApiError,
    NotFound,
    RateLimited,
    ResponseDecodeError,
    ServerError,
    TransportError,
    error_from_response,
)
from service.digitalocean.list_reader import ClusterListReader
from service.digitalocean.ratelimit import RateLimiter, RateLimitTimeout
from service.digitalocean.retry import RetryPolicy
from service.digitalocean.scan import ClusterScan
from service.digitalocean.urls import check_base_url, path_segment
from service.tracing import client_span

__all__ = [
    "DEFAULT_RETRY",
    "TRANSPORT_ERROR",
    "CallObserver",
    "DigitalOceanClient",
    "default_user_agent",
]

log = structlog.get_logger(__name__)

CallObserver = Callable[[str, str, float], None]
"""Called after every HTTP attempt with (operation, status such as "201" or
"transport_error", seconds); the service feeds its Prometheus metrics from it."""

DEFAULT_RETRY: Final = RetryPolicy()
"""The retry policy a client gets unless told otherwise."""

TRANSPORT_ERROR: Final = "transport_error"
"""The status reported to a ``CallObserver`` when no response came back."""

T = TypeVar("T")

_ENCODER: Final = msgspec.json.Encoder()
_CLUSTER: Final = msgspec.json.Decoder(DatabaseClusterResponse)
_CLUSTERS: Final = msgspec.json.Decoder(DatabaseClusterList)
_OPTIONS: Final = msgspec.json.Decoder(DatabaseOptions)
_CA: Final = msgspec.json.Decoder(CaResponse)
_USER: Final = msgspec.json.Decoder(DatabaseUserResponse)
_DB: Final = msgspec.json.Decoder(DatabaseNameResponse)


def default_user_agent() -> str:
    """``do-db-provisioner/<version> aiohttp/<version>``."""
    return f"do-db-provisioner/{__version__} aiohttp/{aiohttp.__version__}"


def _check_token(token: str) -> None:
    # Whitespace or control characters would break (or inject into) the header.
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError("the DigitalOcean token must be a non-empty string without whitespace")


class _Reply(msgspec.Struct, frozen=True):
    """One HTTP answer, read to the end."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    hold_s: float | None
    """The 429 hold the limiter applied, if this was a 429."""
    streamed: ClusterListReader | None = None
    """For a scan answered 200: the reader the body went to (``body`` is then empty)."""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class DigitalOceanClient:
    """Async client of the Databases endpoints of the DigitalOcean API.

    ``limiter``: share one :class:`RateLimiter` between every client of the process (a
    client given none gets its own, with DigitalOcean's default budget). ``user_agent``
    replaces :func:`default_user_agent`. Use as ``async with DigitalOceanClient(...) as do:``
    or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        limiter: RateLimiter | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        connect_timeout_s: float = 10.0,
        total_timeout_s: float = 30.0,
        observer: CallObserver | None = None,
        user_agent: str | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url)
        _check_token(token)
        if connect_timeout_s <= 0 or total_timeout_s <= 0:
            raise ValueError("DigitalOceanClient timeouts must be positive")
        self._token = token
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.retry = retry
        self.user_agent = user_agent or default_user_agent()
        self._timeout = aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=connect_timeout_s)
        self._observer = observer
        self._server = urlsplit(self.base_url).hostname or ""
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"DigitalOceanClient(base_url={self.base_url!r})"

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the HTTP session (calls open it on first use otherwise)."""
        self._ensure_session()

    async def close(self) -> None:
        """Close the HTTP session; the client cannot be used afterwards."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("this DigitalOceanClient is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={
                    "Authorization": f"Bearer {self._token}",
                    "Accept": "application/json",
                    "User-Agent": self.user_agent,
                },
                timeout=self._timeout,
            )
        return self._session

    # --- the calls --------------------------------------------------------------------------

    async def create_cluster(self, body: DatabaseClusterCreate) -> DatabaseCluster:
        """``POST /v2/databases`` with exactly ``body``; the new cluster is ``creating``.

        Raises :class:`AmbiguousCreate` when the cluster may exist without our knowing it,
        :class:`RateLimited` on a 429 (nothing was created), other errors by type.
        """
        # Never replayed here: a create whose answer was lost may have created the cluster, and
        # sending it again could make a second billed cluster or get a 422 "name taken" for
        # our own cluster. AmbiguousCreate lets the service look the cluster up by name first.
        operation = "create_cluster"
        try:
            # Urgent: a create starts the creation delay, so it goes first when the budget
            # is scarce (see RateLimiter).
            reply = await self._exchange(
                operation, "POST", "/v2/databases", body=_ENCODER.encode(body), urgent=True
            )
        except TransportError as exc:
            if not exc.maybe_sent:
                raise  # the connection was never made: nothing can have been created
            log.warning(
                "digitalocean.create_ambiguous", operation=operation, cluster_name=body.name
            )
            raise AmbiguousCreate(
                operation=operation,
                message=f"no answer after the request was sent ({exc.message})",
                cluster_name=body.name,
            ) from exc
        if not reply.ok:
            error = self._error(operation, reply)
            if isinstance(error, ServerError):
                log.warning(
                    "digitalocean.create_ambiguous",
                    operation=operation,
                    cluster_name=body.name,
                    status=error.status,
                )
                raise AmbiguousCreate(
                    operation=operation,
                    message=error.message,
                    cluster_name=body.name,
                    status=error.status,
                    id=error.id,
                    request_id=error.request_id,
                ) from error
            raise error
        try:
            return self._decode(operation, reply, _CLUSTER).database
        except ResponseDecodeError as exc:
            # DigitalOcean said 2xx, so the cluster exists; finding it by name is the way on.
            raise AmbiguousCreate(
                operation=operation,
                message=f"created, but {exc.message}",
                cluster_name=body.name,
                status=reply.status,
                request_id=exc.request_id,
            ) from exc

    async def get_cluster(self, cluster_id: str) -> DatabaseCluster:
        """``GET /v2/databases/{cluster_id}`` (retried)."""
        operation = "get_cluster"
        reply = await self._idempotent(
            operation, "GET", f"/v2/databases/{path_segment(cluster_id)}"
        )
        return self._decode(operation, reply, _CLUSTER).database

    async def list_clusters(self, tag_name: str | None = None) -> list[DatabaseCluster]:
        """``GET /v2/databases``, only the clusters tagged ``tag_name`` if given (retried)."""
        operation = "list_clusters"
        path = "/v2/databases"
        if tag_name is not None:
            path += "?" + urlencode({"tag_name": tag_name}, quote_via=quote)
        # Urgent: one list answers every due watch at once (see RateLimiter).
        reply = await self._idempotent(operation, "GET", path, urgent=True)
        return self._decode(operation, reply, _CLUSTERS).databases or []

    async def scan_clusters(
        self,
        tag_name: str | None = None,
        *,
        tag_prefix: str | None = None,
        full: Callable[[str, str | None], bool] | None = None,
        count_prefix: str | None = None,
    ) -> ClusterScan:
        """``GET /v2/databases`` read lean (retried), for following many clusters.

        Returns every listed cluster's status, the tags that start with ``tag_prefix``, and in
        full only the clusters for which ``full(id, status)`` is true; for each tag that
        starts with ``count_prefix``, how many ``creating`` clusters carry it. The body is
        parsed while it arrives, so memory holds one chunk and the index, not the megabytes
        that thousands of clusters make; nothing but the chosen clusters' details (passwords
        included) is ever decoded.
        """
        operation = "list_clusters"
        path = "/v2/databases"
        if tag_name is not None:
            path += "?" + urlencode({"tag_name": tag_name}, quote_via=quote)
        wanted = full if full is not None else _nothing_in_full

        def reader() -> ClusterListReader:
            return ClusterListReader(tag_prefix, wanted, count_prefix)

        # Urgent: one list answers every due watch at once (see RateLimiter).
        reply = await self._idempotent(operation, "GET", path, urgent=True, stream=reader)
        streamed = reply.streamed
        if streamed is None:  # a 2xx other than 200: read as it came
            streamed = reader()
            streamed.feed(reply.body)
        try:
            return streamed.result()
        except msgspec.DecodeError as exc:
            raise self._decode_error(operation, reply, exc) from None

    async def get_options(self) -> DatabaseOptions:
        """``GET /v2/databases/options``: engines, regions, versions, sizes (retried)."""
        operation = "get_options"
        reply = await self._idempotent(operation, "GET", "/v2/databases/options")
        return self._decode(operation, reply, _OPTIONS)

    async def get_ca(self, cluster_id: str) -> CaCertificate:
        """``GET /v2/databases/{cluster_id}/ca`` (retried)."""
        operation = "get_ca"
        path = f"/v2/databases/{path_segment(cluster_id)}/ca"
        reply = await self._idempotent(operation, "GET", path)
        return self._decode(operation, reply, _CA).ca

    async def add_user(self, cluster_id: str, user: DatabaseUserCreate) -> DatabaseUser:
        """``POST /v2/databases/{cluster_id}/users``; not retried (a replay could get a 422)."""
        operation = "add_user"
        path = f"/v2/databases/{path_segment(cluster_id)}/users"
        reply = await self._exchange(operation, "POST", path, body=_ENCODER.encode(user))
        if not reply.ok:
            raise self._error(operation, reply)
        return self._decode(operation, reply, _USER).user

    async def reset_auth(self, cluster_id: str, user_name: str) -> DatabaseUser:
        """``POST /v2/databases/{cluster_id}/users/{user_name}/reset_auth``: the user with a
        new password (for MongoDB the only way to learn one after the POST that made it).
        Not retried: each reset makes another password."""
        operation = "reset_auth"
        path = (
            f"/v2/databases/{path_segment(cluster_id)}/users/{path_segment(user_name)}/reset_auth"
        )
        reply = await self._exchange(operation, "POST", path, body=b"{}")
        if not reply.ok:
            raise self._error(operation, reply)
        return self._decode(operation, reply, _USER).user

    async def add_database(self, cluster_id: str, name: str) -> DatabaseName:
        """``POST /v2/databases/{cluster_id}/dbs``; not retried (a replay could get a 422)."""
        operation = "add_database"
        path = f"/v2/databases/{path_segment(cluster_id)}/dbs"
        body = _ENCODER.encode(DatabaseCreate(name=name))
        reply = await self._exchange(operation, "POST", path, body=body)
        if not reply.ok:
            raise self._error(operation, reply)
        return self._decode(operation, reply, _DB).db

    async def delete_cluster(self, cluster_id: str) -> None:
        """``DELETE /v2/databases/{cluster_id}`` (retried).

        A 404 after an attempt that may have gone through counts as done: that attempt
        deleted it. A 404 on the first attempt raises :class:`NotFound`.
        """
        operation = "delete_cluster"
        path = f"/v2/databases/{path_segment(cluster_id)}"
        await self._idempotent(operation, "DELETE", path, absent_means_done=True)

    # --- machinery ----------------------------------------------------------------------------

    async def _idempotent(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        absent_means_done: bool = False,
        urgent: bool = False,
        stream: Callable[[], ClusterListReader] | None = None,
    ) -> _Reply:
        """Send a request that is safe to repeat, retrying 5xx, 429 and transport failures."""
        policy = self.retry
        deadline = time.monotonic() + policy.max_total_s
        maybe_applied = False
        for attempt in range(1, policy.max_attempts + 1):
            error: ApiError
            try:
                reply = await self._exchange(
                    operation,
                    method,
                    path,
                    max_wait_s=deadline - time.monotonic(),
                    urgent=urgent,
                    stream=stream,
                )
            except TransportError as exc:
                error = exc
                maybe_applied = maybe_applied or exc.maybe_sent
            else:
                if reply.ok:
                    return reply
                error = self._error(operation, reply)
                if absent_means_done and maybe_applied and isinstance(error, NotFound):
                    return reply
                maybe_applied = maybe_applied or isinstance(error, ServerError)
            # Local refusals (status None) already waited as long as the call may.
            retryable = isinstance(error, ServerError | TransportError) or (
                isinstance(error, RateLimited) and error.status == 429
            )
            if not retryable or attempt >= policy.max_attempts:
                raise error
            delay = policy.delay_s(attempt - 1)
            if isinstance(error, RateLimited):
                delay = max(delay, error.retry_after_s)
            if time.monotonic() + delay > deadline:
                raise error
            log.info(
                "digitalocean.retry",
                operation=operation,
                status=error.status if error.status is not None else TRANSPORT_ERROR,
                attempt=attempt,
                delay_s=round(delay, 3),
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _exchange(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        max_wait_s: float | None = None,
        urgent: bool = False,
        stream: Callable[[], ClusterListReader] | None = None,
    ) -> _Reply:
        """One HTTP attempt as a client span of the current trace (the rate limiter's wait
        included), with DigitalOcean's ``x-request-id`` on it."""
        with client_span(
            f"{method} {operation}",
            {
                "http.request.method": method,
                "server.address": self._server,
                "url.path": path.split("?", 1)[0],
                "provisioner.operation": operation,
            },
        ) as span:
            reply = await self._exchange_once(
                operation,
                method,
                path,
                body=body,
                max_wait_s=max_wait_s,
                urgent=urgent,
                stream=stream,
            )
            span.set_attribute("http.response.status_code", reply.status)
            request_id = _header(reply.headers, "x-request-id")
            if request_id is not None:
                span.set_attribute("digitalocean.request_id", request_id)
            if reply.status >= 400:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {reply.status}"))
            return reply

    async def _exchange_once(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        max_wait_s: float | None = None,
        urgent: bool = False,
        stream: Callable[[], ClusterListReader] | None = None,
    ) -> _Reply:
        """One HTTP attempt through the rate limiter; raises only ``TransportError`` or a
        local ``RateLimited``; any HTTP status comes back as a reply. With ``stream``, a 200
        body goes chunk by chunk to a new reader instead of into memory."""
        session = self._ensure_session()
        url = URL(self.base_url + path, encoded=True)
        headers = {"Content-Type": "application/json"} if body is not None else None
        wait_s = self.retry.max_total_s if max_wait_s is None else max_wait_s
        try:
            await self.limiter.acquire(max_wait_s=wait_s, urgent=urgent)
        except RateLimitTimeout as exc:
            raise RateLimited(
                operation=operation,
                status=None,
                message="the process's rate-limit budget has no free slot in time",
                retry_after_s=exc.wait_s,
            ) from None
        started = time.monotonic()
        try:
            async with session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                response_headers = response.headers
                streamed: ClusterListReader | None = None
                payload = b""
                if stream is not None and status == 200:
                    streamed = stream()
                    async for chunk in response.content.iter_any():
                        streamed.feed(chunk)
                else:
                    payload = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._notify(operation, TRANSPORT_ERROR, time.monotonic() - started)
            raise TransportError(
                operation=operation,
                message=self._describe_transport(exc),
                maybe_sent=_maybe_sent(exc),
            ) from exc
        finally:
            self.limiter.release()
        hold_s = self.limiter.observe(response_headers, status)
        self._notify(operation, str(status), time.monotonic() - started)
        return _Reply(
            status=status,
            body=payload,
            headers=response_headers,
            hold_s=hold_s,
            streamed=streamed,
        )

    def _notify(self, operation: str, status: str, seconds: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer(operation, status, seconds)
        except Exception as exc:
            # Metrics must never fail a provisioning call.
            log.warning("digitalocean.observer_failed", error=type(exc).__name__)

    def _decode(self, operation: str, reply: _Reply, decoder: msgspec.json.Decoder[T]) -> T:
        try:
            return decoder.decode(reply.body)
        except msgspec.DecodeError as exc:
            raise self._decode_error(operation, reply, exc) from None

    def _decode_error(
        self, operation: str, reply: _Reply, exc: msgspec.DecodeError
    ) -> ResponseDecodeError:
        # msgspec names the path and the expected type, never a value of a string field,
        # so no password from the body can end up in the message.
        return ResponseDecodeError(
            operation=operation,
            status=reply.status,
            message=f"the response body does not decode: {self._scrub(str(exc))}",
            request_id=_header(reply.headers, "x-request-id"),
        )

    def _error(self, operation: str, reply: _Reply) -> ApiError:
        """The typed error for a non-2xx reply."""
        hold = reply.hold_s if reply.hold_s is not None else self.limiter.fallback_hold_s
        return error_from_response(
            operation,
            reply.status,
            reply.body,
            reply.headers,
            retry_after_s=hold,
            secret=self._token,
        )

    def _describe_transport(self, exc: BaseException) -> str:
        text = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else "connection failed")
        return self._scrub(f"{type(exc).__name__}: {text}")

    def _scrub(self, text: str) -> str:
        # Defence in depth: nothing we are given should echo the token, but never pass it on.
        return text.replace(self._token, "***")


def _nothing_in_full(cluster_id: str, status: str | None) -> bool:
    return False


def _maybe_sent(exc: BaseException) -> bool:
    """False only when the connection was never made, so the request never left."""
    return not isinstance(
        exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError | aiohttp.InvalidURL
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value if value else None
