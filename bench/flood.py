"""Flood: hostile messages by the thousand, good commands among them, one service process.

A producer that writes its own frames (``tests.hostile.wire.RawProducer``) sends hostile
messages mixed with good commands, in the order they would arrive from a misbehaving
producer beside well-behaved ones: every case of ``FRAME_CASES`` in turn (header timestamps
past the year 9999, tables nested a thousand levels deep, names and properties that are not
UTF-8, 40,000 header values), one in fifty a command of 2 MiB (twice the limit), and a good
command after every ten hostile ones. The service must finish every good command, reject
and park every hostile one, and never lose its broker connection.

The figure judged: the flooded replica's peak resident memory (``VmHWM``) against an idle
replica's, measured in the same run (started the same way, left alone for a few seconds).
Printed besides: the counts, reconnects and connection drops (from ``/metrics``), and the
rate at which the flood was worked through.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Final
from urllib.parse import unquote, urlsplit

import aio_pika
from msgspec import Struct

from bench._harness import (
    BROKER_HOST,
    BROKER_PORT,
    EventLog,
    bench_arguments,
    command,
    emit,
    fresh_vhost,
    print_table,
    running_service,
    running_simulator,
    service_env,
)
from service.broker.topology import Topology, message_count
from service.simulator import SimulatorConfig
from tests.hostile.wire import FRAME_CASES, RawProducer, raw_properties

UNLIMITED: Final = 1_000_000_000
READY: Final = "database.cluster.connection_ready"
REJECTED: Final = "database.cluster.rejected"
GOAL_RSS_RATIO: Final = 1.25
OVERSIZED_BYTES: Final = 2 * 1024 * 1024
OVERSIZED_EVERY: Final = 50
GOOD_EVERY: Final = 10
IDLE_SECONDS: Final = 5.0
WINDOW: Final = 200  # messages in flight before the producer waits for the broker's confirms


class Size(Struct, frozen=True, kw_only=True):
    """One size of the benchmark."""

    hostile: int
    good: int


QUICK = Size(hostile=2_000, good=200)
FULL = Size(hostile=10_000, good=1_000)


class Flood(Struct, frozen=True, kw_only=True):
    """What the flooded replica did."""

    good_sent: int
    good_ready: int
    hostile_sent: int
    hostile_rejected: int
    parked: int
    reconnects: float
    connection_drops: float
    undecodable: float
    peak_kb: int
    seconds: float


GUEST: Final = {"user": "guest", "password": "guest"}
_CLUSTER: Final = json.loads(command("flood"))["cluster"]


def hostile_message(i: int) -> tuple[bytes, bytes]:
    """The ``i``-th hostile message: (properties, body). The body is a good command: what
    is wrong is around it, or its size."""
    body = json.dumps({"request_id": f"hostile-{i}", "cluster": _CLUSTER})
    if i % OVERSIZED_EVERY == OVERSIZED_EVERY - 1:
        head = body.encode()[:-1] + b', "padding": "'
        padded = head + b"x" * (OVERSIZED_BYTES - len(head) - 2) + b'"}'
        return raw_properties(content_type=b"application/json"), padded
    case = FRAME_CASES[i % len(FRAME_CASES)]
    return case.properties, body.encode()


async def idle_peak_kb() -> int:
    """The peak resident memory of a replica that started and was left alone."""
    async with (
        fresh_vhost("flood-idle") as amqp_url,
        running_simulator(SimulatorConfig()) as simulator,
        running_service(service_env(amqp_url, simulator.base_url), "flood-idle") as service,
    ):
        await asyncio.sleep(IDLE_SECONDS)
        return service.memory_kb()[1]


async def flood(size: Size) -> Flood:
    """The flood against one replica, until every message has its outcome."""
    config = SimulatorConfig(
        ready_after_s=0.5, rate_limit_per_minute=UNLIMITED, rate_limit_per_hour=UNLIMITED
    )
    topology = Topology()
    async with fresh_vhost("flood") as amqp_url, running_simulator(config) as simulator:
        env = service_env(
            amqp_url,
            simulator.base_url,
            poll_interval_s=1.0,
            rate_limit_per_minute=UNLIMITED,
            rate_limit_per_hour=UNLIMITED,
        )
        async with running_service(env, "flood") as service:
            connection = await aio_pika.connect_robust(amqp_url)
            producer = await RawProducer.connect(
                BROKER_HOST, BROKER_PORT, unquote(urlsplit(amqp_url).path[1:]), **GUEST
            )
            try:
                events = EventLog()
                await events.subscribe(connection, topology.events_exchange)
                started = time.monotonic()
                good = hostile = in_flight = 0
                while hostile < size.hostile or good < size.good:
                    if good < size.good and (hostile >= size.hostile or hostile % GOOD_EVERY == 0):
                        producer.send_message(
                            raw_properties(content_type=b"application/json"),
                            command(f"good-{good}"),
                            exchange=topology.commands_exchange,
                            routing_key=topology.command_routing_key,
                        )
                        good += 1
                    if hostile < size.hostile:
                        properties, body = hostile_message(hostile)
                        producer.send_message(
                            properties,
                            body,
                            exchange=topology.commands_exchange,
                            routing_key=topology.command_routing_key,
                        )
                        hostile += 1
                    in_flight += 1
                    if in_flight >= WINDOW:
                        await producer.confirm_all()
                        in_flight = 0
                await producer.confirm_all()
                await events.wait_until(
                    lambda: events.count(READY) >= good and events.count(REJECTED) >= hostile,
                    timeout=600,
                    what="the flood's outcomes",
                )
                seconds = time.monotonic() - started
                peak_kb = service.memory_kb()[1]
                parked = await message_count(connection, topology.rejected_queue)
                reconnects = await service.metric("provisioner_broker_reconnects_total")
                drops = await service.metric("provisioner_broker_connection_drops_total")
                undecodable = await service.metric("provisioner_undecodable_messages_total")
                await events.close()
            finally:
                await producer.close()
                await connection.close()
    return Flood(
        good_sent=good,
        good_ready=events.count(READY),
        hostile_sent=hostile,
        hostile_rejected=events.count(REJECTED),
        parked=parked,
        reconnects=reconnects,
        connection_drops=drops,
        undecodable=undecodable,
        peak_kb=peak_kb,
        seconds=seconds,
    )


async def benchmark(size: Size, label: str) -> dict[str, object]:
    """The idle replica, the flooded one, the table and the figures."""
    idle_kb = await idle_peak_kb()
    run = await flood(size)
    ratio = run.peak_kb / idle_kb
    print_table(
        f"Flood ({label}): {run.hostile_sent:,} hostile messages and {run.good_sent:,} good "
        "commands, one service process",
        ("figure", "value"),
        [
            ("good commands connection_ready", f"{run.good_ready:,} / {run.good_sent:,}"),
            ("hostile messages rejected", f"{run.hostile_rejected:,} / {run.hostile_sent:,}"),
            ("messages parked", run.parked),
            ("undecodable properties (metric)", int(run.undecodable)),
            ("reconnects", int(run.reconnects)),
            ("connection drops", int(run.connection_drops)),
            ("idle replica peak RSS MiB", idle_kb / 1024),
            ("flooded replica peak RSS MiB", run.peak_kb / 1024),
            ("peak RSS, flooded / idle", ratio),
            ("seconds", run.seconds),
            ("messages per second", (run.good_sent + run.hostile_sent) / run.seconds),
        ],
    )
    met = (
        run.good_ready == run.good_sent
        and run.hostile_rejected == run.hostile_sent
        and run.parked == run.hostile_sent
        and run.reconnects == 0
        and run.connection_drops == 0
        and ratio <= GOAL_RSS_RATIO
    )
    return {
        "benchmark": "flood",
        "size": label,
        "hostile": run.hostile_sent,
        "good": run.good_sent,
        "good_ready": run.good_ready,
        "hostile_rejected": run.hostile_rejected,
        "parked": run.parked,
        "reconnects": int(run.reconnects),
        "connection_drops": int(run.connection_drops),
        "idle_peak_rss_mib": round(idle_kb / 1024, 1),
        "peak_rss_mib": round(run.peak_kb / 1024, 1),
        "rss_ratio": round(ratio, 3),
        "seconds": round(run.seconds, 1),
        "goal_met": met,
    }


def main() -> int:
    """``python -m bench.flood [--quick]``."""
    args = bench_arguments(__doc__.splitlines()[0] if __doc__ else "flood")
    size, label = (QUICK, "quick") if args.quick else (FULL, "full")
    emit(asyncio.run(benchmark(size, label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
