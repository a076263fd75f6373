"""Hostile input through the real service: every message refused, parked, never sent on.

The corpus is the hand-written ``tests/hostile/corpus.py`` plus what hypothesis generates in
``tests/hostile/generated.py`` (random bytes, random JSON, valid commands with one targeted
edit), all built before the service starts. Each message goes through RabbitMQ to the real
``Service`` (in this process) against the simulator, with a 64 KiB body limit so that the
oversized cases stay cheap; the default 1 MiB limit has its own test.

The memory bound: the corpus is sent twice. The first batch warms every cache and pool
(msgspec's type info, regex compiles, aio-pika's frame buffers); the second, equal batch must
not leave the traced Python heap more than ``MEMORY_GROWTH_LIMIT`` larger than after the
first. A service that kept anything per message (a body, an event, an exception with its
traceback, a task) would grow by at least the batch's bytes, which is several times the limit.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import json
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

import aio_pika
import msgspec
import pytest
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from contracts.errors import FieldError
from contracts.events import ConnectionReady, Failed, Rejected, decode_event
from contracts.names import REJECTION_REASON_HEADER
from service.app import Service
from service.broker.topology import message_count
from service.observability import configure_logging
from service.provisioning.messages import OVERSIZED_CONTENT_TYPE
from service.simulator import SimulatorConfig
from tests.fixtures.broker import EventRecorder, user_of
from tests.fixtures.simulator import SimulatorFactory
from tests.hostile.corpus import (
    Hostile,
    child_path,
    dumps,
    handwritten,
    refusal_problem,
    valid_command,
)
from tests.hostile.generated import generated
from tests.integration.service_harness import (
    all_final,
    command,
    final,
    get_all,
    publish,
    running_service,
    settings_for,
)

pytestmark = pytest.mark.integration

CREATE: Final = "POST /v2/databases"
LIMIT: Final = 64 * 1024
DEFAULT_LIMIT: Final = 1024 * 1024
MEMORY_GROWTH_LIMIT: Final = 1024 * 1024
BATCH_TIMEOUT_S: Final = 90.0


def hostile_corpus() -> list[Hostile]:
    """Hand-written and generated cases; where both hold the same message, the hand-written
    one (with its expected path) is kept."""
    unique: dict[tuple[bytes, str | None], Hostile] = {}
    for case in handwritten(LIMIT) + generated():
        unique.setdefault((case.body, case.content_type), case)
    return list(unique.values())


class LogSink(io.StringIO):
    """Where the service logs during the flood: each line is checked to be one JSON object,
    counted, and dropped (a flood must not be measured as the test's own memory)."""

    def __init__(self) -> None:
        super().__init__()
        self.lines = 0
        self.rejections = 0
        self.not_json: list[str] = []

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self.lines += 1
            try:
                entry = json.loads(line)
            except ValueError:
                if len(self.not_json) < 5:
                    self.not_json.append(line[:200])
                continue
            if entry.get("event") == "command_rejected":
                self.rejections += 1
        return len(text)


@contextmanager
def logs_to(sink: LogSink) -> Iterator[None]:
    """The service's JSON logs into ``sink``; pytest's own capture of log records (which
    keeps every record in memory for the report) is set aside for the duration."""
    root = logging.getLogger()
    level = root.level
    pytest_handlers = [h for h in root.handlers if type(h).__module__.startswith("_pytest")]
    for handler in pytest_handlers:
        root.removeHandler(handler)
    configure_logging("json", "INFO", stream=sink)
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if getattr(h, "_provisioner_handler", False)]:
            root.removeHandler(handler)
        for handler in pytest_handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()


