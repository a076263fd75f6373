"""Latency: from the moment the simulator turns a cluster ``online`` to the moment a subscriber
receives its ``status_changed`` (to ``online``) and its ``connection_ready``.

The simulator runs in this process, so the instant each cluster turns online (its
``ready_at`` on the monotonic clock) and the instant each event arrives are read from the same
clock. Online instants are spread uniformly over a whole poll interval (``ready_jitter_s``), so
every phase of the poll cycle is sampled. The rate limit is not in the way (latency, not
budget, is measured here).

Baseline, measured in the same run on the same broker: how late RabbitMQ itself brings back a
message from a delay queue with the poll interval as its TTL (the floor under any watch that
lives in the broker). Goal: p99 of both events under one poll interval plus 0.5 s.
"""

from __future__ import annotations

import asyncio
import sys
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from msgspec import Struct

from bench._harness import (
    EventLog,
    bench_arguments,
    command,
    emit,
    fresh_vhost,
    percentile,
    print_table,
    publish_many,
    running_service,
    running_simulator,
    service_env,
)
from contracts.events import ConnectionReady, StatusChanged
from contracts.names import COMMAND_EXCHANGE, COMMAND_ROUTING_KEY, EVENT_EXCHANGE
from service.simulator import SimulatorConfig

GOAL_MARGIN_S = 0.5
UNLIMITED = 1_000_000_000
READY = "database.cluster.connection_ready"
PROBE_QUEUE = "bench.latency.probe"


class Size(Struct, frozen=True, kw_only=True):
    """One size of the benchmark."""

    clusters: int
    poll_interval_s: float
    ready_after_s: float  # online at ready_after_s + uniform(0, poll_interval_s)
    probes: int


QUICK = Size(clusters=200, poll_interval_s=5.0, ready_after_s=10.0, probes=100)
FULL = Size(clusters=1000, poll_interval_s=10.0, ready_after_s=20.0, probes=300)


class ProbeDelays:
    """The baseline: messages sent through a TTL queue of one poll interval, and how much
    later than the TTL each came back."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.late_s: list[float] = []

    async def run(self, connection: aio_pika.abc.AbstractRobustConnection, count: int) -> None:
        """Send ``count`` probes spread over one TTL; collect them as they come back."""
        channel = await connection.channel(publisher_confirms=True)
        back = await channel.declare_queue(f"{PROBE_QUEUE}.back", exclusive=True)
        delay = await channel.declare_queue(
            f"{PROBE_QUEUE}.delay",
            exclusive=True,
            arguments={
                # The same kind of queue as the service's watch delay: quorum queues cannot
                # be exclusive, so this one is classic; the TTL mechanics are RabbitMQ's own.
                "x-message-ttl": round(self.ttl_s * 1000),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": back.name,
            },
        )
        done = asyncio.Event()

        async def on_back(message: AbstractIncomingMessage) -> None:
            sent = float(message.body.decode())
            self.late_s.append(time.time() - sent - self.ttl_s)
            await message.ack()
            if len(self.late_s) >= count:
                done.set()

        await back.consume(on_back)
        for _ in range(count):
            await channel.default_exchange.publish(
                aio_pika.Message(str(time.time()).encode()), delay.name, timeout=10
            )
            await asyncio.sleep(self.ttl_s / count)
        await asyncio.wait_for(done.wait(), timeout=self.ttl_s * 3 + 30)
        await channel.close()


async def benchmark(size: Size, label: str) -> dict[str, object]:
    """One run: the probes and the service side by side on one broker."""
    poll = size.poll_interval_s
    config = SimulatorConfig(
        ready_after_s=size.ready_after_s,
        ready_jitter_s=poll,
        rate_limit_per_minute=UNLIMITED,
        rate_limit_per_hour=UNLIMITED,
    )
    async with fresh_vhost("latency") as amqp_url, running_simulator(config) as simulator:
        connection = await aio_pika.connect_robust(amqp_url)
        try:
            env = service_env(
                amqp_url,
                simulator.base_url,
                poll_interval_s=poll,
                create_timeout_s=3600,
                rate_limit_per_minute=UNLIMITED,
                rate_limit_per_hour=UNLIMITED,
            )
            async with running_service(env, "latency"):
                events = EventLog()
                await events.subscribe(connection, EVENT_EXCHANGE)
                probes = ProbeDelays(poll)
                probing = asyncio.create_task(probes.run(connection, size.probes))
                await publish_many(
                    connection,
                    (command(f"lat-{i}") for i in range(size.clusters)),
                    exchange=COMMAND_EXCHANGE,
                    routing_key=COMMAND_ROUTING_KEY,
                )
                await events.wait_until(
                    lambda: events.count(READY) >= size.clusters,
                    timeout=size.ready_after_s + 4 * poll + 120,
                    what="provisioning",
                )
                await probing
        finally:
            await connection.close()
        online_at = {
            record.id: record.ready_at
            for record in simulator.account
            if record.ready_at is not None
        }
    status_s: list[float] = []
    ready_s: list[float] = []
    for arrived, event in events.received:
        if isinstance(event, StatusChanged) and event.data.status == "online":
            status_s.append(arrived - online_at[event.data.cluster_id])
        elif isinstance(event, ConnectionReady):
            ready_s.append(arrived - online_at[event.data.cluster_id])
    rows = []
    for name, sample in (
        ("status_changed (online)", status_s),
        ("connection_ready", ready_s),
        ("baseline: broker delay past its TTL", probes.late_s),
    ):
        p50, p99 = percentile(sample, 50), percentile(sample, 99)
        rows.append((name, len(sample), p50, p99, p50 / poll, p99 / poll, max(sample)))
    print_table(
        f"Latency ({label}): {size.clusters} clusters, poll interval {poll:g} s, online "
        f"{size.ready_after_s:g}-{size.ready_after_s + poll:g} s after create",
        ("from online to", "n", "p50 s", "p99 s", "p50/poll", "p99/poll", "max s"),
        rows,
    )
    status_p99 = percentile(status_s, 99)
    ready_p99 = percentile(ready_s, 99)
    figures: dict[str, object] = {
        "benchmark": "latency",
        "size": label,
        "clusters": size.clusters,
        "poll_interval_s": poll,
        "status_changed_p50_s": round(percentile(status_s, 50), 3),
        "status_changed_p99_s": round(status_p99, 3),
        "connection_ready_p50_s": round(percentile(ready_s, 50), 3),
        "connection_ready_p99_s": round(ready_p99, 3),
        "connection_ready_p99_over_poll": round(ready_p99 / poll, 3),
        "baseline_broker_late_p50_s": round(percentile(probes.late_s, 50), 3),
        "baseline_broker_late_p99_s": round(percentile(probes.late_s, 99), 3),
        "limit_s": poll + GOAL_MARGIN_S,
    }
    figures["goal_met"] = (
        len(ready_s) == size.clusters
        and len(status_s) == size.clusters
        and max(status_p99, ready_p99) < poll + GOAL_MARGIN_S
    )
    return figures


def main() -> int:
    """``python -m bench.latency [--quick]``."""
    args = bench_arguments(__doc__.splitlines()[0] if __doc__ else "latency")
    size, label = (QUICK, "quick") if args.quick else (FULL, "full")
    emit(asyncio.run(benchmark(size, label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
