"""Watches come back as waves: a watch the service sends back carries the time it is due again,
one poll interval after the start of the list it looked at (see ``DUE_HEADER``)."""

from __future__ import annotations

import time

import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from service.provisioning.messages import decode_watch
from service.provisioning.watch import DUE_HEADER
from service.simulator import SimulatorConfig
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import (
    command,
    get_all,
    publish,
    running_service,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.integration

LIST = "GET /v2/databases"


async def test_a_watch_sent_back_is_due_one_interval_after_the_list_it_looked_at(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.1, stuck_fraction=1.0))
    settings = settings_for(amqp_url, sim, poll_interval_s=0.3, create_timeout_s=60.0)
    started = time.time()
    async with running_service(settings) as service:
        await publish(amqp, command("wave-1", "valkey"))
        # The command's own look, then watch steps, each with a list of its own.
        await wait_until(lambda: sim.stats().count(LIST) >= 4, timeout=30)
        topology = service.topology
    stopped = time.time()
    # Stopped: the watch is in its delay queue, or back in the watch queue after the drain.
    messages: list[AbstractIncomingMessage] = []
    for queue in (topology.watch_delay_queue(), topology.watch_queue):
        messages.extend(await get_all(amqp, queue))
    assert len(messages) == 1
    watch = messages[0]
    assert decode_watch(watch.body).request_id == "wave-1"
    due = (watch.headers or {}).get(DUE_HEADER)
    assert isinstance(due, str)  # a string: an AMQP float would keep only 32 bits
    looked_at = float(due) - settings.poll_interval_s
    assert started <= looked_at <= stopped
