"""The RabbitMQ topology: every exchange, queue and binding, declared idempotently.

Everything that must survive a replica lives here: commands, watches, retries, parked
and dead-lettered messages. All queues are quorum queues (replicated, at-least-once
dead lettering, delivery limits). Delays are fixed-TTL queues that dead-letter back into
the queue they delay for; their names carry the TTL, so changing a delay declares a new
queue instead of failing on an argument mismatch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import aio_pika
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from msgspec import Struct

from contracts.names import (
    COMMAND_EXCHANGE,
    COMMAND_ROUTING_KEY,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EVENT_EXCHANGE,
    REJECTED_QUEUE,
    REQUEST_QUEUE,
    WATCH_QUEUE,
)

__all__ = ["DeclaredQueue", "Topology", "bounds", "declare", "declare_queue", "message_count"]

log = structlog.get_logger(__name__)

# RabbitMQ 3.x counts a message returned because its consumer vanished (a killed replica,
# a cut connection) as a delivery, not only a handler's failure: 20 leaves room for a
# rough day of broker cuts while a real poison message still stops looping quickly.
DELIVERY_LIMIT: Final = 20

# The parking and dead-letter queues are bounded, so that a flood of bad commands (or a bug
# that dead-letters everything) cannot fill the broker's disk, at which point RabbitMQ blocks
# every publisher of every application on it. At the bound they refuse new messages
# (reject-publish): what they hold stays for a person. See docs/reliability.md.
PARKING_MAX_MESSAGES: Final = 100_000
PARKING_MAX_BYTES: Final = 256 * 1024 * 1024
DEAD_LETTER_MAX_MESSAGES: Final = 10_000
DEAD_LETTER_MAX_BYTES: Final = 256 * 1024 * 1024
# Members of a quorum queue: three survive the loss of one node (a majority of 3 is 2).
QUORUM_GROUP_SIZE: Final = 3
GROUP_SIZE: Final = "x-quorum-initial-group-size"
SINGLE_ACTIVE: Final = "x-single-active-consumer"
# Arguments a queue made by an earlier version may lack (docs/reliability.md says what that
# costs and how to recreate the queue).
ADDED_LATER: Final = (GROUP_SIZE, SINGLE_ACTIVE)


class DeclaredQueue(Struct, frozen=True):
    """A queue with the arguments it is declared with (for printing and tests)."""

    name: str
    arguments: dict[str, Any]
    purpose: str


class Topology(Struct, frozen=True, kw_only=True):
    """Names and delays. The defaults are the names other teams code against."""

    commands_exchange: str = COMMAND_EXCHANGE
    command_routing_key: str = COMMAND_ROUTING_KEY
    requests_queue: str = REQUEST_QUEUE
    events_exchange: str = EVENT_EXCHANGE
    rejected_queue: str = REJECTED_QUEUE
    dead_letter_exchange: str = DEAD_LETTER_EXCHANGE
    dead_letter_queue: str = DEAD_LETTER_QUEUE
    watch_queue: str = WATCH_QUEUE
    poll_interval_s: float = 10.0
    """How long a watch waits in its delay queue between two looks (the setting's value)."""
    retry_delays_s: tuple[float, ...] = (2.0, 10.0, 30.0, 60.0, 120.0)
    delivery_limit: int = DELIVERY_LIMIT
    parking_max_messages: int = PARKING_MAX_MESSAGES
    parking_max_bytes: int = PARKING_MAX_BYTES
    dead_letter_max_messages: int = DEAD_LETTER_MAX_MESSAGES
    dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES
    quorum_group_size: int = QUORUM_GROUP_SIZE
    """Members of each quorum queue when it is first declared (RabbitMQ caps it at the
    cluster's size; a queue that exists keeps its members)."""

    @classmethod
    def prefixed(cls, prefix: str, **delays: Any) -> Topology:
        """The same shape under other names (the demo uses one, so that it never touches
        a real deployment's queues on the same broker)."""
        return cls(
            commands_exchange=f"{prefix}.commands",
            requests_queue=f"{prefix}.requests",
            events_exchange=f"{prefix}.events",
            rejected_queue=f"{prefix}.rejected",
            dead_letter_exchange=f"{prefix}.dead-letter",
            dead_letter_queue=f"{prefix}.dead-letter",
            watch_queue=f"{prefix}.watch",
            **delays,
        )

    def watch_delay_queue(self) -> str:
        """Where a watch waits one poll interval before it returns to the watch queue."""
        return f"{self.watch_queue}.delay.{_ms(self.poll_interval_s)}ms"

    def retry_queue(self, attempt: int) -> str:
        """The delay queue for the retry that follows failed attempt ``attempt`` (1-based)."""
        delay = self.retry_delays_s[min(attempt, len(self.retry_delays_s)) - 1]
        return f"{self.requests_queue}.retry.{_ms(delay)}ms"

    def queue(self, name: str) -> DeclaredQueue:
        """One queue of the topology, by name."""
        for queue in self.queues():
            if queue.name == name:
                return queue
        raise KeyError(name)

    def queues(self) -> list[DeclaredQueue]:
        """Every queue of the topology with its arguments."""
        quorum = {
            "x-queue-type": "quorum",
            GROUP_SIZE: self.quorum_group_size,
            # at-least-once dead lettering needs reject-publish overflow (RabbitMQ 3.10+).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        limited = {
            **quorum,
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_letter_exchange,
        }
        queues = [
            DeclaredQueue(self.requests_queue, limited, "commands to handle"),
            # One replica at a time follows every cluster (the others stand by and take over
            # when it goes): one list call per poll interval for the fleet, not per replica.
            DeclaredQueue(
                self.watch_queue, {**limited, SINGLE_ACTIVE: True}, "clusters being followed"
            ),
            DeclaredQueue(
                self.rejected_queue,
                _bounded(self.parking_max_messages, self.parking_max_bytes, self.quorum_group_size),
                "parked bad commands",
            ),
            DeclaredQueue(
                self.dead_letter_queue,
                # At its bound the sources keep what they dead-letter (at-least-once) until
                # there is room again.
                _bounded(
                    self.dead_letter_max_messages,
                    self.dead_letter_max_bytes,
                    self.quorum_group_size,
                ),
                "messages that exhausted their deliveries",
            ),
            DeclaredQueue(
                self.watch_delay_queue(),
                _delay(quorum, self.poll_interval_s, self.watch_queue),
                f"watch delay ({self.poll_interval_s:g} s)",
            ),
        ]
        for delay in dict.fromkeys(self.retry_delays_s):
            queues.append(
                DeclaredQueue(
                    f"{self.requests_queue}.retry.{_ms(delay)}ms",
                    _delay(quorum, delay, self.requests_queue),
                    f"command retry delay ({delay:g} s)",
                )
            )
        return queues


def _bounded(messages: int, size: int, group_size: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        GROUP_SIZE: group_size,
        "x-max-length": messages,
        "x-max-length-bytes": size,
        "x-overflow": "reject-publish",
    }


def bounds(queue: DeclaredQueue) -> tuple[int, int] | None:
    """(messages, bytes) a queue is declared to hold at most, if it is bounded."""
    messages = queue.arguments.get("x-max-length")
    size = queue.arguments.get("x-max-length-bytes")
    if isinstance(messages, int) and isinstance(size, int):
        return messages, size
    return None


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _delay(base: dict[str, Any], seconds: float, target: str) -> dict[str, Any]:
    return {
        **base,
        "x-message-ttl": _ms(seconds),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": target,
    }


async def declare(channel: AbstractChannel, topology: Topology) -> list[str]:
    """Declare exchanges, queues and bindings; return one line per thing declared."""
    lines: list[str] = []
    commands = await channel.declare_exchange(
        topology.commands_exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    lines.append(f"exchange {topology.commands_exchange} (direct)")
    await channel.declare_exchange(
        topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    lines.append(f"exchange {topology.events_exchange} (topic)")
    dlx = await channel.declare_exchange(
        topology.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    lines.append(f"exchange {topology.dead_letter_exchange} (fanout)")
    for queue in topology.queues():
        try:
            _, kept = await declare_queue(channel, queue)
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            if bounds(queue) is None:
                raise
            # Made by a version without bounds: a queue's arguments cannot change, so it is
            # used as it is, and said so at every start (docs/reliability.md, "Bounded
            # queues", says how to bound it).
            await channel.reopen()
            await channel.declare_queue(queue.name, passive=True)
            log.warning("queue_unbounded", queue=queue.name, error=str(exc)[:300])
            lines.append(f"queue {queue.name}: {queue.purpose} (exists without bounds; kept)")
            continue
        note = f" (exists without {', '.join(kept)}; kept as it is)" if kept else ""
        lines.append(f"queue {queue.name}: {queue.purpose} {_args(queue.arguments)}{note}")
    await _bind(channel, topology.requests_queue, commands, [topology.command_routing_key])
    lines.append(
        f"binding {topology.commands_exchange} -[{topology.command_routing_key}]-> "
        f"{topology.requests_queue}"
    )
    await _bind(channel, topology.dead_letter_queue, dlx, [""])
    lines.append(f"binding {topology.dead_letter_exchange} -> {topology.dead_letter_queue}")
    return lines


async def declare_queue(
    channel: AbstractChannel, queue: DeclaredQueue
) -> tuple[AbstractQueue, list[str]]:
    """Declare one queue; the queue, and the arguments it had to do without. A queue's
    arguments cannot change: one made by a version that did not declare the group size or
    single active consumer is declared again without them (every other argument still
    checked) and used as it is (docs/reliability.md: what that costs, how to recreate it).
    The channel may have been reopened on the way (its prefetch with it)."""
    arguments = dict(queue.arguments)
    kept: list[str] = []
    while True:
        try:
            declared = await channel.declare_queue(queue.name, durable=True, arguments=arguments)
            return declared, kept
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            missing = [k for k in ADDED_LATER if k in arguments and k in str(exc)]
            if not missing:
                raise
            await channel.reopen()
            del arguments[missing[0]]
            kept.append(missing[0])
            log.warning("queue_argument_not_applied", queue=queue.name, argument=missing[0])


async def _bind(
    channel: AbstractChannel, queue: str, exchange: AbstractExchange, keys: Iterable[str]
) -> None:
    declared = await channel.get_queue(queue, ensure=False)
    for key in keys:
        await declared.bind(exchange, routing_key=key)


def _args(arguments: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(arguments.items()))


async def message_count(connection: AbstractConnection, queue: str) -> int:
    """Messages ready in ``queue`` now (a fresh channel: a robust channel caches queues
    together with their first declare result)."""
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        result = declared.declaration_result
        return int(result.message_count or 0) if result else 0
    finally:
        await channel.close()
