"""Scale: commands a second with 1, 2 and 3 replicas on a three-node RabbitMQ cluster, against
one replica on one node, and the fleet's list calls per poll interval.

The cluster is the test suite's (``tests.chaos.rabbitmq_cluster``: three nodes of the
installed ``rabbitmq-server`` on this machine, their own ports and directories, removed at
the end). Each replica is a ``provisioner run`` process given every node's URL, starting at
a node of its own (replica 1 at node 1, ...), so the replicas spread as a shuffled list
spreads them in production. The baseline is one replica on the machine's single broker node.

Throughput: the accept path of ``bench.throughput`` (valid commands, a simulator with no rate
limit), commands published once every replica is ready; the rate is results a second in the
steady middle of the run (from the result at 10 % to the one at 90 %). Twice over: with the
simulator answering at once, where everything is CPU-bound and on two cores a replica more
only takes CPU from the three broker nodes (reported, not judged), and with the simulator
answering each call after ``API_LATENCY_S``, as DigitalOcean answers in hundreds of
milliseconds: a replica then holds at most its prefetch of commands in flight, which is what
a replica more adds (judged).

Polling: clusters are created and stay in ``creating``; then the list calls
(``GET /v2/databases``) the whole fleet makes are counted over some poll intervals.

Goals: adding a replica never lowers throughput with the API's latency (each step at least
``STEP_FLOOR`` of the one before: the runs on a shared two-core machine vary by about that
much from one run to the next), and the fleet's list calls per interval with 3 replicas are
at most 1.25 times one replica's.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

from msgspec import Struct

from bench._harness import (
    EventLog,
    bench_arguments,
    command,
    emit,
    fresh_vhost,
    print_table,
    publish_many,
    running_service,
    running_simulator,
    service_env,
)
from service.broker.connection import connect
from service.broker.topology import Topology, declare
from service.config import DEFAULT_COMMAND_PREFETCH
from service.simulator import Simulator, SimulatorConfig
from tests.chaos.rabbitmq_cluster import RabbitCluster

UNLIMITED: Final = 1_000_000_000
STEP_FLOOR: Final = 0.9
API_LATENCY_S: Final = 0.25  # each simulated API call, in the judged runs
POLL_GOAL: Final = 1.25
THROUGHPUT_POLL_S: Final = 600.0  # watches stay in their delay queue while throughput counts
STATUS_CHANGED: Final = "database.cluster.status_changed"
LIST: Final = "GET /v2/databases"


class Size(Struct, frozen=True, kw_only=True):
    """One size of the benchmark."""

    commands: int  # per throughput run
    rounds: int  # throughput runs of each configuration
    watched: int  # clusters followed while the list calls are counted
    poll_interval_s: float
    measure_s: float


QUICK = Size(commands=600, rounds=2, watched=30, poll_interval_s=1.0, measure_s=8.0)
FULL = Size(commands=1500, rounds=3, watched=100, poll_interval_s=2.0, measure_s=30.0)


def _rate(times: list[float]) -> float:
    first = len(times) // 10
    last = len(times) - 1 - len(times) // 10
    seconds = times[last] - times[first]
    return (last - first) / seconds if seconds > 0 else 0.0


@contextlib.asynccontextmanager
async def _replicas(envs: list[dict[str, str]], name: str) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for n, env in enumerate(envs):
            await stack.enter_async_context(running_service(env, f"{name}-{n}"))
        yield


def _envs(urls: list[str], simulator: Simulator, poll_interval_s: float) -> list[dict[str, str]]:
    return [
        {
            **service_env(
                url,
                simulator.base_url,
                poll_interval_s=poll_interval_s,
                command_prefetch=DEFAULT_COMMAND_PREFETCH,
                create_timeout_s=3600,
                rate_limit_per_minute=UNLIMITED,
                rate_limit_per_hour=UNLIMITED,
            ),
            "PROVISIONER_AMQP_URL_ORDER": "listed",
        }
        for url in urls
    ]


async def throughput(urls: list[str], size: Size, run: str, latency_s: float = 0.0) -> float:
    """Commands a second through ``len(urls)`` replicas, one per URL list, against a
    simulator that answers each call after ``latency_s``."""
    config = SimulatorConfig(
        ready_after_s=3600,
        rate_limit_per_minute=UNLIMITED,
        rate_limit_per_hour=UNLIMITED,
        latency_s=latency_s,
    )
    topology = Topology(poll_interval_s=THROUGHPUT_POLL_S)
    connection = await connect(urls[0], order="listed")
    events = EventLog()
    try:
        channel = await connection.channel()
        await declare(channel, topology)
        await channel.close()
        async with running_simulator(config) as simulator:
            await events.subscribe(connection, topology.events_exchange)
            async with _replicas(_envs(urls, simulator, THROUGHPUT_POLL_S), f"scale-{run}"):
                # Every replica is up (and done with its imports) before the first command:
                # queued before, the first replica would take most of them while the others
                # are still starting, and their start-up would be counted against them.
                await publish_many(
                    connection,
                    (command(f"sc-{run}-{i}") for i in range(size.commands)),
                    routing_key=topology.requests_queue,
                )
                await events.wait_until(
                    lambda: events.count(STATUS_CHANGED) >= size.commands,
                    timeout=600,
                    what=f"scale {run}",
                )
            await events.close()
    finally:
        await connection.close()
    return _rate(events.times(STATUS_CHANGED)[: size.commands])


async def list_calls(urls: list[str], size: Size, run: str) -> float:
    """The fleet's list calls per poll interval while ``size.watched`` clusters are
    followed by ``len(urls)`` replicas."""
    config = SimulatorConfig(
        ready_after_s=3600, rate_limit_per_minute=UNLIMITED, rate_limit_per_hour=UNLIMITED
    )
    topology = Topology(poll_interval_s=size.poll_interval_s)
    connection = await connect(urls[0], order="listed")
    events = EventLog()
    try:
        channel = await connection.channel()
        await declare(channel, topology)
        await channel.close()
        async with running_simulator(config) as simulator:
            await events.subscribe(connection, topology.events_exchange)
            async with _replicas(_envs(urls, simulator, size.poll_interval_s), f"poll-{run}"):
                await publish_many(
                    connection,
                    (command(f"pl-{run}-{i}") for i in range(size.watched)),
                    routing_key=topology.requests_queue,
                )
                await events.wait_until(
                    lambda: events.count(STATUS_CHANGED) >= size.watched,
                    timeout=300,
                    what=f"poll {run}",
                )
                # The first looks of the last clusters come one interval later: skip them.
                await asyncio.sleep(size.poll_interval_s * 2)
                before = simulator.stats().count(LIST)
                started = time.monotonic()
                await asyncio.sleep(size.measure_s)
                calls = simulator.stats().count(LIST) - before
                intervals = (time.monotonic() - started) / size.poll_interval_s
            await events.close()
    finally:
        await connection.close()
    return calls / intervals


async def benchmark(size: Size, label: str) -> dict[str, object]:
    """The cluster, the runs, the table and the figures."""
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    cluster = RabbitCluster(root / "cluster")
    rates: dict[str, list[float]] = {
        "one node, 1": [],
        **{_cpu_bound(count): [] for count in (1, 2, 3)},
        **{_api_bound(count): [] for count in (1, 2, 3)},
    }
    polls: dict[int, float] = {}
    try:
        began = time.monotonic()
        await cluster.start()
        print(f"a cluster of 3 nodes in {time.monotonic() - began:.0f} s", file=sys.stderr)
        for n in range(size.rounds):
            # Every other round in the reverse order, so that drift in the load of a shared
            # machine favours no configuration.
            for count in (0, 1, 2, 3) if n % 2 == 0 else (3, 2, 1, 0):
                if count == 0:
                    async with fresh_vhost("scale") as single:
                        rates["one node, 1"].append(await throughput([single], size, f"{n}s"))
                    continue
                for latency_s, key in (
                    (0.0, _cpu_bound(count)),
                    (API_LATENCY_S, _api_bound(count)),
                ):
                    vhost = f"scale-{n}-{count}-{'api' if latency_s else 'cpu'}"
                    await cluster.add_vhost(vhost)
                    urls = [cluster.urls(vhost, first=i) for i in range(count)]
                    rates[key].append(await throughput(urls, size, f"{n}c{count}", latency_s))
        for count in (1, 3):
            vhost = f"poll-{count}"
            await cluster.add_vhost(vhost)
            urls = [cluster.urls(vhost, first=i) for i in range(count)]
            polls[count] = await list_calls(urls, size, f"p{count}")
    finally:
        await cluster.close()
        shutil.rmtree(root, ignore_errors=True)
    median = {k: statistics.median(v) for k, v in rates.items()}
    print_table(
        f"Scale ({label}): {size.commands} commands per run, {size.rounds} run(s) each",
        ("where, replicas", "cmd/s (median)", "runs", "vs one node (API rows: vs 1 replica)"),
        [
            (k, median[k], " ".join(f"{r:.1f}" for r in v), median[k] / median[_base(k)])
            for k, v in rates.items()
        ],
    )
    print_table(
        f"Fleet list calls per poll interval ({size.watched} clusters followed, poll "
        f"{size.poll_interval_s:g} s, counted over {size.measure_s:g} s)",
        ("replicas", "list calls per interval", "vs one replica"),
        [(count, calls, calls / max(polls[1], 1e-9)) for count, calls in polls.items()],
    )
    steps = _steps(median, _cpu_bound)
    api_steps = _steps(median, _api_bound)
    poll_ratio = polls[3] / max(polls[1], 1e-9)
    return {
        "benchmark": "scale",
        "size": label,
        "one_node_1_replica_per_s": round(median["one node, 1"], 1),
        "cluster_1_replica_per_s": round(median[_cpu_bound(1)], 1),
        "cluster_2_replicas_per_s": round(median[_cpu_bound(2)], 1),
        "cluster_3_replicas_per_s": round(median[_cpu_bound(3)], 1),
        "step_ratios": [round(s, 3) for s in steps],
        "api_latency_s": API_LATENCY_S,
        "api_bound_1_replica_per_s": round(median[_api_bound(1)], 1),
        "api_bound_2_replicas_per_s": round(median[_api_bound(2)], 1),
        "api_bound_3_replicas_per_s": round(median[_api_bound(3)], 1),
        "api_bound_step_ratios": [round(s, 3) for s in api_steps],
        "list_calls_per_interval_1_replica": round(polls[1], 3),
        "list_calls_per_interval_3_replicas": round(polls[3], 3),
        "list_calls_ratio": round(poll_ratio, 3),
        "cpu_bound_steps_met": all(s >= STEP_FLOOR for s in steps),
        "goal_met": all(s >= STEP_FLOOR for s in api_steps) and poll_ratio <= POLL_GOAL,
    }


def _steps(median: dict[str, float], row: Callable[[int], str]) -> list[float]:
    """Each added replica's throughput over the one before, for the rows ``row`` names."""
    return [median[row(count + 1)] / median[row(count)] for count in (1, 2)]


def _cpu_bound(count: int) -> str:
    """The table's name of the runs of ``count`` replicas against a simulator answering at once."""
    return f"cluster, {count}"


def _base(key: str) -> str:
    """The row a row of the table is compared with."""
    return _api_bound(1) if "API" in key else "one node, 1"


def _api_bound(count: int) -> str:
    """The table's name of the runs of ``count`` replicas with the API's latency."""
    return f"cluster, {count}, API {API_LATENCY_S:g} s"


def main() -> int:
    """``python -m bench.scale [--quick]``."""
    args = bench_arguments(__doc__.splitlines()[0] if __doc__ else "scale")
    size, label = (QUICK, "quick") if args.quick else (FULL, "full")
    emit(asyncio.run(benchmark(size, label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
