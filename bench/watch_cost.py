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

Goal: in list mode, at most 1.25 polling calls per poll interval per replica, with one
replica and with two, whatever the number of clusters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Final, Literal

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from msgspec import Struct

from bench._harness import (
    bench_arguments,
    emit,
    fresh_vhost,
    print_table,
    running_service,
    running_simulator,
    service_env,
)
from service.simulator import Simulator, SimulatorConfig

UNLIMITED: Final = 1_000_000_000
GOAL: Final = 1.25
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

    @property
    def per_interval_per_replica(self) -> float:
        """Polling calls per poll interval per replica."""
        return self.polling_calls / self.intervals / self.replicas


def command(run: str, i: int) -> bytes:
    """A valid command for a plain cluster."""
    name = f"wc-{run}-{i}"
    cluster = {
        "name": name,
        "engine": "pg",
        "version": "17",
        "region": "nyc3",
        "size": "db-s-1vcpu-2gb",
        "num_nodes": 1,
    }
    return json.dumps({"request_id": name, "cluster": cluster}).encode()


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
        exchange = await channel.get_exchange("provisioner.commands")
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < size.trickle_s:
            message = aio_pika.Message(
                command(run, sent), delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            await exchange.publish(message, "database.cluster.create", timeout=30)
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
        async with replicas(env, count, f"watch-cost-{label}"):
            connection = await aio_pika.connect_robust(amqp_url)
            try:
                sent = await trickle(connection, size, label)
            finally:
                await connection.close()
            # The last commands' first looks come one interval after them: skip that.
            await asyncio.sleep(size.poll_interval_s * 1.5)
            before = polling_calls(simulator)
            started = time.monotonic()
            await asyncio.sleep(size.measure_s)
            calls = polling_calls(simulator) - before
            seconds = time.monotonic() - started
        created = simulator.stats().count("POST /v2/databases")
    if created != sent:
        raise RuntimeError(f"{label}: {sent} commands sent, {created} clusters created")
    return Run(
        mode=mode,
        replicas=count,
        clusters=created,
        polling_calls=calls,
        intervals=seconds / size.poll_interval_s,
    )


async def benchmark(size: Size, label: str) -> dict[str, object]:
    """The three runs, the table and the figures."""
    one = await run(size, "list", 1)
    two = await run(size, "list", 2)
    baseline = await run(size, "per-cluster", 1)
    print_table(
        f"Watch cost ({label}): a command every {size.gap_s:g} s for {size.trickle_s:g} s, "
        f"poll interval {size.poll_interval_s:g} s, polling counted over {size.measure_s:g} s",
        ("poll mode", "replicas", "clusters", "polling calls", "per interval per replica"),
        [
            (r.mode, r.replicas, r.clusters, r.polling_calls, r.per_interval_per_replica)
            for r in (one, two, baseline)
        ],
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
        "goal_met": one.per_interval_per_replica <= GOAL and two.per_interval_per_replica <= GOAL,
    }


def main() -> int:
    """``python -m bench.watch_cost [--quick]``."""
    args = bench_arguments(__doc__.splitlines()[0] if __doc__ else "watch cost")
    size, label = (QUICK, "quick") if args.quick else (FULL, "full")
    emit(asyncio.run(benchmark(size, label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
