"""The command line against the real broker: topology, submit (with --wait)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from aio_pika.abc import AbstractRobustConnection

from service.broker.topology import Topology, message_count
from service.simulator import SimulatorConfig
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import command, running_service, settings_for

pytestmark = pytest.mark.integration

PROVISIONER = str(Path(sys.executable).with_name("provisioner"))


async def _run(*args: str, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        PROVISIONER,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 90)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def _env(amqp_url: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PROVISIONER_", "DIGITALOCEAN_"))
    }
    env["PROVISIONER_AMQP_URL"] = amqp_url
    return env


async def test_topology_declares_every_queue_and_is_idempotent(
    amqp_url: str, amqp: AbstractRobustConnection
) -> None:
    first = await _run("topology", env=_env(amqp_url))
    second = await _run("topology", env=_env(amqp_url))
    assert first[0] == 0 and second[0] == 0, first[2] + second[2]
    assert first[1] == second[1]
    for queue in Topology().queues():
        assert f"queue {queue.name}:" in first[1]
        assert await message_count(amqp, queue.name) == 0  # it exists (passive declare)
    assert "guest:guest" not in first[1] + first[2]


async def test_submit_wait_prints_the_requests_events_and_exits_zero_when_ready(
    amqp_url: str, simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    body = command("cli-1", "pg")
    del body["request_id"]  # submit generates one
    path = tmp_path / "command.json"
    path.write_text(json.dumps(body))
    async with running_service(settings_for(amqp_url, sim)):
        code, out, err = await _run(
            "submit", str(path), "--wait", "--timeout", "60", env=_env(amqp_url)
        )
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["type"] for line in lines] == [
        "database.cluster.status_changed",
        "database.cluster.status_changed",
        "database.cluster.connection_ready",
    ]
    request_id = lines[0]["data"]["request_id"]
    assert f"request_id: {request_id}" in err
    assert all(line["data"]["request_id"] == request_id for line in lines)


async def test_submit_refuses_an_invalid_command_before_publishing(
    amqp_url: str, amqp: AbstractRobustConnection
) -> None:
    await _run("topology", env=_env(amqp_url))
    bad = json.dumps({"request_id": "x", "cluster": {"name": "a", "engine": "pg", "num_node": 1}})
    code, _, err = await _run("submit", "-", env=_env(amqp_url), stdin=bad.encode())
    assert code == 2
    assert "$.cluster.num_node: unknown field `num_node` (did you mean `num_nodes`?)" in err
    assert await message_count(amqp, "provisioner.requests") == 0


async def test_submit_wait_exits_three_when_the_service_rejects(
    amqp_url: str, simulator_factory: SimulatorFactory
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3))
    bad = json.dumps({"request_id": "x", "cluster": {"name": "a", "engine": "pg", "num_node": 1}})
    async with running_service(settings_for(amqp_url, sim)):
        code, out, _ = await _run(
            "submit",
            "-",
            "--no-check",
            "--wait",
            "--timeout",
            "30",
            env=_env(amqp_url),
            stdin=bad.encode(),
        )
    assert code == 3
    assert json.loads(out.splitlines()[-1])["type"] == "database.cluster.rejected"
