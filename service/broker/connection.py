"""Connections to a RabbitMQ cluster given as a list of node addresses.

``PROVISIONER_AMQP_URL`` may name several nodes, comma-separated (``amqp://u:p@a:5672/v,
amqp://u:p@b:5672/v``). A connection starts at one of them (shuffled by default, so that
replicas spread over the nodes) and, when that node is lost, the next attempt goes to the
next address in the list, round and round, with a backoff that grows each time the whole
list has failed and is reset by a success. Channels and consumers come back with the
connection as aio-pika's robust connection restores them: this is that class, with the
address chosen anew before each attempt.

Every place that opens a broker connection goes through :func:`connect` (robust) or
:func:`connect_once` (a short-lived one that tries each node once): the service, its reply
copies and probes, ``provisioner submit``, ``provisioner topology`` and the demo.

Why a list in the client, not a load balancer in front of the cluster: see
docs/reliability.md ("A node of the cluster lost").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections.abc import Awaitable, Sequence
from typing import Any, Final, Literal, TypeVar

import aio_pika
import structlog
from aio_pika import RobustConnection
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aiormq.exceptions import ChannelInvalidStateError
from yarl import URL

__all__ = [
    "BACKOFF_MAX_S",
    "SETUP_ERRORS",
    "ClusterConnection",
    "UrlOrder",
    "close_within",
    "connect",
    "connect_once",
    "ordered",
    "redact_url",
    "rotated",
    "split_urls",
    "within",
]

log = structlog.get_logger(__name__)

UrlOrder = Literal["shuffle", "listed"]

RECONNECT_INTERVAL_S: Final = 1.0
"""The pause before the first attempt at another node after a loss."""
BACKOFF_MAX_S: Final = 30.0
CONNECT_TIMEOUT_S: Final = 10.0

SETUP_ERRORS: Final = (TimeoutError, OSError, ChannelInvalidStateError)
"""What a broker setup (declaring, opening channels, consuming) raises when its connection is
lost or its node does not answer: reasons to start over on another node. (The connection's
own errors are ``OSError``s; a channel refusing an argument is not among them.)"""

T = TypeVar("T")


def split_urls(value: str) -> list[str]:
    """The addresses of a comma-separated ``PROVISIONER_AMQP_URL`` (blanks ignored)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def redact_url(url: str | URL) -> str:
    """The URL (or each of a comma-separated list) with its password replaced."""
    if isinstance(url, str) and "," in url:
        return ",".join(redact_url(part) for part in split_urls(url))
    parsed = URL(str(url))
    if parsed.password is None:
        return str(parsed)
    return str(parsed.with_password("***"))


def rotated(addresses: Sequence[T], shift: int) -> list[T]:
    """``addresses`` starting at the ``shift``-th (round and round)."""
    start = shift % len(addresses)
    return [*addresses[start:], *addresses[:start]]


