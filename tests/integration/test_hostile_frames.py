"""Hostile AMQP frames against the running service: nothing a producer puts on the wire
drops its connection, holds its memory or gets past the parking queue unannounced.

``provisioner run`` runs as a process of its own (so that its connection, its ``/readyz`` and
its resident memory are its own) against the simulator. A producer that writes frames itself
(``tests.hostile.wire.RawProducer``) sends every case of ``FRAME_CASES`` (header timestamps
past the year 9999, tables nested a thousand levels deep, names and properties that are not
UTF-8, 40,000 header values), commands larger than the limit, and an invalid command with a
header that cannot be written back, with good commands published between them. Throughout,
``/readyz`` is sampled; at the end the service must have lost its connection not once, every
good command must have reached ``connection_ready``, every bad message must be rejected and
parked with its reason, and the resident memory must be within ``RSS_GROWTH_LIMIT_MIB`` of
what it was before the hostile messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Final

import aiohttp
import msgspec
import pytest
from aio_pika.abc import AbstractRobustConnection

from contracts.errors import FieldError
from contracts.events import ConnectionReady, Event, Rejected
from contracts.names import REJECTION_REASON_HEADER
from service.app import Service
from service.broker.topology import Topology
from service.provisioning.messages import OVERSIZED_CONTENT_TYPE
from service.simulator import Simulator
from tests.fixtures.broker import BROKER_HOST, BROKER_PORT, EventRecorder, broker_max_message_size
from tests.fixtures.service_process import service_env, start_service, stop_service, wait_for_log
from tests.fixtures.simulator import SimulatorFactory
from tests.hostile.wire import FRAME_CASES, RawProducer, entry, raw_properties, table
from tests.integration.service_harness import command, get_all, publish, settings_for

pytestmark = pytest.mark.integration

# Six 24 MiB commands used to add 100 MB to the service's memory for good; the frame layer
# keeps 8 KiB of each. The bound leaves room for the allocator's own growth under the flood.
OVERSIZED_BYTES: Final = 24 * 1024 * 1024
OVERSIZED_COUNT: Final = 6
RSS_GROWTH_LIMIT_MIB: Final = 40.0


class RunningService:
    """``provisioner run`` in a process of its own, with its port, log and memory at hand."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log

    def rss_mib(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    async def metrics(self) -> dict[str, float]:
        """Every sample of ``/metrics`` by its series (name and labels)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}/metrics") as reply,
        ):
            text = await reply.text()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                samples[series] = float(value)
        return samples


@contextlib.asynccontextmanager
async def provisioner_process(
    amqp_url: str, simulator: Simulator, log: Path
) -> AsyncIterator[RunningService]:
    env = service_env(amqp_url, simulator, PROVISIONER_POLL_INTERVAL_S="0.2")
    process = await start_service(env, log)
    try:
        events = await wait_for_log(
            log,
            lambda events: any(e.get("event") == "service_started" for e in events),
            process=process,
            timeout=60,
            what="service_started",
        )
        started = next(e for e in events if e.get("event") == "service_started")
        yield RunningService(process, int(started["http_port"]), log)
    finally:
        assert await stop_service(process) == 0


@contextlib.asynccontextmanager
async def readiness_samples(port: int) -> AsyncIterator[list[str]]:
    """``/readyz`` every 50 ms while the block runs; yields each answer that was not 200."""
    not_ready: list[str] = []
    samples = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal samples
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            while not stop.is_set():
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as reply:
                        if reply.status != 200:
                            not_ready.append(f"{reply.status} {await reply.text()}")
                except aiohttp.ClientError as exc:
                    not_ready.append(repr(exc))
                samples += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

    task = asyncio.create_task(sample())
    try:
        yield not_ready
    finally:
        stop.set()
        await task
    assert samples > 10, "readiness was hardly sampled"


def _body(request_id: str, **extra: Any) -> bytes:
    return json.dumps(command(request_id, **extra)).encode()


def _rejections(count: int) -> Callable[[list[Event]], bool]:
    return lambda events: sum(isinstance(e, Rejected) for e in events) >= count


def _ids(events: EventRecorder, kind: type) -> set[str | None]:
    return {e.data.request_id for e in events.events if isinstance(e, kind)}


async def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:g} s")
        await asyncio.sleep(0.1)


async def test_hostile_frames_never_cost_the_connection_readiness_or_memory(
    amqp_url: str,
    vhost: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
    tmp_path: Path,
) -> None:
    simulator = await simulator_factory(ready_after_s=0.2)
    oversized = min(OVERSIZED_BYTES, broker_max_message_size() - 64 * 1024)
    async with provisioner_process(amqp_url, simulator, tmp_path / "service.log") as service:
        producer = await RawProducer.connect(
            BROKER_HOST, BROKER_PORT, vhost, user="guest", password="guest"
        )
        try:
            # Warm up (caches, pools, the first list call), then take the memory baseline.
            for i in range(5):
                await publish(amqp, command(f"warm-{i}"))
            await _wait(
                lambda: sum(isinstance(e, ConnectionReady) for e in events.events) >= 5,
                60,
                "warm-up commands not ready",
            )
            baseline = service.rss_mib()
            good: list[str] = []
            bad: dict[str, list[str]] = {}  # request_id -> names its rejection must carry
            async with readiness_samples(service.port) as not_ready:
                for i, case in enumerate(FRAME_CASES):
                    rid = f"frame-{i}"
                    await producer.publish(case.properties, _body(rid))
                    bad[rid] = list(case.names)
                    good.append(f"good-{i}")
                    await publish(amqp, command(f"good-{i}"))
                for i in range(OVERSIZED_COUNT):
                    rid = f"huge-{i}"
                    head = _body(rid)[:-1] + b', "padding": "'
                    body = head + b"x" * (oversized - len(head) - 2) + b'"}'
                    await producer.publish(raw_properties(content_type=b"application/json"), body)
                    bad[rid] = ["is " + str(len(body)) + " bytes"]
                    good.append(f"good-huge-{i}")
                    await publish(amqp, command(f"good-huge-{i}"))
                # An invalid command whose header cannot be written back (a double pamqp would
                # write as 32 bits): parked without that header, with its rejection.
                await producer.publish(
                    raw_properties(
                        content_type=b"application/json",
                        headers=table(
                            entry(b"huge-double", b"d", struct.pack(">d", 1e300)),
                            entry(b"trace", b"S", struct.pack(">I", 3) + b"abc"),
                        ),
                    ),
                    json.dumps({"request_id": "unwritable", "cluster": {}}).encode(),
                )
                bad["unwritable"] = ["$.cluster"]
                await _wait(
                    lambda: (
                        set(good) <= _ids(events, ConnectionReady)
                        and set(bad) <= _ids(events, Rejected)
                    ),
                    120,
                    "not every command reached its final event",
                )
            peak = service.rss_mib()
            metrics = await service.metrics()
        finally:
            await producer.close()

        # The connection held, and the service was ready throughout.
        assert not_ready == []
        assert metrics["provisioner_broker_connection_drops_total"] == 0
        assert metrics["provisioner_broker_reconnects_total"] == 0
        assert metrics['provisioner_handler_crashes_total{consumer="commands"}'] == 0
        log_text = service.log.read_text(errors="replace")
        assert "Reconnecting" not in log_text and "Connection to" not in log_text

        # Good commands around the hostile ones all completed.
        ready = {e.data.request_id for e in events.events if isinstance(e, ConnectionReady)}
        assert set(good) <= ready

        # Each bad one: a rejected event naming what was wrong, and a parked message.
        rejected = {e.data.request_id: e for e in events.events if isinstance(e, Rejected)}
        for rid, names in bad.items():
            errors = " ".join(f"{e.path} {e.message}" for e in rejected[rid].data.errors)
            for name in names:
                assert name in errors, (rid, errors)
        parked = await get_all(amqp, Topology().rejected_queue)
        by_request: dict[str, Any] = {}
        for message in parked:
            reason = msgspec.json.decode(
                str((message.headers or {})[REJECTION_REASON_HEADER]).encode(),
                type=list[FieldError],
            )
            if message.content_type == OVERSIZED_CONTENT_TYPE:
                record = json.loads(message.body)
                assert record["size"] > 1024 * 1024 and len(message.body) < 4096
                by_request[record["request_id"]] = (message, reason)
            else:
                by_request[json.loads(message.body)["request_id"]] = (message, reason)
        assert set(by_request) == set(bad)
        for rid, names in bad.items():
            message, reason = by_request[rid]
            text = " ".join(f"{e.path} {e.message}" for e in reason)
            for name in names:
                assert name in text, (rid, text)
        unwritable, _ = by_request["unwritable"]
        assert (unwritable.headers or {}).get("trace") == "abc"
        assert "huge-double" not in (unwritable.headers or {})
        assert metrics['provisioner_messages_parked_total{reason="unreadable_properties"}'] == len(
            FRAME_CASES
        )
        assert metrics['provisioner_messages_parked_total{reason="too_large"}'] == OVERSIZED_COUNT
        assert metrics['provisioner_undecodable_messages_total{consumer="commands"}'] == len(
            FRAME_CASES
        )
        assert metrics["provisioner_producer_headers_dropped_total"] >= 1

        # Memory: the hostile messages and the oversized bodies were not kept.
        growth = peak - baseline
        print(f"RSS baseline {baseline:.1f} MiB, after {peak:.1f} MiB, growth {growth:.1f} MiB")
        assert growth < RSS_GROWTH_LIMIT_MIB, f"RSS grew {growth:.1f} MiB ({baseline:.1f} ->)"


async def test_at_the_parking_queue_bound_a_bad_command_is_announced_and_counted_not_parked(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    simulator = await simulator_factory()
    settings = settings_for(amqp_url, simulator)
    topology = Topology(
        parking_max_messages=3,
        poll_interval_s=settings.poll_interval_s,
        retry_delays_s=settings.retry_delays_s,
    )
    service = Service(settings, topology=topology)
    await service.start(connect_attempts=5)
    try:
        # One at a time: a quorum queue applies its bound as messages are committed, so a
        # burst of parallel parks can pass it by a few.
        for i in range(5):
            await publish(amqp, {"request_id": f"bad-{i}", "cluster": {"engine": "pg"}})
            await events.wait_for(_rejections(i + 1), timeout=30)
        metrics = service.metrics
        parked_count = metrics.value("provisioner_messages_parked_total", reason="invalid")
        refused = metrics.value("provisioner_messages_parked_total", reason="parking_full")
        # RabbitMQ 3.10's quorum queues refuse once they hold more than the bound: one past it.
        assert parked_count in (3, 4)
        assert refused == 5 - parked_count
        assert all(service.readiness().values())
        assert metrics.value("provisioner_queue_max_messages", queue=topology.rejected_queue) == 3
    finally:
        await service.stop()
    parked = await get_all(amqp, topology.rejected_queue)
    # The queue kept the first ones; the rest were refused, announced by their rejected
    # events and counted.
    kept = sorted(json.loads(m.body)["request_id"] for m in parked)
    assert kept == [f"bad-{i}" for i in range(int(parked_count))]