class Tally:
    """What came back for one batch: a rejected event and a parked message per index."""

    def __init__(self, corpus: list[Hostile]) -> None:
        self.corpus = corpus
        self.digests = [hashlib.sha256(c.body).digest() for c in corpus]
        # Preallocated, so that counting the second batch allocates nothing.
        self.rejected = [bytearray(len(corpus)), bytearray(len(corpus))]
        self.parked = [bytearray(len(corpus)), bytearray(len(corpus))]
        self.problems: list[str] = []
        self.other_events = 0
        self.changed = asyncio.Event()

    def _index(self, correlation_id: str | None) -> tuple[int, int] | None:
        try:
            batch, index = (correlation_id or "").split("-")
            return int(batch), int(index)
        except ValueError:
            return None

    def _problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        """A subscriber's view: every event decoded and checked, then dropped."""
        await message.ack()
        event = decode_event(message.body)
        where = self._index(message.correlation_id)
        if not isinstance(event, Rejected) or where is None:
            self.other_events += 1
            self._problem(f"unexpected {event.routing_key} ({message.correlation_id})")
        else:
            batch, index = where
            self.rejected[batch][index] += 1
            problem = refusal_problem(self.corpus[index], event.data.errors)
            if problem:
                self._problem(problem)
        self.changed.set()

    async def on_parked(self, message: AbstractIncomingMessage) -> None:
        """An operator's view of provisioner.rejected: the original body, with reasons."""
        await message.ack()
        where = self._index(message.correlation_id)
        if where is None:
            self._problem(f"parked message without our correlation id: {message.body[:80]!r}")
            return
        batch, index = where
        self.parked[batch][index] += 1
        case = self.corpus[index]
        if len(case.body) > LIMIT:
            # Over the limit: parked as a small record of the command, never whole.
            if message.content_type != OVERSIZED_CONTENT_TYPE or len(message.body) > 4096:
                self._problem(f"{case.label}: parked whole, not as a record")
            elif msgspec.json.decode(message.body)["size"] != len(case.body):
                self._problem(f"{case.label}: the parked record has the wrong size")
        elif hashlib.sha256(message.body).digest() != self.digests[index]:
            self._problem(f"{case.label}: parked body differs from what was published")
        headers = message.headers or {}
        reason = headers.get(REJECTION_REASON_HEADER)
        try:
            errors = msgspec.json.decode(str(reason).encode(), type=list[FieldError])
        except msgspec.DecodeError:
            errors = []  # a truncated reason is not JSON; it still must be there
        if not reason or (errors and not all(e.path and e.message for e in errors)):
            self._problem(f"{case.label}: parked without a readable {REJECTION_REASON_HEADER}")
        if message.content_type != case.content_type and len(case.body) <= LIMIT:
            self._problem(f"{case.label}: parked with content type {message.content_type!r}")
        self.changed.set()

    def complete(self, batch: int) -> bool:
        return all(self.rejected[batch]) and all(self.parked[batch])

    def duplicates(self, batch: int) -> int:
        return sum(n - 1 for n in self.rejected[batch] if n > 1) + sum(
            n - 1 for n in self.parked[batch] if n > 1
        )


