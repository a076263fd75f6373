"""Publishing with broker confirms: events, retries, watches and parked commands.

Every publish waits for the broker's confirm, with a timeout (a publish on a lost
connection would otherwise wait for the reconnect forever). Messages to our own queues
are ``mandatory`` on a channel that raises on returns, so a missing queue is an error,
not a silent drop. Events are not mandatory: an events exchange without subscribers is
normal. Publishes from concurrent handlers pipeline on the channel.

Messages go out as AMQP properties and a body through the channel's ``basic_publish``
(what ``aio_pika.Exchange.publish`` does with a ``Message``), without an ``aio_pika.Message``
in between: building one cost nine times what the properties cost, twice per command.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

import aio_pika
import aiormq
import msgspec
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, DeliveryMode

from contracts.errors import FieldError
from contracts.events import EVENT_CONTENT_TYPE, Event, encode_event
from service.broker.topology import Topology
from service.provisioning.messages import (
    ATTEMPT_HEADER,
    REJECTION_HEADER,
    WATCH_CONTENT_TYPE,
    WatchState,
    encode_watch,
)
from service.provisioning.ports import Delivery
from service.provisioning.watch import DUE_HEADER, LOOKED_AT

__all__ = ["PublishObserver", "RabbitPublisher"]

APP_ID: Final = "provisioner"
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
        timeout_s: float,
        observer: PublishObserver | None = None,
    ) -> None:
        self._channel = channel
        self._topology = topology
        self._timeout_s = timeout_s
        self._observer = observer
        self._events: AbstractExchange | None = None
        self._own_names = frozenset(q.name for q in topology.queues())
        self._own_prefixes = (f"{topology.requests_queue}.", f"{topology.watch_queue}.")

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
        body = encode_event(event)
        properties = _properties(
            content_type=EVENT_CONTENT_TYPE,
            message_id=event.id,
            message_type=event.routing_key,
            timestamp=datetime.now(UTC),
            app_id=APP_ID,
            correlation_id=correlation_id,
        )
        exchange = await self._events_exchange()
        # Not mandatory (aio-pika's default is mandatory): an events exchange nobody
        # listens to yet is normal, and a producer whose reply queue went away must not
        # block its own request.
        await self._send(exchange.name, event.routing_key, body, properties, mandatory=False)
        if reply_to and self._own_queue(reply_to):
            # A producer must not make the service feed its own queues (or leak the
            # credentials into them): the broadcast copy is all such a request gets.
            log.warning("reply_to_refused", reply_to=reply_to[:128], event_type=event.routing_key)
        elif reply_to:
            await self._send("", reply_to, body, properties, mandatory=False)
        if self._observer is not None:
            self._observer(event.routing_key, time.perf_counter() - started)

    def _own_queue(self, name: str) -> bool:
        return name in self._own_names or name.startswith(self._own_prefixes)

    async def retry_command(self, delivery: Delivery, attempt: int) -> None:
        """The command again, through the delay queue for this attempt."""
        headers = {**delivery.headers, ATTEMPT_HEADER: attempt + 1}
        await self._send(
            "", self._topology.retry_queue(attempt), delivery.body, _copy(delivery, headers)
        )

    async def schedule_watch(self, watch: WatchState) -> None:
        """The watch, back after one poll interval (due one interval after the list it looked
        at, when it looked at one: see ``DUE_HEADER``)."""
        looked_at = LOOKED_AT.get()
        headers: dict[str, Any] | None = None
        if looked_at is not None:
            headers = {DUE_HEADER: f"{looked_at + self._topology.watch_delay_s:.3f}"}
        properties = _properties(
            content_type=WATCH_CONTENT_TYPE,
            headers=headers,
            message_id=watch.cluster_id,
            app_id=APP_ID,
        )
        await self._send("", self._topology.watch_delay_queue(), encode_watch(watch), properties)

    async def park(self, delivery: Delivery, errors: list[FieldError]) -> None:
        """The original command, untouched, with why it was refused in its headers."""
        reason = _bounded_reason(errors)
        headers = {
            **delivery.headers,
            REJECTION_HEADER: reason.decode(),
            "x-rejected-at": datetime.now(UTC).isoformat(),
            "x-rejection-count": len(errors),
        }
        await self._send("", self._topology.rejected_queue, delivery.body, _copy(delivery, headers))

    async def _send(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: aiormq.spec.Basic.Properties,
        *,
        mandatory: bool = True,
    ) -> None:
        """Publish and wait for the confirm (a return, with ``mandatory``, raises)."""
        if self._channel.is_closed:  # as Exchange.publish does: fail now, not at the timeout
            raise aiormq.exceptions.ChannelInvalidStateError(f"{self._channel!r} closed")
        # The robust channel's current one: it waits while the connection is being restored.
        channel = await self._channel.get_underlay_channel()
        await channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
            timeout=self._timeout_s,
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


def _properties(
    *,
    content_type: str | None,
    headers: dict[str, Any] | None = None,
    message_id: str | None = None,
    message_type: str | None = None,
    timestamp: datetime | None = None,
    app_id: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
) -> aiormq.spec.Basic.Properties:
    """The properties ``aio_pika.Message(...).properties`` gives a persistent message with
    these fields (empty strings are left out, as aio-pika leaves them)."""
    return aiormq.spec.Basic.Properties(
        content_type=content_type or None,
        headers=headers or {},
        delivery_mode=DeliveryMode.PERSISTENT.value,
        priority=0,
        correlation_id=correlation_id or None,
        reply_to=reply_to or None,
        message_id=message_id or None,
        timestamp=timestamp,
        message_type=message_type or None,
        app_id=app_id or None,
    )


def _copy(delivery: Delivery, headers: dict[str, Any]) -> aiormq.spec.Basic.Properties:
    """The properties of the command's own message, with ``headers``."""
    return _properties(
        content_type=delivery.content_type,
        headers=headers,
        reply_to=delivery.reply_to,
        correlation_id=delivery.correlation_id,
        message_id=delivery.message_id,
    )
