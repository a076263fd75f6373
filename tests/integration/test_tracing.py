"""One request is one trace, across a replica killed between the create call and ``online``.

The replicas are ``provisioner run`` processes of their own (a kill is a real SIGKILL), with
the ``otel`` extra's SDK configured only by the standard ``OTEL_*`` variables; their OTLP/HTTP
exporter sends spans to a small OTLP receiver in this test (real HTTP on loopback, the
protobuf messages of ``opentelemetry-proto``). The SDK's in-memory exporter cannot see into
another process, and a replica in this process could not be killed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from contracts.events import ConnectionReady, StatusChanged
from service.simulator import SimulatorConfig
from tests.fixtures.broker import EventRecorder, user_of
from tests.fixtures.service_process import service_env, start_service, stop_service, wait_for_log
from tests.fixtures.simulator import SimulatorFactory
from tests.integration.service_harness import command

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    attributes: dict[str, object]
    instance: str


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


class OtlpReceiver:
    """Takes OTLP/HTTP protobuf trace exports, as a collector would, and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1/traces"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _export(self, request: web.Request) -> web.Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.read())
        for resource_spans in export.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            instance=str(resource.get("service.instance.id")),
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], *, timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.spans):
            if time.monotonic() > deadline:
                names = sorted({(s.instance, s.name) for s in self.spans})
                pytest.fail(f"no {what} within {timeout:g} s; spans so far: {names}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    otlp = OtlpReceiver()
    await otlp.start()
    yield otlp
    await otlp.stop()


def _otel_env(receiver: OtlpReceiver, instance: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "do-db-provisioner",
        "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={instance}",
        # Spans leave a replica within 100 ms, so what it did before the kill is exported.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


async def test_one_request_is_one_trace_across_a_replica_killed_before_online(
    tmp_path: Path,
    amqp_url: str,
    amqp: AbstractRobustConnection,
    events: EventRecorder,
    simulator_factory: SimulatorFactory,
    receiver: OtlpReceiver,
) -> None:
    # Online 8 s after the create: time to kill the first replica before it gets there.
    sim = await simulator_factory(SimulatorConfig(ready_after_s=8.0, seed=15))
    producer_trace = f"{random.getrandbits(128):032x}"
    producer_span = f"{random.getrandbits(64):016x}"
    request_id = "traced-1"
    first_log, second_log = tmp_path / "a.log", tmp_path / "b.log"

    first = await start_service(
        service_env(amqp_url, sim, **_otel_env(receiver, "replica-a")), first_log
    )
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_for_log(
            first_log,
            lambda evs: any(e.get("event") == "service_started" for e in evs),
            process=first,
            timeout=30,
            what="service_started",
        )
        channel = await amqp.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("provisioner.commands")
        await exchange.publish(
            _command_message(request_id, f"00-{producer_trace}-{producer_span}-01", user_of(amqp)),
            "database.cluster.create",
            mandatory=True,
        )
        await channel.close()
        # The command was handled and the cluster created on replica A: its spans are out.
        await receiver.wait_for(
            lambda spans: (
                any(
                    s.instance == "replica-a" and s.name == "provisioner.requests process"
                    for s in spans
                )
                and any(
                    s.instance == "replica-a" and s.name == "provisioner.watch process"
                    for s in spans
                )
            ),
            timeout=30,
            what="command and first watch step spans from replica A",
        )
        assert not any(isinstance(e, ConnectionReady) for e in events.of(request_id))
        first.kill()  # SIGKILL: no drain, no goodbye; the watch in hand goes back to its queue
        await first.wait()

        second = await start_service(
            service_env(amqp_url, sim, **_otel_env(receiver, "replica-b")), second_log
        )
        seen = await events.wait_for(
            lambda evs: any(
                isinstance(e, ConnectionReady) and e.data.request_id == request_id for e in evs
            ),
            timeout=60,
        )
        await receiver.wait_for(
            lambda spans: any(
                s.instance == "replica-b"
                and s.name == "provisioner.events publish"
                and s.attributes.get("messaging.rabbitmq.destination.routing_key")
                == "database.cluster.connection_ready"
                for s in spans
            ),
            timeout=30,
            what="the connection_ready publish span from replica B",
        )
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
        if second is not None:
            await stop_service(second)

    ours = [s for s in receiver.spans if s.trace_id == producer_trace]
    by_id = {s.span_id: s for s in ours}
    # The command's span continues the producer's; every watch step hangs off it.
    (handled,) = [s for s in ours if s.name == "provisioner.requests process"]
    assert handled.parent_span_id == producer_span
    assert handled.instance == "replica-a"
    assert handled.attributes["provisioner.request_id"] == request_id
    steps = [s for s in ours if s.name == "provisioner.watch process"]
    assert {s.instance for s in steps} == {"replica-a", "replica-b"}
    assert all(s.parent_span_id == handled.span_id for s in steps)
    # Each DigitalOcean call is a span with DigitalOcean's request id, on both replicas.
    calls = [s for s in ours if s.attributes.get("provisioner.operation")]
    assert {"create_cluster", "get_ca"} <= {
        str(s.attributes["provisioner.operation"]) for s in calls
    }
    assert all(str(s.attributes.get("digitalocean.request_id", "")) for s in calls)
    (create,) = [s for s in calls if s.attributes["provisioner.operation"] == "create_cluster"]
    assert by_id[create.parent_span_id] is handled
    # Each publish is a span, under the command (status creating) or under a watch step.
    publishes = [s for s in ours if s.name == "provisioner.events publish"]
    assert {s.instance for s in publishes} == {"replica-a", "replica-b"}
    for span in publishes:
        assert by_id[span.parent_span_id].name in (
            "provisioner.requests process",
            "provisioner.watch process",
        )
    # Nothing of this request went into another trace.
    request_spans = [
        s for s in receiver.spans if s.attributes.get("provisioner.request_id") == request_id
    ]
    assert {s.trace_id for s in request_spans} == {producer_trace}

    # One tree: every span of the trace descends from the command's span.
    tree = render_tree(ours, handled)
    assert len(tree.splitlines()) == len(ours), tree
    print(tree)

    # Every event carries its publish's context, in the body and in the AMQP headers.
    for event, message in zip(events.events, events.messages, strict=True):
        if getattr(event.data, "request_id", None) != request_id:
            continue
        assert isinstance(event.traceparent, str)
        _, trace_id, span_id, _ = event.traceparent.split("-")
        assert trace_id == producer_trace
        assert by_id[span_id].name == "provisioner.events publish"
        assert (message.headers or {})["traceparent"] == event.traceparent
    assert any(isinstance(e, StatusChanged) for e in seen)


def render_tree(spans: list[ReceivedSpan], root: ReceivedSpan) -> str:
    """The spans under ``root`` as an indented text tree, children in arrival order."""
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)
    lines: list[str] = []

    def walk(span: ReceivedSpan, depth: int) -> None:
        detail = [
            f"{key}={span.attributes[key]}"
            for key in (
                "provisioner.status",
                "messaging.rabbitmq.destination.routing_key",
                "http.response.status_code",
                "digitalocean.request_id",
            )
            if key in span.attributes and span.attributes[key] != ""
        ]
        lines.append(f"{'  ' * depth}{span.name} [{span.instance}] {' '.join(detail)}".rstrip())
        for child in children.get(span.span_id, []):
            walk(child, depth + 1)

    walk(root, 0)
    return "\n".join(lines)


def _command_message(request_id: str, traceparent: str, user: str) -> aio_pika.Message:
    return aio_pika.Message(
        json.dumps(command(request_id)).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        headers={"traceparent": traceparent, "tracestate": "producer=1"},
        user_id=user,
    )
