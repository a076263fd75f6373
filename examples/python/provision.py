"""Ask the provisioner for a database cluster and follow the request to its end.

    AMQP_URL=amqp://guest:guest@127.0.0.1:5672/ python examples/python/provision.py [FILE|-]

FILE (or ``-`` for standard input) is a ``ProvisionDatabase`` command as JSON; without it a
small PostgreSQL cluster is requested. A ``request_id`` is generated when the command has
none, and the command is checked locally with ``contracts.decode_command`` before it is sent.
Each event of the request is printed as one JSON line on stdout; progress goes to stderr.
Exit: 0 ``connection_ready``, 3 ``rejected``, 4 ``failed``, 5 no end within ``TIMEOUT_S``
(default 600), 2 the command is invalid, 1 could not run. Passwords and URIs are printed as
``***`` unless ``SHOW_SECRETS=1``.

The command carries the AMQP ``user_id`` of the user in ``AMQP_URL`` (the service requires it;
RabbitMQ checks it) and asks for its events through RabbitMQ's Direct Reply-to. With
``SEALED=1`` it sends a fresh public key as ``recipient_public_key`` and opens the
``connection_ready``'s ``sealed_secrets`` with the private key: nobody else on the events
exchange can read those credentials.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aio_pika
import msgspec
from aio_pika.abc import AbstractIncomingMessage

from contracts import (
    DatabaseClusterCreate,
    DatabaseUserCreate,
    InvalidCommand,
    ProvisionDatabase,
    SealedSecretsError,
    decode_command,
    encode_command,
    new_keypair,
    open_sealed_secrets,
)
from contracts.events import ConnectionReady, Event, Failed, Rejected, decode_event
from contracts.names import COMMAND_EXCHANGE, COMMAND_ROUTING_KEY, EVENT_EXCHANGE

DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"
EXIT_READY: Final = 0
EXIT_CANNOT_RUN: Final = 1
EXIT_INVALID: Final = 2
EXIT_REJECTED: Final = 3
EXIT_FAILED: Final = 4
EXIT_TIMEOUT: Final = 5
SECRET_FIELDS: Final = frozenset({"password", "uri", "access_key"})


def small_postgres() -> ProvisionDatabase:
    """The command sent when no file is given: one small PostgreSQL node."""
    return ProvisionDatabase(
        request_id=str(uuid.uuid4()),
        cluster=DatabaseClusterCreate(
            name=f"example-{uuid.uuid4().hex[:8]}",
            engine="pg",
            version="17",
            region="nyc3",
            size="db-s-1vcpu-1gb",
            num_nodes=1,
            users=[DatabaseUserCreate(name="app")],
            db_names=["app"],
        ),
        metadata={"example": "python"},
    )


def read_command(path: str) -> ProvisionDatabase:
    """The command in ``path`` (``-``: standard input), with a ``request_id`` added if absent."""
    raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    document = msgspec.json.decode(raw)
    if isinstance(document, dict) and "request_id" not in document:
        document["request_id"] = str(uuid.uuid4())
    return decode_command(msgspec.json.encode(document))


def masked(value: Any) -> Any:
    """``value`` with every secret field, at any depth, replaced by ``***``."""
    if isinstance(value, list):
        return [masked(item) for item in value]
    if isinstance(value, dict):
        return {
            key: "***" if key in SECRET_FIELDS and inner is not None else masked(inner)
            for key, inner in value.items()
        }
    return value


async def provision(
    url: str, command: ProvisionDatabase, timeout_s: float, show_secrets: bool, sealed: bool
) -> int:
    """Publish ``command``, print its events, return the exit code its outcome gives."""
    correlation_id = str(uuid.uuid4())
    # The user this connection logs in as: RabbitMQ refuses any other user_id.
    user = unquote(urlsplit(url).username or "") or "guest"
    private_key = None
    if sealed:
        private_key, public_key = new_keypair()
        command = msgspec.structs.replace(command, recipient_public_key=public_key)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: set[tuple[str, str]] = set()

    def show(event: Event) -> None:
        # The same event arrives on both queues, and again after any redelivery.
        key = (event.source, event.id)
        if key in seen:
            return
        seen.add(key)
        if isinstance(event, ConnectionReady) and private_key and event.data.sealed_secrets:
            try:
                event.data = open_sealed_secrets(event, private_key)
            except SealedSecretsError as exc:
                print(f"cannot open sealed_secrets of {event.id}: {exc}", file=sys.stderr)
        shown = msgspec.to_builtins(event)
        print(msgspec.json.encode(shown if show_secrets else masked(shown)).decode(), flush=True)

    async def on_broadcast(message: AbstractIncomingMessage) -> None:
        # A plain subscriber: every cluster event of every producer; we pick out our request,
        # which is (producer, request_id): another producer may use the same id.
        event = decode_event(message.body)
        if event.data.request_id == command.request_id and event.data.producer == user:
            show(event)

    async def on_reply(message: AbstractIncomingMessage) -> None:
        # The service sends each reply copy after the broadcast one, so ending on the reply
        # means the service is done with our reply queue before it disappears with us.
        if message.correlation_id != correlation_id:
            return
        event = decode_event(message.body)
        show(event)
        codes = {ConnectionReady: EXIT_READY, Rejected: EXIT_REJECTED, Failed: EXIT_FAILED}
        if type(event) in codes and not done.done():
            done.set_result(codes[type(event)])

    def on_close(_sender: object, exc: BaseException | None) -> None:
        # A broker that goes away ends the wait now rather than at the timeout.
        if not done.done():
            done.set_exception(ConnectionError(f"the broker closed the connection: {exc}"))

    async with await aio_pika.connect(url, timeout=10) as connection:
        connection.close_callbacks.add(on_close)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        # The service owns the exchanges: check they are there, never declare them.
        commands = await channel.get_exchange(COMMAND_EXCHANGE, ensure=True)
        events = await channel.get_exchange(EVENT_EXCHANGE, ensure=True)
        # A subscriber queue of our own: server-named and exclusive, gone when we disconnect,
        # so acknowledging its messages buys nothing.
        subscriber = await channel.declare_queue(exclusive=True)
        await subscriber.bind(events, routing_key="database.cluster.#")
        await subscriber.consume(on_broadcast, no_ack=True)
        # Direct Reply-to: consumed without acks on the channel that publishes, before it does.
        replies = await channel.declare_queue(DIRECT_REPLY_TO, passive=True)
        await replies.consume(on_reply, no_ack=True)

        await commands.publish(
            aio_pika.Message(
                encode_command(command),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                reply_to=DIRECT_REPLY_TO,
                correlation_id=correlation_id,
                user_id=user,
            ),
            COMMAND_ROUTING_KEY,
            mandatory=True,  # with on_return_raises: an unrouted command is an error
            timeout=30,
        )
        print(f"published request {command.request_id} to {COMMAND_EXCHANGE}", file=sys.stderr)
        try:
            return await asyncio.wait_for(done, timeout_s)
        except TimeoutError:
            print(f"no final event within {timeout_s:g} s", file=sys.stderr)
            return EXIT_TIMEOUT


def main() -> int:
    """Read the environment and the command, then follow the request."""
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    timeout_s = float(os.environ.get("TIMEOUT_S", "600"))
    show_secrets = os.environ.get("SHOW_SECRETS") == "1"
    sealed = os.environ.get("SEALED") == "1"
    try:
        command = read_command(sys.argv[1]) if len(sys.argv) > 1 else small_postgres()
    except InvalidCommand as exc:
        for error in exc.errors:
            print(f"{error.path}: {error.message}", file=sys.stderr)
        return EXIT_INVALID
    except (OSError, msgspec.DecodeError) as exc:
        print(f"provision: cannot read the command: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    try:
        return asyncio.run(provision(url, command, timeout_s, show_secrets, sealed))
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN


if __name__ == "__main__":
    sys.exit(main())
