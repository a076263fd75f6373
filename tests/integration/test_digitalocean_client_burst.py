"""A burst of 1,000 GETs against a simulator that allows 250 per (one-second) window.

The client's limiter is configured with the simulator's numbers, as the service configures
it with DigitalOcean's. Every call must succeed without a 429 reaching the caller, and the
simulator's own stats must show that it never sent a 429 and never counted more than the
budget in any window. The figures are printed (run with ``-s``) and attached to the test
report as ``burst_figures``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

import pytest

from contracts.digitalocean import DatabaseClusterCreate
from service.digitalocean import DigitalOceanClient, RateLimiter, RetryPolicy
from tests.fixtures.simulator import SimulatorFactory

pytestmark = pytest.mark.integration

TOKEN: Final = "dop_v1_" + "b0057" * 12 + "abcd"
CALLS: Final = 1000
BUDGET: Final = 250
WINDOW_S: Final = 1.0
HOUR_BUDGET: Final = 1_000_000


async def test_thousand_gets_against_a_250_per_window_limit_see_no_429(
    simulator_factory: SimulatorFactory, record_property: Callable[[str, object], None]
) -> None:
    sim = await simulator_factory(
        token=TOKEN,
        rate_limit_per_minute=BUDGET,
        minute_window_s=WINDOW_S,
        rate_limit_per_hour=HOUR_BUDGET,
    )
    limiter = RateLimiter(per_minute=BUDGET, per_hour=HOUR_BUDGET, minute_window_s=WINDOW_S)
    statuses: list[str] = []
    # A 429 must not be hidden by a retry: with one attempt, any 429 would surface.
    no_retries = RetryPolicy(max_attempts=1)
    client = DigitalOceanClient(
        sim.base_url,
        TOKEN,
        limiter=limiter,
        retry=no_retries,
        observer=lambda operation, status, seconds: statuses.append(status),
    )
    async with client:
        created = await client.create_cluster(
            DatabaseClusterCreate(
                name="burst", engine="pg", num_nodes=1, size="db-s-1vcpu-1gb", region="nyc1"
            )
        )
        started = time.monotonic()
        clusters = await asyncio.wait_for(
            asyncio.gather(*(client.get_cluster(created.id) for _ in range(CALLS))),
            timeout=30.0,
        )
        elapsed = time.monotonic() - started

    stats = sim.stats()
    figures = {
        "calls": CALLS,
        "window_s": WINDOW_S,
        "budget": BUDGET,
        "429_seen_by_caller": statuses.count("429"),
        "429_sent_by_simulator": stats.too_many_requests,
        "peak_in_window": stats.minute_window.peak,
        "elapsed_s": round(elapsed, 2),
        "limiter_waits": limiter.snapshot().waits,
    }
    print(f"\nburst figures: {figures}")
    record_property("burst_figures", figures)

    assert len(clusters) == CALLS
    assert all(c.id == created.id for c in clusters)
    assert statuses.count("200") == CALLS
    assert stats.count("GET /v2/databases/{id}", 200) == CALLS
    assert stats.too_many_requests == 0
    assert 0 < stats.minute_window.peak <= BUDGET
    # 1,001 requests at 250 per window cannot all go within 4 windows' worth of waiting.
    assert elapsed >= 3 * WINDOW_S
