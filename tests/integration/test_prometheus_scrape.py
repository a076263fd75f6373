"""A real Prometheus scrapes a running service: the series and the values its HTTP API
answers with are the ones the requests made, and the alert rules load and evaluate.

Prometheus is Debian's ``prometheus`` package (``scripts/ensure-prometheus.sh``, run by
``make test``), started here with its own configuration and data directory on a free port."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import ConnectionReady
from service.simulator import SimulatorConfig
from tests.fixtures.broker import EventRecorder
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import (
    all_final,
    command,
    final,
    publish,
    running_service,
    settings_for,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """``prometheus`` scraping ``target`` every 500 ms, with the service's alert rules."""

    def __init__(self, workdir: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: run scripts/ensure-prometheus.sh (make prometheus)")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 500ms\n"
            "  evaluation_interval: 500ms\n"
            f"rule_files: ['{RULES}']\n"
            "scrape_configs:\n"
            "  - job_name: provisioner\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = workdir / "prometheus.log"
        self.args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.console.templates=/nonexistent",
            "--web.console.libraries=/nonexistent",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def ready(self, session: aiohttp.ClientSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                async with session.get(f"{self.url}/-/ready") as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready in {timeout} s: {self.log.read_text()[-2000:]}")
            await asyncio.sleep(0.1)

    async def api(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        async with session.get(f"{self.url}/api/v1/{path}", params=params) as reply:
            body = await reply.json()
        assert body["status"] == "success", body
        return body["data"]

    async def value(self, session: aiohttp.ClientSession, query: str) -> float | None:
        """The one value ``query`` gives now (None while it gives nothing)."""
        result = (await self.api(session, "query", query=query))["result"]
        assert len(result) <= 1, (query, result)
        return float(result[0]["value"][1]) if result else None

    async def wait_for_value(
        self, session: aiohttp.ClientSession, query: str, expected: float, timeout: float = 30
    ) -> None:
        deadline = time.monotonic() + timeout
        while (found := await self.value(session, query)) != expected:
            if time.monotonic() > deadline:
                pytest.fail(f"{query} is {found}, not {expected}, after {timeout} s")
            await asyncio.sleep(0.2)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def test_prometheus_scrapes_the_series_of_provisioned_clusters(
    tmp_path: Path,
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
    session: aiohttp.ClientSession,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.5, seed=15))
    ids = [f"scraped-{i}" for i in range(3)]
    async with running_service(settings_for(amqp_url, sim)) as service:
        prometheus = PrometheusServer(tmp_path, f"127.0.0.1:{service.http_port}")
        prometheus.start()
        try:
            await prometheus.ready(session, timeout=60)
            await prometheus.wait_for_value(session, 'up{job="provisioner"}', 1)
            await prometheus.wait_for_value(session, "provisioner_ready", 1)
            for rid in ids:
                await publish(amqp, command(rid, "mysql"))
            seen = await events.wait_for(all_final(ids), timeout=60)
            assert all(isinstance(final(seen, rid), ConnectionReady) for rid in ids)

            wait = prometheus.wait_for_value
            await wait(session, 'provisioner_commands_total{outcome="accepted"}', 3)
            await wait(session, 'provisioner_commands_total{outcome="rejected"}', 0)
            await wait(
                session,
                'provisioner_api_calls_total{operation="create_cluster",status="201"}',
                3,
            )
            await wait(
                session,
                'provisioner_events_published_total{type="database.cluster.connection_ready"}',
                3,
            )
            await wait(session, "provisioner_clusters_time_to_online_seconds_count", 3)
            await wait(session, 'provisioner_watch_steps_total{outcome="ready"}', 3)
            await wait(session, 'provisioner_readiness_check{check="api_token_accepted"}', 1)
            await wait(session, 'provisioner_handler_crashes_total{consumer="commands"}', 0)
            # The simulator sends DigitalOcean's rate-limit headers: the gauge has a value.
            remaining = await prometheus.value(session, "provisioner_ratelimit_remaining")
            assert remaining is not None and 0 < remaining <= 5000

            # The alert rules load and evaluate against the real series; none fires.
            groups = (await prometheus.api(session, "rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert len(rules) == 8
            assert all(rule["health"] == "ok" for rule in rules), rules
            alerts = (await prometheus.api(session, "alerts"))["alerts"]
            assert alerts == []
        finally:
            prometheus.stop()
