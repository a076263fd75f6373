"""A broker outage, on a RabbitMQ node of the test's own: the service starts before the
broker is there and waits (backoff, not a crash loop); the broker goes away mid-run and
comes back; the service reconnects and finishes every request, each with one cluster.

The machine's main broker is never stopped: the node here has its own name, ports and data
directory (``tests.fixtures.rabbitmq_node``), and the test stops only that node.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import ConnectionReady, StatusChanged
from service.broker.topology import message_count
from service.simulator import SimulatorConfig
from tests.fixtures.broker import record_events
from tests.fixtures.rabbitmq_node import RabbitNode, server_script
from tests.fixtures.service_process import (
    named,
    service_env,
    start_service,
    stop_service,
    wait_for_log,
)
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import all_final, command, final, publish

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


@pytest.fixture
async def own_node(tmp_path: Path) -> AsyncIterator[RabbitNode]:
    """A RabbitMQ node that only this test uses (not started yet); always cleaned up."""
    if server_script() is None:
        pytest.skip("rabbitmq-server is not installed here, so no second node can be started")
    node = RabbitNode(tmp_path / "rabbitmq")
    try:
        yield node
    finally:
        await node.close()


async def wait_for_readiness(port: int, *, ready: bool, timeout: float) -> dict[str, Any]:
    """Poll ``/readyz`` until it says ``ready`` (200) or not (503); its checks."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                checks: dict[str, Any] = await response.json()
                if (response.status == 200) == ready:
                    return checks
            if time.monotonic() > deadline:
                pytest.fail(f"/readyz never turned {'ready' if ready else 'not ready'}: {checks}")
            await asyncio.sleep(0.1)


async def publish_when_back(connection: AbstractRobustConnection, body: dict[str, Any]) -> None:
    """Publish, retrying while the test's own connection is still reconnecting."""
    for _ in range(60):
        try:
            await publish(connection, body)
            return
        except Exception:  # any broker error while the connection comes back
            await asyncio.sleep(0.5)
    await publish(connection, body)


async def test_service_waits_for_an_absent_broker_then_reconnects_after_it_restarts_mid_run(
    own_node: RabbitNode, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=4.0, latency_s=0.05))
    log_path = tmp_path / "service.log"
    process = await start_service(service_env(own_node.url(), sim), log_path)
    try:
        # 1. No broker yet: the service waits with a growing delay, alive, not consuming.
        events = await wait_for_log(
            log_path,
            lambda evs: named("broker_unreachable")(evs) >= 3,
            process=process,
            timeout=30,
            what="three broker_unreachable lines",
        )
        assert process.returncode is None
        assert named("service_started")(events) == 0
        delays = [e["retry_in_s"] for e in events if e.get("event") == "broker_unreachable"]
        assert delays[:3] == sorted(delays[:3]) and delays[2] > delays[0], delays

        # 2. The broker arrives: the service connects and works.
        await own_node.start()
        await wait_for_log(
            log_path,
            lambda evs: named("service_started")(evs) == 1,
            process=process,
            timeout=60,
            what="service_started after the broker came up",
        )
        connection = await aio_pika.connect_robust(own_node.url(), reconnect_interval=1)
        try:
            recorder, _ = await record_events(connection)
            before = [f"outage-{engine}" for engine in ("pg", "mysql", "mongodb", "opensearch")]
            for rid in before:
                await publish(connection, command(rid, rid.removeprefix("outage-")))
            await recorder.wait_for(
                lambda evs: sum(isinstance(e, StatusChanged) for e in evs) >= 2, timeout=30
            )

            # 3. The broker goes away mid-run (clusters still creating) and comes back.
            unfinished = [rid for rid in before if final(recorder.events, rid) is None]
            await own_node.stop()
            assert unfinished, "the outage must come while requests are in flight"
            await own_node.start()
            assert process.returncode is None, "the service must outlive the outage"
            after = ["outage-after-valkey", "outage-after-kafka"]
            for rid in after:
                await publish_when_back(connection, command(rid, rid.removeprefix("outage-after-")))
            ids = before + after
            seen = await recorder.wait_for(all_final(ids), timeout=120)
            assert all(isinstance(final(seen, rid), ConnectionReady) for rid in ids), [
                (rid, type(final(seen, rid)).__name__) for rid in ids
            ]
            names = Counter(record.name for record in sim.account)
            assert names == Counter(f"c-{rid}" for rid in ids), names  # one cluster each
            assert sim.stats().clusters == {"online": len(ids)}
            assert await message_count(connection, "provisioner.dead-letter") == 0
        finally:
            await connection.close()
        assert process.returncode is None, "the service must survive the outage"
        assert await stop_service(process) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_readyz_says_not_ready_while_the_broker_is_away_and_ready_once_it_is_back(
    own_node: RabbitNode, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator_factory()
    log_path = tmp_path / "service.log"
    process = await start_service(service_env(own_node.url(), sim), log_path)
    try:
        events = await wait_for_log(
            log_path,
            lambda evs: named("http_listening")(evs) == 1,
            process=process,
            timeout=30,
            what="the health server",
        )
        port = next(e["port"] for e in events if e.get("event") == "http_listening")
        checks = await wait_for_readiness(port, ready=False, timeout=10)
        assert checks["broker_connected"] is False, checks  # before the first connection
        await own_node.start()
        await wait_for_readiness(port, ready=True, timeout=60)
        await own_node.stop()
        checks = await wait_for_readiness(port, ready=False, timeout=15)
        assert checks["broker_connected"] is False, checks  # the connection was lost
        await own_node.start()
        await wait_for_readiness(port, ready=True, timeout=60)
        assert await stop_service(process) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
