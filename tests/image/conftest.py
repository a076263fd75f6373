"""Fixtures of the image tests: the image ``make`` built, the engine, the simulator as a
``provisioner simulate`` process, an API gate in front of it, and containers that are removed
after each test.

``make image-test`` and ``make test`` build the image and name it in ``PROVISIONER_IMAGE``;
without it these tests are skipped with that reason. The figures they measure (readiness,
stop times, image size) are printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.image.api_gate import ApiGate
from tests.image.engine import ROOT, Container, Engine

IMAGE_VARIABLE = "PROVISIONER_IMAGE"
PROVISIONER = str(Path(sys.executable).with_name("provisioner"))
FIGURES: dict[str, str] = {}
"""What the image tests measured, by name, for the summary at the end of the run."""


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("image")
        for name, value in FIGURES.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def image() -> str:
    """The id (or name) of the image under test."""
    value = os.environ.get(IMAGE_VARIABLE, "").strip()
    if not value:
        pytest.skip(
            f"{IMAGE_VARIABLE} is not set: `make image-test` builds the image and runs these"
        )
    return value


@pytest.fixture(scope="session")
def engine() -> Engine:
    """docker or podman, as ``make image`` chose it."""
    found = subprocess.run(
        [str(ROOT / "scripts" / "ensure-container-engine.sh")],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return Engine(found.stdout.strip())


@dataclass(frozen=True)
class SimulatorProcess:
    """``provisioner simulate`` running on loopback."""

    url: str
    token: str

    def session(self) -> aiohttp.ClientSession:
        """A session on the simulator that sends its token."""
        return aiohttp.ClientSession(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        )

    async def clusters_named(self, name: str) -> list[dict[str, Any]]:
        async with self.session() as session, session.get("/v2/databases") as response:
            assert response.status == 200
            clusters: list[dict[str, Any]] = (await response.json())["databases"] or []
        return [c for c in clusters if c["name"] == name]


@pytest.fixture
def api_token() -> str:
    return f"image-test-{secrets.token_hex(12)}"


async def _listening_url(stderr: asyncio.StreamReader) -> str:
    seen: list[str] = []
    while True:
        line = (await stderr.readline()).decode()
        if not line:
            raise AssertionError(f"the simulator exited before listening: {seen}")
        seen.append(line)
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if event.get("event") == "simulator listening":
            url: str = event["url"]
            return url


@pytest.fixture
async def simulator_process(api_token: str) -> AsyncIterator[SimulatorProcess]:
    """The simulator, its token given in the environment; clusters online after 1 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIGITALOCEAN_", "SIMULATOR_"))}
    env["SIMULATOR_TOKEN"] = api_token
    process = await asyncio.create_subprocess_exec(
        PROVISIONER, "simulate", "--port", "0", "--log-format", "json", "--ready-after", "1",
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        url = await asyncio.wait_for(_listening_url(process.stderr), timeout=30)
    except BaseException:
        process.kill()
        await process.wait()
        raise
    # Its log is read to the end, so that a full pipe never blocks it.
    drained = asyncio.create_task(process.stderr.read())
    try:
        yield SimulatorProcess(url, api_token)
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=15)
        await drained


@pytest.fixture
async def api_gate(simulator_process: SimulatorProcess) -> AsyncIterator[ApiGate]:
    """The gate the service calls instead of the simulator."""
    gate = ApiGate(simulator_process.url)
    await gate.start()
    yield gate
    await gate.stop()


@pytest.fixture
def token_file(tmp_path: Path, api_token: str) -> Path:
    """The token as a mounted secret holds it: a file the container's user can read."""
    path = tmp_path / "digitalocean-token"
    path.write_text(api_token)
    path.chmod(0o444)
    return path


@pytest.fixture
async def containers(engine: Engine, vhost: str) -> AsyncIterator[Callable[[], Container]]:
    """Makes containers of the test; each is removed afterwards, its log shown on failure.
    (After ``vhost`` is made, so before it is deleted: a service whose virtual host goes away
    under it would be stopping during an outage, which is another test.)"""
    made: list[Container] = []

    def make() -> Container:
        container = Container(engine)
        made.append(container)
        return container

    yield make
    for container in made:
        logs = await container.logs() if await _exists(container) else ""
        if logs:
            print(f"--- log of {container.name} ---\n{logs}")
        await container.remove()


async def _exists(container: Container) -> bool:
    result = await container.engine.call("inspect", container.name, check=False)
    return result.returncode == 0
