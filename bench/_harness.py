"""What every benchmark shares: a private RabbitMQ virtual host, the service as a child
process (``provisioner run``), the simulator in this process, an event subscriber, the
statistics and the report (a table for people, then one JSON line for machines).

Each benchmark measures its baseline in the same run, against the same broker and the same
simulator, so the figures it judges by are ratios that survive a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aio_pika
import aiohttp
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from contracts.events import Event, decode_event
from service.broker.topology import Topology
from service.config import ENVIRONMENT
from service.simulator import Simulator, SimulatorConfig

__all__ = [
    "BROKER_HOST",
    "BROKER_PORT",
    "PRODUCER",
    "EventLog",
    "ServiceProcess",
    "bench_arguments",
    "command",
    "emit",
    "fresh_vhost",
    "makespan_bound",
    "percentile",
    "print_table",
    "publish_many",
    "running_simulator",
    "service_env",
    "spread",
]

BROKER_HOST: Final = os.environ.get("RABBITMQ_HOST", "127.0.0.1")
BROKER_PORT: Final = int(os.environ.get("RABBITMQ_PORT", "5672"))
BENCH_TOKEN: Final = "bench-" + uuid.uuid4().hex  # a throwaway token for the simulator
PRODUCER: Final = "guest"  # the RabbitMQ user the benchmarks publish as (its AMQP user_id)
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 60.0

# --- arguments and the report ---------------------------------------------------------------


def bench_arguments(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--quick`` (a size that finishes in under a minute) and nothing else."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a smaller size that finishes in under a minute"
    )
    return parser.parse_args(argv)


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain text table on stdout, columns sized to their widest cell."""
    cells = [[str(h) for h in header], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if n and i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def emit(figures: Mapping[str, Any]) -> None:
    """The machine-readable result: one JSON object, the last line the benchmark prints."""
    print(json.dumps(figures, sort_keys=False), flush=True)


def command(name: str, **cluster: object) -> bytes:
    """A create command for a plain cluster (pg 17, one node, no users or databases) named
    ``name``, also its ``request_id``; ``cluster`` changes or adds cluster fields."""
    fields: dict[str, object] = {
        "name": name,
        "engine": "pg",
        "version": "17",
        "region": "nyc3",
        "size": "db-s-1vcpu-2gb",
        "num_nodes": 1,
        **cluster,
    }
    return json.dumps({"request_id": name, "cluster": fields}).encode()


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default); ``ValueError`` for an empty sample."""
    if not values:
        raise ValueError("percentile of an empty sample")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def spread(values: Sequence[float]) -> tuple[float, float]:
    """The smallest and largest of repeated measurements."""
    return min(values), max(values)


def makespan_bound(
    *,
    clusters: int,
    calls_per_cluster_after_online: int,
    fixed_calls: int,
    per_window: int,
    window_s: float,
    per_long_window: int,
    long_window_s: float,
    ready_after_s: float,
) -> float:
    """The shortest possible time from the first create to the last cluster's last call.

    Within any ``window_s`` at most ``per_window`` requests are accepted (and
    ``per_long_window`` within ``long_window_s``), so request number ``k`` (0-based) cannot
    go out before ``floor(k / per_window) * window_s``. The last create is request
    ``clusters - 1`` at the earliest, its cluster is online ``ready_after_s`` later, and only
    then can its finishing calls go out; and every request the work needs at the least
    (each cluster's create and finishing calls, plus ``fixed_calls``) has to fit the budget.
    Polling is left out: the bound is what no poller at all could beat.
    """
    if clusters < 1:
        raise ValueError("makespan_bound needs at least one cluster")

    def earliest(k: int) -> float:
        return max(
            (k // per_window) * window_s,
            (k // per_long_window) * long_window_s,
        )

    total = clusters * (1 + calls_per_cluster_after_online) + fixed_calls
    last_create = earliest(fixed_calls + clusters - 1)
    return max(last_create + ready_after_s, earliest(total - 1))


# --- the broker -----------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise SystemExit("rabbitmqctl not found: `make broker` installs and starts RabbitMQ")
    subprocess.run([ctl, "-q", *args], check=True, capture_output=True, timeout=60)


@contextlib.asynccontextmanager
async def fresh_vhost(purpose: str) -> AsyncIterator[str]:
    """A new, empty virtual host for one benchmark run (so no other queue is ever touched),
    deleted afterwards; yields its AMQP URL."""
    name = f"provisioner-bench-{purpose}-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_rabbitmqctl, "add_vhost", name)
    try:
        await asyncio.to_thread(
            _rabbitmqctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"
        )
        yield f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/{quote(name, safe='')}"
    finally:
        await asyncio.to_thread(_rabbitmqctl, "delete_vhost", name)


async def publish_many(
    connection: AbstractRobustConnection,
    bodies: Iterable[bytes],
    *,
    routing_key: str,
    exchange: str = "",
    content_type: str = "application/json",
    window: int = 256,
) -> int:
    """Publish every body, persistent and confirmed, ``window`` confirms in flight at once;
    returns how many were published."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        target = channel.default_exchange if not exchange else await channel.get_exchange(exchange)
        pending: list[asyncio.Future[Any]] = []
        count = 0
        for body in bodies:
            message = aio_pika.Message(
                body,
                content_type=content_type,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                user_id=PRODUCER,
            )
            pending.append(
                asyncio.ensure_future(
                    target.publish(message, routing_key, mandatory=True, timeout=60)
                )
            )
            count += 1
            if len(pending) >= window:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return count
    finally:
        await channel.close()


class EventLog:
    """Every event on the events exchange with the moment (``time.monotonic``) it arrived,
    as a subscriber sees them; ``wait_until`` waits on a condition with a bound."""

    def __init__(self) -> None:
        self.received: list[tuple[float, Event]] = []
        self.counts: Counter[str] = Counter()
        self._changed = asyncio.Event()
        self._channel: AbstractChannel | None = None

    async def subscribe(
        self, connection: AbstractRobustConnection, exchange: str, prefetch: int = 1000
    ) -> None:
        """Bind an exclusive queue to every routing key of ``exchange`` and consume it."""
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        events = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(events, routing_key="#")
        await queue.consume(self._on_message)
        self._channel = channel

    async def close(self) -> None:
        """Stop listening (the queue goes with the channel)."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        arrived = time.monotonic()
        event = decode_event(message.body)
        self.received.append((arrived, event))
        self.counts[event.routing_key] += 1
        self._changed.set()
        await message.ack()

    def count(self, routing_key: str) -> int:
        """Events received with ``routing_key`` (``database.cluster.rejected``)."""
        return self.counts[routing_key]

    def times(self, routing_key: str) -> list[float]:
        """Arrival times of the events with ``routing_key``, in arrival order."""
        return [t for t, e in self.received if e.routing_key == routing_key]

    async def wait_until(
        self, condition: Callable[[], bool], timeout: float, what: str = "events"
    ) -> None:
        """Return once ``condition()`` holds; ``TimeoutError`` naming ``what`` after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{what} not complete within {timeout:.0f} s: {dict(self.counts)}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))


