"""One node of a real three-node cluster cut off from the other two (iptables, root): until
the others notice (about 10 s with the test nodes' ``net_ticktime``) it still accepts AMQP,
declarations and publishes, but confirms nothing that needs the cluster, then it pauses
(``pause_minority``) and drops its connections. A replica started there in that window
starts on another node, SIGTERM ends a replica that is still setting up, and a reply copy sent
through that node arrives. ``make chaos-cluster`` cuts a node mid-run at full size."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import aio_pika
import pytest

from service.broker.replies import ReplyCopies
from service.simulator import Simulator
from tests.chaos.rabbitmq_cluster import PartitionUnavailable, RabbitCluster, cluster, iptables
from tests.fixtures.rabbitmq_node import server_script
from tests.fixtures.service_process import (
    named,
    service_env,
    start_service,
    stop_service,
    wait_for_log,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

# The cut node pauses 10 to 15 s after the cut on this machine; everything here is bounded
# well past that.
STARTED_WITHIN_S = 90.0
STOPPED_WITHIN_S = 15.0
COPY_TIMEOUT_S = 2.0


async def _reply_queue(node_url: str, name: str) -> aio_pika.abc.AbstractRobustConnection:
    """A quorum queue declared through ``node_url`` (so led by that node), as a producer's
    reply queue is; the connection stays open to read it later."""
    connection = await aio_pika.connect_robust(node_url)
    channel = await connection.channel()
    await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
    return connection


async def _copies_in(connection: aio_pika.abc.AbstractRobustConnection, name: str) -> list[str]:
    channel = await connection.channel()
    queue = await channel.declare_queue(name, passive=True)
    ids = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        ids.append(str(message.message_id))
    return ids


async def _declare_topology(c: RabbitCluster, vhost: str, sim: Simulator, logs: Path) -> None:
    # A replica on a node that stays: the queues exist before the cut, as in production.
    log = logs / "first.log"
    env = service_env(c.urls(vhost, first=1), sim, PROVISIONER_AMQP_URL_ORDER="listed")
    process = await start_service(env, log)
    await wait_for_log(
        log,
        lambda events: named("service_started")(events) > 0,
        process=process,
        timeout=60,
        what="the first start",
    )
    assert await stop_service(process) == 0


async def test_a_node_cut_off_from_its_cluster_holds_no_replica_and_loses_no_reply_copy(
    tmp_path: Path, simulator: Simulator
) -> None:
    if server_script() is None:
        pytest.skip("rabbitmq-server is not installed here, so no cluster can be started")
    try:
        iptables()
    except PartitionUnavailable as exc:
        pytest.skip(f"no partition can be made here: {exc}")
    async with cluster(tmp_path / "cluster") as c:
        vhost = f"partition-{uuid.uuid4().hex[:8]}"
        await c.add_vhost(vhost)
        await _declare_topology(c, vhost, simulator, tmp_path)
        victim, other = c.nodes[0], c.nodes[1]
        reply_queue = "guest.partition-reply"
        reader = await _reply_queue(other.url(vhost), reply_queue)
        # Copies start on the node about to be cut off.
        copies = ReplyCopies(c.urls(vhost, first=0), order="listed", timeout_s=COPY_TIMEOUT_S)
        await copies.start()
        assert copies.node == f"127.0.0.1:{victim.amqp_port}"
        try:
            await c.partition(victim)
            # Listed first: both replicas connect to the cut node, which still answers.
            env = service_env(
                c.urls(vhost, first=0),
                simulator,
                PROVISIONER_AMQP_URL_ORDER="listed",
                PROVISIONER_PUBLISH_TIMEOUT_S=str(COPY_TIMEOUT_S),
            )
            started_log, stopped_log = tmp_path / "started.log", tmp_path / "stopped.log"
            starting = await start_service(env, started_log)
            stopping = await start_service(env, stopped_log)
            message = aio_pika.Message(b"{}", message_id=str(uuid.uuid4()))
            copy = asyncio.create_task(copies.send(message, reply_queue))
            try:
                # A replica setting up on the cut node (which answers no declaration now)
                # ends at SIGTERM, cleanly.
                await wait_for_log(
                    stopped_log,
                    lambda events: named("broker_connected")(events) > 0,
                    process=stopping,
                    timeout=30,
                    what="the second replica's start",
                )
                assert await asyncio.wait_for(stop_service(stopping), STOPPED_WITHIN_S) == 0

                # The other starts, on another node, once the cut node gave up.
                events = await wait_for_log(
                    started_log,
                    lambda events: named("service_started")(events) > 0,
                    process=starting,
                    timeout=STARTED_WITHIN_S,
                    what="service_started",
                )
                started = next(e for e in events if e.get("event") == "service_started")
                assert started["node"] != f"127.0.0.1:{victim.amqp_port}", started
                assert await stop_service(starting) == 0
            finally:
                for process in (starting, stopping):
                    if process.returncode is None:
                        process.kill()
                        await process.wait()

            # The copy was sent again on a fresh connection until a node confirmed it.
            assert await copy == "sent"
            assert copies.node != f"127.0.0.1:{victim.amqp_port}"
            assert message.message_id in await _copies_in(reader, reply_queue)
        finally:
            await copies.close()
            await reader.close()
            await c.heal()