async def publish_batch(
    connection: AbstractRobustConnection, corpus: list[Hostile], batch: int
) -> None:
    """Every case as a producer publishes it, confirmed, 64 at a time."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange("provisioner.commands")
        for start in range(0, len(corpus), 64):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            case.body,
                            content_type=case.content_type,
                            correlation_id=f"{batch}-{start + offset}",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            user_id=user_of(connection),
                        ),
                        "database.cluster.create",
                        mandatory=True,
                        timeout=30,
                    )
                    for offset, case in enumerate(corpus[start : start + 64])
                )
            )
    finally:
        await channel.close()


async def wait_for_batch(tally: Tally, batch: int) -> None:
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while not tally.complete(batch):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            missing = [
                tally.corpus[i].label
                for i in range(len(tally.corpus))
                if not (tally.rejected[batch][i] and tally.parked[batch][i])
            ]
            pytest.fail(f"batch {batch}: {len(missing)} never rejected and parked: {missing[:10]}")
        tally.changed.clear()
        try:
            await asyncio.wait_for(tally.changed.wait(), timeout=min(remaining, 1.0))
        except TimeoutError:
            continue


@asynccontextmanager
async def readiness_watch(service: Service) -> AsyncIterator[list[dict[str, bool]]]:
    """Samples ``service.readiness()`` every 20 ms; yields the samples that were not ready."""
    not_ready: list[dict[str, bool]] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            state = service.readiness()
            if not all(state.values()):
                not_ready.append(state)
            await asyncio.sleep(0.02)

    task = asyncio.create_task(watch())
    try:
        yield not_ready
    finally:
        stop.set()
        await task


def rss_kib() -> int:
    """This process's resident set (VmRSS), for the printed figures."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def traced_after_gc() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_hostile_messages_are_rejected_parked_and_never_reach_the_api(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    simulator_factory: SimulatorFactory,
) -> None:
    corpus = hostile_corpus()
    hand = sum(not c.label.startswith("hypothesis:") for c in corpus)
    assert len(corpus) >= 1000
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.2))
    settings = settings_for(amqp_url, sim, max_message_bytes=LIMIT, command_prefetch=32)
    tally = Tally(corpus)
    sink = LogSink()

    channel = await amqp.channel()
    await channel.set_qos(prefetch_count=256)
    events_exchange = await channel.declare_exchange(
        "provisioner.events", aio_pika.ExchangeType.TOPIC, durable=True
    )
    events_queue = await channel.declare_queue("test.hostile-events", durable=True)
    await events_queue.bind(events_exchange, routing_key="#")
    await events_queue.consume(tally.on_event)

    with logs_to(sink):
        async with running_service(settings) as service, readiness_watch(service) as not_ready:
            parked_queue = await channel.declare_queue("provisioner.rejected", passive=True)
            await parked_queue.consume(tally.on_parked)
            started = time.monotonic()
            await publish_batch(amqp, corpus, 0)
            await wait_for_batch(tally, 0)
            first_rss = rss_kib()
            # Traced from here on only: what the second batch allocated and still holds.
            gc.collect()
            tracemalloc.start()
            try:
                await publish_batch(amqp, corpus, 1)
                await wait_for_batch(tally, 1)
                retained = traced_after_gc()
            finally:
                tracemalloc.stop()
            second_rss = rss_kib()
            elapsed = time.monotonic() - started
            ready_at_end = service.readiness()
        left = {
            name: await message_count(amqp, name)
            for name in ("provisioner.requests", "provisioner.dead-letter")
        }
    await channel.close()

    sent = 2 * len(corpus)
    print(
        f"\nhostile messages: {len(corpus)} distinct ({hand} hand-written, "
        f"{len(corpus) - hand} from hypothesis), {sent} published in two equal batches "
        f"in {elapsed:.1f} s; rejected {sum(map(sum, tally.rejected))}, "
        f"parked {sum(map(sum, tally.parked))}; {CREATE}: {sim.stats().count(CREATE)}; "
        f"heap allocated by the second batch and still held {retained / 1024:.0f} KiB "
        f"(limit {MEMORY_GROWTH_LIMIT // 1024} KiB), RSS {first_rss} -> {second_rss} KiB; "
        f"log lines {sink.lines}"
    )
    assert tally.problems == []
    assert tally.other_events == 0
    assert tally.duplicates(0) == tally.duplicates(1) == 0
    assert sim.stats().count(CREATE) == 0, sim.stats().calls
    assert not_ready == [], not_ready[:3]
    assert all(ready_at_end.values()), ready_at_end
    assert left == {"provisioner.requests": 0, "provisioner.dead-letter": 0}
    assert sink.not_json == []
    assert sink.rejections == sent
    assert retained < MEMORY_GROWTH_LIMIT, f"the second batch left {retained} bytes behind"