# --- the simulator and the service ------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_simulator(config: SimulatorConfig) -> AsyncIterator[Simulator]:
    """The simulator on a free loopback port, in this process (its stats and clusters stay
    at hand), with the benchmark's token."""
    config.token = BENCH_TOKEN
    simulator = Simulator(config)
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.stop()


def free_port() -> int:
    """A TCP port free on loopback now (for the service's health server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_VARIABLE_OF: Final = {field: variable for variable, field in ENVIRONMENT.items()}


def service_env(amqp_url: str, api_url: str, **settings: object) -> dict[str, str]:
    """The environment of ``provisioner run`` for these ``Settings`` fields (by field name,
    so a typo fails here instead of being ignored by the service)."""
    env = {
        "PROVISIONER_AMQP_URL": amqp_url,
        "DIGITALOCEAN_API_URL": api_url,
        "DIGITALOCEAN_TOKEN": BENCH_TOKEN,
        "PROVISIONER_HTTP_HOST": "127.0.0.1",
        "PROVISIONER_LOG_FORMAT": "json",
    }
    for field, value in settings.items():
        variable = _VARIABLE_OF.get(field)
        if variable is None:
            raise KeyError(f"Settings has no environment variable for {field!r}")
        if isinstance(value, tuple | list):
            env[variable] = ",".join(str(v) for v in value)
        else:
            env[variable] = str(value)
    return env


def _provisioner_command() -> list[str]:
    # ``provisioner run`` through its module, so that the service measured is the one in the
    # tree the benchmark runs from, whatever the console script on PATH points at.
    return [sys.executable, "-m", "service.cli", "run"]


class ServiceProcess:
    """``provisioner run`` as a child process, configured by ``env`` only (as deployed).

    Its log goes to a file in a temporary directory; ``start`` waits for ``/readyz``.
    """

    def __init__(
        self, env: Mapping[str, str], name: str = "service", wrapper: Sequence[str] = ()
    ) -> None:
        self.port = free_port()
        self._wrapper = tuple(wrapper)  # a command the service runs under (valgrind ...)
        self._env = {**os.environ, **env, "PROVISIONER_HTTP_PORT": str(self.port)}
        for token_variable in ("DIGITALOCEAN_ACCESS_TOKEN", "DIGITALOCEAN_TOKEN_FILE"):
            self._env.pop(token_variable, None)
        self._logdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.log_path = self._logdir / "service.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        if self._process is None:
            raise RuntimeError("the service has not been started")
        return self._process.pid

    async def start(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Spawn the service and wait until ``/readyz`` answers 200."""
        with self.log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self._wrapper,
                *_provisioner_command(),
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self._process.returncode is not None:
                    raise RuntimeError(f"the service exited at start; see {self.log_path}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(f"http://127.0.0.1:{self.port}/readyz") as reply:
                        if reply.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the service was not ready in {timeout} s; see {self.log_path}"
                    )
                await asyncio.sleep(0.05)

    async def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` (a Prometheus metric of ``/metrics``) whose
        labels include ``labels``."""
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{self.port}/metrics") as reply,
        ):
            text = await reply.text()
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            if series.split("{", 1)[0] != name:
                continue
            if all(w in series for w in wanted):
                total += float(value)
        return total

    def memory_kb(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the child in KiB, from ``/proc``: resident now, and its peak."""
        fields: dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then wait for a clean exit (SIGKILL after ``timeout``); the exit code."""
        process = self._process
        if process is None or process.returncode is not None:
            return (
                process.returncode if process is not None and process.returncode is not None else 0
            )
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RuntimeError(
                f"the service did not stop in {timeout} s; see {self.log_path}"
            ) from None

    def discard_log(self) -> None:
        """Remove the log directory (kept when a run fails, for a person to read)."""
        shutil.rmtree(self._logdir, ignore_errors=True)


@contextlib.asynccontextmanager
async def running_service(
    env: Mapping[str, str], name: str = "service"
) -> AsyncIterator[ServiceProcess]:
    """A started ``ServiceProcess``, stopped (SIGTERM) afterwards; its log is removed when
    the block succeeds and kept (its path printed) when it fails or ``BENCH_KEEP_LOGS`` is
    set."""
    service = ServiceProcess(env, name)
    try:
        await service.start()
        yield service
    except BaseException:
        print(f"service log kept at {service.log_path}", file=sys.stderr)
        with contextlib.suppress(Exception):
            await service.stop()
        raise
    code = await service.stop()
    if code != 0 or os.environ.get("BENCH_KEEP_LOGS"):
        print(f"service exited with {code}; log kept at {service.log_path}", file=sys.stderr)
    else:
        service.discard_log()


def bench_topology(settings: Mapping[str, object]) -> Topology:
    """The topology a service with these settings declares (queue names carry the delays)."""
    delays: dict[str, Any] = {}
    if "poll_interval_s" in settings:
        delays["poll_interval_s"] = float(str(settings["poll_interval_s"]))
    return Topology(**delays)
