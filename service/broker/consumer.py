"""Consuming commands and watches: bounded prefetch, concurrent handling, clean drain.

Acks are manual. ``message.process()`` is not used on purpose: it rejects (dead-letters)
a message whose handler is cancelled at shutdown, and a shutdown is not the message's
fault. Here a handler cut short at shutdown returns its message with ``nack(requeue=True)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from service.broker.topology import DeclaredQueue
from service.provisioning.commands import CommandHandler, CommandOutcome
from service.provisioning.messages import WatchState, decode_watch
from service.provisioning.ports import Delivery
from service.provisioning.watch import WatchHandler, WatchOutcome

__all__ = ["CommandConsumer", "WatchConsumer", "to_delivery"]

log = structlog.get_logger(__name__)


def to_delivery(message: AbstractIncomingMessage) -> Delivery:
    """The parts of an AMQP message the domain uses."""
    return Delivery(
        body=message.body,
        content_type=message.content_type,
        headers=dict(message.headers or {}),
        reply_to=message.reply_to,
        correlation_id=message.correlation_id,
        message_id=message.message_id,
        redelivered=bool(message.redelivered),
    )


async def _settle(message: AbstractIncomingMessage, how: str) -> None:
    # After a reconnect the delivery tag belongs to a dead channel; the broker has
    # already requeued the message, so a failed settle is only worth a log line.
    try:
        if how == "ack":
            await message.ack()
        elif how == "reject":
            await message.reject(requeue=False)
        else:
            await message.nack(requeue=True)
    except Exception as exc:
        log.info("settle_failed", how=how, error=repr(exc))


class _Consumer:
    """Starts, stops and drains one queue's consumer."""

    def __init__(self, channel: AbstractChannel, queue: DeclaredQueue, prefetch: int) -> None:
        self._channel = channel
        self._declared = queue
        self._prefetch = prefetch
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def consuming(self) -> bool:
        """True while the consumer is registered with the broker."""
        return self._tag is not None

    async def start(self) -> None:
        """Register the consumer (idempotent)."""
        if self._tag is not None:
            return
        await self._channel.set_qos(prefetch_count=self._prefetch)
        # Declared (not merely looked up) with its real arguments: a robust channel
        # restores, after a reconnect, exactly the queues and consumers declared on it.
        self._queue = await self._channel.declare_queue(
            self._declared.name, durable=True, arguments=self._declared.arguments
        )
        self._tag = await self._queue.consume(self._on_message)

    async def stop(self) -> None:
        """No new deliveries; what is in flight goes on."""
        if self._queue is not None and self._tag is not None:
            tag, self._tag = self._tag, None
            with contextlib.suppress(Exception):
                await self._queue.cancel(tag)

    async def drain(self, grace_s: float) -> int:
        """Wait up to ``grace_s`` for in-flight work; cancel the rest (their messages go
        back to the queue). Returns how many were cut short."""
        await self.stop()
        pending = set(self._tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still, timeout=5.0)
            return len(still)
        return 0

    def _track(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        raise NotImplementedError


class CommandConsumer(_Consumer):
    """``provisioner.requests`` -> ``CommandHandler``, many commands at once."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: DeclaredQueue,
        prefetch: int,
        handler: CommandHandler,
        on_outcome: Callable[[CommandOutcome], None] | None = None,
    ) -> None:
        super().__init__(channel, queue, prefetch)
        self._handler = handler
        self._on_outcome = on_outcome

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._track(self._handle(message))

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        structlog.contextvars.clear_contextvars()
        try:
            outcome = await self._handler.handle(to_delivery(message))
        except asyncio.CancelledError:
            await asyncio.shield(_settle(message, "requeue"))
            raise
        except Exception:
            # A bug or a broker failure mid-way: requeue; the queue's delivery limit moves
            # a message that keeps failing to the dead-letter queue instead of looping.
            log.exception("command_handler_crashed")
            await _settle(message, "requeue")
            return
        await _settle(message, outcome.disposition)
        if self._on_outcome is not None:
            self._on_outcome(outcome)


class WatchConsumer(_Consumer):
    """``provisioner.watch`` -> ``WatchHandler`` in batches, so one list call serves many."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: DeclaredQueue,
        prefetch: int,
        handler: WatchHandler,
        *,
        batch_max: int,
        linger_s: float = 0.05,
        on_outcome: Callable[[WatchOutcome], None] | None = None,
        on_in_flight: Callable[[int], None] | None = None,
    ) -> None:
        super().__init__(channel, queue, prefetch)
        self._handler = handler
        self._batch_max = batch_max
        self._linger_s = linger_s
        self._on_outcome = on_outcome
        self._on_in_flight = on_in_flight
        self._in_flight = 0
        self._buffer: list[tuple[AbstractIncomingMessage, WatchState]] = []
        self._flush_timer: asyncio.TimerHandle | None = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            watch = decode_watch(message.body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("watch_message_unreadable", error=str(exc))
            await _settle(message, "reject")  # to the dead-letter queue, for a person
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
            self._track(self._handle(batch))

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
            outcomes = await self._handler.handle_batch([w for _, w in batch])
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.gather(*(_settle(m, "requeue") for m, _ in batch)))
            raise
        except Exception:
            log.exception("watch_batch_crashed", batch=len(batch))
            await asyncio.gather(*(_settle(m, "requeue") for m, _ in batch))
            return
        await asyncio.gather(
            *(
                _settle(m, "requeue" if o.outcome == "requeue" else "ack")
                for (m, _), o in zip(batch, outcomes, strict=True)
            )
        )
        if self._on_outcome is not None:
            for outcome in outcomes:
                self._on_outcome(outcome)
