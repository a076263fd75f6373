"""The chaos run: replicas killed, broker connections cut, the API taken away; nothing lost.

``python -m tests.chaos.run --requests N [--replicas K] [--seed S]``

On the local RabbitMQ, in a virtual host of its own (created here, deleted at the end), it
runs K ``provisioner run`` processes against a simulator hosted in this process with faults
on (500s, 429s, dropped connections, slow phases), and one subscriber process recording every
event. It publishes N requests (mixed engines, some with users and databases, some bad, some
with ``reply_to``, a few published twice) while it SIGKILLs replicas and starts them again,
closes every broker connection of the virtual host with ``rabbitmqctl``, and takes the API
away for a while. Then it waits for everything to settle, stops the replicas with SIGTERM and
prints the figures, one per line. Exit 0 only when no cluster was duplicated, no request was
lost, every good request reached ``connection_ready``, every bad one was rejected and parked,
the service's queues drained and no secret appears in any log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection
from msgspec import Struct

from contracts.events import decode_event
from service.broker.connection import connect
from service.broker.topology import Topology
from service.simulator import Simulator, SimulatorConfig
from tests.chaos.plan import PlannedRequest, build_plan
from tests.chaos.rabbitmq_cluster import PartitionUnavailable, RabbitCluster
from tests.chaos.subscriber import QUEUE as SUBSCRIBER_QUEUE
from tests.chaos.subscriber import URL_VARIABLE, password_digest
from tests.chaos.verdict import (
    REJECTED,
    TERMINAL,
    ChaosCounts,
    ClusterSeen,
    Evidence,
    ReplyMessage,
    Verdict,
    judge,
)
from tests.fixtures import rabbitmqctl
from tests.fixtures.rabbitmq_node import NodeError
from tests.fixtures.replicas import Replica, ReplicaError

__all__ = ["ChaosRun", "Schedule", "main", "schedule_for"]

_STOPPED_COUNT: Final = re.compile(rb'"handlers": ?(\d+)|handlers=(\d+)')


def _handlers_stopped(log: bytes) -> int:
    """The handlers a replica's log says it cancelled because their channel was lost."""
    total = 0
    for line in log.splitlines():
        if b"handlers_stopped_channel_lost" in line:
            match = _STOPPED_COUNT.search(line)
            if match is not None:
                total += int(match.group(1) or match.group(2))
    return total


BROKER_HOST: Final = os.environ.get("RABBITMQ_HOST", "127.0.0.1")
BROKER_PORT: Final = int(os.environ.get("RABBITMQ_PORT", "5672"))
MANAGED_TAG: Final = "provisioner"
POLL_INTERVAL_S: Final = 1.0
# Create attempts: enough to outlast an API pause and a streak of injected faults.
RETRY_DELAYS_S: Final = (0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0)
# DigitalOcean's budget (250 a minute, 5,000 an hour) with time compressed twelvefold.
RATE_WINDOW_S: Final = 5.0
HOUR_WINDOW_S: Final = 60.0
# The producer's RabbitMQ user, and reply queues its policy allows (`<producer>.*`).
PRODUCER: Final = "guest"
REPLY_QUEUES: Final = ("guest.chaos-reply.a", "guest.chaos-reply.b", "guest.chaos-reply.c")
RESTART_AFTER_S: Final = 1.0
START_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
PUBLISH_ATTEMPTS: Final = 60
CLUSTER_NODES: Final = 3
# A killed broker node stays down this long before it is started again.
NODE_DOWN_S: Final = 3.0
# A node cut off from the others stays cut off this long after they noticed.
PARTITION_S: Final = 15.0


