"""A RabbitMQ cluster of the test's own: three nodes of the installed ``rabbitmq-server`` on
this machine, joined with ``rabbitmqctl join_cluster``, that the test may kill and restart.

Each node is a :class:`RabbitNode` (own name, AMQP and distribution ports, data and log
directories, configuration and plugins files, all under the cluster's directory). The nodes
share what a cluster needs to share and nothing the machine's main broker uses: an epmd of
their own on a port of their own (started here, stopped at the end), and an Erlang cookie
written into each node's own ``HOME``. The machine's broker on 5672/25672 is never touched.

Each node's Erlang distribution has a loopback address of its own (``127.A.B.11``, ``.12``,
``.13``, with ``A.B`` drawn at random per cluster: all of 127/8 is on ``lo``), listens there
and connects from there; node names are long names on those addresses. So a partition of one
node is a pair of firewall rules per other node (:meth:`RabbitCluster.partition`), on those
addresses only, in an iptables chain of the cluster's own: AMQP (on 127.0.0.1) and
``rabbitmqctl`` still reach every node, and nothing else on the machine is affected.
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

from tests.fixtures.rabbitmq_node import NodeError, RabbitNode, free_port

__all__ = [
    "ADVANCED_CONFIG",
    "CLUSTER_ERL_ARGS",
    "PartitionUnavailable",
    "RabbitCluster",
    "cluster",
    "iptables",
]

# What docs/reliability.md recommends for a cluster: a quorum queue's at-least-once
# dead-letter worker sends again what its target did not confirm after this long (RabbitMQ's
# default, 180 s, held watches in a delay queue for minutes after the target's leader died).
ADVANCED_CONFIG: Final = "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, 5000}]}].\n"
# A lost peer is noticed after about this long (Erlang's default, 60 s, is longer than a run's
# partition); and the side of a partition without a majority pauses (what docs/reliability.md
# recommends for production; RabbitMQ's default, ``ignore``, leaves two halves running).
CLUSTER_ERL_ARGS: Final = (
    "-kernel net_ticktime 10 -rabbit cluster_partition_handling pause_minority"
)


class PartitionUnavailable(RuntimeError):
    """This machine cannot cut links between the nodes (no iptables, or not root)."""


def iptables() -> str:
    """The ``iptables`` command, if this process may change the firewall; else
    :class:`PartitionUnavailable` with the reason."""
    found = shutil.which("iptables")
    if found is None:
        raise PartitionUnavailable("iptables is not installed")
    if os.geteuid() != 0:
        raise PartitionUnavailable("changing the firewall needs root")
    return found


class RabbitCluster:
    """``size`` nodes under ``root``; ``start()`` once, ``close()`` at the end."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.epmd_port = free_port()
        cookie = secrets.token_hex(16).upper()
        tag = uuid.uuid4().hex[:6]
        net = f"127.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"
        self.net = f"{net}.0/24"
        self.nodes = [
            RabbitNode(
                root / f"node-{i}",
                name=f"provisioner-c{tag}-{i}@{net}.{10 + i}",
                epmd_port=self.epmd_port,
                cookie=cookie,
                advanced=ADVANCED_CONFIG,
                dist_address=f"{net}.{10 + i}",
                extra_erl_args=CLUSTER_ERL_ARGS,
            )
            for i in range(1, size + 1)
        ]
        self._epmd_addresses = ",".join(["127.0.0.1"] + [str(n.dist_address) for n in self.nodes])
        self._chain = f"PROVC-{tag}"
        self._chain_made = False
        self.partitioned: set[str] = set()
        """Names of nodes cut off from the others now."""
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
        """Stop every node (forcibly if need be) and the epmd; leave nothing running (and no
        firewall rule)."""
        with contextlib.suppress(Exception):
            await self.heal()
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
            env={**os.environ, "ERL_EPMD_ADDRESS": self._epmd_addresses},
        )
        await asyncio.wait_for(process.wait(), 10)

    # --- partitions --------------------------------------------------------------------

    async def _iptables(self, *args: str, check: bool = True) -> None:
        process = await asyncio.create_subprocess_exec(
            iptables(),
            "-w",
            "10",
            *args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 30)
        if check and process.returncode != 0:
            raise NodeError(f"iptables {' '.join(args)} failed: {err.decode(errors='replace')}")

    async def partition(self, node: RabbitNode) -> None:
        """Cut ``node``'s distribution links to every other node, both ways (packets dropped,
        as on a broken network); :meth:`heal` ends it. Raises :class:`PartitionUnavailable`
        when the machine cannot."""
        iptables()
        if not self._chain_made:
            await self._iptables("-N", self._chain)
            self._chain_made = True
            # Only packets to this cluster's own addresses go through the chain.
            await self._iptables("-I", "INPUT", "-d", self.net, "-j", self._chain)
        assert node.dist_address is not None
        for other in self.nodes:
            if other is node:
                continue
            assert other.dist_address is not None
            pairs = (
                (node.dist_address, other.dist_address),
                (other.dist_address, node.dist_address),
            )
            for src, dst in pairs:
                await self._iptables("-A", self._chain, "-s", src, "-d", dst, "-j", "DROP")
        self.partitioned.add(node.name)

    async def heal(self) -> None:
        """Remove every rule :meth:`partition` made, and its chain (the nodes stay in
        ``partitioned`` until :meth:`wait_rejoined` sees them back)."""
        if not self._chain_made:
            return
        await self._iptables("-F", self._chain, check=False)
        await self._iptables("-D", "INPUT", "-d", self.net, "-j", self._chain, check=False)
        await self._iptables("-X", self._chain)
        self._chain_made = False

    async def wait_rejoined(self, timeout_s: float = 120.0) -> float:
        """After :meth:`heal`: wait until the other nodes list every node running again (a
        node that paused in the minority starts its broker again by itself); the seconds it
        took. Until then ``rabbitmqctl`` goes to nodes that were not cut off."""
        began = time.monotonic()
        while True:
            with contextlib.suppress(NodeError):
                if len(await self.running_nodes()) == len(self.nodes):
                    self.partitioned.clear()
                    return time.monotonic() - began
            if time.monotonic() > began + timeout_s:
                raise NodeError(f"the nodes cut off did not rejoin within {timeout_s:g} s")
            await asyncio.sleep(0.5)

    # --- asking the cluster ------------------------------------------------------------

    def alive(self) -> RabbitNode:
        """A node that is running and not cut off (to run ``rabbitmqctl`` against)."""
        for node in self.nodes:
            if node.running and node.name not in self.partitioned:
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
            running = {n.name for n in self.nodes if n.running and n.name not in self.partitioned}
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
