"""``PROVISIONER_AMQP_URL`` as a list of nodes, against the real broker: a node that does not
answer is passed over, at start and for a short-lived connection alike. (Losing a node of a
real three-node cluster mid-run is the cluster chaos run's: tests/integration/
test_chaos_cluster.py.)"""

from __future__ import annotations

import pytest

from service.broker.connection import ClusterConnection, connect, connect_once
from tests.fixtures.rabbitmq_node import free_port

pytestmark = pytest.mark.integration


def _dead(amqp_url: str) -> str:
    # The same URL at a port nothing listens on: a node that is down.
    return amqp_url.replace(":5672/", f":{free_port()}/", 1)


async def test_a_node_that_is_down_is_passed_over(amqp_url: str) -> None:
    dead = _dead(amqp_url)
    assert dead != amqp_url
    connection = await connect([dead, amqp_url], order="listed", attempts=2)
    try:
        assert isinstance(connection, ClusterConnection)
        assert connection.url.port == 5672
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        assert queue.name
    finally:
        await connection.close()


async def test_a_short_lived_connection_tries_each_node_once(amqp_url: str) -> None:
    connection = await connect_once([_dead(amqp_url), amqp_url], order="listed")
    try:
        assert ":5672/" in str(connection)
    finally:
        await connection.close()
    with pytest.raises(OSError):
        await connect_once([_dead(amqp_url), _dead(amqp_url)], order="listed", timeout_s=5)