class Schedule(Struct, frozen=True, kw_only=True):
    """How much chaos, spread over how long."""

    kills: int
    cuts: int
    pauses: int
    pause_s: float
    slows: int
    slow_s: float
    slow_latency_s: float
    spacing_s: float
    """Seconds between two chaos actions; publishing spans all of them."""
    settle_s: float
    """How long, after the last publish, everything may take to finish."""
    node_kills: int = 0
    """Broker nodes SIGKILLed and started again (on a cluster)."""
    leader_moves: int = 0
    """Quorum leaders moved off a node (on a cluster)."""
    partitions: int = 0
    """Nodes cut off from the others for a while (on a cluster)."""

    def actions(self) -> list[str]:
        """Every action, each kind spread evenly over the run."""
        counts = {
            "kill": self.kills,
            "cut": self.cuts,
            "pause": self.pauses,
            "slow": self.slows,
            "node": self.node_kills,
            "move": self.leader_moves,
            "partition": self.partitions,
        }
        spread = [((i + 0.5) / n, kind) for kind, n in counts.items() if n > 0 for i in range(n)]
        return [kind for _, kind in sorted(spread)]

    @property
    def chaos_s(self) -> float:
        """How long the chaos (and the publishing) lasts."""
        return len(self.actions()) * self.spacing_s


def schedule_for(requests: int, *, cluster: bool = False, partition: bool = False) -> Schedule:
    """The reduced run (inside ``make test``) or the full one (``make chaos``); on a
    cluster (``make chaos-cluster``) broker nodes are killed too: once (the command queue's
    leader) in the reduced run, each node in turn in the full one, with leaders moved; with
    ``partition``, the command queue's leader is also cut off from the others once."""
    if cluster and requests <= 100:
        return Schedule(
            kills=2,
            cuts=1,
            pauses=1,
            pause_s=5.0,
            slows=0,
            slow_s=0.0,
            slow_latency_s=0.0,
            spacing_s=4.0,
            settle_s=150.0,
            node_kills=1,
        )
    if cluster:
        return Schedule(
            kills=6,
            cuts=3,
            pauses=2,
            pause_s=8.0,
            slows=2,
            slow_s=8.0,
            slow_latency_s=2.0,
            spacing_s=7.0,
            settle_s=480.0,
            node_kills=CLUSTER_NODES,
            leader_moves=2,
            partitions=1 if partition else 0,
        )
    if requests <= 100:
        return Schedule(
            kills=3,
            cuts=2,
            pauses=1,
            pause_s=6.0,
            slows=1,
            slow_s=5.0,
            slow_latency_s=1.5,
            spacing_s=3.5,
            settle_s=120.0,
        )
    return Schedule(
        kills=6,
        cuts=4,
        pauses=2,
        pause_s=8.0,
        slows=2,
        slow_s=8.0,
        slow_latency_s=2.0,
        spacing_s=7.0,
        settle_s=420.0,
    )


def describe_dead_letter(message: AbstractIncomingMessage) -> str:
    """Where a dead-lettered message came from, why, and whose it is (no body)."""
    headers = message.headers or {}
    try:
        body = json.loads(message.body)
        request_id = body.get("request_id") if isinstance(body, dict) else None
    except ValueError:
        request_id = None
    queue, reason, count = (
        str(headers.get(name, "?"))
        for name in ("x-first-death-queue", "x-first-death-reason", "x-delivery-count")
    )
    return (
        f"{request_id or '?'} from {queue} ({reason}, x-delivery-count {count}, "
        f"{message.content_type})"
    )


