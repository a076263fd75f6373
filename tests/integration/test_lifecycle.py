"""Lifecycle under real conditions: SIGTERM mid-work, broker connections cut, secrets in logs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.events import ConnectionReady, StatusChanged
from service.broker.topology import message_count
from service.simulator import Simulator, SimulatorConfig
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


def _service_env(amqp_url: str, sim: Simulator) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env.update(
        {
            "PROVISIONER_AMQP_URL": amqp_url,
            "DIGITALOCEAN_TOKEN": sim.config.token,
            "DIGITALOCEAN_API_URL": sim.base_url,
            "PROVISIONER_POLL_INTERVAL_S": "0.2",
            "PROVISIONER_HTTP_HOST": "127.0.0.1",
            "PROVISIONER_HTTP_PORT": "0",
            "PROVISIONER_SHUTDOWN_GRACE_S": "10",
            "PROVISIONER_RETRY_DELAYS_S": "0.2,0.4",
            "PROVISIONER_LOG_FORMAT": "json",
        }
    )
    return env


async def _start_process(env: dict[str, str]) -> asyncio.subprocess.Process:
    exe = shutil.which("provisioner", path=os.path.dirname(sys.executable))
    assert exe, "the provisioner console script is installed by `make`"
    return await asyncio.create_subprocess_exec(
        exe, "run", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


async def _read_until(
    process: asyncio.subprocess.Process, marker: bytes, lines: list[bytes]
) -> None:
    assert process.stderr is not None
    while True:
        line = await process.stderr.readline()
        if not line:
            raise AssertionError(f"process ended before {marker!r}: {b''.join(lines[-20:])!r}")
        lines.append(line)
        if marker in line:
            return


async def test_sigterm_during_work_loses_nothing_dead_letters_nothing_and_exits_zero(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=1.0, latency_s=0.3))
    process = await _start_process(_service_env(amqp_url, sim))
    log: list[bytes] = []
    try:
        await asyncio.wait_for(_read_until(process, b"service_started", log), 30)
        ids = [f"term-{i}" for i in range(10)]
        for rid in ids:
            await publish(amqp, command(rid, "pg"))
        await events.wait_for(
            lambda evs: sum(isinstance(e, StatusChanged) for e in evs) >= 3, timeout=30
        )
        process.send_signal(signal.SIGTERM)
        drain = asyncio.create_task(_read_until(process, b"service_stopped", log))
        code = await asyncio.wait_for(process.wait(), 30)
        await asyncio.wait_for(drain, 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, b"".join(log[-20:]).decode(errors="replace")
    assert await message_count(amqp, "provisioner.dead-letter") == 0
    # A new replica finishes everything; nothing was lost and nothing created twice.
    async with running_service(settings_for(amqp_url, sim)):
        seen = await events.wait_for(all_final(ids), timeout=60)
    assert all(isinstance(final(seen, rid), ConnectionReady) for rid in ids)
    assert sim.stats().clusters == {"online": len(ids)}
    assert await message_count(amqp, "provisioner.dead-letter") == 0


def _close_connections(vhost: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None
    subprocess.run(
        [ctl, "-q", "close_all_connections", "-p", vhost, "closed by test"],
        check=True,
        capture_output=True,
        timeout=60,
    )


async def test_broker_connections_cut_mid_run_reconnect_and_finish_everything(
    vhost: str,
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=1.0, latency_s=0.05))
    ids = [f"cut-{i}" for i in range(8)]
    async with running_service(settings_for(amqp_url, sim)) as service:
        for rid in ids[:4]:
            await publish(amqp, command(rid, "mysql"))
        await events.wait_for(
            lambda evs: sum(isinstance(e, StatusChanged) for e in evs) >= 2, timeout=30
        )
        await asyncio.to_thread(_close_connections, vhost)
        # a producer connecting while the service is reconnecting
        async with await aio_pika.connect_robust(amqp_url) as producer:
            for rid in ids[4:]:
                await publish(producer, command(rid, "mysql"))
        await asyncio.to_thread(_close_connections, vhost)
        seen = await events.wait_for(all_final(ids), timeout=60)
        assert service.readiness()["broker_connected"]
    assert all(isinstance(final(seen, rid), ConnectionReady) for rid in ids)
    assert sim.stats().clusters == {"online": len(ids)}
    # a connection of its own: the test's may still be reconnecting after the cuts
    async with await aio_pika.connect(amqp_url) as fresh:
        assert await message_count(fresh, "provisioner.dead-letter") == 0


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)


async def test_sigterm_while_the_broker_is_away_exits_zero_within_seconds(
    simulator_factory: SimulatorFactory,
) -> None:
    """A stop during a broker outage (a rollout while RabbitMQ is down) must not wait for the
    broker: a container engine or Kubernetes would kill the process after its stop timeout."""
    sim = await simulator_factory()
    # A virtual host of this test's own, deleted under the running service: its connection
    # is closed and every reconnect is refused, as in an outage.
    vhost = f"provisioner-test-outage-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", vhost)
    try:
        await asyncio.to_thread(
            _rabbitmqctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"
        )
        url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
        process = await _start_process(_service_env(url, sim))
        log: list[bytes] = []
        try:
            await asyncio.wait_for(_read_until(process, b"service_started", log), 30)
            await asyncio.to_thread(_rabbitmqctl, "delete_vhost", vhost)
            await asyncio.wait_for(_read_until(process, b"Reconnecting", log), 30)
            process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), 8)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            await asyncio.to_thread(_rabbitmqctl, "delete_vhost", vhost)
    assert code == 0, b"".join(log[-20:]).decode(errors="replace")


async def test_no_token_or_generated_secret_reaches_the_service_logs(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """A whole run at DEBUG, with faults, users and a Kafka user's key: the log holds none
    of the token, the generated passwords or the private keys."""
    sim = await simulator_factory(
        SimulatorConfig(
            ready_after_s=0.5, fail_500_fraction=0.2, drop_fraction=0.1, token="tok-" + "s3cr3t" * 6
        )
    )
    env = _service_env(amqp_url, sim)
    env["PROVISIONER_LOG_LEVEL"] = "DEBUG"
    process = await _start_process(env)
    log: list[bytes] = []
    ids = ["leak-pg", "leak-kafka", "leak-mysql"]
    try:
        await asyncio.wait_for(_read_until(process, b"service_started", log), 30)
        reader = asyncio.create_task(_read_until(process, b"service_stopped", log))
        await publish(amqp, command("leak-pg", "pg"))
        await publish(amqp, command("leak-kafka", "kafka"))
        await publish(amqp, command("leak-mysql", "mysql"))
        seen = await events.wait_for(all_final(ids), timeout=90)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        await asyncio.wait_for(reader, 5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    secrets = {sim.config.token}
    for event in seen:
        if isinstance(event, ConnectionReady):
            for conn in (event.data.connection, event.data.private_connection):
                if conn is not None and conn.password:
                    secrets.add(conn.password)
            for user in event.data.users:
                secrets.update(v for v in (user.password, user.access_key) if v)
    assert len(secrets) >= 7  # the token, three admins, the requested users, a Kafka key
    text = b"".join(log).decode(errors="replace")
    assert "connection_ready" in text  # the log did cover the whole flow
    leaked = [s[:6] + "…" for s in secrets if s in text]
    assert not leaked, f"secrets found in the service log: {leaked}"