def padded(body: bytes, size: int) -> bytes:
    """``body`` with trailing JSON whitespace up to exactly ``size`` bytes."""
    assert len(body) <= size
    return body + b" " * (size - len(body))


async def test_default_limit_parks_a_record_of_a_command_over_1_mib_and_takes_one_at_the_limit(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.2))
    settings = settings_for(amqp_url, sim)
    assert settings.max_message_bytes == DEFAULT_LIMIT
    # Both are valid commands; only the size tells them apart.
    over = padded(dumps(valid_command("valkey", "too-big")), 3 * 512 * 1024)
    at_limit = padded(dumps(valid_command("valkey", "just-fits")), DEFAULT_LIMIT)
    async with running_service(settings):
        await publish(amqp, over, correlation_id="over")
        await publish(amqp, at_limit, correlation_id="at-limit")
        seen = await events.wait_for(all_final(["just-fits"]), timeout=30)
        await events.wait_for(lambda evs: any(isinstance(e, Rejected) for e in evs), timeout=10)

    answers = [
        e for m, e in zip(events.messages, events.events, strict=True) if m.correlation_id == "over"
    ]
    assert len(answers) == 1
    rejected = answers[0]
    assert isinstance(rejected, Rejected)
    expected = [FieldError("$", f"message is {len(over)} bytes; the limit is {DEFAULT_LIMIT}")]
    assert rejected.data.errors == expected
    # Only the first bytes are read: enough for the request_id, never the whole command.
    assert rejected.data.request_id == "too-big"
    assert isinstance(final(seen, "just-fits"), ConnectionReady)
    parked = await get_all(amqp, "provisioner.rejected")
    assert [m.correlation_id for m in parked] == ["over"]
    assert parked[0].content_type == OVERSIZED_CONTENT_TYPE
    record = msgspec.json.decode(parked[0].body)
    assert record["size"] == len(over)
    assert record["request_id"] == "too-big"
    assert record["content_type"] == "application/json"
    assert over.decode().startswith(record["head"])
    assert record["reason"] == str(expected[0])
    reason = str((parked[0].headers or {})[REJECTION_REASON_HEADER])
    assert msgspec.json.decode(reason.encode(), type=list[FieldError]) == expected
    assert sim.stats().count(CREATE) == 1  # the one at the limit


@pytest.mark.parametrize(
    "change",
    [
        {"name": "another-name"},
        {"size": "db-s-2vcpu-4gb"},
        {"users": [{"name": "someone-else"}]},
    ],
    ids=["name", "size", "users"],
)
async def test_request_id_reused_for_another_cluster_fails_without_its_connection_details(
    change: dict[str, Any],
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.2))
    first = command("reused", "pg")
    second = command("reused", "pg", cluster=change)
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, first, correlation_id="first")
        await events.wait_for(all_final(["reused"]), timeout=30)
        await publish(amqp, second, correlation_id="second")
        await events.wait_for(lambda evs: any(isinstance(e, Failed) for e in evs), timeout=30)

    by_correlation = [
        (m.correlation_id, e) for m, e in zip(events.messages, events.events, strict=True)
    ]
    answers = [e for c, e in by_correlation if c == "second"]
    assert len(answers) == 1, answers
    failed = answers[0]
    assert isinstance(failed, Failed)
    assert failed.data.reason == "request_conflict"
    assert "already used" in failed.data.message
    ready = [e for e in events.events if isinstance(e, ConnectionReady)]
    assert len(ready) == 1  # the first request's, and no copy for the second
    assert sim.stats().count(CREATE) == 1
    assert sim.stats().clusters == {"online": 1}


