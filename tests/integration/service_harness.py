"""Running the real service in a test: settings for the simulator, publishing commands,
reading queues. Real RabbitMQ (the test's own virtual host), real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import aio_pika
import msgspec
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from contracts.events import ConnectionReady, Event, Failed, Rejected
from service.app import Service
from service.config import Settings
from service.simulator import Simulator
from tests.fixtures.broker import user_of
from tests.fixtures.engines import ENGINE_SAMPLES

AS_CONNECTED: Final = "\x00as-connected"
"""``publish``'s default ``user_id``: the user of the connection it publishes on."""


def command(request_id: str, engine: str = "pg", **extra: Any) -> dict[str, Any]:
    """A valid command for ``engine``; ``extra`` goes into the top level."""
    cluster = {"name": f"c-{request_id}", "engine": engine, "region": "nyc3"}
    cluster.update(ENGINE_SAMPLES[engine])
    cluster.update(extra.pop("cluster", {}))
    return {"request_id": request_id, "cluster": cluster, **extra}


def settings_for(amqp_url: str, simulator: Simulator, **overrides: Any) -> Settings:
    """Fast settings against the simulator: short polls, retries and grace periods."""
    values: dict[str, Any] = {
        "amqp_url": amqp_url,
        "token": simulator.config.token,
        "api_url": simulator.base_url,
        "poll_interval_s": 0.2,
        "create_timeout_s": 30.0,
        "http_host": "127.0.0.1",
        "http_port": 0,
        "retry_delays_s": (0.2, 0.4),
        "not_found_grace_s": 3.0,
        "shutdown_grace_s": 5.0,
        "options_ttl_s": 60.0,
        "log_format": "console",
    }
    values.update(overrides)
    return msgspec.convert(values, Settings)


@asynccontextmanager
async def running_service(settings: Settings) -> AsyncIterator[Service]:
    """The service, started and stopped around the block."""
    service = Service(settings)
    await service.start(connect_attempts=5)
    try:
        yield service
    finally:
        await service.stop()


async def publish(
    connection: AbstractRobustConnection,
    body: dict[str, Any] | bytes,
    *,
    reply_to: str | None = None,
    correlation_id: str | None = None,
    content_type: str = "application/json",
    exchange: str = "provisioner.commands",
    routing_key: str = "database.cluster.create",
    user_id: str | None = AS_CONNECTED,
) -> None:
    """Publish a command as a producer would, confirmed by the broker: with the AMQP
    ``user_id`` of the connection's user unless told otherwise (None: without one)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    if user_id is AS_CONNECTED:
        user_id = user_of(connection)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        target = await channel.get_exchange(exchange)
        await target.publish(
            aio_pika.Message(
                payload,
                content_type=content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                reply_to=reply_to,
                correlation_id=correlation_id,
                user_id=user_id,
            ),
            routing_key,
            mandatory=True,
            timeout=10,
        )
    finally:
        await channel.close()


async def get_all(connection: AbstractRobustConnection, name: str) -> list[Any]:
    """Take every message now in ``name`` (acked). By consuming, not ``basic.get``: the
    watch queue has a single active consumer, and RabbitMQ refuses ``basic.get`` on such a
    quorum queue. As many as the queue said it held when looked at."""
    channel = await connection.channel()
    taken: list[Any] = []
    try:
        queue = await channel.declare_queue(name, passive=True)
        result = queue.declaration_result
        expected = int(result.message_count or 0) if result else 0
        if not expected:
            return taken
        await channel.set_qos(prefetch_count=expected)
        done = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            if done.is_set():  # arrived after the look: not "now in" the queue
                await message.nack(requeue=True)
                return
            await message.ack()
            taken.append(message)
            if len(taken) >= expected:
                done.set()

        tag = await queue.consume(take)
        try:
            await asyncio.wait_for(done.wait(), 30)
        finally:
            await queue.cancel(tag)
    finally:
        await channel.close()
    return taken


async def wait_until(condition: Callable[[], bool], *, timeout: float) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


def final(events: list[Event], request_id: str) -> Event | None:
    """The request's terminal event, if it has one."""
    for event in events:
        if getattr(event.data, "request_id", None) == request_id and isinstance(
            event, ConnectionReady | Rejected | Failed
        ):
            return event
    return None


def all_final(request_ids: list[str]) -> Any:
    """A predicate for ``EventRecorder.wait_for``: every request has a terminal event."""

    def predicate(events: list[Event]) -> bool:
        return all(final(events, rid) is not None for rid in request_ids)

    return predicate
