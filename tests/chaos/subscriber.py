"""The chaos run's subscriber, a process of its own: every event, one JSON line each.

``python -m tests.chaos.subscriber OUT.jsonl`` with the broker URL in ``CHAOS_AMQP_URL``
(not on the command line, where ``ps`` would show its password). It binds a durable queue
to every routing key of the events exchange, writes one line per delivery (redeliveries
included: deduplicating on the event id is the reader's job, as for any subscriber) and acks
only after the line is flushed. Credentials are never written: a ``connection_ready`` line
says which users came with a password and a short digest of each (``password_digest``),
never the password, so that the verdict can tell whether the announced passwords work.

It prints ``subscribed`` once its queue is bound, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any, Final

import aio_pika
import msgspec
from aio_pika.abc import AbstractIncomingMessage

from contracts.events import ConnectionReady, Event, Failed, Rejected, StatusChanged, decode_event
from service.broker.connection import connect

__all__ = ["URL_VARIABLE", "event_line", "main", "password_digest"]

URL_VARIABLE: Final = "CHAOS_AMQP_URL"
QUEUE: Final = "chaos.event-subscriber"


def password_digest(password: str) -> str:
    """A short SHA-256 digest of a generated password: tells equal ones apart, not the value."""
    return hashlib.sha256(password.encode()).hexdigest()[:16]


def event_line(event: Event, message: AbstractIncomingMessage) -> dict[str, Any]:
    """What the verdict needs of one delivery, without any credential."""
    line: dict[str, Any] = {
        "id": event.id,
        "source": event.source,
        "type": event.routing_key,
        "request_id": getattr(event.data, "request_id", None),
        "correlation_id": message.correlation_id,
        "redelivered": bool(message.redelivered),
        "received_at": time.time(),
    }
    match event:
        case StatusChanged(data=data):
            line.update(
                cluster_id=data.cluster_id, status=data.status, previous_status=data.previous_status
            )
        case ConnectionReady(data=data):
            line.update(
                cluster_id=data.cluster_id,
                users=[u.name for u in data.users],
                users_with_password=[u.name for u in data.users if u.password or u.access_key],
                password_digests={
                    u.name: password_digest(u.password) for u in data.users if u.password
                },
                db_names=list(data.db_names),
                has_ca=bool(data.ca_certificate),
                has_connection=data.connection is not None,
            )
        case Rejected(data=data):
            line.update(errors=len(data.errors))
        case Failed(data=data):
            line.update(
                cluster_id=data.cluster_id, reason=data.reason, step=data.step, message=data.message
            )
    return line


async def record(url: str, out: IO[str], stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set, writing one line per delivery."""
    # A list of a cluster's nodes, or one broker: the service's own failover.
    connection = await connect(url, order="listed", reconnect_interval_s=1)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=200)
        exchange = await channel.declare_exchange(
            "provisioner.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await queue.bind(exchange, routing_key="#")

        async def on_message(message: AbstractIncomingMessage) -> None:
            try:
                line = event_line(decode_event(message.body), message)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                line = {"undecodable": str(exc)[:200], "received_at": time.time()}
            out.write(json.dumps(line) + "\n")
            out.flush()
            try:
                await message.ack()
            except Exception as exc:
                # The channel died with the connection: the broker redelivers, and the
                # reader deduplicates the second line.
                print(f"ack failed: {exc!r}", file=sys.stderr, flush=True)

        await queue.consume(on_message)
        print("subscribed", flush=True)
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 10)


async def _main(out_path: Path) -> None:
    url = os.environ.get(URL_VARIABLE)
    if not url:
        raise SystemExit(f"set {URL_VARIABLE} to the broker URL")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with out_path.open("a", encoding="utf-8") as out:
        await record(url, out, stop)
    print("stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m tests.chaos.subscriber OUT.jsonl``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the JSON-lines file to append to")
    args = parser.parse_args(argv)
    asyncio.run(_main(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
