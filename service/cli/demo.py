"""``provisioner demo``: the simulator and the service in one process, on the local broker.

It submits sample requests (several engines, one with users and databases, one bad),
shows each request's progress live, and ends with a summary table. Exit 0 when every
good request reached ``connection_ready`` and the bad one was rejected and parked.

The demo uses its own exchange and queue names (prefix ``provisioner-demo``), so it never
touches the queues of a real deployment on the same broker, and can empty its own.

Its live table needs rich, which only the ``demo`` extra installs (``make demo`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aio_pika
import msgspec

from contracts.events import ConnectionReady, Event, Failed, Rejected, StatusChanged, decode_event
from service.app import Service
from service.broker.connection import connect
from service.broker.topology import Topology, message_count
from service.config import load_settings
from service.observability import configure_logging
from service.simulator import Simulator, SimulatorConfig

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

__all__ = ["SAMPLES", "add_arguments", "main"]

PREFIX: Final = "provisioner-demo"
BAD_REQUEST_ID: Final = "demo-bad-request"

SAMPLES: Final[list[dict[str, Any]]] = [
    {
        "request_id": "demo-pg-with-users",
        "cluster": {
            "name": "demo-orders-pg",
            "engine": "pg",
            "version": "17",
            "region": "nyc3",
            "size": "db-s-2vcpu-4gb",
            "num_nodes": 2,
            "tags": ["team-orders"],
            "users": [
                {"name": "orders-app"},
                {"name": "orders-replica", "settings": {"pg_allow_replication": True}},
            ],
            "db_names": ["orders", "orders_audit"],
        },
        "metadata": {"team": "orders"},
    },
    {
        "request_id": "demo-mysql",
        "cluster": {
            "name": "demo-shop-mysql",
            "engine": "mysql",
            "version": "8",
            "region": "ams3",
            "size": "db-s-1vcpu-1gb",
            "num_nodes": 1,
            "users": [{"name": "shop", "mysql_settings": {"auth_plugin": "caching_sha2_password"}}],
        },
    },
    {
        "request_id": "demo-valkey",
        "cluster": {
            "name": "demo-cache-valkey",
            "engine": "valkey",
            "region": "fra1",
            "size": "db-s-1vcpu-1gb",
            "num_nodes": 1,
        },
    },
    {
        "request_id": "demo-kafka",
        "cluster": {
            "name": "demo-events-kafka",
            "engine": "kafka",
            "region": "lon1",
            "size": "db-s-2vcpu-2gb",
            "num_nodes": 3,
            "users": [
                {
                    "name": "ingest",
                    "settings": {"acl": [{"topic": "orders.*", "permission": "produce"}]},
                }
            ],
        },
    },
    {
        "request_id": "demo-mongodb",
        "cluster": {
            "name": "demo-catalog-mongo",
            "engine": "mongodb",
            "version": "7.0",
            "region": "sfo3",
            "size": "db-s-1vcpu-1gb",
            "num_nodes": 1,
        },
    },
    {
        "request_id": BAD_REQUEST_ID,
        "cluster": {
            "name": "demo-bad",
            "engine": "redis",
            "region": "nyc3",
            "size": "db-s-1vcpu-1gb",
            "num_node": 1,
            "status": "online",
        },
    },
]


class Progress(msgspec.Struct):
    """What the demo knows of one request."""

    request_id: str
    engine: str
    started: float
    status: str = "submitted"
    outcome: str = "…"
    cluster_id: str = ""
    detail: str = ""
    finished: float | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``provisioner demo``."""
    parser.add_argument(
        "--ready-after", type=float, default=3.0, help="seconds a simulated cluster takes"
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="give up after this long")


def _render(rows: dict[str, Progress], title: str) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for column in ("request", "engine", "status", "outcome", "s", "detail"):
        table.add_column(column, no_wrap=column != "detail", overflow="ellipsis")
    now = time.monotonic()
    for p in rows.values():
        took = (p.finished or now) - p.started
        style = {"connection_ready": "green", "rejected": "yellow", "failed": "red"}.get(
            p.outcome, ""
        )
        table.add_row(
            p.request_id.removeprefix("demo-"),
            p.engine,
            p.status,
            f"[{style}]{p.outcome}[/]" if style else p.outcome,
            f"{took:.1f}",
            p.detail,
        )
    return table