class EventLog:
    """The subscriber's JSON-lines file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: list[dict[str, Any]] = []
        self._offset = 0
        self.final_ids: set[str] = set()
        self.rejected_ids: set[str] = set()

    def refresh(self) -> None:
        """Read the complete lines written since the last call."""
        if not self.path.exists():
            return
        with self.path.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        self._offset += end + 1
        for raw in chunk[: end + 1].splitlines():
            line: dict[str, Any] = json.loads(raw)
            self.lines.append(line)
            if line.get("type") in TERMINAL and line.get("request_id"):
                self.final_ids.add(str(line["request_id"]))
            if line.get("type") == REJECTED:
                self.rejected_ids.add(str(line["id"]))

    def settled(self, plan: list[PlannedRequest]) -> bool:
        """Every good request has a final event and every bad one its rejection."""
        for p in plan:
            if p.good and p.request_id not in self.final_ids:
                return False
            if not p.good and not p.rejected_ids(PRODUCER) & self.rejected_ids:
                return False
        return True


class ChaosRun:
    """One run, from an empty virtual host to the verdict."""

    def __init__(
        self,
        *,
        requests: int,
        replicas: int,
        seed: int,
        workdir: Path,
        cluster: bool = False,
        partition: bool = False,
    ) -> None:
        self.requests = requests
        self.cluster: RabbitCluster | None = (
            RabbitCluster(workdir / "cluster", CLUSTER_NODES) if cluster else None
        )
        self.seed = seed
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.schedule = schedule_for(requests, cluster=cluster, partition=partition)
        self.run_tag = hashlib.sha256(f"{seed}:{uuid.uuid4()}".encode()).hexdigest()[:6]
        self.vhost = f"provisioner-chaos-{self.run_tag}"
        vhost_path = quote(self.vhost, safe="")
        self.amqp_url = f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/{vhost_path}"
        self.token = "chaos-" + secrets.token_hex(16)
        self.simulator = Simulator(
            SimulatorConfig(
                token=self.token,
                ready_after_s=1.0,
                ready_jitter_s=2.0,
                not_found_grace_s=0.5,
                rate_limit_per_minute=250,
                minute_window_s=RATE_WINDOW_S,
                rate_limit_per_hour=5000,
                hour_window_s=HOUR_WINDOW_S,
                fail_500_fraction=0.05,
                fail_429_fraction=0.02,
                drop_fraction=0.03,
                drop_after_effect_fraction=0.5,
                seed=seed,
            )
        )
        self.plan = build_plan(requests, seed, list(REPLY_QUEUES), self.run_tag)
        self.counts = ChaosCounts(replicas=replicas, nodes=CLUSTER_NODES if cluster else 0)
        self._killed_nodes: set[str] = set()
        self._node_down = asyncio.Lock()  # one node down at a time: two would cost the quorum
        self.replicas: list[Replica] = []
        self.replica_count = replicas
        self.events = EventLog(workdir / "events.jsonl")
        self.topology = Topology(poll_interval_s=POLL_INTERVAL_S, retry_delays_s=RETRY_DELAYS_S)
        self._subscriber: asyncio.subprocess.Process | None = None
        self._background: list[asyncio.Task[None]] = []
        self._vhost_created = False

    # --- the processes -----------------------------------------------------------------

    def _url_for(self, index: int) -> str:
        """The broker URL(s) of process ``index``: on a cluster every node, in an order that
        starts process ``index`` at its own node (so replicas sit on different nodes)."""
        if self.cluster is None:
            return self.amqp_url
        return self.cluster.urls(self.vhost, first=index % len(self.cluster.nodes))

    def _replica_env(self, index: int = 0) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PROVISIONER_", "DIGITALOCEAN_", "SIMULATOR_"))
        }
        env.update(
            {
                "PROVISIONER_AMQP_URL": self._url_for(index),
                "PROVISIONER_AMQP_URL_ORDER": "listed",
                "DIGITALOCEAN_TOKEN": self.token,
                "DIGITALOCEAN_API_URL": self.simulator.base_url,
                "PROVISIONER_MANAGED_TAG": MANAGED_TAG,
                "PROVISIONER_POLL_INTERVAL_S": f"{POLL_INTERVAL_S:g}",
                "PROVISIONER_RETRY_DELAYS_S": ",".join(f"{d:g}" for d in RETRY_DELAYS_S),
                "PROVISIONER_CREATE_TIMEOUT_S": "900",
                # Finishing steps retry once per poll: enough polls to outlast an API pause.
                "PROVISIONER_FINISH_MAX_ATTEMPTS": "200",
                "PROVISIONER_NOT_FOUND_GRACE_S": "30",
                "PROVISIONER_SHUTDOWN_GRACE_S": "5",
                "PROVISIONER_PUBLISH_TIMEOUT_S": "5",
                "PROVISIONER_HTTP_HOST": "127.0.0.1",
                "PROVISIONER_HTTP_PORT": "0",
                "PROVISIONER_LOG_FORMAT": "json",
                "PROVISIONER_LOG_LEVEL": "INFO",
                "PROVISIONER_RATE_LIMIT_PER_MINUTE": "250",
                "PROVISIONER_RATE_LIMIT_MINUTE_WINDOW_S": f"{RATE_WINDOW_S:g}",
                "PROVISIONER_RATE_LIMIT_PER_HOUR": "5000",
                "PROVISIONER_RATE_LIMIT_HOUR_WINDOW_S": f"{HOUR_WINDOW_S:g}",
            }
        )
        return env

    async def _start_subscriber(self) -> None:
        env = {**os.environ, URL_VARIABLE: self._url_for(len(self.replicas) + 1)}
        log_path = self.workdir / "subscriber.log"
        with log_path.open("ab") as log:
            self._subscriber = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.chaos.subscriber",
                str(self.events.path),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"subscribed" not in log_path.read_bytes():
            if self._subscriber.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the subscriber did not start; see {log_path}")
            await asyncio.sleep(0.1)

    async def _stop_subscriber(self) -> None:
        process = self._subscriber
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def _start_replicas(self) -> None:
        for i in range(1, self.replica_count + 1):
            env = self._replica_env(i - 1)
            replica = Replica(f"replica-{i}", env, self.workdir / f"replica-{i}.log")
            self.replicas.append(replica)
            await replica.start()
        await asyncio.gather(*(r.wait_started(START_TIMEOUT_S) for r in self.replicas))

    # --- chaos -------------------------------------------------------------------------

    async def _kill_one(self) -> None:
        running = [r for r in self.replicas if r.running]
        if not running:
            return
        victim = self.rng.choice(running)
        await victim.kill()
        self.counts.kills += 1
        self._background.append(asyncio.create_task(self._restart(victim)))

    async def _restart(self, replica: Replica) -> None:
        await asyncio.sleep(RESTART_AFTER_S)  # a crashed pod comes back after a moment
        kills = replica.kills
        try:
            await replica.start()
            await replica.wait_started(START_TIMEOUT_S)
            self.counts.restarts += 1
        except ReplicaError as exc:
            if replica.kills > kills:
                # The next kill chose this replica while it was starting (a start on a node
                # cut off from its cluster lasts until that node pauses); that kill's own
                # restart is the one that counts.
                self.counts.restarts_cut_short += 1
                print(f"    restart cut short by the next kill: {exc}", flush=True)
                return
            self.counts.restart_failures += 1
            print(f"restart failed: {exc}", file=sys.stderr, flush=True)

    async def _cut_connections(self) -> None:
        if self.cluster is None:
            await rabbitmqctl.close_all_connections(self.vhost, "chaos run")
        else:
            # On each node: close_all_connections closes those of the node it runs on.
            for node in self.cluster.nodes:
                if node.running:
                    with contextlib.suppress(NodeError):
                        await node.ctl("close_all_connections", "-p", self.vhost, "chaos run")
        self.counts.connection_cuts += 1

    async def _queue_depths(self) -> dict[str, rabbitmqctl.QueueDepth]:
        if self.cluster is None:
            return await rabbitmqctl.queue_depths(self.vhost)
        out = await self.cluster.ctl(
            "list_queues",
            "-p",
            self.vhost,
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--formatter",
            "json",
        )
        return rabbitmqctl.parse_depths(out)

    async def _kill_node(self) -> None:
        """SIGKILL a broker node: the one leading the command queue if it was not killed
        yet, else one not killed yet (so every node goes down once), else the leader; then
        start it again and wait until it is back."""
        cluster = self.cluster
        assert cluster is not None
        async with self._node_down:
            queue = self.topology.requests_queue
            leader, _ = await cluster.wait_for_leader(self.vhost, queue)
            fresh = [n for n in cluster.nodes if n.name not in self._killed_nodes]
            victim = cluster.node_named(leader)
            if victim.name in self._killed_nodes and fresh:
                victim = fresh[0]
            self._killed_nodes.add(victim.name)
            await victim.kill()
            self.counts.node_kills += 1
            print(f"    killed broker node {victim.name}", flush=True)
            if victim.name == leader:
                self.counts.node_kills_of_leader += 1
                _, took = await cluster.wait_for_leader(self.vhost, queue, other_than=leader)
                self.counts.leader_elections_s.append(round(took, 1))
            await asyncio.sleep(NODE_DOWN_S)
            began = time.monotonic()
            try:
                await victim.start(timeout_s=120)
                await self._wait_members_back()
                self.counts.node_restarts_s.append(round(time.monotonic() - began, 1))
            except NodeError as exc:
                self.counts.node_restart_failures += 1
                print(f"node restart failed: {exc}", file=sys.stderr, flush=True)

    async def _wait_members_back(self) -> None:
        """Until the cluster sees every node running again."""
        cluster = self.cluster
        assert cluster is not None
        deadline = time.monotonic() + 120
        while len(await cluster.running_nodes()) < len(cluster.nodes):
            if time.monotonic() > deadline:
                raise NodeError("a restarted node did not rejoin in 120 s")
            await asyncio.sleep(0.5)

    async def _partition(self) -> None:
        """Cut the node leading the command queue off from the other nodes (firewall rules on
        the Erlang distribution's addresses: AMQP clients still reach it), wait until the
        others notice and elect a new leader, keep it cut off for ``PARTITION_S``, then let
        it back and wait until the cluster lists every node running."""
        cluster = self.cluster
        assert cluster is not None
        async with self._node_down:
            queue = self.topology.requests_queue
            leader, _ = await cluster.wait_for_leader(self.vhost, queue)
            victim = cluster.node_named(leader)
            began = time.monotonic()
            try:
                await cluster.partition(victim)
            except PartitionUnavailable as exc:
                self.counts.partition_skipped = str(exc)
                print(f"    partition skipped: {exc}", flush=True)
                return
            print(f"    cut broker node {victim.name} off from the others", flush=True)
            try:
                _, took = await cluster.wait_for_leader(
                    self.vhost, queue, other_than=leader, timeout_s=120
                )
                self.counts.partition_elections_s.append(round(took, 1))
                deadline = began + 120
                while victim.name in await cluster.running_nodes():
                    if time.monotonic() > deadline:
                        raise NodeError(f"{victim.name} was still listed 120 s after the cut")
                    await asyncio.sleep(0.5)
                self.counts.partitions_noticed_s.append(round(time.monotonic() - began, 1))
                await asyncio.sleep(PARTITION_S)
            except NodeError as exc:
                self.counts.partition_failures += 1
                print(f"partition not noticed: {exc}", file=sys.stderr, flush=True)
            finally:
                await cluster.heal()
            self.counts.partitions += 1
            print(f"    let {victim.name} back", flush=True)
            try:
                back = await cluster.wait_rejoined()
                self.counts.partitions_back_s.append(round(back, 1))
            except NodeError as exc:
                self.counts.partition_failures += 1
                print(f"partition did not heal: {exc}", file=sys.stderr, flush=True)

    async def _move_leaders(self) -> None:
        """Move every quorum leader off the node leading the command queue, the way a rolling
        upgrade does (``rabbitmq-upgrade drain``, then ``revive``)."""
        cluster = self.cluster
        assert cluster is not None
        async with self._node_down:
            queue = self.topology.requests_queue
            leader, _ = await cluster.wait_for_leader(self.vhost, queue)
            node = cluster.node_named(leader)
            await node.ctl("drain", tool="rabbitmq-upgrade", timeout_s=120)
            try:
                await cluster.wait_for_leader(self.vhost, queue, other_than=leader)
                self.counts.leader_moves += 1
            finally:
                await node.ctl("revive", tool="rabbitmq-upgrade", timeout_s=120)

    async def _take_api_away(self) -> None:
        await self.simulator.pause()
        began = time.monotonic()
        try:
            await asyncio.sleep(self.schedule.pause_s)
        finally:
            await self.simulator.resume()
            self.counts.pauses += 1
            self.counts.paused_s += round(time.monotonic() - began, 1)

    async def _slow_down(self) -> None:
        self.simulator.config.latency_s = self.schedule.slow_latency_s
        try:
            await asyncio.sleep(self.schedule.slow_s)
        finally:
            self.simulator.config.latency_s = 0.0
            self.counts.slow_phases += 1

    async def _chaos(self, began: float) -> None:
        for i, action in enumerate(self.schedule.actions()):
            due = began + (i + 0.5) * self.schedule.spacing_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            print(f"  chaos {i + 1}: {action} at {time.monotonic() - began:.1f} s", flush=True)
            if action == "kill":
                await self._kill_one()
            elif action == "node":
                self._background.append(asyncio.create_task(self._kill_node()))
            elif action == "partition":
                self._background.append(asyncio.create_task(self._partition()))
            elif action == "move":
                self._background.append(asyncio.create_task(self._move_leaders()))
            elif action == "cut":
                await self._cut_connections()
            elif action == "pause":
                self._background.append(asyncio.create_task(self._take_api_away()))
            else:
                self._background.append(asyncio.create_task(self._slow_down()))

    # --- the producer ------------------------------------------------------------------

    def _publish_order(self) -> list[PlannedRequest]:
        order = list(self.plan)
        for p in [p for p in self.plan if p.resend]:
            # The same command again a little later, as a producer retrying after a timeout.
            at = min(len(order), order.index(p) + self.rng.randint(1, 8))
            order.insert(at, p)
        return order

    async def _publish(self, channel: AbstractChannel, request: PlannedRequest) -> None:
        message = aio_pika.Message(
            request.body,
            content_type=request.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            reply_to=request.reply_to,
            correlation_id=request.correlation_id,
            user_id=PRODUCER,
        )
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                exchange = await channel.get_exchange(self.topology.commands_exchange, ensure=False)
                await exchange.publish(
                    message, self.topology.command_routing_key, mandatory=True, timeout=5
                )
                return
            except Exception as exc:
                # The connection was cut under us: publish again once it is back (at least
                # once; a duplicate command is harmless by design).
                self.counts.publish_retries += 1
                if attempt == PUBLISH_ATTEMPTS:
                    raise RuntimeError(f"could not publish request {request.index}") from exc
                await asyncio.sleep(0.5)

    async def _produce(self, connection: AbstractRobustConnection, began: float) -> None:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        order = self._publish_order()
        interval = self.schedule.chaos_s / max(1, len(order))
        seen: set[int] = set()
        for i, request in enumerate(order):
            await asyncio.sleep(max(0.0, began + i * interval - time.monotonic()))
            await self._publish(channel, request)
            if request.index in seen:
                self.counts.resends += 1
            seen.add(request.index)

    # --- settling and collecting -------------------------------------------------------

    def _service_queues(self) -> list[str]:
        return [q.name for q in self.topology.queues() if q.name != self.topology.rejected_queue]

    async def _wait_settled(self, deadline: float) -> None:
        """Until every request has its final event and every queue is empty, or the
        deadline."""
        # The dead-letter queue never drains by itself: the verdict counts it.
        dead = self.topology.dead_letter_queue
        queues = [*(q for q in self._service_queues() if q != dead), SUBSCRIBER_QUEUE]
        while time.monotonic() < deadline:
            self.events.refresh()
            if self.events.settled(self.plan):
                depths = await self._queue_depths()
                if all(q in depths and depths[q].total == 0 for q in queues):
                    return
            await asyncio.sleep(1.0)
        print("  settle deadline passed", flush=True)

    async def _drain(
        self, connection: AbstractRobustConnection, queue_name: str
    ) -> list[AbstractIncomingMessage]:
        channel = await connection.channel()
        taken = []
        try:
            queue = await channel.declare_queue(queue_name, passive=True)
            for _ in range(100_000):
                message = await queue.get(fail=False, timeout=5)
                if message is None:
                    break
                await message.ack()
                taken.append(message)
        finally:
            await channel.close()
        return taken

    async def _replies(self, connection: AbstractRobustConnection) -> list[ReplyMessage]:
        replies = []
        for name in REPLY_QUEUES:
            for message in await self._drain(connection, name):
                event = decode_event(message.body)
                replies.append(
                    ReplyMessage(
                        queue=name,
                        correlation_id=message.correlation_id,
                        event_id=event.id,
                        type=event.routing_key,
                        request_id=getattr(event.data, "request_id", None),
                    )
                )
        return replies

    def _clusters(self) -> list[ClusterSeen]:
        now = time.monotonic()
        seen = []
        for record in self.simulator.account:
            cluster = record.to_api(now)
            seen.append(
                ClusterSeen(
                    id=cluster.id,
                    name=cluster.name,
                    status=cluster.status or "",
                    tags=tuple(cluster.tags or ()),
                    users=tuple(u.name for u in cluster.users or ()),
                    db_names=tuple(cluster.db_names or ()),
                    password_digests=tuple(
                        (u.name, password_digest(u.password))
                        for u in cluster.users or ()
                        if u.password
                    ),
                )
            )
        return seen

    def _secrets(self) -> set[str]:
        """The token and every password and private key the simulated API handed out."""
        now = time.monotonic()
        found = {self.token}
        for record in self.simulator.account:
            cluster = record.to_api(now)
            for connection in (
                cluster.connection,
                cluster.private_connection,
                cluster.standby_connection,
                cluster.standby_private_connection,
                cluster.ui_connection,
                cluster.schema_registry_connection,
            ):
                if connection is not None and connection.password:
                    found.add(connection.password)
            for user in cluster.users or ():
                if user.password:
                    found.add(user.password)
                if user.access_key:
                    # A PEM key: its first base64 line is unique, and survives JSON escaping.
                    body = [ln for ln in user.access_key.splitlines() if "-----" not in ln]
                    found.add(body[0] if body else user.access_key)
        return found

    def _scan_logs(self, secrets_: set[str]) -> tuple[dict[str, int], int, int, int]:
        """Secrets found per log file, the bytes and files read, and the handlers the
        replicas stopped because their channel was lost."""
        logs = sorted(self.workdir.glob("*.log"))
        found: dict[str, int] = {}
        size = 0
        stopped = 0
        needles = [s.encode() for s in secrets_]
        for path in logs:
            text = path.read_bytes()
            size += len(text)
            hits = sum(1 for needle in needles if needle in text)
            if hits:
                found[path.name] = hits
            stopped += _handlers_stopped(text)
        return found, size, len(logs), stopped

    # --- the run -----------------------------------------------------------------------

    async def execute(self) -> Verdict:
        """Run, collect, judge; always clean up the processes, the API and the vhost."""
        try:
            return await self._execute()
        finally:
            await self._cleanup()

    async def _execute(self) -> Verdict:
        schedule = self.schedule
        print(
            f"chaos run: {self.requests} requests, {self.replica_count} replicas, seed "
            f"{self.seed}, vhost {self.vhost}, logs in {self.workdir}"
            + (" (on a three-node cluster)" if self.cluster is not None else ""),
            flush=True,
        )
        if self.cluster is not None:
            began = time.monotonic()
            await self.cluster.start()
            print(
                f"  a cluster of {len(self.cluster.nodes)} nodes in "
                f"{time.monotonic() - began:.0f} s",
                flush=True,
            )
            await self.cluster.add_vhost(self.vhost)
        else:
            await rabbitmqctl.add_vhost(self.vhost)
            self._vhost_created = True
        await self.simulator.start()
        await self._start_subscriber()
        await self._start_replicas()
        connection = await connect(self._url_for(0), order="listed")
        try:
            setup = await connection.channel()
            for name in REPLY_QUEUES:
                await setup.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
            await setup.close()
            began = time.monotonic()
            await asyncio.gather(self._produce(connection, began), self._chaos(began))
            print(f"  published everything at {time.monotonic() - began:.1f} s", flush=True)
            await self._wait_settled(time.monotonic() + schedule.settle_s)
            # Pending restarts and phases end before the replicas are stopped.
            await asyncio.gather(*self._background)
            print(f"  settled at {time.monotonic() - began:.1f} s", flush=True)
            codes = await asyncio.gather(*(r.terminate(STOP_TIMEOUT_S) for r in self.replicas))
            exit_codes = {r.name: code for r, code in zip(self.replicas, codes, strict=True)}
            self.events.refresh()
            depths = await self._queue_depths()
            parked = await self._drain(connection, self.topology.rejected_queue)
            replies = await self._replies(connection)
            dead = await self._drain(connection, self.topology.dead_letter_queue)
        finally:
            await connection.close()
        await self._stop_subscriber()
        self.events.refresh()
        stats = self.simulator.stats()
        secrets_ = self._secrets()
        found, size, files, stopped = self._scan_logs(secrets_)
        evidence = Evidence(
            plan=self.plan,
            events=self.events.lines,
            clusters=self._clusters(),
            parked_digests=[hashlib.sha256(m.body).hexdigest() for m in parked],
            dead_letters=[describe_dead_letter(m) for m in dead],
            replies=replies,
            depths=depths,
            service_queues=self._service_queues(),
            managed_tag=MANAGED_TAG,
            producer=PRODUCER,
            counts=self.counts,
            faults=dict(stats.faults),
            rate_limited=stats.rate_limited,
            exit_codes=exit_codes,
            secrets_checked=len(secrets_),
            secrets_found=found,
            log_bytes=size,
            log_files=files,
            handlers_stopped=stopped,
        )
        return judge(evidence)

    async def _cleanup(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for replica in self.replicas:
            if replica.running:
                await replica.kill()
        await self._stop_subscriber()
        await self.simulator.stop()
        if self.cluster is not None:
            await self.cluster.close()
        if self._vhost_created:
            with contextlib.suppress(rabbitmqctl.RabbitmqctlError):
                await rabbitmqctl.delete_vhost(self.vhost)


async def _until_signalled(run: ChaosRun) -> Verdict:
    # SIGTERM (a CI timeout, a test's cleanup) cancels the run, so its cleanup still stops the
    # replicas, the subscriber and the simulator and deletes the vhost; SIGINT does the same.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run.execute()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--requests", type=int, default=300, help="messages to publish (300)")
    parser.add_argument("--replicas", type=int, default=3, help="service processes (3)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the mix and the faults")
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="on a three-node RabbitMQ cluster of the run's own, killing nodes too",
    )
    parser.add_argument(
        "--partition",
        action="store_true",
        help="with --cluster (full size): also cut the command queue's leader node off from "
        "the others for a while (iptables, root)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the run's directory even when it passes"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run once; print the figures; 0 when every promise held."""
    args = _parser().parse_args(argv)
    if args.requests < 1 or args.replicas < 1:
        print("--requests and --replicas must be at least 1", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    workdir = Path(tempfile.mkdtemp(prefix="provisioner-chaos-"))
    logging.basicConfig(
        filename=workdir / "driver.txt", level=logging.WARNING, format="%(name)s %(message)s"
    )
    started = time.monotonic()
    run = ChaosRun(
        requests=args.requests,
        replicas=args.replicas,
        seed=seed,
        workdir=workdir,
        cluster=args.cluster,
        partition=args.partition,
    )
    try:
        verdict = asyncio.run(_until_signalled(run))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print(f"interrupted; processes stopped, vhost deleted; logs in {workdir}")
        return 130
    for line in verdict.lines:
        print(line)
    print(f"duration: {time.monotonic() - started:.0f} s (seed {seed})")
    (workdir / "verdict.txt").write_text("\n".join([*verdict.lines, *verdict.failures]) + "\n")
    if verdict.passed:
        print("verdict: PASS")
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0
    for failure in verdict.failures:
        print(f"FAILED: {failure}")
    print(f"verdict: FAIL (logs kept in {workdir})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
