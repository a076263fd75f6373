"""Memory: the peak resident memory of one service process following 100 clusters, and
following many thousands.

Watches live in RabbitMQ, not in the process, so the many-cluster run should cost about what
the small one costs. Each run starts from a prepared account and broker, as after a restart:
the clusters exist in the simulator (stuck in ``creating``, as some real ones get) and their
watch messages wait in the watch queue. Then ``provisioner run`` starts as a child process and
follows them until their deadline, a few poll intervals later, fails each with ``timeout``; the
run ends when every one of them has. The figure is the child's ``VmHWM`` (peak resident set)
from ``/proc``. The 100-cluster run, in the same benchmark, is the baseline. The quick size
follows the same 10,000 clusters as the full one, with a shorter poll interval and deadline.
Printed besides: the list calls of each run, and what each cluster past the baseline's added
to the peak (the slope, in KiB per cluster).
"""

from __future__ import annotations

import asyncio
import sys
import time

import aio_pika
from msgspec import Struct

from bench._harness import (
    EventLog,
    bench_arguments,
    emit,
    fresh_vhost,
    print_table,
    publish_many,
    running_service,
    running_simulator,
    service_env,
)
from contracts.digitalocean import DatabaseClusterCreate
from service.broker.topology import Topology, declare
from service.provisioning.commands import request_tag
from service.provisioning.messages import WATCH_CONTENT_TYPE, WatchState, encode_watch
from service.simulator import Simulator, SimulatorConfig

MANAGED_TAG = "provisioner"
UNLIMITED = 1_000_000_000
FAILED = "database.cluster.failed"
GOAL_RATIO = 1.2


class Size(Struct, frozen=True, kw_only=True):
    """One size of the benchmark."""

    baseline_clusters: int
    clusters: int
    poll_interval_s: float
    cycles: int  # poll intervals each watch is followed before its deadline


QUICK = Size(baseline_clusters=100, clusters=10_000, poll_interval_s=4.0, cycles=2)
FULL = Size(baseline_clusters=100, clusters=10_000, poll_interval_s=10.0, cycles=3)


class Run(Struct, frozen=True, kw_only=True):
    """What one run measured."""

    clusters: int
    peak_kb: int
    last_rss_kb: int
    seconds: float
    list_calls: int
    other_calls: int


def prepare_account(simulator: Simulator, clusters: int, deadline: float) -> list[bytes]:
    """Clusters straight into the simulated account, and the watch message of each."""
    now = time.monotonic()
    wall = time.time()
    watches = []
    for i in range(clusters):
        request_id = f"mem-{i}"
        body = DatabaseClusterCreate(
            name=f"mem-{i}",
            engine="pg",
            version="17",
            region="nyc3",
            size="db-s-1vcpu-2gb",
            num_nodes=1,
            tags=[MANAGED_TAG, request_tag(MANAGED_TAG, "guest", request_id)],
        )
        record = simulator.account.create(body, now, simulator.config)
        watch = WatchState(
            request_id=request_id,
            cluster_id=record.id,
            name=record.name,
            engine=record.engine,
            region=record.region,
            status="creating",
            deadline=deadline,
            accepted_at=wall,
        )
        watches.append(encode_watch(watch))
    return watches


async def run(size: Size, clusters: int) -> Run:
    """Follow ``clusters`` stuck clusters through one service process; its memory."""
    poll = size.poll_interval_s
    config = SimulatorConfig(
        stuck_fraction=1.0, rate_limit_per_minute=UNLIMITED, rate_limit_per_hour=UNLIMITED
    )
    topology = Topology(poll_interval_s=poll)
    async with fresh_vhost("memory") as amqp_url, running_simulator(config) as simulator:
        connection = await aio_pika.connect_robust(amqp_url)
        try:
            channel = await connection.channel()
            await declare(channel, topology)
            await channel.close()
            events = EventLog()
            await events.subscribe(connection, topology.events_exchange)
            # Every watch is followed for `cycles` poll intervals from now, then times out.
            deadline = time.time() + size.cycles * poll
            watches = prepare_account(simulator, clusters, deadline)
            await publish_many(
                connection,
                watches,
                routing_key=topology.watch_queue,
                content_type=WATCH_CONTENT_TYPE,
            )
            del watches
            env = service_env(
                amqp_url,
                simulator.base_url,
                poll_interval_s=poll,
                create_timeout_s=3600,
                managed_tag=MANAGED_TAG,
                rate_limit_per_minute=UNLIMITED,
                rate_limit_per_hour=UNLIMITED,
            )
            started = time.monotonic()
            async with running_service(env, f"memory-{clusters}") as service:
                rss_kb = 0
                peak_kb = 0

                def sample() -> bool:
                    nonlocal rss_kb, peak_kb
                    rss_kb, peak_kb = service.memory_kb()
                    return events.count(FAILED) >= clusters

                await events.wait_until(
                    sample, timeout=size.cycles * poll + 300, what="watches timing out"
                )
                seconds = time.monotonic() - started
        finally:
            await connection.close()
        stats = simulator.stats()
    lists = stats.count("GET /v2/databases")
    return Run(
        clusters=clusters,
        peak_kb=peak_kb,
        last_rss_kb=rss_kb,
        seconds=seconds,
        list_calls=lists,
        other_calls=stats.requests - lists,
    )


async def benchmark(size: Size, label: str) -> dict[str, object]:
    """The baseline run, the large run, the table and the figures."""
    baseline = await run(size, size.baseline_clusters)
    large = await run(size, size.clusters)
    rows = [
        (
            r.clusters,
            r.peak_kb / 1024,
            r.last_rss_kb / 1024,
            r.seconds,
            r.list_calls,
            r.other_calls,
        )
        for r in (baseline, large)
    ]
    print_table(
        f"Memory ({label}): one service process, clusters stuck in creating, poll interval "
        f"{size.poll_interval_s:g} s, each followed {size.cycles} intervals",
        ("clusters", "peak RSS MiB", "RSS at end MiB", "seconds", "list calls", "other calls"),
        rows,
    )
    ratio = large.peak_kb / baseline.peak_kb
    per_cluster_kib = (large.peak_kb - baseline.peak_kb) / (large.clusters - baseline.clusters)
    print(f"peak RSS per cluster past the baseline's: {per_cluster_kib:.3f} KiB")
    return {
        "benchmark": "memory",
        "size": label,
        "baseline_clusters": baseline.clusters,
        "baseline_peak_rss_mib": round(baseline.peak_kb / 1024, 1),
        "clusters": large.clusters,
        "peak_rss_mib": round(large.peak_kb / 1024, 1),
        "per_cluster_kib": round(per_cluster_kib, 3),
        "list_calls": large.list_calls,
        "ratio": round(ratio, 3),
        "goal_met": ratio <= GOAL_RATIO,
    }


def main() -> int:
    """``python -m bench.memory [--quick]``."""
    args = bench_arguments(__doc__.splitlines()[0] if __doc__ else "memory")
    size, label = (QUICK, "quick") if args.quick else (FULL, "full")
    emit(asyncio.run(benchmark(size, label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