def _apply(rows: dict[str, Progress], event: Event) -> None:
    request_id = getattr(event.data, "request_id", None)
    row = rows.get(request_id or "")
    if row is None:
        return
    match event:
        case StatusChanged(data=data):
            row.status, row.cluster_id = data.status, data.cluster_id
        case ConnectionReady(data=data):
            row.outcome, row.finished = "connection_ready", time.monotonic()
            users = ", ".join(u.name for u in data.users if u.role != "primary")
            row.detail = "; ".join(
                part for part in (users and f"users {users}", ", ".join(data.db_names)) if part
            )
        case Rejected(data=data):
            row.outcome, row.finished = "rejected", time.monotonic()
            row.status = "-"
            row.detail = "; ".join(e.path.removeprefix("$.cluster.") for e in data.errors)
        case Failed(data=data):
            row.outcome, row.finished = "failed", time.monotonic()
            row.detail = f"{data.reason}: {data.message}"


async def _demo(args: argparse.Namespace, console: Console) -> int:
    from rich.live import Live

    token = secrets.token_urlsafe(24)
    simulator = Simulator(
        SimulatorConfig(
            token=token, ready_after_s=args.ready_after, ready_jitter_s=1.0, not_found_grace_s=0.3
        )
    )
    api_url = await simulator.start()
    base = load_settings(require_token=False)
    settings = msgspec.structs.replace(
        base,
        token=token,
        api_url=api_url,
        poll_interval_s=0.5,
        create_timeout_s=args.timeout,
        http_port=0,
        http_host="127.0.0.1",
        retry_delays_s=(0.5, 1.0, 2.0),
        not_found_grace_s=5.0,
        managed_tag="provisioner-demo",
        shutdown_grace_s=5.0,
    )
    topology = Topology.prefixed(
        PREFIX, poll_interval_s=settings.poll_interval_s, retry_delays_s=settings.retry_delays_s
    )
    service = Service(settings, topology=topology)
    await service.start(connect_attempts=10)
    connection = await connect(settings.amqp_urls, order=settings.amqp_url_order, attempts=10)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        for name in (topology.requests_queue, topology.rejected_queue, topology.watch_queue):
            await (await channel.get_queue(name)).purge()
        events = await channel.declare_queue(exclusive=True)
        await events.bind(topology.events_exchange, routing_key="#")
        rows: dict[str, Progress] = {}
        changed = asyncio.Event()

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                _apply(rows, decode_event(message.body))
                changed.set()

        await events.consume(on_event)
        exchange = await channel.get_exchange(topology.commands_exchange)
        for sample in SAMPLES:
            rows[sample["request_id"]] = Progress(
                sample["request_id"], sample["cluster"]["engine"], time.monotonic()
            )
            await exchange.publish(
                aio_pika.Message(
                    msgspec.json.encode(sample),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    user_id=settings.amqp_user,
                ),
                topology.command_routing_key,
                mandatory=True,
                timeout=10,
            )
        deadline = time.monotonic() + args.timeout
        with Live(_render(rows, "provisioning…"), console=console, refresh_per_second=4) as live:
            while time.monotonic() < deadline and any(r.finished is None for r in rows.values()):
                changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=0.25)
                live.update(_render(rows, "provisioning…"))
        parked_count = await message_count(connection, topology.rejected_queue)
        await (await channel.get_queue(topology.rejected_queue)).purge()
    finally:
        await connection.close()
        await service.stop()
        await simulator.stop()
    console.print(_render(rows, "summary"))
    good = [r for r in rows.values() if r.request_id != BAD_REQUEST_ID]
    ok = all(r.outcome == "connection_ready" for r in good)
    rejected = rows[BAD_REQUEST_ID].outcome == "rejected" and parked_count >= 1
    console.print(
        f"{sum(r.outcome == 'connection_ready' for r in good)}/{len(good)} good requests reached "
        f"connection_ready; bad request rejected: {rejected} (parked messages: {parked_count})"
    )
    return 0 if ok and rejected else 1


def main(args: argparse.Namespace) -> int:
    """Entry point of ``provisioner demo``."""
    try:
        from rich.console import Console
    except ModuleNotFoundError:
        print(
            "provisioner demo: its live table needs rich, which the `demo` extra installs: "
            "pip install 'do-db-provisioner[demo]' (make demo does)",
            file=sys.stderr,
        )
        return 2
    log_path = Path(tempfile.gettempdir()) / f"provisioner-demo-{os.getpid()}.log"
    handler = logging.FileHandler(log_path)
    configure_logging("json", "INFO")
    root = logging.getLogger()
    for existing in list(root.handlers):
        handler.setFormatter(existing.formatter)
        root.removeHandler(existing)
    root.addHandler(handler)
    console = Console()
    console.print(f"service logs: {log_path}")
    return asyncio.run(_demo(args, console))
