"""Throughput: commands a second through the service, against a bare aio-pika loop doing the
least any such service must do, on the same broker in the same run.

Two paths:

* reject: commands that fail validation; the service decodes, checks, parks the command and
  publishes a ``rejected`` event, then acks;
* accept: valid commands against a simulator with no delay and no rate limit; the service
  decodes, checks the offer, creates the cluster, publishes ``status_changed`` and the watch
  message, then acks (watches come back only after the measurement, so they do not count).

The bare loop (``python -m bench.throughput --bare-loop PATH``, a child process like the
service) consumes with the same prefetch and handles each message in its own task: on the
accept path one aiohttp call (the same ``POST /v2/databases``), then it publishes what the
design makes any implementation publish for one command, each message with a publisher
confirm (the parked copy or the watch message, and the event), then acks. It does no
decoding, no validation, no logging: what is left between the two is the service's own cost.

With ``--tracing`` the service records every span with the OpenTelemetry SDK (the ``otel``
extra), configured by the standard ``OTEL_*`` variables only, and exports them over OTLP/HTTP
to a receiver in the benchmark's process that reads and drops them: the cost an operator pays
with a collector next to the service. Without it, ``OTEL_SDK_DISABLED=true``: the API alone.

Each run starts with its commands already queued (one fresh virtual host serves the whole
benchmark, one simulator each run); the rate is the
number of results a subscriber receives a second in the steady middle of the run (from the
result at 10 % to the one at 90 %), for both alike. Each pair runs back to back (in
alternating order from one pair to the next) and the ratio of each pair is reported; the goal
(0.7) is judged on the median pair.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Final, Literal, get_args

import aio_pika
import aiohttp
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection, DeliveryMode
from aiohttp import web
from msgspec import Struct

from bench._harness import (
    BENCH_TOKEN,
    EventLog,
    command,
    emit,
    fresh_vhost,
    print_table,
    publish_many,
    running_service,
    running_simulator,
    service_env,
)
from contracts.errors import FieldError
from contracts.events import (
    Rejected,
    RejectedData,
    StatusChanged,
    StatusChangedData,
    encode_event,
    event_id,
)
from service.broker.topology import Topology, declare
from service.config import DEFAULT_COMMAND_PREFETCH
from service.simulator import SimulatorConfig

Path = Literal["reject", "accept"]
Who = Literal["bare loop", "service"]
GOAL: Final = 0.7
UNLIMITED: Final = 1_000_000_000
POLL_INTERVAL_S: Final = 600.0  # watches stay in their delay queue for the whole run
RESULT: Final[dict[str, str]] = {
    "reject": "database.cluster.rejected",
    "accept": "database.cluster.status_changed",
}


class Size(Struct, frozen=True, kw_only=True):
    """One size of the benchmark."""

    commands: int
    rounds: int
    prefetch: int


# Both sides consume with the service's default prefetch. The quick size runs as many
# commands as the full one, fewer times: with 600 the steady middle of a run lasted about half
# a second and still held the service's warm-up (its medians were 0.05 to 0.1 below).
QUICK = Size(commands=2000, rounds=3, prefetch=DEFAULT_COMMAND_PREFETCH)
FULL = Size(commands=2000, rounds=5, prefetch=DEFAULT_COMMAND_PREFETCH)


def path_command(path: Path, run: str, i: int) -> bytes:
    """A command for ``path``: valid, or with three errors the service must all report."""
    name = f"tp-{run}-{i}"
    if path == "reject":
        return command(name, num_nodes=0, size=7, colour="blue")
    return command(name)


# --- the bare loop (a child process) ------------------------------------------------------


def _bare_event(path: Path) -> tuple[str, bytes]:
    """The one event the bare loop publishes for every message: valid, so the subscriber
    reads it exactly as it reads the service's."""
    if path == "reject":
        rejected = Rejected(
            id=event_id("bare", "rejected"),
            data=RejectedData(errors=[FieldError("$", "bare loop")], request_id="bare"),
        )
        return rejected.routing_key, encode_event(rejected)
    changed = StatusChanged(
        id=event_id("bare", "creating"),
        data=StatusChangedData(
            request_id="bare", cluster_id="bare", name="bare", engine="pg", status="creating"
        ),
    )
    return changed.routing_key, encode_event(changed)


