"""Trace context without the SDK (the default): a producer's context is read safely from
whatever headers it sent, passes through unchanged, and a missing one is made up, so that
events and log lines always carry a trace id. The SDK path across processes is
tests/integration/test_tracing.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service import tracing
from service.provisioning.messages import WatchState
from service.provisioning.watch import watch_step_span
from service.tracing import (
    add_trace_ids,
    client_span,
    context_from_headers,
    context_from_traceparent,
    current_trace_headers,
    messaging_span,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01"


def _ids(context: object) -> tuple[str, str] | None:
    span = trace.get_current_span(context)  # type: ignore[arg-type]
    sc = span.get_span_context()
    return (format(sc.trace_id, "032x"), format(sc.span_id, "016x")) if sc.is_valid else None


def test_a_producers_traceparent_is_read_as_text_or_bytes() -> None:
    assert _ids(context_from_headers({"traceparent": TRACEPARENT})) == (TRACE, SPAN)
    assert _ids(context_from_headers({"traceparent": TRACEPARENT.encode()})) == (TRACE, SPAN)
    assert _ids(context_from_traceparent(TRACEPARENT, "vendor=1")) == (TRACE, SPAN)


@pytest.mark.parametrize(
    "value",
    [
        "not a traceparent",
        f"00-{'0' * 32}-{SPAN}-01",  # an all-zero trace id is invalid
        TRACEPARENT + "x" * 600,  # longer than any trace context
        b"\xff\xfe",  # not ASCII
        12345,
        {"nested": TRACEPARENT},
        None,
    ],
)
def test_a_malformed_or_hostile_traceparent_is_ignored(value: object) -> None:
    assert _ids(context_from_headers({"traceparent": value})) is None


def test_without_sdk_the_producers_context_passes_through_a_span() -> None:
    with messaging_span(
        "q process",
        kind=SpanKind.CONSUMER,
        parent=context_from_headers({"traceparent": TRACEPARENT}),
    ):
        headers = current_trace_headers()
    assert headers["traceparent"] == TRACEPARENT


def test_without_sdk_and_without_a_context_one_is_made_up_per_span() -> None:
    with messaging_span("q process", kind=SpanKind.CONSUMER):
        first = current_trace_headers()["traceparent"]
        with messaging_span("e publish", kind=SpanKind.PRODUCER):
            # Within it, publishes and logs carry the same made-up context.
            assert current_trace_headers()["traceparent"] == first
    with messaging_span("q process", kind=SpanKind.CONSUMER):
        second = current_trace_headers()["traceparent"]
    assert first != second
    assert first.endswith("-00")  # not sampled: nothing claims it was recorded
    assert current_trace_headers() == {}


def test_without_sdk_a_producers_tracestate_passes_through_too() -> None:
    parent = context_from_headers({"traceparent": TRACEPARENT, "tracestate": "vendor=1,other=x"})
    with (
        messaging_span("q process", kind=SpanKind.CONSUMER, parent=parent),
        client_span("POST create", {}),
        messaging_span("e publish", kind=SpanKind.PRODUCER),
    ):
        headers = current_trace_headers()
    assert headers == {"traceparent": TRACEPARENT, "tracestate": "vendor=1,other=x"}


@pytest.mark.parametrize("headers", [{}, {"traceparent": TRACEPARENT, "tracestate": "v=1"}])
def test_without_sdk_the_headers_are_what_the_w3c_propagator_writes(
    headers: dict[str, str],
) -> None:
    with messaging_span("q process", kind=SpanKind.CONSUMER, parent=context_from_headers(headers)):
        written: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(written)
        assert current_trace_headers() == written
        assert add_trace_ids(None, "info", {}) == {
            "trace_id": written["traceparent"].split("-")[1],
            "span_id": written["traceparent"].split("-")[2],
        }


_LATER_SDK = """
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from service.tracing import client_span, context_from_headers, messaging_span

def one():
    parent = context_from_headers({"traceparent": sys.argv[1]})
    with messaging_span("q process", kind=SpanKind.CONSUMER, parent=parent):
        with client_span("POST create", {}):
            pass

one()  # before the SDK: nothing to record
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
one()
spans = {s.name: s for s in exporter.get_finished_spans()}
assert sorted(spans) == ["POST create", "q process"], sorted(spans)
assert spans["POST create"].parent.span_id == spans["q process"].context.span_id
assert format(spans["q process"].parent.span_id, "016x") == sys.argv[2]
print("recorded")
"""


def test_an_sdk_set_up_after_the_first_messages_records_the_next() -> None:
    # In a process of its own: a tracer provider can be set once per process.
    result = subprocess.run(
        [sys.executable, "-c", _LATER_SDK, TRACEPARENT, SPAN],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "recorded"


def test_a_watch_step_continues_the_trace_its_watch_carries() -> None:
    watch = WatchState(
        request_id="r",
        cluster_id="c",
        name="n",
        engine="pg",
        region="nyc3",
        status="creating",
        deadline=0.0,
        accepted_at=0.0,
        traceparent=TRACEPARENT,
    )
    with watch_step_span(watch):
        assert current_trace_headers()["traceparent"].split("-")[1] == TRACE


def test_log_lines_carry_trace_and_span_ids_inside_a_span_only() -> None:
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}
    with messaging_span(
        "q process", kind=SpanKind.CONSUMER, parent=context_from_traceparent(TRACEPARENT)
    ):
        line = add_trace_ids(None, "info", {"event": "x"})
    assert line == {"event": "x", "trace_id": TRACE, "span_id": SPAN}


def test_the_service_logger_adds_the_ids() -> None:
    from service.observability import _shared_processors

    # Every line, structlog's or a library's through the stdlib, goes through these.
    assert add_trace_ids in _shared_processors()


@pytest.mark.parametrize(
    ("env", "wanted"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x:4318/v1/traces"}, True),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
    ],
)
def test_the_sdk_is_set_up_only_when_the_standard_variables_ask(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], wanted: bool
) -> None:
    for name in (
        "OTEL_SDK_DISABLED",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing._wanted() is wanted
