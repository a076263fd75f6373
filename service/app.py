"""Wiring and lifecycle: start, serve, drain, stop. ``provisioner run`` lands here.

Start: connect to RabbitMQ (waiting with backoff while it is unreachable, never a crash
loop), declare the topology, start the health server, consume commands and watches. The
broker setup after connecting is bounded: a node that accepts connections but cannot reach its
cluster (cut off, not yet paused) answers nothing, or drops the connection when it pauses, so
the setup then starts over on a new connection at the next address.
Stop (SIGTERM/SIGINT): stop consuming, let in-flight work finish for
``PROVISIONER_SHUTDOWN_GRACE_S``, return the rest to its queue, close, exit 0; whatever
happens, the process is gone ``STOP_MARGIN_S`` after that.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from contracts.digitalocean import (
    CaCertificate,
    DatabaseCluster,
    DatabaseClusterCreate,
    DatabaseName,
    DatabaseOptions,
    DatabaseUser,
    DatabaseUserCreate,
)
from service.broker import frames
from service.broker.connection import (
    BACKOFF_MAX_S,
    SETUP_ERRORS,
    ClusterConnection,
    close_within,
    connect,
    ordered,
    redact_url,
    rotated,
    within,
)
from service.broker.consumer import CommandConsumer, WatchConsumer
from service.broker.publisher import RabbitPublisher
from service.broker.replies import ReplyCopies
from service.broker.topology import Topology, bounds, declare, message_count, topology_for
from service.config import ConfigError, Settings, load_settings
from service.digitalocean import ApiError, DigitalOceanClient, RateLimiter, Unauthorized
from service.digitalocean.scan import ClusterScan
from service.http import HealthServer
from service.metrics import ProvisionerMetrics
from service.observability import configure_logging
from service.provisioning.commands import CommandHandler, CommandOutcome
from service.provisioning.credentials import CredentialSeal
from service.provisioning.events import EventFactory
from service.provisioning.options import OfferCheck
from service.provisioning.policy import Policy, PolicyError, load_policy
from service.provisioning.snapshot import ClusterSnapshot
from service.provisioning.watch import WatchHandler, WatchOutcome
from service.redaction import register_secret
from service.tracing import configure_tracing, shutdown_tracing

__all__ = ["Service", "add_arguments", "main"]

log = structlog.get_logger(__name__)

TOKEN_PROBE_INTERVAL_S: Final = 30.0
QUEUE_POLL_INTERVAL_S: Final = 15.0
# Declaring the topology, opening channels and consuming take well under a second; a node that
# has not answered after this long is not going to.
BROKER_SETUP_TIMEOUT_S: Final = 30.0
# How long a close of the broker connection may take before it is left behind.
CLOSE_TIMEOUT_S: Final = 5.0
# After the shutdown grace: the longest the rest of a stop may take before the process exits
# anyway (with 1, and a log line saying so). Above the sum of the stop's own bounds on a broker
# that answers nothing (consumer cancels, the drain, channel and connection closes, the reply
# copies' connections: about 50 s), so a stop that keeps its bounds is never cut short.
STOP_MARGIN_S: Final = 60.0


class SecretRegisteringApi:
    """The client, with every password and key it returns registered for log redaction:
    the one door through which generated secrets enter the process."""

    def __init__(self, client: DigitalOceanClient) -> None:
        self._client = client

    async def create_cluster(self, body: DatabaseClusterCreate) -> DatabaseCluster:
        return _registered(await self._client.create_cluster(body))

    async def get_cluster(self, cluster_id: str) -> DatabaseCluster:
        return _registered(await self._client.get_cluster(cluster_id))

    async def list_clusters(self, tag_name: str | None = None) -> list[DatabaseCluster]:
        return [_registered(c) for c in await self._client.list_clusters(tag_name)]

    async def scan_clusters(
        self,
        tag_name: str | None = None,
        *,
        tag_prefix: str | None = None,
        full: Callable[[str, str | None], bool] | None = None,
        count_prefix: str | None = None,
    ) -> ClusterScan:
        # Only the clusters read in full carry passwords to register.
        scan = await self._client.scan_clusters(
            tag_name, tag_prefix=tag_prefix, full=full, count_prefix=count_prefix
        )
        for cluster in scan.full.values():
            _registered(cluster)
        return scan

    async def get_options(self) -> DatabaseOptions:
        return await self._client.get_options()

    async def get_ca(self, cluster_id: str) -> CaCertificate:
        return await self._client.get_ca(cluster_id)

    async def add_user(self, cluster_id: str, user: DatabaseUserCreate) -> DatabaseUser:
        created = await self._client.add_user(cluster_id, user)
        _register_user(created)
        return created

    async def add_database(self, cluster_id: str, name: str) -> DatabaseName:
        return await self._client.add_database(cluster_id, name)

    async def reset_auth(self, cluster_id: str, user_name: str) -> DatabaseUser:
        user = await self._client.reset_auth(cluster_id, user_name)
        _register_user(user)
        return user


def _register_user(user: DatabaseUser) -> None:
    for value in (user.password, user.access_key):
        if value:
            register_secret(value)


def _registered(cluster: DatabaseCluster) -> DatabaseCluster:
    connections = (
        cluster.connection,
        cluster.private_connection,
        cluster.standby_connection,
        cluster.standby_private_connection,
        cluster.ui_connection,
        cluster.schema_registry_connection,
    )
    # Each connection and the admin user repeat one password: register each value once.
    values = {c.password for c in connections if c is not None and c.password}
    for user in cluster.users or []:
        values.update(v for v in (user.password, user.access_key) if v)
    for value in values:
        register_secret(value)
    return cluster


class Service:
    """One replica: a consumer set for commands and one for watches."""

    def __init__(
        self,
        settings: Settings,
        *,
        topology: Topology | None = None,
        metrics: ProvisionerMetrics | None = None,
        policy: Policy | None = None,
        queue_poll_interval_s: float = QUEUE_POLL_INTERVAL_S,
        broker_setup_timeout_s: float = BROKER_SETUP_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.topology = topology or topology_for(settings)
        # Read before anything starts: a broken policy file stops the service at once.
        self.policy = policy if policy is not None else load_policy(settings.policy_file)
        self.metrics = metrics or ProvisionerMetrics()
        self.metrics.watch_readiness(self.readiness)
        self.limiter = RateLimiter(
            per_minute=settings.rate_limit_per_minute,
            per_hour=settings.rate_limit_per_hour,
            minute_window_s=settings.rate_limit_minute_window_s,
            hour_window_s=settings.rate_limit_hour_window_s,
        )
        self.client = DigitalOceanClient(
            settings.api_url,
            settings.token,
            limiter=self.limiter,
            observer=self._observe_api_call,
        )
        self.api = SecretRegisteringApi(self.client)
        self.token_accepted = True
        self.http_port: int | None = None
        self._connection: ClusterConnection | None = None
        self._channels: list[AbstractChannel] = []  # strong refs: robust channels
        self._replies: ReplyCopies | None = None
        self._commands: CommandConsumer | None = None
        self._watches: WatchConsumer | None = None
        self._health: HealthServer | None = None
        self._probe: asyncio.Task[None] | None = None
        self._queue_poll: asyncio.Task[None] | None = None
        self._queue_poll_interval_s = queue_poll_interval_s
        self._broker_setup_timeout_s = broker_setup_timeout_s
        self._stopping = False

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, *, connect_attempts: int | None = None) -> None:
        """Connect, declare, and begin consuming. ``connect_attempts`` bounds the addresses
        tried and the broker setups started (None: until one succeeds)."""
        s = self.settings
        register_secret(s.token)
        for url in s.amqp_urls:
            amqp_password = urlsplit(url).password
            if amqp_password:
                register_secret(amqp_password)
        self._health = HealthServer(s.http_host, s.http_port, self.metrics.registry, self.readiness)
        self.http_port = await self._health.start()
        # Before the first frame: no message can then cost the connection or be read whole
        # past the limit (service/broker/frames.py).
        frames.install(s.max_message_bytes)
        addresses = [str(u) for u in ordered(s.amqp_urls, s.amqp_url_order)]
        pause = 1.0
        for attempt in itertools.count(1):
            # Each attempt starts at the next address: the node that just failed the setup
            # may still accept connections.
            these = rotated(addresses, attempt - 1)
            # Waits while no node answers (or raises after ``connect_attempts`` addresses).
            await self._connect(these, connect_attempts)
            if self._stopping:  # stopped while connecting: what stop() closed stays closed
                await self._discard_broker()
                raise asyncio.CancelledError
            setup = asyncio.ensure_future(self._set_up_broker(these))
            try:
                await within(setup, self._broker_setup_timeout_s)
                break
            except SETUP_ERRORS as exc:
                await self._discard_broker(setup)
                if connect_attempts is not None and attempt >= connect_attempts:
                    raise
                # Every node once without a pause; then the pause doubles after each round.
                wait_s = pause * random.uniform(0.75, 1.25) if attempt % len(addresses) == 0 else 0
                log.warning(
                    "broker_setup_failed",
                    attempt=attempt,
                    error=repr(exc),
                    retry_in_s=round(wait_s, 2),
                )
                self.metrics.count_broker_setup_restart()
                await asyncio.sleep(wait_s)
                if wait_s:
                    pause = min(pause * 2, BACKOFF_MAX_S)
        self._queue_poll = asyncio.create_task(self._poll_bounded_queues())
        log.info(
            "service_started",
            amqp=redact_url(s.amqp_url),
            node=self._node(),
            api=s.api_url,
            http_port=self.http_port,
            poll_interval_s=s.poll_interval_s,
            poll_mode=s.poll_mode,
        )

    async def _connect(self, addresses: list[str], attempts: int | None) -> None:
        connection = await connect(addresses, order="listed", attempts=attempts)
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._connection = connection
        log.info("broker_connected", node=self._node())

    def _node(self) -> str | None:
        connection = self._connection
        return None if connection is None else f"{connection.url.host}:{connection.url.port}"

    async def _discard_broker(self, setup: asyncio.Future[None] | None = None) -> None:
        """Close what a failed broker setup opened (each close bounded), so that the next
        attempt starts afresh."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close_callbacks.discard(self._on_connection_lost)
            await close_within(connection, CLOSE_TIMEOUT_S)
        if setup is not None and not setup.done():
            # With its connection closed, what it waits for fails; if it does not end, it is
            # left behind (it cannot open anything more: see _set_up_broker).
            await asyncio.wait({setup}, timeout=CLOSE_TIMEOUT_S)
        replies, self._replies = self._replies, None
        if replies is not None:
            await replies.close()
        self._channels = []
        self._commands = self._watches = None

    async def _set_up_broker(self, addresses: list[str]) -> None:
        """Declare the topology, open the channels and reply copies, consume."""
        s = self.settings
        connection = self._connection
        assert connection is not None
        setup = await connection.channel()
        await declare(setup, self.topology)
        await setup.close()
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        command_channel = await connection.channel()
        watch_channel = await connection.channel()
        own = self.topology
        self._still_current(connection)
        # Only now: a setup given up must not replace a newer one's strong references.
        self._channels = [publish_channel, command_channel, watch_channel]
        replies = ReplyCopies(
            addresses,
            order="listed",
            timeout_s=s.publish_timeout_s,
            refuse=[q.name for q in own.queues()],
            refuse_prefixes=(f"{own.requests_queue}.", f"{own.watch_queue}."),
            observer=self.metrics.count_reply_copy,
            on_retry=self.metrics.count_reply_copy_retry,
        )
        try:
            await replies.start()
            self._still_current(connection)
        except BaseException:
            # Given up while its connection opened (the discard of this setup may have run
            # meanwhile, and a newer setup may own self._replies): it closes its own.
            await asyncio.shield(replies.close())
            raise
        self._replies = replies
        publisher = RabbitPublisher(
            publish_channel,
            self.topology,
            user_id=s.amqp_user,
            timeout_s=s.publish_timeout_s,
            replies=replies,
            observer=self.metrics.observe_event_published,
            on_headers_dropped=self.metrics.count_headers_dropped,
            on_failed=self.metrics.count_failed,
        )
        factory = EventFactory(s.event_source, s.event_secrets)
        # Every replica derives the same key from the token: any of them opens a watch's
        # kept passwords (docs/security.md).
        seal = CredentialSeal(s.token)
        snapshot = (
            ClusterSnapshot(
                self.api,
                s.managed_tag,
                max_age_s=min(1.0, s.poll_interval_s / 4),
                poll_interval_s=s.poll_interval_s,
            )
            if s.poll_mode == "list"
            else None
        )
        commands = CommandHandler(
            api=self.api,
            events=publisher,
            work=publisher,
            factory=factory,
            offer=OfferCheck(self.api, s.options_ttl_s),
            snapshot=snapshot,
            service_user=s.amqp_user,
            policy=self.policy,
            managed_tag=s.managed_tag,
            create_timeout_s=s.create_timeout_s,
            not_found_grace_s=s.not_found_grace_s,
            max_attempts=s.max_command_attempts,
            max_message_bytes=s.max_message_bytes,
            on_unauthorized=self._on_unauthorized,
            on_parked=self.metrics.count_parked,
            seal=seal,
        )
        watches = WatchHandler(
            api=self.api,
            events=publisher,
            work=publisher,
            factory=factory,
            snapshot=snapshot,
            poll_interval_s=s.poll_interval_s,
            not_found_grace_s=s.not_found_grace_s,
            finish_max_attempts=s.finish_max_attempts,
            on_unauthorized=self._on_unauthorized,
            finish_budget_s=s.finish_budget_s,
            # Long enough for another watch of the same cluster to finish and announce first.
            reset_grace_s=s.finish_budget_s + 2 * s.poll_interval_s,
            seal=seal,
        )
        self._commands = CommandConsumer(
            command_channel,
            self.topology.queue(self.topology.requests_queue),
            s.command_prefetch,
            commands,
            on_outcome=self._count_command,
            metrics=self.metrics,
        )
        self._watches = WatchConsumer(
            watch_channel,
            self.topology.queue(self.topology.watch_queue),
            s.watch_prefetch,
            watches,
            trusted_user=s.amqp_user,
            batch_max=s.watch_prefetch,
            on_outcome=self._count_watch,
            on_in_flight=self.metrics.watches_in_flight.set,
            metrics=self.metrics,
        )
        self._still_current(connection)
        await self._watches.start()
        self._still_current(connection)
        await self._commands.start()

    def _still_current(self, connection: AbstractRobustConnection) -> None:
        """A setup given up (timed out, its connection discarded) or overtaken by a stop must
        not start anything more: raise instead."""
        if self._connection is not connection or self._stopping:
            raise ConnectionError("the broker setup was given up")

    async def stop(self) -> None:
        """Stop consuming, drain for the grace period, close everything."""
        if self._stopping:
            return
        self._stopping = True
        if self._probe is not None:
            self._probe.cancel()
        if self._queue_poll is not None:
            self._queue_poll.cancel()
        grace = self.settings.shutdown_grace_s
        cut = 0
        consumers = [c for c in (self._commands, self._watches) if c is not None]
        for consumer in consumers:
            await consumer.stop()
        results = await asyncio.gather(*(c.drain(grace) for c in consumers))
        cut = sum(results)
        for channel in self._channels:
            with contextlib.suppress(Exception):
                await within(channel.close(), CLOSE_TIMEOUT_S)
        if self._connection is not None:
            await close_within(self._connection, CLOSE_TIMEOUT_S)
        if self._replies is not None:
            await self._replies.close()
        await self.client.close()
        if self._health is not None:
            await self._health.stop()
        log.info("service_stopped", returned_to_queue=cut)

    # --- readiness and the token -----------------------------------------------------

    def readiness(self) -> dict[str, bool]:
        """What /readyz reports: every check must be true to receive traffic."""
        # A robust connection is not "closed" while it reconnects; its connected event is
        # what says whether the broker is there right now.
        connected = (
            self._connection is not None
            and not self._connection.is_closed
            and self._connection.connected.is_set()
        )
        consuming = bool(self._commands and self._commands.consuming and self._watches)
        return {
            "broker_connected": connected,
            "consuming": consuming and not self._stopping,
            "api_token_accepted": self.token_accepted,
        }

    async def _on_unauthorized(self) -> None:
        if not self.token_accepted or self._stopping:
            return
        self.token_accepted = False
        log.error(
            "api_token_rejected",
            detail="DigitalOcean answered 401 Unauthorized: the API token is wrong, revoked or "
            "lacks scopes; stopped consuming commands until it is accepted again",
        )
        if self._commands is not None:
            await self._commands.stop()
        self._probe = asyncio.create_task(self._probe_token())

    async def _probe_token(self) -> None:
        while not self._stopping:
            await asyncio.sleep(TOKEN_PROBE_INTERVAL_S)
            try:
                await self.client.get_options()
            except Unauthorized:
                continue
            except ApiError as exc:
                log.info("token_probe_inconclusive", error=str(exc))
                continue
            self.token_accepted = True
            if self._commands is not None and not self._stopping:
                await self._commands.start()
            log.info("api_token_accepted_again")
            return

    # --- metrics ---------------------------------------------------------------------

    def _on_connection_lost(self, _sender: object, _exc: BaseException | None) -> None:
        if not self._stopping:
            self.metrics.count_connection_drop()

    def _on_reconnected(self, _sender: object) -> None:
        self.metrics.count_reconnect()

    async def _poll_bounded_queues(self) -> None:
        """Read how full the parking and dead-letter queues are, now and then: the broker
        refuses new messages at their bounds, and an operator should see that coming."""
        bounded = [
            (q.name, limits) for q in self.topology.queues() if (limits := bounds(q)) is not None
        ]
        for name, (messages, size) in bounded:
            self.metrics.set_queue_bounds(name, messages, size)
        while not self._stopping:
            connection = self._connection
            if connection is not None and connection.connected.is_set():
                for name, _ in bounded:
                    try:
                        self.metrics.set_queue_messages(name, await message_count(connection, name))
                    except Exception as exc:  # a broker hiccup: the next round tries again
                        log.info("queue_depth_unread", queue=name, error=repr(exc)[:200])
            await asyncio.sleep(self._queue_poll_interval_s)

    def _observe_api_call(self, operation: str, status: str, seconds: float) -> None:
        self.metrics.observe_api_call(operation, status, seconds)
        state = self.limiter.snapshot()
        self.metrics.set_ratelimit(state.remaining, state.sent_last_minute)

    def _count_command(self, outcome: CommandOutcome) -> None:
        self.metrics.count_command(outcome.outcome)

    def _count_watch(self, outcome: WatchOutcome) -> None:
        self.metrics.count_watch_step(outcome.outcome)
        if outcome.time_to_online_s is not None:
            self.metrics.observe_time_to_online(outcome.time_to_online_s)


