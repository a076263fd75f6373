"""A RabbitMQ cluster of the test's own: three nodes of the installed ``rabbitmq-server`` on
this machine, joined with ``rabbitmqctl join_cluster``, that the test may kill and restart.

Each node is a :class:`RabbitNode` (own name, AMQP and distribution ports, data and log
directories, configuration and plugins files, all under the cluster's directory). The nodes
share what a cluster needs to share and nothing the machine's main broker uses: an epmd of
their own on a port of their own (started here, stopped at the end), and an Erlang cookie
written into each node's own ``HOME``. The machine's broker on 5672/25672 is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import quote

from tests.chaos.rabbitmq_node import NodeError, RabbitNode, free_port

__all__ = ["ADVANCED_CONFIG", "RabbitCluster", "cluster"]

# What docs/reliability.md recommends for a cluster: a quorum queue's at-least-once
# dead-letter worker sends again what its target did not confirm after this long (RabbitMQ's
# default, 180 s, held watches in a delay queue for minutes after the target's leader died).
ADVANCED_CONFIG: Final = "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].\n"


class RabbitCluster:
    """``size`` nodes under ``root``; ``start()`` once, ``close()`` at the end."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.epmd_port = free_port()
        cookie = secrets.token_hex(16).upper()
        tag = uuid.uuid4().hex[:6]
        self.nodes = [
            RabbitNode(
                root / f"node-{i}",
                name=f"provisioner-c{tag}-{i}@localhost",
                epmd_port=self.epmd_port,
                cookie=cookie,
                advanced=ADVANCED_CONFIG,
            )
            for i in range(1, size + 1)
        ]
        self._epmd_started = False

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start epmd and every node, then join the others to the first."""
        await self._epmd("-daemon")
        self._epmd_started = True
        # One at a time: three Erlang VMs booting together on two cores take longer than
        # one after the other.
        for node in self.nodes:
            await node.start()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            await node.ctl("stop_app")
            await node.ctl("join_cluster", first.name)
            await node.ctl("start_app")
        running = await self.running_nodes()
        if sorted(running) != sorted(n.name for n in self.nodes):
            raise NodeError(f"the cluster did not form: running {running}")

    async def close(self) -> None:
        """Stop every node (forcibly if need be) and the epmd; leave nothing running."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                await node.close()
        if self._epmd_started:
            with contextlib.suppress(Exception):
                await self._epmd("-kill")

    async def _epmd(self, *args: str) -> None:
        epmd = shutil.which("epmd")
        if epmd is None:
            raise NodeError("epmd is not installed (it comes with Erlang)")
        process = await asyncio.create_subprocess_exec(
            epmd,
            "-port",
            str(self.epmd_port),
            *args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "ERL_EPMD_ADDRESS": "127.0.0.1"},
        )
        await asyncio.wait_for(process.wait(), 10)

    # --- asking the cluster ------------------------------------------------------------

    def alive(self) -> RabbitNode:
        """A node that is running (to run ``rabbitmqctl`` against)."""
        for node in self.nodes:
            if node.running:
                return node
        raise NodeError("no node of the cluster is running")

    def node_named(self, name: str) -> RabbitNode:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    async def ctl(self, *args: str, timeout_s: float = 60.0) -> str:
        """``rabbitmqctl ARGS`` against a running node."""
        return await self.alive().ctl(*args, timeout_s=timeout_s)

    async def running_nodes(self) -> list[str]:
        """The names of the nodes the cluster sees running."""
        status = json.loads(await self.ctl("cluster_status", "--formatter", "json"))
        return [str(n) for n in status.get("running_nodes", [])]

    def urls(self, vhost: str, *, first: int = 0) -> str:
        """Every node's AMQP URL for ``vhost``, comma-separated, node ``first`` first."""
        path = quote(vhost, safe="")
        order = self.nodes[first:] + self.nodes[:first]
        return ",".join(node.url(path) for node in order)

    async def add_vhost(self, vhost: str, user: str = "guest") -> None:
        """A virtual host that ``user`` may use fully (the cluster shares it)."""
        await self.ctl("add_vhost", vhost)
        await self.ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

    async def leader_of(self, vhost: str, queue: str) -> str | None:
        """The node leading the quorum queue ``queue`` now, if any."""
        out = await self.ctl("list_queues", "-p", vhost, "name", "leader", "--formatter", "json")
        for row in json.loads(out or "[]"):
            if row.get("name") == queue:
                leader = row.get("leader")
                return str(leader) if leader else None
        return None

    async def wait_for_leader(
        self, vhost: str, queue: str, *, other_than: str | None = None, timeout_s: float = 60.0
    ) -> tuple[str, float]:
        """Wait until ``queue`` has a leader (other than ``other_than``) on a running node;
        the leader and the seconds it took."""
        began = time.monotonic()
        deadline = began + timeout_s
        while True:
            try:
                leader = await self.leader_of(vhost, queue)
            except NodeError:
                leader = None
            running = {n.name for n in self.nodes if n.running}
            if leader and leader != other_than and leader in running:
                return leader, time.monotonic() - began
            if time.monotonic() > deadline:
                raise NodeError(f"{queue} had no new leader within {timeout_s:g} s")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def cluster(root: Path, size: int = 3) -> AsyncIterator[RabbitCluster]:
    """A started cluster, closed (every node stopped, epmd too) at the end, whatever
    happens."""
    started = RabbitCluster(root, size)
    try:
        await started.start()
        yield started
    finally:
        await started.close()
