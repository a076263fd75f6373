"""The dead-letter queue's bound, on the real broker, with the topology the service declares.

docs/reliability.md promises: at its bound `provisioner.dead-letter` refuses more, and
because dead-lettering from `provisioner.requests` is at-least-once, the broker keeps the
message it could not dead-letter in its source queue (not delivered again) until there is
room. Nothing is lost. (The parking queue's bound is tested with the service running, in
test_hostile_frames.py.)
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from service.broker.topology import Topology, declare

BODIES = [f"poison-{i}".encode() for i in range(3)]
WAIT_S = 60.0
# How long the broker's dead-letter worker waits for the target queue's confirm before it
# sends again (RabbitMQ's default: 180 s). The test shortens it for the queues it declares:
# the worker reads it when it starts.
RETRY_SETTING = "dead_letter_worker_publisher_confirm_timeout"
RETRY_MS = 1000


def _rabbitmqctl(*args: str) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl not found: `make test` installs and starts RabbitMQ")
    return subprocess.run(
        [ctl, "-q", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


@pytest.fixture
def quick_dead_letter_retries() -> Iterator[None]:
    before = _rabbitmqctl("eval", f"application:get_env(rabbit, {RETRY_SETTING}).")
    _rabbitmqctl("eval", f"application:set_env(rabbit, {RETRY_SETTING}, {RETRY_MS}).")
    try:
        yield
    finally:
        if before.startswith("{ok,"):
            restore = f"application:set_env(rabbit, {RETRY_SETTING}, {before[4:-1]})."
        else:
            restore = f"application:unset_env(rabbit, {RETRY_SETTING})."
        _rabbitmqctl("eval", restore)


async def _messages(vhost: str) -> dict[str, int]:
    """Every message each queue holds, as the broker counts them (ready, unacknowledged,
    and those waiting to be dead-lettered, which the AMQP passive declare does not count)."""
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        pytest.fail("rabbitmqctl not found: `make test` installs and starts RabbitMQ")
    process = await asyncio.create_subprocess_exec(
        ctl, "-q", "list_queues", "-p", vhost, "--no-table-headers", "name", "messages",
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    counts: dict[str, int] = {}
    for line in out.decode().splitlines():
        name, _, count = line.rpartition("\t")
        counts[name] = int(count)
    return counts


async def _until(vhost: str, expected: dict[str, int]) -> dict[str, int]:
    """Poll the broker's counts until they show ``expected`` (its statistics lag a little)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        counts = await _messages(vhost)
        if all(counts.get(name) == n for name, n in expected.items()):
            return counts
        if time.monotonic() > deadline:
            pytest.fail(f"queues never held {expected}: {counts}")
        await asyncio.sleep(0.2)


async def test_a_full_dead_letter_queue_leaves_the_poison_in_its_source_queue_and_loses_nothing(
    vhost: str, amqp: AbstractRobustConnection, quick_dead_letter_retries: None
) -> None:
    topology = Topology(delivery_limit=1, dead_letter_max_messages=1)
    channel = await amqp.channel()
    await declare(channel, topology)
    for body in BODIES:
        await channel.default_exchange.publish(aio_pika.Message(body), topology.requests_queue)

    # A consumer that fails every delivery: each message spends its delivery limit (one
    # redelivery, so two failures each) and is then dead-lettered.
    requests = await channel.get_queue(topology.requests_queue)
    failures = dict.fromkeys(BODIES, 0)
    deadline = time.monotonic() + WAIT_S
    while any(n < 2 for n in failures.values()):
        if time.monotonic() > deadline:
            pytest.fail(f"deliveries stopped early: {failures}")
        message = await requests.get(fail=False)
        if message is None:
            await asyncio.sleep(0.05)
            continue
        failures[message.body] += 1
        await message.reject(requeue=True)

    # The bound is 1; RabbitMQ 3.10's quorum queues take one past it, then refuse. The third
    # stays in provisioner.requests, held back: no consumer gets it again.
    await _until(vhost, {topology.dead_letter_queue: 2, topology.requests_queue: 1})
    assert await requests.get(fail=False) is None

    # A person takes what the dead-letter queue holds; the held message follows into it when
    # the broker's dead-letter worker tries again.
    dead = await channel.get_queue(topology.dead_letter_queue)
    seen: list[bytes] = []
    deadline = time.monotonic() + WAIT_S
    while len(seen) < len(BODIES):
        if time.monotonic() > deadline:
            pytest.fail(f"only {seen} reached the dead-letter queue: {await _messages(vhost)}")
        message = await dead.get(fail=False)
        if message is None:
            await asyncio.sleep(0.2)
            continue
        death = message.headers["x-death"]
        assert isinstance(death, list) and isinstance(death[0], dict)
        assert death[0]["reason"] == "delivery_limit"
        seen.append(message.body)
        await message.ack()
    assert sorted(seen) == sorted(BODIES)
    await _until(vhost, {topology.dead_letter_queue: 0, topology.requests_queue: 0})