async def run(settings: Settings, policy: Policy) -> None:
    """Run until SIGTERM or SIGINT, then stop cleanly."""
    service = Service(settings, policy=policy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            return
        stop.set()
        # The drain is bounded by the grace period and every close by CLOSE_TIMEOUT_S; should
        # anything still hold the process (the end of asyncio.run included), it goes anyway.
        loop.call_later(settings.shutdown_grace_s + STOP_MARGIN_S, _exit_now)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    starting = asyncio.create_task(service.start())
    stopped = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()
            await stopped
        else:
            starting.cancel()
            # Not an unbounded wait: a start may be inside a library call that ignores the
            # cancellation; the stop below closes its connection under it.
            await asyncio.wait({starting}, timeout=CLOSE_TIMEOUT_S)
        log.info("shutdown_requested", at=time.time())
    finally:
        stopped.cancel()
        # Also after a start that raised: a connection left open would keep aio-pika's
        # reconnect loop, which ignores cancellation, and the process, alive.
        await service.stop()


def _exit_now() -> None:
    log.error("shutdown_forced", detail="the stop did not end in time; exiting anyway")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``provisioner run`` takes no options: it reads the environment (see the README)."""
    parser.epilog = "Configured by environment variables; see README.md."


def main(args: argparse.Namespace) -> int:
    """Entry point of ``provisioner run``."""
    try:
        settings = load_settings()
        policy = load_policy(settings.policy_file)
    except (ConfigError, PolicyError) as exc:
        print(f"provisioner: {exc}")
        return 2
    configure_logging(settings.log_format, settings.log_level)
    # Spans are recorded only when the OTEL_* variables ask for them (service/tracing.py).
    tracing = configure_tracing()
    try:
        asyncio.run(run(settings, policy))
    finally:
        if tracing:
            shutdown_tracing()
    return 0
