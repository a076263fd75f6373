"""API economy: what provisioning costs in DigitalOcean requests, and how close to the rate
limit's ceiling it runs.

The simulator enforces DigitalOcean's limits with both windows shortened by the same factor
(250 requests per minute window and 5,000 per hour window, so the ratio between them stays
DigitalOcean's) and holds each new cluster in ``creating`` for a fixed delay. The service runs
twice in this benchmark, against a fresh simulator and virtual host each time:

* ``list`` (the default): one ``GET /v2/databases?tag_name=`` serves every due watch;
* ``per-cluster`` (``PROVISIONER_POLL_MODE=per-cluster``): one GET per cluster per tick, the
  baseline. Its demand grows with the clusters waiting (clusters / poll interval requests a
  second); where that exceeds the budget it could not provision the full set at all, so it is
  measured on the largest set whose polling stays within half the budget, and the table says so.

Figures: API calls per provisioned cluster, polling calls per cluster, 429s received, and the
makespan (first command published to last ``connection_ready`` received) against the lower
bound that the rate limit and the creation delay set (``makespan_bound``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Literal

import aio_pika
from msgspec import Struct

from bench._harness import (
    EventLog,
    bench_arguments,
    command,
    emit,
    fresh_vhost,
    makespan_bound,
    print_table,
    publish_many,
    running_service,
    running_simulator,
    service_env,
)
from contracts.names import COMMAND_EXCHANGE, COMMAND_ROUTING_KEY, EVENT_EXCHANGE
from service.simulator import SimulatorConfig

PER_MINUTE = 250
PER_HOUR = 5000
LONG_WINDOW_RATIO = 60  # an hour is sixty minutes, compressed or not

READY = "database.cluster.connection_ready"
FAILED = "database.cluster.failed"


class Size(Struct, frozen=True, kw_only=True):
    """One size of the benchmark."""

    clusters: int
    baseline_clusters: int
    window_s: float  # the compressed minute window
    ready_after_s: float
    poll_interval_s: float

    @property
    def rate_per_s(self) -> float:
        """The budget's average rate: requests a second."""
        return PER_MINUTE / self.window_s


QUICK = Size(
    clusters=300, baseline_clusters=30, window_s=8.0, ready_after_s=6.0, poll_interval_s=2.0
)
FULL = Size(
    clusters=1000, baseline_clusters=50, window_s=10.0, ready_after_s=24.0, poll_interval_s=8.0
)


class ModeResult(Struct, frozen=True, kw_only=True):
    """One run of the service in one poll mode."""

    mode: str
    clusters: int
    ready: int
    makespan_s: float
    calls: dict[str, dict[str, int]]
    too_many_requests: int

    def count(self, endpoint: str) -> int:
        """Calls to ``endpoint`` whatever their status."""
        return sum(self.calls.get(endpoint, {}).values())

    @property
    def polling_calls(self) -> int:
        """List calls plus per-cluster GETs: every request that only asks how a cluster is."""
        return self.count("GET /v2/databases") + self.count("GET /v2/databases/{id}")

    @property
    def total_calls(self) -> int:
        """Every API request the run made."""
        return sum(sum(by_status.values()) for by_status in self.calls.values())


async def run_mode(size: Size, mode: Literal["list", "per-cluster"], clusters: int) -> ModeResult:
    """Provision ``clusters`` clusters through one service in ``mode``; wait for them all."""
    window = size.window_s
    config = SimulatorConfig(
        ready_after_s=size.ready_after_s,
        rate_limit_per_minute=PER_MINUTE,
        rate_limit_per_hour=PER_HOUR,
        minute_window_s=window,
        hour_window_s=window * LONG_WINDOW_RATIO,
    )
    async with (
        fresh_vhost("economy") as amqp_url,
        running_simulator(config) as simulator,
    ):
        connection = await aio_pika.connect_robust(amqp_url)
        try:
            env = service_env(
                amqp_url,
                simulator.base_url,
                poll_mode=mode,
                poll_interval_s=size.poll_interval_s,
                create_timeout_s=3600,
                rate_limit_per_minute=PER_MINUTE,
                rate_limit_per_hour=PER_HOUR,
                rate_limit_minute_window_s=window,
                rate_limit_hour_window_s=window * LONG_WINDOW_RATIO,
            )
            async with running_service(env, f"economy-{mode}"):
                events = EventLog()
                await events.subscribe(connection, EVENT_EXCHANGE)
                started = time.monotonic()
                await publish_many(
                    connection,
                    (command(f"econ-{mode}-{i}") for i in range(clusters)),
                    exchange=COMMAND_EXCHANGE,
                    routing_key=COMMAND_ROUTING_KEY,
                )
                # Generous: the per-cluster baseline is slow by nature, and a stall must end.
                expected = _expected_makespan_s(size, clusters)
                await events.wait_until(
                    lambda: events.count(READY) + events.count(FAILED) >= clusters,
                    timeout=max(120.0, 4 * expected),
                    what=f"{mode} provisioning",
                )
                finished = max(events.times(READY), default=started)
        finally:
            await connection.close()
        stats = simulator.stats()
    return ModeResult(
        mode=mode,
        clusters=clusters,
        ready=events.count(READY),
        makespan_s=finished - started,
        calls=stats.calls,
        too_many_requests=stats.too_many_requests,
    )