async def bare_loop(
    path: Path, amqp_url: str, api_url: str, token: str, prefetch: int, count: int
) -> None:
    """Consume ``count`` commands: [POST, which must create the cluster], publish what the
    design publishes for one command (two messages, each with a confirm), ack."""
    topology = Topology(poll_interval_s=POLL_INTERVAL_S)
    routing_key, body = _bare_event(path)
    # Where the second message of a command goes: the parked copy, or the watch.
    second = topology.rejected_queue if path == "reject" else topology.watch_delay_queue()
    connection = await aio_pika.connect_robust(amqp_url)
    publish = await connection.channel(publisher_confirms=True, on_return_raises=True)
    events = await publish.declare_exchange(
        topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
    )
    consume = await connection.channel()
    await consume.set_qos(prefetch_count=prefetch)
    declared = topology.queue(topology.requests_queue)
    queue = await consume.declare_queue(declared.name, durable=True, arguments=declared.arguments)
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"})
    done = asyncio.Event()
    handled = 0
    tasks: set[asyncio.Task[None]] = set()

    async def handle(message: AbstractIncomingMessage) -> None:
        nonlocal handled
        if path == "accept":
            create = json.dumps(json.loads(message.body)["cluster"]).encode()
            async with session.post(f"{api_url}/v2/databases", data=create) as reply:
                await reply.read()
                if reply.status != 201:  # a refused POST costs the simulator next to nothing
                    raise RuntimeError(f"the bare loop's create was answered {reply.status}")
        copy = aio_pika.Message(message.body, delivery_mode=DeliveryMode.PERSISTENT)
        await publish.default_exchange.publish(copy, second, mandatory=True, timeout=30)
        event = aio_pika.Message(
            body, content_type="application/cloudevents+json", delivery_mode=DeliveryMode.PERSISTENT
        )
        await events.publish(event, routing_key, timeout=30)
        await message.ack()
        handled += 1
        if handled >= count:
            done.set()

    failures: list[BaseException] = []

    def finished(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            failures.append(error)
            done.set()  # a failed command fails the run at once, not after the timeout

    async def on_message(message: AbstractIncomingMessage) -> None:
        task = asyncio.ensure_future(handle(message))
        tasks.add(task)
        task.add_done_callback(finished)

    await queue.consume(on_message)
    await asyncio.wait_for(done.wait(), timeout=600)
    if failures:
        raise failures[0]
    await session.close()
    await connection.close()


# --- the benchmark --------------------------------------------------------------------------


class Run(Struct, frozen=True, kw_only=True):
    """One measured run of the bare loop or of the service."""

    path: str
    who: str
    times: list[float]  # when each result arrived

    @property
    def rate(self) -> float:
        """Results a second in the steady middle of the run: from the result at 10 % to the
        one at 90 %, so that neither the start (first connections, first calls) nor the
        last stragglers weigh on it."""
        first = len(self.times) // 10
        last = len(self.times) - 1 - len(self.times) // 10
        seconds = self.times[last] - self.times[first]
        return (last - first) / seconds if seconds > 0 else 0.0


def tracing_env(traces: str | None) -> dict[str, str]:
    """The service's ``OTEL_*`` variables: the SDK exporting to ``traces``, or no SDK."""
    if traces is None:
        return {"OTEL_SDK_DISABLED": "true"}
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


@contextlib.asynccontextmanager
async def span_sink() -> AsyncIterator[tuple[str, list[int]]]:
    """An OTLP/HTTP endpoint that reads each export and drops it; its URL and the bytes
    it was sent."""
    received = [0]

    async def export(request: web.Request) -> web.Response:
        received[0] += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces", received
    finally:
        await runner.cleanup()


async def measure(
    connection: AbstractRobustConnection,
    amqp_url: str,
    path: Path,
    who: Who,
    size: Size,
    run: str,
    traces: str | None = None,
) -> Run:
    """Queue the commands, start the consumer, time the results (each run with its own
    simulator, so that no run inherits another's clusters)."""
    config = SimulatorConfig(
        ready_after_s=3600, rate_limit_per_minute=UNLIMITED, rate_limit_per_hour=UNLIMITED
    )
    topology = Topology(poll_interval_s=POLL_INTERVAL_S)
    key = RESULT[path]
    events = EventLog()
    async with running_simulator(config) as simulator:
        await events.subscribe(connection, topology.events_exchange)
        try:
            await publish_many(
                connection,
                (path_command(path, run, i) for i in range(size.commands)),
                routing_key=topology.requests_queue,
            )

            def complete() -> bool:
                return events.count(key) >= size.commands

            if who == "service":
                env = service_env(
                    amqp_url,
                    simulator.base_url,
                    poll_interval_s=POLL_INTERVAL_S,
                    command_prefetch=size.prefetch,
                    rate_limit_per_minute=UNLIMITED,
                    rate_limit_per_hour=UNLIMITED,
                )
                env.update(tracing_env(traces))
                async with running_service(env, f"throughput-{path}"):
                    await events.wait_until(complete, timeout=600, what=f"service {path}")
            else:
                await _run_bare_loop(path, amqp_url, simulator.base_url, size, events, complete)
        finally:
            await events.close()
    return Run(path=path, who=who, times=events.times(key))


async def _run_bare_loop(
    path: Path,
    amqp_url: str,
    api_url: str,
    size: Size,
    events: EventLog,
    complete: Callable[[], bool],
) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.throughput",
        "--bare-loop",
        path,
        "--count",
        str(size.commands),
        "--prefetch",
        str(size.prefetch),
        # The token of this process: the child's own import of the harness makes another.
        env={
            **os.environ,
            "BENCH_AMQP_URL": amqp_url,
            "BENCH_API_URL": api_url,
            "BENCH_API_TOKEN": BENCH_TOKEN,
        },
        stdin=subprocess.DEVNULL,
    )
    try:
        await events.wait_until(complete, timeout=600, what=f"throughput {path}")
    finally:
        code = await asyncio.wait_for(child.wait(), timeout=60)
    if code != 0:
        raise RuntimeError(f"the bare loop exited with {code}")


