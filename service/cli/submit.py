"""``provisioner submit FILE|-``: publish a command, optionally follow its events.

The command carries the AMQP ``user_id`` of the user in ``PROVISIONER_AMQP_URL`` (the
service requires it; RabbitMQ checks it). With ``--wait`` it also carries RabbitMQ's Direct
Reply-to (``amq.rabbitmq.reply-to``: no queue to declare, allowed by the default policy) and a
``correlation_id``; the events of the request arrive there and are printed one JSON object
per line. The exit code says how it ended: 0 ``connection_ready``, 3 ``rejected``,
4 ``failed``, 5 no end before ``--timeout``, 2 the command is invalid (checked locally
before anything is published, unless ``--no-check``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import msgspec

from contracts.commands import COMMAND_CONTENT_TYPE, decode_command
from contracts.errors import InvalidCommand
from contracts.events import ConnectionReady, Failed, Rejected, decode_event
from service.broker.connection import connect
from service.broker.topology import Topology
from service.config import ConfigError, Settings, load_settings
from service.provisioning.policy import DIRECT_REPLY_TO

__all__ = ["add_arguments", "main", "prepare"]

EXIT_READY, EXIT_INVALID, EXIT_REJECTED, EXIT_FAILED, EXIT_TIMEOUT = 0, 2, 3, 4, 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``provisioner submit``."""
    parser.add_argument("file", help="the command as JSON, or - for standard input")
    parser.add_argument(
        "--wait", action="store_true", help="follow the request's events until it ends"
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds --wait waits (default 3600)"
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="publish even if the command does not validate locally",
    )
    parser.epilog = "The broker is PROVISIONER_AMQP_URL (a password never goes on argv)."


def prepare(raw: bytes) -> tuple[bytes, str | None]:
    """The body to publish, with a generated ``request_id`` if it had none."""
    try:
        document = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return raw, None  # let the local check (or the service) say what is wrong
    if isinstance(document, dict):
        request_id = document.get("request_id")
        if request_id is None:
            request_id = str(uuid.uuid4())
            document = {"request_id": request_id, **document}
            return msgspec.json.encode(document), request_id
        return raw, request_id if isinstance(request_id, str) else None
    return raw, None


async def _submit(
    args: argparse.Namespace, body: bytes, topology: Topology, settings: Settings
) -> int:
    connection = await connect(settings.amqp_urls, order=settings.amqp_url_order, attempts=3)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        correlation_id = str(uuid.uuid4()) if args.wait else None
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if args.wait:
            # Direct Reply-to: consumed (without acks) on the channel that publishes, before it
            # publishes; the copies arrive while this channel is open.
            replies = await channel.declare_queue(DIRECT_REPLY_TO, passive=True)
            await replies.consume(_printer(correlation_id, done), no_ack=True)
        exchange = await channel.get_exchange(topology.commands_exchange)
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type=COMMAND_CONTENT_TYPE,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                reply_to=DIRECT_REPLY_TO if args.wait else None,
                correlation_id=correlation_id,
                user_id=settings.amqp_user,
            ),
            topology.command_routing_key,
            mandatory=True,
            timeout=30,
        )
        print(f"published to {topology.commands_exchange}", file=sys.stderr)
        if not args.wait:
            return EXIT_READY
        return await _follow(done, args.timeout)


def _printer(correlation_id: str | None, done: asyncio.Future[int]) -> Any:
    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if message.correlation_id != correlation_id:
            return
        event = decode_event(message.body)
        print(msgspec.json.encode(event).decode(), flush=True)
        code = {ConnectionReady: EXIT_READY, Rejected: EXIT_REJECTED, Failed: EXIT_FAILED}
        if type(event) in code and not done.done():
            done.set_result(code[type(event)])

    return on_message


async def _follow(done: asyncio.Future[int], timeout: float) -> int:
    try:
        return await asyncio.wait_for(done, timeout)
    except TimeoutError:
        print(f"no final event within {timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT


def main(args: argparse.Namespace) -> int:
    """Entry point of ``provisioner submit``."""
    raw = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    body, request_id = prepare(raw)
    if not args.no_check:
        try:
            decode_command(body)
        except InvalidCommand as exc:
            for error in exc.errors:
                print(f"{error.path}: {error.message}", file=sys.stderr)
            return EXIT_INVALID
    try:
        settings = load_settings(require_token=False)
    except ConfigError as exc:
        print(f"provisioner submit: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if request_id:
        print(f"request_id: {request_id}", file=sys.stderr)
    return asyncio.run(_submit(args, body, Topology(), settings))