def bound_s(size: Size, clusters: int) -> float:
    """The lower bound of the makespan for ``clusters`` clusters (``makespan_bound``): each
    needs its create and, once online, its CA certificate; the service reads the options once."""
    return makespan_bound(
        clusters=clusters,
        calls_per_cluster_after_online=1,
        fixed_calls=1,
        per_window=PER_MINUTE,
        window_s=size.window_s,
        per_long_window=PER_HOUR,
        long_window_s=size.window_s * LONG_WINDOW_RATIO,
        ready_after_s=size.ready_after_s,
    )


def _expected_makespan_s(size: Size, clusters: int) -> float:
    return bound_s(size, clusters) + size.poll_interval_s


async def benchmark(size: Size, label: str) -> dict[str, object]:
    """Both runs, the table, and the figures."""
    listed = await run_mode(size, "list", size.clusters)
    baseline = await run_mode(size, "per-cluster", size.baseline_clusters)
    bound = bound_s(size, size.clusters)
    per_cluster_demand = size.clusters / size.poll_interval_s
    rows = []
    for result in (listed, baseline):
        n = result.clusters
        rows.append(
            (
                result.mode,
                n,
                result.ready,
                result.count("POST /v2/databases") / n,
                result.polling_calls / n,
                (
                    result.count("GET /v2/databases/{id}/ca")
                    + result.count("POST /v2/databases/{id}/users")
                    + result.count("POST /v2/databases/{id}/dbs")
                )
                / n,
                result.total_calls / n,
                result.too_many_requests,
                result.makespan_s,
                bound_s(size, n),
            )
        )
    print_table(
        f"API economy ({label}): limits {PER_MINUTE}/{size.window_s:g} s and "
        f"{PER_HOUR}/{size.window_s * LONG_WINDOW_RATIO:g} s, creation delay "
        f"{size.ready_after_s:g} s, poll interval {size.poll_interval_s:g} s",
        (
            "poll mode",
            "clusters",
            "ready",
            "creates/cl",
            "polling/cl",
            "finishing/cl",
            "calls/cl",
            "429s",
            "makespan s",
            "bound s",
        ),
        rows,
    )
    print(
        f"\nper-cluster polling of {size.clusters} clusters would ask {per_cluster_demand:.0f} "
        f"requests/s against a budget of {size.rate_per_s:.0f}/s; the baseline is measured on "
        f"{size.baseline_clusters} clusters, where its polling stays within the budget."
    )
    list_polling = listed.polling_calls / listed.clusters
    base_polling = baseline.polling_calls / baseline.clusters
    polling_ratio = base_polling / list_polling if list_polling else float("inf")
    makespan_ratio = listed.makespan_s / bound
    figures: dict[str, object] = {
        "benchmark": "api_economy",
        "size": label,
        "clusters": listed.clusters,
        "ready": listed.ready,
        "calls_per_cluster": round(listed.total_calls / listed.clusters, 3),
        "polling_calls_per_cluster": round(list_polling, 4),
        "baseline_clusters": baseline.clusters,
        "baseline_polling_calls_per_cluster": round(base_polling, 3),
        "polling_ratio": round(polling_ratio, 1),
        "too_many_requests": listed.too_many_requests,
        "baseline_too_many_requests": baseline.too_many_requests,
        "makespan_s": round(listed.makespan_s, 2),
        "bound_s": round(bound, 2),
        "makespan_over_bound": round(makespan_ratio, 3),
    }
    figures["goal_met"] = (
        listed.ready == listed.clusters
        and baseline.ready == baseline.clusters
        and polling_ratio >= 20
        and listed.too_many_requests == 0
        and baseline.too_many_requests == 0
        and makespan_ratio <= 1.15
    )
    return figures


def main() -> int:
    """``python -m bench.api_economy [--quick]``."""
    args = bench_arguments(__doc__.splitlines()[0] if __doc__ else "api economy")
    size, label = (QUICK, "quick") if args.quick else (FULL, "full")
    figures = asyncio.run(benchmark(size, label))
    emit(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
