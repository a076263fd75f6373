"""Consuming commands and watches: bounded prefetch, concurrent handling, clean drain.

Acks are manual. ``message.process()`` is not used on purpose: it rejects (dead-letters)
a message whose handler is cancelled at shutdown, and a shutdown is not the message's
fault. Here a handler cut short at shutdown returns its message with ``nack(requeue=True)``.

Acks of finished messages go out together (``AckBatcher``): one frame, and one settle for a
quorum queue, for many messages, where one each cost the broker and this process most of
the work of a command that needs no API call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from opentelemetry.trace import Span, SpanKind

from contracts.errors import FieldError
from service.broker.frames import take_note
from service.broker.topology import DeclaredQueue, declare_queue
from service.metrics import Consumer, ProvisionerMetrics
from service.provisioning.commands import CommandHandler, CommandOutcome
from service.provisioning.messages import (
    DUE_HEADER,
    WATCH_VERSION,
    WatchState,
    decode_stamp,
    decode_watch,
)
from service.provisioning.ports import Delivery
from service.provisioning.watch import WatchHandler, WatchOutcome
from service.tracing import context_from_headers, messaging_span

__all__ = ["AckBatcher", "CommandConsumer", "WatchConsumer", "to_delivery"]

log = structlog.get_logger(__name__)


def to_delivery(message: AbstractIncomingMessage) -> Delivery:
    """The parts of an AMQP message the domain uses (with what the frame layer noted)."""
    headers: dict[str, object] = dict(message.headers or {})
    note = take_note(headers)
    return Delivery(
        body=message.body,
        content_type=message.content_type,
        headers=headers,
        reply_to=message.reply_to,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        user_id=message.user_id,
        app_id=message.app_id,
        redelivered=bool(message.redelivered),
        unreadable=[FieldError(f"properties.{where}", why) for where, why in note.unreadable]
        if note is not None
        else [],
        truncated_from=note.body_size if note is not None else None,
    )


async def _settle(message: AbstractIncomingMessage, how: str, *, multiple: bool = False) -> None:
    # After a reconnect the delivery tag belongs to a dead channel; the broker has
    # already requeued the message, so a failed settle is only worth a log line.
    try:
        if how == "ack":
            await message.ack(multiple=multiple)
        elif how == "reject":
            await message.reject(requeue=False)
        else:
            await message.nack(requeue=True)
    except Exception as exc:
        log.info("settle_failed", how=how, error=repr(exc))


def _channel_of(message: AbstractIncomingMessage) -> object | None:
    try:
        return message.channel
    except Exception:  # closed: its deliveries are back in the queue already
        return None


def _lost(message: AbstractIncomingMessage) -> bool:
    """Whether the channel ``message`` came on is closed: the broker has put it back in the
    queue, and another consumer may have it already."""
    channel = _channel_of(message)
    return channel is None or bool(getattr(channel, "is_closed", True))


class AckBatcher:
    """Acks the finished deliveries of one consumer together, once per turn of the loop.

    Deliveries on a channel carry increasing tags. The finished ones at the front (no
    unfinished delivery before them) go as one ``ack`` with ``multiple=True``; finished ones
    behind an unfinished delivery are acked one by one at once, so that none waits for a
    slow neighbour. A message leaves the books when it is acked here or, after its own nack
    or reject went out, through ``settled``, so a multiple ack never covers a delivery in
    progress or one already settled. A new channel (after a reconnect) starts new books: the
    old deliveries are back in the queue and their acks fail harmlessly, one by one.
    """

    def __init__(self) -> None:
        self._channel: object | None = None
        # delivery tag -> the message once finished (None while it is handled), in tag order
        self._open: dict[int, AbstractIncomingMessage | None] = {}
        self._flush: asyncio.Task[None] | None = None
        self._again = False

    def delivered(self, message: AbstractIncomingMessage) -> None:
        """A delivery arrived: it is in progress until ``finished`` or ``settled``."""
        channel = _channel_of(message)
        if channel is not self._channel:
            self._channel = channel
            self._open = {}
        if message.delivery_tag is not None:
            self._open[message.delivery_tag] = None

    def settled(self, message: AbstractIncomingMessage) -> None:
        """The message was nacked or rejected on its own (the frame is out)."""
        if message.delivery_tag is not None and _channel_of(message) is self._channel:
            self._open.pop(message.delivery_tag, None)

    def finished(self, message: AbstractIncomingMessage) -> None:
        """The message is done with: ack it with the next flush."""
        tag = message.delivery_tag
        if tag is None or tag not in self._open or _channel_of(message) is not self._channel:
            self._spawn_single(message)
            return
        self._open[tag] = message
        if self._flush is None or self._flush.done():
            self._flush = asyncio.ensure_future(self._flush_all())
        else:
            self._again = True

    async def drain(self) -> None:
        """Wait until every finished message is acked."""
        while self._flush is not None and not self._flush.done():
            await asyncio.shield(self._flush)

    def _spawn_single(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.ensure_future(_settle(message, "ack"))
        _singles.add(task)
        task.add_done_callback(_singles.discard)

    async def _flush_all(self) -> None:
        await asyncio.sleep(0)  # handlers that finish in this turn join the same ack
        while True:
            self._again = False
            front, behind = self._take()
            sends = [_settle(m, "ack") for m in behind]
            if front is not None:
                sends.append(_settle(front[0], "ack", multiple=front[1] > 1))
            await asyncio.gather(*sends)
            if not self._again:
                return

    def _take(
        self,
    ) -> tuple[tuple[AbstractIncomingMessage, int] | None, list[AbstractIncomingMessage]]:
        """The last message of the finished run at the front (with the run's length), and
        the finished messages behind the first unfinished one; all off the books."""
        front: AbstractIncomingMessage | None = None
        run = 0
        behind: list[AbstractIncomingMessage] = []
        blocked = False
        for tag, message in list(self._open.items()):
            if message is None:
                blocked = True
                continue
            del self._open[tag]
            if blocked:
                behind.append(message)
            else:
                front, run = message, run + 1
        return ((front, run) if front is not None else None), behind


# Single acks in flight, held so that they are not collected before they ran.
_singles: set[asyncio.Task[None]] = set()


_CANCEL_TIMEOUT_S: Final = 2.0


class _Consumer:
    """Starts, stops and drains one queue's consumer.

    When the channel closes under it (its connection cut, its node lost), the handlers still
    working on that channel's messages are cancelled: the broker has put those messages back
    and may have given them to another replica already, and two replicas working one watch
    at once would both finish its cluster (for MongoDB, each resetting the passwords the
    other announces). Their work is done again from the redelivered copy.
    """

    name: Consumer

    def __init__(
        self,
        channel: AbstractChannel,
        queue: DeclaredQueue,
        prefetch: int,
        metrics: ProvisionerMetrics | None = None,
    ) -> None:
        self._channel = channel
        self._declared = queue
        self._prefetch = prefetch
        self._metrics = metrics
        limit = queue.arguments.get("x-delivery-limit")
        self._delivery_limit = limit if isinstance(limit, int) else None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        # handler task -> the messages it works on
        self._tasks: dict[asyncio.Task[Any], tuple[AbstractIncomingMessage, ...]] = {}
        self._acks = AckBatcher()
        channel.close_callbacks.add(self._on_channel_closed)

    @property
    def consuming(self) -> bool:
        """True while the consumer is registered with the broker."""
        return self._tag is not None

    async def start(self) -> None:
        """Register the consumer (idempotent)."""
        if self._tag is not None:
            return
        # Declared (not merely looked up) with its real arguments: a robust channel
        # restores, after a reconnect, exactly the queues and consumers declared on it.
        self._queue, _ = await declare_queue(self._channel, self._declared)
        # After the declare, which may have reopened the channel.
        await self._channel.set_qos(prefetch_count=self._prefetch)
        self._tag = await self._queue.consume(self._on_message)

    async def stop(self) -> None:
        """No new deliveries; what is in flight goes on."""
        if self._queue is not None and self._tag is not None:
            tag, self._tag = self._tag, None
            # While the broker is away a robust channel holds the cancel until it is back,
            # which can be never; a lost channel's consumer is gone already, and the robust
            # queue forgets it before sending, so a reconnect does not bring it back.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._queue.cancel(tag), _CANCEL_TIMEOUT_S)

    async def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for in-flight work; cancel the rest (their messages go
        back to the queue). Returns how many were cut short."""
        await self.stop()
        pending = set(self._tasks)
        cut = 0
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5.0)
            cut = len(still)
        try:
            await asyncio.wait_for(self._acks.drain(), timeout=5.0)
        except TimeoutError:
            # Acks that could not go out (a stalled connection): their messages come back
            # when the channel closes, which the shutdown goes on to do.
            log.warning("acks_not_drained", seconds=5.0)
        return cut

    async def _return(self, message: AbstractIncomingMessage, how: str) -> None:
        """Nack or reject one message on its own, then take it off the ack books."""
        await _settle(message, how)
        self._acks.settled(message)
        if self._metrics is None:
            return
        if how == "reject":
            self._metrics.count_dead_lettered(self._declared.name, "rejected")
        elif self._past_limit(message):
            self._metrics.count_dead_lettered(self._declared.name, "delivery_limit")

    def _past_limit(self, message: AbstractIncomingMessage) -> bool:
        """Whether returning ``message`` spends its last delivery: a quorum queue counts the
        deliveries before this one in ``x-delivery-count`` and dead-letters a message
        returned with that count at the limit."""
        if self._delivery_limit is None:
            return False
        count = (message.headers or {}).get("x-delivery-count")
        return isinstance(count, int) and count >= self._delivery_limit

    def _crashed(self) -> None:
        if self._metrics is not None:
            self._metrics.count_handler_crash(self.name)

    def _undecodable(self) -> None:
        if self._metrics is not None:
            self._metrics.count_undecodable(self.name)

    def _track(self, coro: Awaitable[None], *messages: AbstractIncomingMessage) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks[task] = messages
        task.add_done_callback(self._untrack)

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)

    def _worked(self) -> None:
        """The running handler is done with the work: what is left is settling its messages
        (whose acks may be out already) and counting, which a lost channel must not cut."""
        task = asyncio.current_task()
        if task is not None and task in self._tasks:
            self._tasks[task] = ()

    def _on_channel_closed(self, _channel: object, _exc: BaseException | None = None) -> None:
        """Cancel the handlers of messages whose channel is gone (see the class doc)."""
        stopped = [
            task
            for task, messages in self._tasks.items()
            if not task.done() and any(_lost(m) for m in messages)
        ]
        for task in stopped:
            task.cancel()
        if stopped:
            log.warning("handlers_stopped_channel_lost", consumer=self.name, handlers=len(stopped))
            if self._metrics is not None:
                self._metrics.count_handlers_stopped(self.name, len(stopped))

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        raise NotImplementedError


