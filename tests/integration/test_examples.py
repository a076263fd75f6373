"""The producer examples under ``examples/`` against the real service: each runs as its own
process on the test's virtual host, while the service runs in-process on the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts.events import ConnectionReady
from service.digitalocean import DigitalOceanClient
from service.simulator import Simulator, SimulatorConfig
from tests.fixtures.broker import EventRecorder
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import (
    all_final,
    command,
    final,
    running_service,
    settings_for,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")
NODE_EXAMPLE = REPO / "examples" / "node" / "provision.mjs"
PYTHON_EXAMPLE = REPO / "examples" / "python" / "provision.py"
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed (Node.js 20+)")
SMALL_PG = {"size": "db-s-1vcpu-1gb", "num_nodes": 1, "users": [{"name": "app"}]}
PROCESS_TIMEOUT_S = 30.0


class Finished(msgspec.Struct, frozen=True):
    """How an example process ended and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    def printed(self) -> list[dict[str, Any]]:
        """The JSON lines it printed on stdout."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


async def run_example(
    argv: list[str],
    amqp_url: str,
    *,
    stdin: bytes | None = None,
    show_secrets: bool = False,
    sealed: bool = False,
) -> Finished:
    """Run an example to its end without blocking the loop the service runs on."""
    env = {k: v for k, v in os.environ.items() if k not in ("SHOW_SECRETS", "SEALED")}
    env |= {"AMQP_URL": amqp_url, "TIMEOUT_S": "20", "PYTHONPATH": str(REPO)}
    if show_secrets:
        env["SHOW_SECRETS"] = "1"
    if sealed:
        env["SEALED"] = "1"
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin or b""), PROCESS_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{argv} did not exit within {PROCESS_TIMEOUT_S} s")
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())


def node(*args: str) -> list[str]:
    """The command line that runs the Node.js example."""
    assert NODE is not None
    if not (REPO / "node_modules" / "amqplib").is_dir():
        pytest.fail("amqplib is not installed: run `make node` (npm install --no-package-lock)")
    return [NODE, str(NODE_EXAMPLE), *args]


def secrets_of(ready: ConnectionReady) -> list[str]:
    """Every password the service put in the event (the simulator made them up)."""
    data = ready.data
    connections = [data.connection, data.private_connection, data.standby_connection]
    found = [c.password for c in connections if c is not None and c.password]
    found += [u.password for u in data.users if u.password]
    return found


async def fast_simulator(factory: SimulatorFactory) -> Simulator:
    """A simulator whose clusters come online after 0.3 s."""
    return await factory(SimulatorConfig(ready_after_s=0.3))


async def assert_ready_without_secrets(
    finished: Finished, events: EventRecorder, request_id: str
) -> None:
    """Exit 0, the request's status changes and connection_ready printed, no password."""
    assert finished.returncode == 0, finished.stderr
    printed = finished.printed()
    assert {e["data"]["request_id"] for e in printed} == {request_id}
    assert [e["type"] for e in printed] == [
        "database.cluster.status_changed",
        "database.cluster.status_changed",
        "database.cluster.connection_ready",
    ]
    assert [e["data"]["status"] for e in printed[:2]] == ["creating", "online"]
    assert len({(e["source"], e["id"]) for e in printed}) == len(printed)
    assert printed[-1]["data"]["connection"]["password"] == "***"
    seen = await events.wait_for(all_final([request_id]), timeout=10)
    ready = final(seen, request_id)
    assert isinstance(ready, ConnectionReady)
    passwords = secrets_of(ready)
    assert passwords  # the service did send some: their absence below means something
    for password in passwords:
        assert password not in finished.stdout
        assert password not in finished.stderr


@needs_node
async def test_node_example_prints_its_requests_events_until_connection_ready_without_passwords(
    amqp_url: str, events: EventRecorder, simulator_factory: SimulatorFactory
) -> None:
    body = json.dumps(command("node-ok", "pg", cluster=SMALL_PG)).encode()
    async with running_service(settings_for(amqp_url, await fast_simulator(simulator_factory))):
        finished = await run_example(node("-"), amqp_url, stdin=body)
    await assert_ready_without_secrets(finished, events, "node-ok")
    assert "published request node-ok" in finished.stderr


