"""The image as an operator runs it: a read-only container on the host's network, against
the machine's RabbitMQ (a fresh virtual host) and ``provisioner simulate``, the token in a
mounted file. Each test starts its own containers and removes them."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.image.api_gate import ApiGate
from tests.image.conftest import FIGURES, SimulatorProcess
from tests.image.engine import Container, wait_until_ready
from tests.integration.service_harness import command

pytestmark = pytest.mark.image

PROVISIONER = str(Path(sys.executable).with_name("provisioner"))
TOKEN_PATH = "/run/secrets/digitalocean/token"  # where Kubernetes would mount the secret
DEFAULT_STOP_TIMEOUT_S = 10.0  # docker stop and podman stop, before SIGKILL


def _service_env(api_url: str) -> dict[str, str]:
    # Loopback only on the host's network; port 0: the HEALTHCHECK must find it by itself.
    return {
        "DIGITALOCEAN_API_URL": api_url,
        "DIGITALOCEAN_TOKEN_FILE": TOKEN_PATH,
        "PROVISIONER_HTTP_HOST": "127.0.0.1",
        "PROVISIONER_HTTP_PORT": "0",
        "PROVISIONER_POLL_INTERVAL_S": "1",
    }


async def _start_service(
    container: Container, image: str, *, api_url: str, amqp_url: str, token_file: Path
) -> tuple[int, float]:
    """Run the service; its HTTP port and the seconds from `run` to a 200 from /readyz."""
    started = time.monotonic()
    await container.run(
        image,
        env=_service_env(api_url),
        secret_env={"PROVISIONER_AMQP_URL": amqp_url},
        volumes=[f"{token_file}:{TOKEN_PATH}:ro"],
    )
    listening = await container.wait_for_event("http_listening")
    port = int(listening["port"])
    await wait_until_ready(port)
    return port, time.monotonic() - started


async def _restart_service(container: Container) -> tuple[int, float]:
    """Start the stopped container again; its new port and the seconds to readiness."""
    before = len([e for e in await container.log_events() if e.get("event") == "http_listening"])
    started = time.monotonic()
    await container.start()
    listening = await container.wait_for_event("http_listening", count=before + 1)
    port = int(listening["port"])
    await wait_until_ready(port)
    return port, time.monotonic() - started


async def _submit(
    document: dict[str, Any], amqp_url: str, *, timeout_s: float
) -> asyncio.subprocess.Process:
    """``provisioner submit - --wait`` as a producer runs it, the broker URL in its environment."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "DIGITALOCEAN_"))
    }
    env["PROVISIONER_AMQP_URL"] = amqp_url
    process = await asyncio.create_subprocess_exec(
        PROVISIONER, "submit", "-", "--wait", "--timeout", str(timeout_s),
        env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    process.stdin.write(json.dumps(document).encode())
    await process.stdin.drain()
    process.stdin.close()
    return process


async def _submitted_events(process: asyncio.subprocess.Process, timeout: float) -> list[str]:
    """Wait for the producer to finish; the types of the events it printed."""
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    types = [str(e.get("type")) for e in events]
    assert process.returncode == 0, f"submit exited {process.returncode}: {types}\n{err.decode()}"
    return types


async def test_the_service_runs_read_only_as_uid_10001_and_provisions_a_cluster(
    image: str,
    containers: Callable[[], Container],
    simulator_process: SimulatorProcess,
    api_gate: ApiGate,
    amqp_url: str,
    token_file: Path,
    api_token: str,
) -> None:
    container = containers()
    port, ready_s = await _start_service(
        container, image, api_url=api_gate.url, amqp_url=amqp_url, token_file=token_file
    )
    FIGURES["/readyz 200 after `run`"] = f"{ready_s:.1f} s"

    # Not root, by number, for the service itself and for anything run beside it.
    status = (await container.exec("cat", "/proc/1/status")).stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == ["10001"] * 4, status
    assert (await container.exec("id", "-u")).stdout.strip() == "10001"

    # Nothing on the root filesystem is writable, /tmp included.
    for path in ("/opt/venv/written", "/tmp/written", "/written"):
        wrote = await container.exec("touch", path)
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr, (path, wrote)

    healthy, output = await container.health_check()
    assert healthy, output
    assert f"127.0.0.1:{port}/healthz answered 200" in output
    FIGURES["HEALTHCHECK (PROVISIONER_HTTP_PORT=0)"] = output

    name = f"image-{uuid.uuid4().hex[:8]}"
    producer = await _submit(command(name, cluster={"name": name}), amqp_url, timeout_s=90)
    types = await _submitted_events(producer, timeout=120)
    assert types[-1] == "database.cluster.connection_ready", types
    assert len(await simulator_process.clusters_named(name)) == 1

    stop_s = await container.stop()
    state = await container.state()
    assert state["ExitCode"] == 0, state
    FIGURES["stop when idle"] = f"{stop_s:.1f} s, exit {state['ExitCode']}"

    logs = await container.logs()
    assert '"event": "service_stopped"' in logs
    assert api_token not in logs
    assert "guest:guest" not in logs
    # The engine holds the container's configuration: the token is in none of it.
    inspected = (await container.engine.call("inspect", container.name)).stdout
    assert api_token not in inspected


async def test_sigterm_with_a_create_in_flight_exits_0_within_the_stop_timeout_and_loses_nothing(
    image: str,
    containers: Callable[[], Container],
    simulator_process: SimulatorProcess,
    api_gate: ApiGate,
    amqp_url: str,
    token_file: Path,
) -> None:
    container = containers()
    await _start_service(
        container, image, api_url=api_gate.url, amqp_url=amqp_url, token_file=token_file
    )
    api_gate.hold_creates()
    name = f"image-{uuid.uuid4().hex[:8]}"
    # The producer waits through the stop and the restart, as a real one would.
    producer = await _submit(command(name, cluster={"name": name}), amqp_url, timeout_s=120)
    # The create reached DigitalOcean (the simulator); its answer is still on the way.
    await api_gate.wait_held(1)
    assert len(await simulator_process.clusters_named(name)) == 1

    stop_s = await container.stop()
    state = await container.state()
    FIGURES["stop with a create in flight"] = f"{stop_s:.1f} s, exit {state['ExitCode']}"
    assert state["ExitCode"] == 0, f"killed, not drained: {state}"
    assert stop_s < DEFAULT_STOP_TIMEOUT_S
    stopped = await container.wait_for_event("service_stopped", timeout=5)
    assert stopped["returned_to_queue"] == 1, stopped

    api_gate.release()
    _, ready_s = await _restart_service(container)
    FIGURES["/readyz 200 after a restart"] = f"{ready_s:.1f} s"
    types = await _submitted_events(producer, timeout=120)
    assert types[-1] == "database.cluster.connection_ready", types
    # The returned command adopted the cluster its first try created: one, not two.
    assert len(await simulator_process.clusters_named(name)) == 1
