"""Watch cost: what following clusters costs per poll interval when they are created one at a
time, as a production account sees them, not all at once.

Clusters are requested one every ``gap_s`` for ``trickle_s`` seconds and stay in ``creating``
(as some real ones do for a long while). Once the last command is in, the service does nothing
but follow them, and the benchmark counts the polling calls it makes (``GET /v2/databases`` and
``GET /v2/databases/{id}``) over ``measure_s`` seconds: polling calls per poll interval per
replica. Three runs in the same benchmark, against the same broker and simulator settings:

* list mode, one replica: new clusters join the wave of watches already travelling, so the
  figure should be that of one cluster polled on its own: one call per interval;
* list mode, two replicas: each replica lists for the watches it holds, so about two;
* ``per-cluster`` mode, one replica (the baseline): one GET per cluster per interval.

So that a service which stopped looking cannot pass for a cheap one, a few clusters turn
``online`` a third of the way into the counted time, and each run must deliver their
``connection_ready`` within one poll interval plus 0.5 s.

Goal: in list mode with one replica, at most 1.25 polling calls per poll interval, whatever
the number of clusters; and every run sees its probes online in time. The two-replica figure
is reported, not judged: waves that replicas start apart are merged only when they start
within a moment of each other, so it lies between one and two calls per replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from typing import Final, Literal

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from msgspec import Struct

from bench._harness import (
    PRODUCER,
    EventLog,
    bench_arguments,
    command,
    emit,
    fresh_vhost,
    print_table,
    running_service,
    running_simulator,
    service_env,
)
from contracts.events import ConnectionReady
from contracts.names import COMMAND_EXCHANGE, COMMAND_ROUTING_KEY, EVENT_EXCHANGE
from service.simulator import Simulator, SimulatorConfig

UNLIMITED: Final = 1_000_000_000
GOAL: Final = 1.25
PROBES: Final = 5  # clusters turned online while the calls are counted
MARGIN_S: Final = 0.5
READY: Final = "database.cluster.connection_ready"
POLLING: Final = ("GET /v2/databases", "GET /v2/databases/{id}")
Mode = Literal["list", "per-cluster"]


class Size(Struct, frozen=True, kw_only=True):
    """One size of the benchmark."""

    poll_interval_s: float
    gap_s: float  # between two commands
    trickle_s: float  # how long commands keep coming
    measure_s: float  # how long the calls are counted afterwards


QUICK = Size(poll_interval_s=1.0, gap_s=0.1, trickle_s=4.0, measure_s=6.0)
FULL = Size(poll_interval_s=5.0, gap_s=0.25, trickle_s=50.0, measure_s=30.0)


class Run(Struct, frozen=True, kw_only=True):
    """What one run counted."""

    mode: str
    replicas: int
    clusters: int
    polling_calls: int
    intervals: float
    probe_latency_s: list[float]  # online to connection_ready, for each probe seen

    @property
    def per_interval_per_replica(self) -> float:
        """Polling calls per poll interval per replica."""
        return self.polling_calls / self.intervals / self.replicas


def polling_calls(simulator: Simulator) -> int:
    """Every request so far that only asks how clusters are."""
    stats = simulator.stats()
    return sum(stats.count(endpoint) for endpoint in POLLING)


@contextlib.asynccontextmanager
async def replicas(env: dict[str, str], count: int, name: str) -> AsyncIterator[None]:
    """``count`` service processes sharing the queues."""
    async with contextlib.AsyncExitStack() as stack:
        for n in range(count):
            await stack.enter_async_context(running_service(env, f"{name}-{n}"))
        yield


async def trickle(connection: AbstractRobustConnection, size: Size, run: str) -> int:
    """One command every ``gap_s`` for ``trickle_s``; how many were sent."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange(COMMAND_EXCHANGE)
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < size.trickle_s:
            message = aio_pika.Message(
                command(f"wc-{run}-{sent}"),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                user_id=PRODUCER,
            )
            await exchange.publish(message, COMMAND_ROUTING_KEY, timeout=30)
            sent += 1
            # The pace of the producer, not a wait for the service.
            await asyncio.sleep(max(0.0, started + sent * size.gap_s - time.monotonic()))
        return sent
    finally:
        await channel.close()