def _due(batch: list[tuple[AbstractIncomingMessage, WatchState]]) -> float | None:
    """The latest due time the batch's watches carry (``DUE_HEADER``), if any does."""
    due: float | None = None
    for message, _ in batch:
        # Absent or unreadable: the watch is simply looked at with a fresh list.
        stamp = decode_stamp((message.headers or {}).get(DUE_HEADER))
        if stamp is not None and (due is None or stamp > due):
            due = stamp
    return due


class CommandConsumer(_Consumer):
    """``provisioner.requests`` -> ``CommandHandler``, many commands at once."""

    name: Consumer = "commands"

    def __init__(
        self,
        channel: AbstractChannel,
        queue: DeclaredQueue,
        prefetch: int,
        handler: CommandHandler,
        on_outcome: Callable[[CommandOutcome], None] | None = None,
        metrics: ProvisionerMetrics | None = None,
    ) -> None:
        super().__init__(channel, queue, prefetch, metrics)
        self._handler = handler
        self._on_outcome = on_outcome

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._acks.delivered(message)
        self._track(self._handle(message), message)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.clear_contextvars()
        # The producer's trace, continued (OpenTelemetry messaging conventions); or a new one.
        with messaging_span(
            f"{self._declared.name} process",
            kind=SpanKind.CONSUMER,
            parent=context_from_headers(message.headers or {}),
            attributes={
                "messaging.operation.type": "process",
                "messaging.destination.name": self._declared.name,
                "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
                "messaging.message.body.size": message.body_size,
            },
        ) as span:
            await self._handle_in_span(message, span)

    async def _handle_in_span(self, message: AbstractIncomingMessage, span: Span) -> None:
        try:
            delivery = to_delivery(message)
            if delivery.unreadable:
                self._undecodable()
            outcome = await self._handler.handle(delivery)
            self._worked()
        except asyncio.CancelledError:
            await asyncio.shield(self._return(message, "requeue"))
            raise
        except Exception:
            # A bug or a broker failure mid-way: requeue; the queue's delivery limit moves
            # a message that keeps failing to the dead-letter queue instead of looping.
            log.exception("command_handler_crashed")
            self._crashed()
            await self._return(message, "requeue")
            return
        if span.is_recording():  # not without an SDK: the attributes would go nowhere
            span.set_attribute("provisioner.outcome", outcome.outcome)
            request_id = structlog.contextvars.get_contextvars().get("request_id")
            if isinstance(request_id, str):
                span.set_attribute("provisioner.request_id", request_id)
        if outcome.disposition == "ack":
            self._acks.finished(message)
        else:
            await self._return(message, outcome.disposition)
        if self._on_outcome is not None:
            self._on_outcome(outcome)


