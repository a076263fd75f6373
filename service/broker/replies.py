"""Copies of a request's events to the queue its producer named in ``reply_to``.

A reply-to name comes from the producer, so publishing to it is publishing where a stranger
points. Three things follow:

* Copies go out on a connection of their own. RabbitMQ 3.10 closes the whole connection
  (``INTERNAL_ERROR``) when a message is published to a Direct Reply-to name
  (``amq.rabbitmq.reply-to.<pid>.<key>``) whose pid names a node it does not know, and a
  producer can put any such name in ``reply_to``: on the service's main connection that would
  take a replica off the broker, its consumers and its in-flight work with it.
* A Direct Reply-to name is checked before use: it must decode exactly as the broker writes it
  (base64 of an Erlang pid: its tag, the node's name as a UTF-8 atom, then its numbers, and
  nothing more: other shapes are what kill the connection). The first copy to each broker node
  it names goes out on a disposable probe connection; a node that answers is trusted from then
  on (a cluster has a few), one whose probe the broker closes with ``INTERNAL_ERROR`` is refused
  for a while. Each producer starts at most one probe per ``PROBE_EVERY_S``; copies to a node
  being probed wait for its verdict, and a copy that may not start a probe is dropped. So a
  forged name costs at most a probe connection now and then, never the copies of other
  producers.
* Copies are best effort: the events exchange is where a request's events are certain to be;
  a copy that cannot be delivered is logged and counted, and never fails the request.

A copy the broker does not confirm in time is sent again, up to ``COPY_ATTEMPTS`` times in
all and within ``COPY_BUDGET_TIMEOUTS`` publish timeouts: a node cut off from the rest of its
cluster still accepts connections and publishes but confirms nothing until it pauses, so after
a timeout the copies move to a fresh connection that starts at the next address. A copy sent
again may arrive twice; consumers drop the second by its event id, as they do for every event.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Final

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustChannel
from aiormq.exceptions import ConnectionInternalError
from yarl import URL

from service.broker.connection import (
    ClusterConnection,
    UrlOrder,
    close_within,
    connect,
    connect_once,
    ordered,
    rotated,
    split_urls,
    within,
)
from service.metrics import ReplyOutcome

__all__ = ["DIRECT_REPLY_PREFIX", "ReplyCopies", "ReplyOutcome", "direct_reply_node"]

log = structlog.get_logger(__name__)

DIRECT_REPLY_PREFIX: Final = "amq.rabbitmq.reply-to."
# A node that killed a probe is refused this long; then it may be probed again.
REFUSED_FOR_S: Final = 600.0
# Bounds of what is remembered: a cluster has a handful of nodes; forged names are endless.
KNOWN_NODES: Final = 64
REFUSED_NODES: Final = 1024
# How often one producer may have a node probed (its first copies to a new node).
PROBE_EVERY_S: Final = 10.0
PROBERS: Final = 4096
# As the main connection's: after a cut, copies wait for the channel at most a publish timeout.
RECONNECT_INTERVAL_S: Final = 1.0
# Sends of one copy, the first included; each waits at most a publish timeout for its confirm.
COPY_ATTEMPTS: Final = 4
# All the sends of one copy, and the switches between them, end within this many publish
# timeouts: a copy is sent while its command is still unacked.
COPY_BUDGET_TIMEOUTS: Final = 3
# Before the next send after a refusal (a nack while the queue's leader is being elected, a cut
# connection): the first pause; it doubles after each, within the budget.
COPY_RETRY_PAUSE_S: Final = 0.25

# Erlang's external term format: a pid is tagged 'g' (PID_EXT: then 9 bytes of numbers) or 'X'
# (NEW_PID_EXT: 12 bytes) and starts with its node's name as a UTF-8 atom, 'v' (2-byte length)
# or 'w' (1-byte length). Other shapes make RabbitMQ 3.10 close the connection.
_VERSION: Final = 131
_PID_TAIL: Final = {ord("g"): 9, ord("X"): 12}
_ATOM_WIDTH: Final = {ord("v"): 2, ord("w"): 1}


def direct_reply_node(reply_to: str) -> str | None:
    """The broker node a Direct Reply-to name points at (``reply@<hash>`` as RabbitMQ 3.10
    writes it, or a node name), or None when ``reply_to`` is not one the broker could have
    written."""
    if not reply_to.startswith(DIRECT_REPLY_PREFIX):
        return None
    encoded, dot, key = reply_to[len(DIRECT_REPLY_PREFIX) :].partition(".")
    if not dot or not key or not encoded:
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 4 or raw[0] != _VERSION or raw[1] not in _PID_TAIL:
        return None
    width = _ATOM_WIDTH.get(raw[2])
    if width is None or len(raw) < 3 + width:
        return None
    length = int.from_bytes(raw[3 : 3 + width], "big")
    name = raw[3 + width : 3 + width + length]
    if len(raw) != 3 + width + length + _PID_TAIL[raw[1]] or b"@" not in name:
        return None
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        return None


class ReplyCopies:
    """Sends reply copies on connections of their own (see the module docstring)."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        timeout_s: float,
        order: UrlOrder = "shuffle",
        refuse: Collection[str] = (),
        refuse_prefixes: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
        observer: Callable[[ReplyOutcome], None] | None = None,
        on_retry: Callable[[], None] | None = None,
        attempts: int = COPY_ATTEMPTS,
        pause: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._urls = split_urls(urls) if isinstance(urls, str) else list(urls)
        self._order: UrlOrder = order
        # Shuffled (or not) once: a fresh connection starts at the address after the last.
        self._addresses = [str(u) for u in ordered(self._urls, order)]
        self._start = 0
        self._attempts = max(1, attempts)
        self._on_retry = on_retry
        self._generation = 0  # bumped at each fresh connection
        self._switching = asyncio.Lock()
        self._retired: set[asyncio.Task[None]] = set()
        self._timeout_s = timeout_s
        # Every attempt of one copy together, switches included: the copy is sent while its
        # command is held unacked, so it may cost that command a few timeouts, never minutes.
        self._budget_s = COPY_BUDGET_TIMEOUTS * timeout_s
        self._closed = False
        self._refuse = frozenset(refuse)
        self._refuse_prefixes = refuse_prefixes
        self._clock = clock
        self._pause = pause  # the wait after a refusal (a test hands in its own)
        self._observer = observer
        self._connection: ClusterConnection | None = None
        self._channel: AbstractChannel | None = None  # strong reference: a robust channel
        self._known: OrderedDict[str, None] = OrderedDict()
        self._refused: OrderedDict[str, float] = OrderedDict()
        self._probed_for: OrderedDict[str, float] = OrderedDict()  # producer -> last probe
        self._probing: dict[str, asyncio.Future[ReplyOutcome]] = {}  # node -> its probe
        self.probes = 0  # probe connections opened: a budget a test can read

    async def start(self) -> None:
        """Open the connection the copies go out on."""
        # The same failover over the cluster's nodes as the main connection.
        self._connection = await connect(
            self._rotated(), order="listed", reconnect_interval_s=RECONNECT_INTERVAL_S
        )
        self._channel = await self._connection.channel(publisher_confirms=True)

    async def close(self) -> None:
        """Close it (and any connection a switch left behind)."""
        self._closed = True
        if self._connection is not None:
            await close_within(self._connection, self._timeout_s)
        if self._retired:
            await asyncio.wait(self._retired, timeout=self._timeout_s)

    @property
    def node(self) -> str | None:
        """``host:port`` of the address the copies go out through now."""
        connection = self._connection
        return None if connection is None else f"{connection.url.host}:{connection.url.port}"

    def _rotated(self) -> list[str]:
        return rotated(self._addresses, self._start)

    async def _switch(self, generation: int) -> None:
        """A fresh connection and channel, starting at the address after the one in use; the
        old connection is closed in the background. Copies that timed out together switch
        once."""
        async with self._switching:
            if generation != self._generation or len(self._addresses) < 2:
                return
            old = self._connection
            if old is not None:
                current = str(old.url.with_password(None).with_user(None))
                for i, address in enumerate(self._addresses):
                    if str(URL(address).with_password(None).with_user(None)) == current:
                        self._start = i
            self._start += 1
            try:
                fresh = await connect(
                    self._rotated(),
                    order="listed",
                    attempts=len(self._addresses),
                    timeout_s=self._timeout_s,
                    reconnect_interval_s=RECONNECT_INTERVAL_S,
                )
            except Exception as exc:
                log.warning("reply_copies_switch_failed", error=repr(exc))
                return
            try:
                channel = await within(fresh.channel(publisher_confirms=True), self._timeout_s)
            except BaseException as exc:  # cancelled too: the fresh connection must not linger
                self._retire(fresh)
                if not isinstance(exc, Exception):
                    raise
                log.warning("reply_copies_switch_failed", error=repr(exc))
                return
            if self._closed:  # closed while switching: nothing may outlive close()
                self._retire(fresh)
                return
            self._connection, self._channel = fresh, channel
            self._generation += 1
            log.info("reply_copies_switched", to=self.node)
            if old is not None:
                self._retire(old)

    def _retire(self, connection: AbstractConnection) -> None:
        """Close ``connection`` in the background (``close`` waits for it)."""
        retired = asyncio.create_task(close_within(connection, self._timeout_s))
        self._retired.add(retired)
        retired.add_done_callback(self._retired.discard)

    async def send(
        self, message: aio_pika.Message, reply_to: str, producer: str | None = None
    ) -> ReplyOutcome:
        """Copy ``message`` to ``reply_to`` for ``producer``; never raises."""
        outcome = await self._send(message, reply_to, producer or "")
        if self._observer is not None:
            self._observer(outcome)
        return outcome

    async def _send(self, message: aio_pika.Message, reply_to: str, producer: str) -> ReplyOutcome:
        if reply_to in self._refuse or reply_to.startswith(self._refuse_prefixes):
            # A producer must not make the service feed its own queues (or put credentials
            # into them): the broadcast copy is all such a request gets.
            log.warning("reply_to_refused", reply_to=reply_to[:128], reason="service queue")
            return "refused"
        node = None
        if reply_to.startswith(DIRECT_REPLY_PREFIX):
            node = direct_reply_node(reply_to)
            if node is None:
                log.warning("reply_to_refused", reply_to=reply_to[:128], reason="malformed")
                return "refused"
            if self._is_refused(node):
                log.warning("reply_to_refused", reply_to=reply_to[:128], reason="unknown node")
                return "refused"
            if node not in self._known:
                return await self._probe(message, reply_to, node, producer)
        return await self._send_retried(message, reply_to)

    async def _send_retried(self, message: aio_pika.Message, reply_to: str) -> ReplyOutcome:
        """Send until the broker confirms, ``attempts`` times at most and within the copy's
        budget. A cut connection is waited for (the robust channel comes back); a missing
        confirm moves the copies to a fresh connection first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._budget_s
        for attempt in range(1, self._attempts + 1):
            generation = self._generation
            try:
                await within(self._attempt(message, reply_to), deadline - loop.time())
            except Exception as exc:
                if attempt == self._attempts or loop.time() >= deadline:
                    log.warning(
                        "reply_copy_failed",
                        reply_to=reply_to[:128],
                        attempts=attempt,
                        error=repr(exc),
                    )
                    return "failed"
                log.info(
                    "reply_copy_retried",
                    reply_to=reply_to[:128],
                    attempt=attempt,
                    node=self.node,
                    error=repr(exc),
                )
                if self._on_retry is not None:
                    self._on_retry()
                if isinstance(exc, TimeoutError):
                    with contextlib.suppress(TimeoutError):
                        await within(self._switch(generation), deadline - loop.time())
                else:
                    # A refusal comes back at once; a queue between two leaders refuses for
                    # about a second, so the next send waits (all within the budget).
                    pause = COPY_RETRY_PAUSE_S * 2 ** (attempt - 1)
                    await self._pause(max(0.0, min(pause, deadline - loop.time())))
                continue
            return "sent"
        raise AssertionError("unreachable")

    async def _attempt(self, message: aio_pika.Message, reply_to: str) -> None:
        await self._ready()
        await self._publish(self._channel, message, reply_to)

    async def _ready(self) -> None:
        """Wait (at most the timeout) while the robust channel is being restored."""
        channel = self._channel
        if channel is not None and channel.is_closed and isinstance(channel, AbstractRobustChannel):
            await within(channel.ready(), self._timeout_s)

    async def _probe(
        self, message: aio_pika.Message, reply_to: str, node: str, producer: str
    ) -> ReplyOutcome:
        """The first copy to ``node``, on a connection of its own made for it. Copies to a node
        whose probe is under way wait for its verdict; a producer starts at most one probe per
        ``PROBE_EVERY_S`` (a flood of forged nodes must not cost a connection each), and a copy
        that may not start one is dropped."""
        pending = self._probing.get(node)
        if pending is None:
            now = self._clock()
            last = self._probed_for.get(producer)
            if last is not None and now - last < PROBE_EVERY_S:
                log.warning("reply_copy_dropped", reply_to=reply_to[:128], reason="probe budget")
                return "refused"
            self._probed_for[producer] = now
            self._probed_for.move_to_end(producer)
            while len(self._probed_for) > PROBERS:
                self._probed_for.popitem(last=False)
            pending = asyncio.ensure_future(self._probe_with(message, reply_to, node))
            self._probing[node] = pending
            pending.add_done_callback(lambda _: self._probing.pop(node, None))
            return await asyncio.shield(pending)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(pending), self._timeout_s)
        if node in self._known:
            return await self._send(message, reply_to, producer)
        return "refused"

    async def _probe_with(
        self, message: aio_pika.Message, reply_to: str, node: str
    ) -> ReplyOutcome:
        self.probes += 1
        try:
            connection = await connect_once(self._urls, order=self._order)
        except Exception as exc:
            log.warning("reply_copy_failed", reply_to=reply_to[:128], error=repr(exc))
            return "failed"
        try:
            channel = await connection.channel(publisher_confirms=True)
            await self._publish(channel, message, reply_to)
            # The broker handles the copy before it answers the next frame: a node it cannot
            # find has closed the connection by then.
            await asyncio.wait_for(channel.set_qos(prefetch_count=0), self._timeout_s)
        except ConnectionInternalError:
            self._refused[node] = self._clock()
            while len(self._refused) > REFUSED_NODES:
                self._refused.popitem(last=False)
            log.warning(
                "reply_to_refused",
                reply_to=reply_to[:128],
                reason="the broker does not know its node",
            )
            return "refused"
        except Exception as exc:
            # A slow or restarting broker, an alarm: nothing learnt about the node.
            log.warning("reply_copy_failed", reply_to=reply_to[:128], error=repr(exc))
            return "failed"
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
        self._known[node] = None
        while len(self._known) > KNOWN_NODES:
            self._known.popitem(last=False)
        return "sent"

    def _is_refused(self, node: str) -> bool:
        since = self._refused.get(node)
        if since is None:
            return False
        if self._clock() - since >= REFUSED_FOR_S:
            del self._refused[node]
            return False
        return True

    async def _publish(
        self, channel: AbstractChannel | None, message: aio_pika.Message, reply_to: str
    ) -> None:
        if channel is None:
            raise RuntimeError("reply copies are not started")
        await channel.default_exchange.publish(
            message, reply_to, mandatory=False, timeout=self._timeout_s
        )