async def run(size: Size, mode: Mode, count: int) -> Run:
    """Trickle clusters in through ``count`` replicas in ``mode``; count the polling calls
    once only watching is left."""
    config = SimulatorConfig(
        ready_after_s=3600, rate_limit_per_minute=UNLIMITED, rate_limit_per_hour=UNLIMITED
    )
    label = f"{mode}-{count}"
    async with fresh_vhost("watch-cost") as amqp_url, running_simulator(config) as simulator:
        env = service_env(
            amqp_url,
            simulator.base_url,
            poll_mode=mode,
            poll_interval_s=size.poll_interval_s,
            create_timeout_s=3600,
            rate_limit_per_minute=UNLIMITED,
            rate_limit_per_hour=UNLIMITED,
        )
        connection = await aio_pika.connect_robust(amqp_url)
        events = EventLog()
        try:
            await events.subscribe(connection, EVENT_EXCHANGE)
            async with replicas(env, count, f"watch-cost-{label}"):
                sent = await trickle(connection, size, label)
                # The last commands' first looks come one interval after them: skip that.
                await asyncio.sleep(size.poll_interval_s * 1.5)
                before = polling_calls(simulator)
                started = time.monotonic()
                online_at = turn_online(simulator, started + size.measure_s / 3)
                await asyncio.sleep(size.measure_s)
                calls = polling_calls(simulator) - before
                seconds = time.monotonic() - started
        finally:
            await connection.close()
        created = simulator.stats().count("POST /v2/databases")
        latency = [
            arrived - online_at[event.data.cluster_id]
            for arrived, event in events.received
            if isinstance(event, ConnectionReady) and event.data.cluster_id in online_at
        ]
    if created != sent:
        raise RuntimeError(f"{label}: {sent} commands sent, {created} clusters created")
    return Run(
        mode=mode,
        replicas=count,
        clusters=created,
        polling_calls=calls,
        intervals=seconds / size.poll_interval_s,
        probe_latency_s=latency,
    )


def turn_online(simulator: Simulator, at: float) -> dict[str, float]:
    """``PROBES`` clusters spread over the account turn online at ``at`` (monotonic, the
    simulator's clock); their ids and that instant."""
    records = list(simulator.account)
    chosen = records[:: max(1, len(records) // PROBES)][:PROBES]
    for record in chosen:
        record.ready_at = at
    return {record.id: at for record in chosen}


async def benchmark(size: Size, label: str) -> dict[str, object]:
    """The three runs, the table and the figures."""
    one = await run(size, "list", 1)
    two = await run(size, "list", 2)
    baseline = await run(size, "per-cluster", 1)
    print_table(
        f"Watch cost ({label}): a command every {size.gap_s:g} s for {size.trickle_s:g} s, "
        f"poll interval {size.poll_interval_s:g} s, polling counted over {size.measure_s:g} s",
        (
            "poll mode",
            "replicas",
            "clusters",
            "polling calls",
            "per interval per replica",
            "probes ready",
            "slowest probe s",
        ),
        [
            (
                r.mode,
                r.replicas,
                r.clusters,
                r.polling_calls,
                r.per_interval_per_replica,
                f"{len(r.probe_latency_s)}/{PROBES}",
                max(r.probe_latency_s, default=float("nan")),
            )
            for r in (one, two, baseline)
        ],
    )
    limit = size.poll_interval_s + MARGIN_S
    seen = [latency for r in (one, two, baseline) for latency in r.probe_latency_s]
    slowest = max(seen) if seen else None
    probes_in_time = all(
        len(r.probe_latency_s) == PROBES and max(r.probe_latency_s) < limit
        for r in (one, two, baseline)
    )
    ratio = baseline.per_interval_per_replica / max(one.per_interval_per_replica, 1e-9)
    return {
        "benchmark": "watch_cost",
        "size": label,
        "clusters": one.clusters,
        "list_calls_per_interval": round(one.per_interval_per_replica, 3),
        "list_calls_per_interval_per_replica_two_replicas": round(two.per_interval_per_replica, 3),
        "baseline_calls_per_interval": round(baseline.per_interval_per_replica, 1),
        "baseline_over_list": round(ratio, 1),
        "slowest_probe_s": round(slowest, 3) if slowest is not None else None,
        "probe_limit_s": limit,
        "goal_met": one.per_interval_per_replica <= GOAL and probes_in_time,
    }


def main() -> int:
    """``python -m bench.watch_cost [--quick]``."""
    args = bench_arguments(__doc__.splitlines()[0] if __doc__ else "watch cost")
    size, label = (QUICK, "quick") if args.quick else (FULL, "full")
    emit(asyncio.run(benchmark(size, label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