class WatchConsumer(_Consumer):
    """``provisioner.watch`` -> ``WatchHandler`` in batches, so one list call serves many."""

    name: Consumer = "watches"

    def __init__(
        self,
        channel: AbstractChannel,
        queue: DeclaredQueue,
        prefetch: int,
        handler: WatchHandler,
        *,
        trusted_user: str,
        batch_max: int,
        linger_s: float = 0.05,
        on_outcome: Callable[[WatchOutcome], None] | None = None,
        on_in_flight: Callable[[int], None] | None = None,
        metrics: ProvisionerMetrics | None = None,
    ) -> None:
        super().__init__(channel, queue, prefetch, metrics)
        self._handler = handler
        self._trusted_user = trusted_user
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._on_outcome = on_outcome
        self._on_in_flight = on_in_flight
        self._in_flight = 0
        self._buffer: list[tuple[AbstractIncomingMessage, WatchState]] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._acks.delivered(message)
        if message.user_id != self._trusted_user:
            # Only the service sends watches, with its own user_id (the broker checks it): any
            # other watch would have the service announce a cluster's credentials to whoever
            # forged it. Such a message goes to the dead-letter queue, for a person.
            log.error("watch_message_forged", user_id=(message.user_id or "")[:128])
            await self._return(message, "reject")
            return
        note = take_note(dict(message.headers or {}))
        if note is not None:
            # Only the service writes watches: one the frame layer could not hand on whole
            # (a body cut to its head, properties left out) is not one of ours.
            self._undecodable()
            log.error(
                "watch_message_unreadable",
                unreadable=[f"{where}: {why}" for where, why in note.unreadable],
                body_size=note.body_size,
            )
            await self._return(message, "reject")  # to the dead-letter queue, for a person
            return
        try:
            watch = decode_watch(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("watch_message_unreadable", error=str(exc))
            await self._return(message, "reject")  # to the dead-letter queue, for a person
            return
        if watch.v > WATCH_VERSION:
            # Written by a newer version during a rolling upgrade: it may carry what this
            # replica would drop (a recipient key); leave it to a replica that knows it.
            log.warning("watch_from_a_newer_version", v=watch.v)
            await self._return(message, "requeue")
            return
        self._buffer.append((message, watch))
        if len(self._buffer) >= self._batch_max:
            self._flush()
        elif self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self._linger_s, self._flush)

    def _flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        batch, self._buffer = self._buffer, []
        if batch:
            self._track(self._handle(batch), *(m for m, _ in batch))

    def _on_channel_closed(self, channel: object, exc: BaseException | None = None) -> None:
        # Buffered watches of the lost channel are back in the queue too: not a batch.
        self._buffer = [(m, w) for m, w in self._buffer if not _lost(m)]
        super()._on_channel_closed(channel, exc)

    async def drain(self, grace_s: float) -> int:
        """Hand buffered watches to a batch first, then drain as usual."""
        self._flush()
        return await super().drain(grace_s)

    def _count(self, delta: int) -> None:
        self._in_flight += delta
        if self._on_in_flight is not None:
            self._on_in_flight(self._in_flight)

    async def _handle(self, batch: list[tuple[AbstractIncomingMessage, WatchState]]) -> None:
        self._count(len(batch))
        try:
            await self._handle_counted(batch)
        finally:
            self._count(-len(batch))

    async def _handle_counted(
        self, batch: list[tuple[AbstractIncomingMessage, WatchState]]
    ) -> None:
        try:
            outcomes = await self._handler.handle_batch([w for _, w in batch], due=_due(batch))
            self._worked()
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.gather(*(self._return(m, "requeue") for m, _ in batch)))
            raise
        except Exception:
            log.exception("watch_batch_crashed", batch=len(batch))
            self._crashed()
            await asyncio.gather(*(self._return(m, "requeue") for m, _ in batch))
            return
        returned = []
        for (message, _), outcome in zip(batch, outcomes, strict=True):
            if outcome.outcome == "requeue":
                returned.append(self._return(message, "requeue"))
            else:
                self._acks.finished(message)
        await asyncio.gather(*returned)
        if self._on_outcome is not None:
            for outcome in outcomes:
                self._on_outcome(outcome)
