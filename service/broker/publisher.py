"""Publishing with broker confirms: events, retries, watches and parked commands.

Every publish waits for the broker's confirm, with a timeout (a publish on a lost
connection would otherwise wait for the reconnect forever). Messages to our own queues
are ``mandatory`` on a channel that raises on returns, so a missing queue is an error,
not a silent drop. Events are not mandatory: an events exchange without subscribers is
normal. Publishes from concurrent handlers pipeline on the channel.

Every message carries the service's own RabbitMQ user as its ``user_id`` (the broker checks
it): subscribers can tell the service's events from anyone else's, and the service can tell
its own watches and retries from a message a producer forged. Copies to a producer's
``reply_to`` go through ``ReplyCopies``, on a connection of their own.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import aio_pika
import msgspec
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustChannel, DeliveryMode
from msgspec import UNSET
from opentelemetry.trace import SpanKind
from pamqp.commands import Basic

from contracts.errors import FieldError
from contracts.events import EVENT_CONTENT_TYPE, Event, Failed, encode_event
from contracts.names import PRODUCER_HEADER, REJECTION_REASON_HEADER
from service.broker.frames import portable_headers
from service.broker.replies import ReplyCopies
from service.broker.topology import Topology
from service.provisioning.messages import (
    APP_ID,
    ATTEMPT_HEADER,
    WATCH_CONTENT_TYPE,
    WatchState,
    encode_stamp,
    encode_watch,
)
from service.provisioning.ports import Delivery, ParkingFull
from service.provisioning.watch import DUE_HEADER, LOOKED_AT
from service.tracing import current_trace_headers, messaging_span

__all__ = ["HEADERS_DROPPED_HEADER", "PublishObserver", "RabbitPublisher"]

# On a parked copy written without the producer's headers: why.
HEADERS_DROPPED_HEADER: Final = "x-provisioner-headers-dropped"
# What pamqp raises for a value it cannot write (a float beyond 32 bits, a long name, ...).
_UNWRITABLE: Final = (TypeError, ValueError, OverflowError, struct.error)
# Headers are for people reading the parking queue: keep the reason readable and bounded.
MAX_REASON_BYTES: Final = 16 * 1024

log = structlog.get_logger(__name__)

PublishObserver = Callable[[str, float], None]  # (event type, seconds to confirm)


class RabbitPublisher:
    """Implements the domain's ``EventBus`` and ``WorkQueues`` on one confirming channel."""

    def __init__(
        self,
        channel: AbstractChannel,
        topology: Topology,
        *,
        user_id: str,
        timeout_s: float,
        replies: ReplyCopies | None = None,
        observer: PublishObserver | None = None,
        on_headers_dropped: Callable[[int], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self._channel = channel
        self._topology = topology
        self._user_id = user_id
        self._timeout_s = timeout_s
        self._replies = replies
        self._observer = observer
        self._on_headers_dropped = on_headers_dropped
        self._on_failed = on_failed
        self._events: AbstractExchange | None = None

    async def _events_exchange(self) -> AbstractExchange:
        if self._events is None:
            # Declared with its real type so the robust channel can restore it as it is.
            self._events = await self._channel.declare_exchange(
                self._topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
        return self._events

    async def publish(
        self, event: Event, *, reply_to: str | None = None, correlation_id: str | None = None
    ) -> None:
        """The event on the events exchange, and a copy to ``reply_to`` if the producer
        asked for one."""
        started = time.perf_counter()
        with messaging_span(
            f"{self._topology.events_exchange} publish",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.operation.type": "publish",
                "messaging.destination.name": self._topology.events_exchange,
                "messaging.rabbitmq.destination.routing_key": event.routing_key,
                "messaging.message.id": event.id,
            },
        ):
            # The publish's own context, in the body (CloudEvents distributed tracing) and
            # in the headers (OpenTelemetry messaging): a subscriber's span joins the trace.
            trace_headers = current_trace_headers()
            if "traceparent" in trace_headers:
                event = msgspec.structs.replace(
                    event,
                    traceparent=trace_headers["traceparent"],
                    tracestate=trace_headers.get("tracestate", UNSET),
                )
            body = encode_event(event)
            headers: dict[str, Any] | None = dict(trace_headers) if trace_headers else None
            message = aio_pika.Message(
                body,
                content_type=EVENT_CONTENT_TYPE,
                headers=headers,
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=event.id,
                type=event.routing_key,
                timestamp=datetime.now(UTC),
                app_id=APP_ID,
                user_id=self._user_id,
                correlation_id=correlation_id,
            )
            await self._ready()
            exchange = await self._events_exchange()
            # Not mandatory (aio-pika's default is mandatory): an events exchange nobody
            # listens to yet is normal.
            await exchange.publish(
                message, event.routing_key, mandatory=False, timeout=self._timeout_s
            )
            if reply_to and self._replies is not None:
                await self._replies.send(message, reply_to, event.data.producer)
        if self._observer is not None:
            self._observer(event.routing_key, time.perf_counter() - started)
        if self._on_failed is not None and isinstance(event, Failed):
            self._on_failed(event.data.reason)

    async def retry_command(self, delivery: Delivery, attempt: int, producer: str) -> None:
        """The command again, through the delay queue for this attempt; the copy is the
        service's (its ``user_id``), so the producer it came from travels in a header."""
        headers = {
            **self._portable(delivery.headers),
            ATTEMPT_HEADER: attempt + 1,
            PRODUCER_HEADER: producer,
            **current_trace_headers(),  # the next attempt: a span of this attempt's trace
        }
        await self._to_queue(
            self._topology.retry_queue(attempt),
            _copy(delivery, headers, self._user_id),
            mandatory=True,
        )

    async def schedule_watch(self, watch: WatchState) -> None:
        """The watch, back after one poll interval (due one interval after the list it looked
        at, when it looked at one: see ``DUE_HEADER``)."""
        looked_at = LOOKED_AT.get()
        headers: dict[str, Any] = {}
        if looked_at is not None:
            headers[DUE_HEADER] = encode_stamp(looked_at + self._topology.poll_interval_s)
        if watch.traceparent is None:
            # The first watch of a request: it carries the command's trace from now on.
            trace_headers = current_trace_headers()
            if "traceparent" in trace_headers:
                watch = msgspec.structs.replace(
                    watch,
                    traceparent=trace_headers["traceparent"],
                    tracestate=trace_headers.get("tracestate"),
                )
        if watch.traceparent is not None:
            headers["traceparent"] = watch.traceparent
            if watch.tracestate:
                headers["tracestate"] = watch.tracestate
        message = aio_pika.Message(
            encode_watch(watch),
            content_type=WATCH_CONTENT_TYPE,
            headers=headers or None,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=watch.cluster_id,
            app_id=APP_ID,
            user_id=self._user_id,
        )
        await self._to_queue(self._topology.watch_delay_queue(), message, mandatory=True)

    async def park(
        self, delivery: Delivery, errors: list[FieldError], producer: str | None
    ) -> None:
        """The original command, with why it was refused (and whose it was) in its headers.
        Of the producer's headers, those that are written back as they came; if the copy
        still cannot be written, it is parked with the service's headers only, and says so."""
        reason = _bounded_reason(errors)
        own: dict[str, Any] = {
            REJECTION_REASON_HEADER: reason.decode(),
            "x-rejected-at": datetime.now(UTC).isoformat(),
            "x-rejection-count": len(errors),
        }
        if producer is not None:
            own[PRODUCER_HEADER] = producer
        theirs = self._portable(delivery.headers)
        theirs.pop(PRODUCER_HEADER, None)  # only the service says whose a command is
        queue = self._topology.rejected_queue
        try:
            try:
                copy = _copy(delivery, {**theirs, **own}, self._user_id)
                await self._to_queue(queue, copy, mandatory=True)
            except _UNWRITABLE as exc:
                log.warning("parked_without_headers", error=f"{type(exc).__name__}: {exc}"[:200])
                if self._on_headers_dropped is not None:
                    self._on_headers_dropped(len(delivery.headers))
                own[HEADERS_DROPPED_HEADER] = (
                    f"the producer's headers could not be written ({type(exc).__name__})"
                )
                await self._to_queue(queue, _copy(delivery, own, self._user_id), mandatory=True)
        except aio_pika.exceptions.DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack):
                # x-overflow=reject-publish: the queue is at its length or byte bound.
                raise ParkingFull(queue) from None
            raise

    def _portable(self, headers: dict[str, object]) -> dict[str, Any]:
        """The headers that go back on the wire as they came; the rest are counted."""
        kept, dropped = portable_headers(headers)
        if dropped:
            log.info("headers_not_copied", headers=[name[:64] for name in dropped[:10]])
            if self._on_headers_dropped is not None:
                self._on_headers_dropped(len(dropped))
        return kept

    async def _ready(self) -> None:
        """Wait (at most the publish timeout) while the robust channel is being restored
        after a reconnect. Its consumers may be back first: without this, a message they
        deliver fails at once on the closed channel, goes back to its queue, is delivered
        again at once, and can spend its whole delivery limit within a second."""
        if self._channel.is_closed and isinstance(self._channel, AbstractRobustChannel):
            await asyncio.wait_for(self._channel.ready(), self._timeout_s)

    async def _to_queue(self, queue: str, message: aio_pika.Message, *, mandatory: bool) -> None:
        await self._ready()
        await self._channel.default_exchange.publish(
            message, queue, mandatory=mandatory, timeout=self._timeout_s
        )


def _bounded_reason(errors: list[FieldError]) -> bytes:
    """The errors as JSON within MAX_REASON_BYTES: as many whole errors as fit, then a note."""
    whole = msgspec.json.encode(errors)
    if len(whole) + 1 <= MAX_REASON_BYTES - 64:  # what the loop below would keep: all of them
        return whole
    kept: list[FieldError] = []
    size = 2
    for error in errors:
        encoded = len(msgspec.json.encode(error)) + 1
        if size + encoded > MAX_REASON_BYTES - 64:
            break
        kept.append(error)
        size += encoded
    if len(kept) < len(errors):
        kept.append(FieldError("$", f"{len(errors) - len(kept)} more errors not shown"))
    return msgspec.json.encode(kept)


def _copy(delivery: Delivery, headers: dict[str, Any], user_id: str) -> aio_pika.Message:
    return aio_pika.Message(
        delivery.body,
        content_type=delivery.content_type,
        headers=headers,
        delivery_mode=DeliveryMode.PERSISTENT,
        reply_to=delivery.reply_to,
        correlation_id=delivery.correlation_id,
        message_id=delivery.message_id,
        user_id=user_id,
    )