async def test_request_id_reused_concurrently_creates_one_cluster_and_one_conflict(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """Two commands with one request_id and different clusters handled at the same moment:
    one cluster, and a request_conflict for the other (not a second cluster)."""
    # API latency keeps both commands in flight together, as two replicas would.
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.3, latency_s=0.3))
    first = command("reused-at-once", "pg")
    second = command("reused-at-once", "pg", cluster={"name": "another-name"})
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, first, correlation_id="first")
        await publish(amqp, second, correlation_id="second")
        seen = await events.wait_for(
            lambda evs: sum(isinstance(e, ConnectionReady | Failed) for e in evs) >= 2,
            timeout=30,
        )
    terminal = sorted(type(e).__name__ for e in seen if isinstance(e, ConnectionReady | Failed))
    assert sim.stats().clusters_total == 1, sim.stats().clusters
    assert terminal == ["ConnectionReady", "Failed"]


async def test_huge_field_name_is_rejected_and_parked_without_breaking_the_connection(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """A 200 KB field name (under the 1 MiB limit) is quoted shortened, so the parked message's
    header stays far below the broker's frame_max and the connection is never dropped."""
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.2))
    doc = valid_command("valkey", "huge-key")
    doc["cluster"]["k" * 200_000] = 1
    with logs_to(LogSink()):
        async with (
            running_service(settings_for(amqp_url, sim)) as service,
            readiness_watch(service) as not_ready,
        ):
            await publish(amqp, dumps(doc), correlation_id="huge-key")
            seen = await events.wait_for(all_final(["huge-key"]), timeout=10)
    rejected = final(seen, "huge-key")
    assert isinstance(rejected, Rejected)
    assert [e.path for e in rejected.data.errors] == [child_path("$.cluster", "k" * 200_000)]
    assert "(200000 chars)" in rejected.data.errors[0].message
    assert not_ready == []
    parked = await get_all(amqp, "provisioner.rejected")
    assert [m.correlation_id for m in parked] == ["huge-key"]
    assert len(str((parked[0].headers or {})[REJECTION_REASON_HEADER])) <= 20 * 1024


async def test_rejected_event_stays_small_however_many_rules_a_command_breaks(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """256 KiB of repeated db_names break one rule ~65,000 times; the event lists 200 and says
    how many more there were."""
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.2))
    doc = valid_command("pg", "many-duplicates")
    doc["cluster"]["db_names"] = ["a"] * (256 * 1024 // 4)
    with logs_to(LogSink()):
        async with running_service(settings_for(amqp_url, sim)):
            await publish(amqp, dumps(doc), correlation_id="many-duplicates")
            seen = await events.wait_for(all_final(["many-duplicates"]), timeout=30)
    rejected = final(seen, "many-duplicates")
    assert isinstance(rejected, Rejected)
    body = events.messages[events.events.index(rejected)].body
    assert len(rejected.data.errors) <= 201  # the checker's 200, and perhaps a "more" note
    assert len(body) <= 64 * 1024


async def test_reply_to_naming_a_service_queue_never_feeds_that_queue(
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
) -> None:
    """A reply_to naming the watch or the requests queue gets no copy: a valid command is
    rejected for it (its producer's policy allows no such queue), nothing reaches the
    dead-letter queue and the service never reads its own event as a command."""
    sim = await simulator_factory(SimulatorConfig(ready_after_s=0.2))
    async with running_service(settings_for(amqp_url, sim)):
        await publish(amqp, b"not json", reply_to="provisioner.watch")
        await publish(amqp, b"not json either", reply_to="provisioner.requests")
        await publish(amqp, command("reply-to-watch", "valkey"), reply_to="provisioner.watch")
        await events.wait_for(all_final(["reply-to-watch"]), timeout=30)
        await events.wait_for(
            lambda evs: sum(isinstance(e, Rejected) for e in evs) >= 3, timeout=10
        )
        dead = await message_count(amqp, "provisioner.dead-letter")
    assert sum(isinstance(e, Rejected) for e in events.events) == 3
    refused = final(events.events, "reply-to-watch")
    assert isinstance(refused, Rejected)
    assert [e.path for e in refused.data.errors] == ["properties.reply_to"]
    assert dead == 0
    assert sim.stats().count("POST /v2/databases") == 0