async def within(work: Awaitable[T], timeout_s: float) -> T:
    """``work``'s result, or :class:`TimeoutError` after ``timeout_s``. Unlike
    ``asyncio.wait_for``, the bound holds even when the work does not end on cancellation
    (aio-pika's reconnect loop swallows it): the work is cancelled and left behind."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        _abandon(task)
        raise
    if task not in done:
        _abandon(task)
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    return task.result()


def _abandon(task: asyncio.Future[T]) -> None:
    task.cancel()
    # Whatever it raises on the way out is not news.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())


async def close_within(connection: AbstractConnection, timeout_s: float) -> None:
    """Close ``connection``, waiting at most ``timeout_s`` (a node cut off from its cluster
    may never answer the close); errors on the way are ignored."""
    with contextlib.suppress(Exception):
        await within(connection.close(), timeout_s)


def ordered(urls: Sequence[str], order: UrlOrder, rng: random.Random | None = None) -> list[URL]:
    """The addresses in the order they are tried: as listed, or shuffled."""
    parsed = [URL(u) for u in urls]
    if not parsed:
        raise ValueError("no broker address")
    if order == "shuffle":
        (rng or random.Random()).shuffle(parsed)
    return parsed


class ClusterConnection(RobustConnection):
    """A robust connection that moves to the next node's address after every failed attempt
    or lost connection, backing off once the whole list has failed."""

    def __init__(
        self,
        urls: Sequence[URL],
        loop: asyncio.AbstractEventLoop | None = None,
        *,
        backoff_max_s: float = BACKOFF_MAX_S,
        **kwargs: Any,
    ) -> None:
        if not urls:
            raise ValueError("no broker address")
        self.urls: tuple[URL, ...] = tuple(urls)
        self._index = 0
        self._failures = 0  # attempts failed (or connections lost) since the last success
        self._backoff_max_s = backoff_max_s
        self._interval = 0.0
        self.switches = 0  # how many times the address changed: what a test can read
        super().__init__(self.urls[0], loop=loop, **kwargs)
        self._base_interval = float(self._interval or RECONNECT_INTERVAL_S)

    # aio-pika sets and reads ``reconnect_interval`` for its pause between attempts: here it
    # grows while no node answers.
    @property
    def reconnect_interval(self) -> float:
        return self._interval

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._interval = float(value)
        self._base_interval = float(value)

    @property
    def node(self) -> str:
        """``host:port`` of the address in use (or tried next)."""
        return f"{self.url.host}:{self.url.port}"

    def _advance(self) -> None:
        self._failures += 1
        if len(self.urls) > 1:
            # Keep the password that update_secret may have changed on the current address.
            self._index = (self._index + 1) % len(self.urls)
            self.url = self.urls[self._index]
            self.switches += 1
        rounds = (self._failures - 1) // len(self.urls)
        delay = min(self._base_interval * 2**rounds, self._backoff_max_s)
        # Jitter, so that replicas cut together do not all come back in the same instant.
        self._interval = delay * random.uniform(0.75, 1.25)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        # Called when an attempt fails and when an open connection is lost: either way the
        # next attempt goes to the next node.
        if not self._close_called:
            self._advance()
            log.info("broker_switching", to=self.node, failures=self._failures)
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._failures = 0
        self._interval = self._base_interval
        if self.connection_attempt > 1:  # a reconnect, not the first connection
            log.info("broker_reconnected", node=self.node)


async def connect(
    urls: str | Sequence[str],
    *,
    order: UrlOrder = "shuffle",
    attempts: int | None = None,
    timeout_s: float = CONNECT_TIMEOUT_S,
    reconnect_interval_s: float = RECONNECT_INTERVAL_S,
    rng: random.Random | None = None,
) -> ClusterConnection:
    """A robust connection to one of ``urls`` (a list, or a comma-separated string), waiting
    with capped exponential backoff while none answers (``attempts`` bounds the number of
    addresses tried; None waits for ever)."""
    addresses = ordered(split_urls(urls) if isinstance(urls, str) else urls, order, rng)
    delay = reconnect_interval_s
    for tried in itertools.count(1):
        start = (tried - 1) % len(addresses)
        connection = ClusterConnection(
            addresses[start:] + addresses[:start], reconnect_interval=reconnect_interval_s
        )
        try:
            await connection.connect(timeout=timeout_s)
            return connection
        except asyncio.CancelledError:
            # Cancelled mid-attempt (a SIGTERM during the start): its reconnect loop, which
            # ignores cancellation, would otherwise keep connecting, and the process alive.
            await _discard(connection)
            raise
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            await _discard(connection)
            if attempts is not None and tried >= attempts:
                raise
            # Every node once without a pause; then the pause doubles after each round.
            pause = delay if tried % len(addresses) == 0 else 0.0
            log.warning(
                "broker_unreachable",
                url=redact_url(addresses[start]),
                retry_in_s=pause,
                error=repr(exc),
            )
            await asyncio.sleep(pause)
            if pause:
                delay = min(delay * 2, BACKOFF_MAX_S)
    raise AssertionError("unreachable")


async def connect_once(
    urls: str | Sequence[str], *, order: UrlOrder = "shuffle", timeout_s: float = CONNECT_TIMEOUT_S
) -> AbstractConnection:
    """A plain (not robust) connection to the first of ``urls`` that answers, each tried
    once; the last error if none does."""
    addresses = ordered(split_urls(urls) if isinstance(urls, str) else urls, order)
    error: BaseException | None = None
    for url in addresses:
        try:
            return await aio_pika.connect(url, timeout=timeout_s)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            error = exc
    assert error is not None
    raise error


async def _discard(connection: AbstractRobustConnection) -> None:
    # It never opened: nothing to keep, and nothing worth waiting long for.
    await close_within(connection, CONNECT_TIMEOUT_S)
