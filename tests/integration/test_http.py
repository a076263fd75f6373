"""The health server over real HTTP on loopback: liveness, readiness as it changes, metrics."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import structlog

from service.http import HealthServer
from service.metrics import ProvisionerMetrics
from service.observability import configure_logging

pytestmark = pytest.mark.integration

TIMEOUT = aiohttp.ClientTimeout(total=5)


class Readiness:
    """Readiness checks a test can flip, as the service flips its own."""

    def __init__(self) -> None:
        self.checks = {"broker_connected": True, "consuming": False, "api_token_accepted": True}
        self.raises: Exception | None = None

    def __call__(self) -> dict[str, bool]:
        if self.raises is not None:
            raise self.raises
        return dict(self.checks)


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def metrics() -> ProvisionerMetrics:
    return ProvisionerMetrics()


@pytest.fixture
async def server(
    metrics: ProvisionerMetrics, readiness: Readiness
) -> AsyncIterator[tuple[HealthServer, str]]:
    health = HealthServer("127.0.0.1", 0, metrics.registry, readiness)
    port = await health.start()
    try:
        yield health, f"http://127.0.0.1:{port}"
    finally:
        await health.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Everything the process logs during the test, through the real configuration."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    yield stream
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.configure(**config)


async def test_healthz_answers_ok(
    server: tuple[HealthServer, str], client: aiohttp.ClientSession
) -> None:
    _, base = server
    async with client.get(f"{base}/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_start_returns_the_port_the_os_chose(server: tuple[HealthServer, str]) -> None:
    health, base = server
    assert health.port > 0
    assert base.endswith(f":{health.port}")


async def test_readyz_is_503_until_every_check_passes_then_200(
    server: tuple[HealthServer, str], client: aiohttp.ClientSession, readiness: Readiness
) -> None:
    _, base = server
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
        assert await response.json() == {
            "broker_connected": True,
            "consuming": False,
            "api_token_accepted": True,
        }

    readiness.checks["consuming"] = True
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 200
        assert await response.json() == {
            "broker_connected": True,
            "consuming": True,
            "api_token_accepted": True,
        }

    # A 401 from the API turns the service not-ready again.
    readiness.checks["api_token_accepted"] = False
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
        assert (await response.json())["api_token_accepted"] is False


async def test_readyz_is_503_when_a_check_raises(
    server: tuple[HealthServer, str], client: aiohttp.ClientSession, readiness: Readiness
) -> None:
    _, base = server
    readiness.raises = RuntimeError("channel closed")
    async with client.get(f"{base}/readyz") as response:
        assert response.status == 503
        assert await response.json() == {"readiness_check": False}


async def test_metrics_are_served_as_text_format_0_0_4_with_current_values(
    server: tuple[HealthServer, str], client: aiohttp.ClientSession, metrics: ProvisionerMetrics
) -> None:
    _, base = server
    metrics.count_command("accepted")
    metrics.observe_api_call("create_cluster", "201", 0.3)
    async with client.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await response.text()
    assert "# TYPE provisioner_commands_total counter\n" in text
    assert 'provisioner_commands_total{outcome="accepted"} 1.0\n' in text
    assert 'provisioner_api_calls_total{operation="create_cluster",status="201"} 1.0\n' in text

    # The body is rendered per request, not cached at start.
    metrics.count_command("accepted")
    async with client.get(f"{base}/metrics") as response:
        assert 'provisioner_commands_total{outcome="accepted"} 2.0\n' in await response.text()


async def test_unknown_path_is_404_and_other_methods_are_405(
    server: tuple[HealthServer, str], client: aiohttp.ClientSession
) -> None:
    _, base = server
    async with client.get(f"{base}/admin") as response:
        assert response.status == 404
    async with client.post(f"{base}/healthz", data=b"x") as response:
        assert response.status == 405


async def test_requests_write_no_access_log_lines_with_their_query_strings(
    log_output: io.StringIO,
    server: tuple[HealthServer, str],
    client: aiohttp.ClientSession,
) -> None:
    _, base = server
    async with client.get(f"{base}/healthz?token=leaky-query-value") as response:
        assert response.status == 200
    async with client.get(f"{base}/readyz?password=leaky-query-value") as response:
        assert response.status == 503
    output = log_output.getvalue()
    # The server did log (its start-up line), so silence here is not a logging failure.
    assert '"event": "http_listening"' in output
    assert "leaky-query-value" not in output
    assert "/healthz" not in output


async def test_stop_closes_the_port_and_can_be_called_twice(
    metrics: ProvisionerMetrics, readiness: Readiness, client: aiohttp.ClientSession
) -> None:
    health = HealthServer("127.0.0.1", 0, metrics.registry, readiness)
    port = await health.start()
    async with client.get(f"http://127.0.0.1:{port}/healthz") as response:
        assert response.status == 200
    await health.stop()
    await health.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with client.get(f"http://127.0.0.1:{port}/healthz"):
            pass


async def test_starting_twice_is_refused(server: tuple[HealthServer, str]) -> None:
    health, _ = server
    with pytest.raises(RuntimeError, match="already started"):
        await health.start()
