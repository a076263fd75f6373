"""The RabbitMQ user that KEDA's rabbitmq scaler reads the command queue's depth with, as
README.md ("Running it on Kubernetes") grants it: the README's ``set_permissions`` line is run as
written (virtual host and user swapped for this test's own), then the user reads the depth of
provisioner.requests, as the scaler does (a passive declare), and is refused everything else."""

from __future__ import annotations

import re
import secrets
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelAccessRefused

from service.broker.topology import Topology, declare
from tests.fixtures.broker import BROKER_HOST, BROKER_PORT
from tests.fixtures.permissions import rabbitmqctl

pytestmark = pytest.mark.integration

README: Final = Path(__file__).resolve().parents[2] / "README.md"
DOC_VHOST: Final = "databases"
DOC_USER: Final = "keda-scaler"


def _documented_grant() -> list[str]:
    """The README's ``rabbitmqctl set_permissions`` line for the scaler's user."""
    lines = re.findall(
        rf"^rabbitmqctl set_permissions .*\b{DOC_USER}\b.*$", README.read_text(), re.M
    )
    assert len(lines) == 1, lines
    return shlex.split(lines[0])[1:]


@pytest.fixture
def scaler_url(vhost: str) -> Iterator[str]:
    user = f"keda-scaler-{uuid.uuid4().hex[:8]}"
    password = secrets.token_urlsafe(16)
    rabbitmqctl("add_user", user, stdin=password)
    try:
        grant = [
            vhost if a == DOC_VHOST else user if a == DOC_USER else a for a in _documented_grant()
        ]
        rabbitmqctl(*grant)
        yield f"amqp://{user}:{password}@{BROKER_HOST}:{BROKER_PORT}/{quote(vhost, safe='')}"
    finally:
        rabbitmqctl("delete_user", user)


async def test_the_scalers_user_reads_the_command_queues_depth_and_nothing_else(
    amqp: AbstractRobustConnection, scaler_url: str
) -> None:
    topology = Topology()
    channel = await amqp.channel()
    await declare(channel, topology)
    for _ in range(3):
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}"), routing_key=topology.requests_queue
        )
    await channel.close()

    async with await aio_pika.connect(scaler_url) as scaler:
        depth = await (await scaler.channel()).declare_queue(topology.requests_queue, passive=True)
        assert depth.declaration_result.message_count == 3

        consuming = await scaler.channel()
        queue = await consuming.declare_queue(topology.requests_queue, passive=True)
        with pytest.raises(ChannelAccessRefused):
            await queue.get(no_ack=False)

        publishing = await scaler.channel(publisher_confirms=True)
        with pytest.raises(ChannelAccessRefused):
            await publishing.default_exchange.publish(
                aio_pika.Message(b"{}"), routing_key=topology.requests_queue
            )