@needs_node
async def test_node_example_shows_passwords_only_when_asked(
    amqp_url: str, events: EventRecorder, simulator_factory: SimulatorFactory
) -> None:
    body = json.dumps(command("node-secrets", "pg", cluster=SMALL_PG)).encode()
    async with running_service(settings_for(amqp_url, await fast_simulator(simulator_factory))):
        finished = await run_example(node("-"), amqp_url, stdin=body, show_secrets=True)
    assert finished.returncode == 0, finished.stderr
    seen = await events.wait_for(all_final(["node-secrets"]), timeout=10)
    ready = final(seen, "node-secrets")
    assert isinstance(ready, ConnectionReady)
    assert ready.data.connection is not None and ready.data.connection.password
    assert finished.printed()[-1]["data"]["connection"]["password"] == (
        ready.data.connection.password
    )


@needs_node
async def test_node_example_exits_3_with_the_rejection_of_a_bad_command(
    amqp_url: str, events: EventRecorder, simulator_factory: SimulatorFactory
) -> None:
    bad = command("node-bad", "pg", cluster={**SMALL_PG, "num_nodes": 0})
    sim = await fast_simulator(simulator_factory)
    async with running_service(settings_for(amqp_url, sim)):
        finished = await run_example(node("-"), amqp_url, stdin=json.dumps(bad).encode())
    assert finished.returncode == 3, finished.stderr
    (rejected,) = finished.printed()
    assert rejected["type"] == "database.cluster.rejected"
    assert rejected["data"]["request_id"] == "node-bad"
    paths = {error["path"] for error in rejected["data"]["errors"]}
    assert "$.cluster.num_nodes" in paths
    assert sim.stats().count("POST /v2/databases") == 0


@needs_node
async def test_node_example_fails_clearly_when_the_service_topology_is_missing(
    amqp_url: str,
) -> None:
    finished = await run_example(node(), amqp_url)
    assert finished.returncode == 1
    assert "provisioner.commands" in finished.stderr
    assert finished.stdout == ""


async def test_python_example_prints_its_requests_events_until_connection_ready_without_passwords(
    amqp_url: str, events: EventRecorder, simulator_factory: SimulatorFactory
) -> None:
    async with running_service(settings_for(amqp_url, await fast_simulator(simulator_factory))):
        finished = await run_example([sys.executable, str(PYTHON_EXAMPLE)], amqp_url)
    assert finished.returncode == 0, finished.stderr
    request_id = finished.printed()[0]["data"]["request_id"]
    await assert_ready_without_secrets(finished, events, request_id)


async def assert_opened_what_only_it_could_read(
    finished: Finished, events: EventRecorder, sim: Simulator
) -> None:
    """The example printed the credentials DigitalOcean handed out, which no event on the
    exchange carried in the clear."""
    assert finished.returncode == 0, finished.stderr
    printed = finished.printed()[-1]
    request_id = printed["data"]["request_id"]
    seen = await events.wait_for(all_final([request_id]), timeout=10)
    broadcast = final(seen, request_id)
    assert isinstance(broadcast, ConnectionReady)
    assert broadcast.data.secrets == "sealed" and broadcast.data.sealed_secrets
    async with DigitalOceanClient(sim.base_url, sim.config.token) as client:
        cluster = await client.get_cluster(broadcast.data.cluster_id)
    assert cluster.connection is not None and cluster.connection.password
    handed_out = {cluster.connection.password} | {u.password for u in cluster.users or []}
    handed_out.discard(None)
    assert printed["data"].get("secrets", "included") == "included"  # the default is left out
    assert printed["data"]["connection"]["password"] == cluster.connection.password
    assert {u["name"]: u.get("password") for u in printed["data"]["users"]} == {
        u.name: u.password for u in cluster.users or []
    }
    for message in events.messages:
        for password in handed_out:
            assert password is not None and password.encode() not in message.body


@needs_node
async def test_node_example_opens_sealed_credentials_no_other_subscriber_can_read(
    amqp_url: str, events: EventRecorder, simulator_factory: SimulatorFactory
) -> None:
    body = json.dumps(command("node-sealed", "pg", cluster=SMALL_PG)).encode()
    sim = await fast_simulator(simulator_factory)
    async with running_service(settings_for(amqp_url, sim)):
        finished = await run_example(
            node("-"), amqp_url, stdin=body, show_secrets=True, sealed=True
        )
    await assert_opened_what_only_it_could_read(finished, events, sim)


async def test_python_example_opens_sealed_credentials_no_other_subscriber_can_read(
    amqp_url: str, events: EventRecorder, simulator_factory: SimulatorFactory
) -> None:
    sim = await fast_simulator(simulator_factory)
    async with running_service(settings_for(amqp_url, sim)):
        finished = await run_example(
            [sys.executable, str(PYTHON_EXAMPLE)], amqp_url, show_secrets=True, sealed=True
        )
    await assert_opened_what_only_it_could_read(finished, events, sim)