async def benchmark(size: Size, label: str, tracing: bool = False) -> dict[str, object]:
    """Pairs of runs on both paths, the table and the figures."""
    pairs: list[tuple[Run, Run]] = []
    async with contextlib.AsyncExitStack() as stack:
        traces: str | None = None
        exported = [0]
        if tracing:
            traces, exported = await stack.enter_async_context(span_sink())
        figures = await _pairs(size, label, traces, pairs)
        figures["tracing"] = "otlp" if tracing else "off"
        if tracing:
            figures["span_bytes_exported"] = exported[0]
            figures["goal_met"] = bool(figures["goal_met"]) and exported[0] > 0
    return figures


async def _pairs(
    size: Size, label: str, traces: str | None, pairs: list[tuple[Run, Run]]
) -> dict[str, object]:
    async with fresh_vhost("throughput") as amqp_url:
        connection = await aio_pika.connect_robust(amqp_url)
        try:
            channel = await connection.channel()
            await declare(channel, Topology(poll_interval_s=POLL_INTERVAL_S))
            await channel.close()
            for n in range(size.rounds):
                for path in get_args(Path):
                    # The two runs of a pair go back to back, in turns first, so that drift
                    # in the load of a shared machine favours neither.
                    order: tuple[Who, Who] = (
                        ("bare loop", "service") if n % 2 == 0 else ("service", "bare loop")
                    )
                    done = {
                        who: await measure(
                            connection, amqp_url, path, who, size, f"{n}{who[0]}", traces
                        )
                        for who in order
                    }
                    pairs.append((done["bare loop"], done["service"]))
        finally:
            await connection.close()
    print_table(
        f"Throughput ({label}): {size.commands} commands per run, prefetch {size.prefetch}",
        ("path", "bare loop cmd/s", "service cmd/s", "service/bare"),
        [(b.path, b.rate, s.rate, s.rate / b.rate) for b, s in pairs],
    )
    figures: dict[str, object] = {"benchmark": "throughput", "size": label}
    met = True
    for path in get_args(Path):
        mine = [(b, s) for b, s in pairs if b.path == path]
        ratios = [s.rate / b.rate for b, s in mine]
        median = statistics.median(ratios)
        figures[f"{path}_service_per_s"] = round(statistics.median(s.rate for _, s in mine), 1)
        figures[f"{path}_bare_per_s"] = round(statistics.median(b.rate for b, _ in mine), 1)
        figures[f"{path}_ratio"] = round(median, 3)
        figures[f"{path}_ratio_spread"] = [round(min(ratios), 3), round(max(ratios), 3)]
        met = met and median >= GOAL
    figures["goal_met"] = met
    return figures


def main() -> int:
    """``python -m bench.throughput [--quick]`` (``--bare-loop`` is the baseline's child)."""
    parser = argparse.ArgumentParser(description="throughput")
    parser.add_argument("--quick", action="store_true", help="a size that ends within a minute")
    parser.add_argument("--bare-loop", choices=("reject", "accept"), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--prefetch", type=int, default=FULL.prefetch, help=argparse.SUPPRESS)
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="the service records and exports every span (OpenTelemetry SDK, OTLP/HTTP)",
    )
    args = parser.parse_args()
    if args.bare_loop:
        asyncio.run(
            bare_loop(
                args.bare_loop,
                os.environ["BENCH_AMQP_URL"],
                os.environ["BENCH_API_URL"],
                os.environ["BENCH_API_TOKEN"],
                args.prefetch,
                args.count,
            )
        )
        return 0
    size, label = (QUICK, "quick") if args.quick else (FULL, "full")
    emit(asyncio.run(benchmark(size, label, args.tracing)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
