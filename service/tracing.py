"""W3C trace context through the service, with the OpenTelemetry API only.

A command's ``traceparent``/``tracestate`` AMQP headers (as the OpenTelemetry messaging
conventions and aio-pika's instrumentation carry them) are continued; a command without them
starts a trace. The context of the command's span travels in each watch message (its body,
``WatchState.traceparent``, and its headers), so every watch step, on whichever replica and
after however many poll cycles, is a span of the same trace. Every event carries the context
of its publish, in its body (the CloudEvents ``traceparent`` extension) and its headers.

Without an SDK the API is a no-op: spans are not recorded, but the context still flows (a
missing one is made up here, so events and log lines always carry a trace id). With the
``otel`` extra installed, :func:`configure_tracing` sets up the SDK from the standard
``OTEL_*`` variables only.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import Token
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "TRACER",
    "TRACE_HEADERS",
    "add_trace_ids",
    "client_span",
    "configure_tracing",
    "context_from_headers",
    "context_from_traceparent",
    "current_trace_headers",
    "messaging_span",
    "recording",
    "shutdown_tracing",
]

TRACER: Final = trace.get_tracer("do-db-provisioner")
"""The service's tracer: a proxy until a provider is set, then the provider's."""
TRACE_HEADERS: Final = ("traceparent", "tracestate")
SERVICE_NAME: Final = "do-db-provisioner"
# A header longer than this is not a trace context (tracestate's own limit is 512).
_MAX_HEADER: Final = 512
_MESSAGING: Final = {"messaging.system": "rabbitmq"}


class _HeaderGetter(Getter[Mapping[str, object]]):
    """Reads text headers of an AMQP message for the propagator; anything else is absent
    (headers are a producer's, and can be anything)."""

    def get(self, carrier: Mapping[str, object], key: str) -> list[str] | None:
        value = carrier.get(key)
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                return None
        if isinstance(value, str) and len(value) <= _MAX_HEADER:
            return [value]
        return None

    def keys(self, carrier: Mapping[str, object]) -> list[str]:
        return [key for key in carrier if isinstance(key, str)]


_GETTER: Final = _HeaderGetter()
# W3C trace context, whatever OTEL_PROPAGATORS says: the ``traceparent`` an event carries in
# its body (CloudEvents) and a watch in its own can only be the W3C one, so its headers are too.
_W3C: Final = TraceContextTextMapPropagator()


def context_from_headers(headers: Mapping[str, object]) -> otel_context.Context:
    """The trace context a message's headers carry (an empty one when they carry none, or
    only a malformed one)."""
    return _W3C.extract(headers, context=otel_context.Context(), getter=_GETTER)


def context_from_traceparent(
    traceparent: str | None, tracestate: str | None = None
) -> otel_context.Context:
    """The context stored in a watch message."""
    carrier = {} if traceparent is None else {"traceparent": traceparent}
    if traceparent is not None and tracestate:
        carrier["tracestate"] = tracestate
    return context_from_headers(carrier)


def current_trace_headers() -> dict[str, str]:
    """The current trace context as message headers (``traceparent``, ``tracestate``)."""
    span = trace.get_current_span()
    if type(span) is _PassedSpan:
        return dict(span.headers)
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


# A tracer provider of either kind records nothing: without the SDK the spans are skipped
# and only the context is passed on, which costs next to nothing per message.
_NO_SDK: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def recording() -> bool:
    """Whether an SDK (or any real tracer provider) is set up."""
    return not isinstance(trace.get_tracer_provider(), _NO_SDK)


_NOT_SAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)


class _PassedSpan(NonRecordingSpan):
    """What a span is without an SDK: the context it continues (or a made-up one, sampled
    out: nothing claims it was recorded), with what the publishes and log lines inside it
    read of it formatted once, as the W3C propagator writes it."""

    def __init__(self, context: SpanContext, trace_id: int, span_id: int, flags: int) -> None:
        super().__init__(context)
        self.trace_id = format(trace_id, "032x")
        self.span_id = format(span_id, "016x")
        self.headers = {"traceparent": f"00-{self.trace_id}-{self.span_id}-{flags:02x}"}

    @classmethod
    def continuing(cls, context: SpanContext) -> _PassedSpan:
        """The span passing ``context`` on."""
        span = cls(context, context.trace_id, context.span_id, context.trace_flags)
        if context.trace_state:
            span.headers["tracestate"] = context.trace_state.to_header()
        return span

    @classmethod
    def made_up(cls) -> _PassedSpan:
        """A span with fresh ids: what the no-op API leaves absent."""
        trace_id = random.getrandbits(128) or 1
        span_id = random.getrandbits(64) or 1
        context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_NOT_SAMPLED)
        return cls(context, trace_id, span_id, _NOT_SAMPLED)


class _PassedOn(AbstractContextManager[Span]):
    """A span without an SDK: the context it would continue, made current; a made-up one
    where there is none, so that what the block publishes and logs still carries one trace
    id."""

    def __init__(self, parent: otel_context.Context | None) -> None:
        self._parent = parent
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> Span:
        found = trace.get_current_span(self._parent).get_span_context()
        span = _PassedSpan.continuing(found) if found.is_valid else _PassedSpan.made_up()
        self._token = otel_context.attach(trace.set_span_in_context(span, self._parent))
        return span

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None:
            otel_context.detach(self._token)


def messaging_span(
    name: str,
    *,
    kind: SpanKind,
    parent: otel_context.Context | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> AbstractContextManager[Span]:
    """A span (current inside the block), child of ``parent`` or of the current context."""
    if parent is None:
        current = trace.get_current_span()
        if type(current) is _PassedSpan:
            # Inside a span that found no SDK: the same context, and no more work (an SDK
            # set up meanwhile records from the next message on).
            return nullcontext(current)
    if not recording():
        return _PassedOn(parent)
    return _recorded(
        name,
        context=parent,
        kind=kind,
        attributes={**_MESSAGING, **(attributes or {})},
        record_exception=True,
        set_status_on_exception=True,
    )


@contextmanager
def _recorded(name: str, **options: Any) -> Iterator[Span]:
    with TRACER.start_as_current_span(name, **options) as span:
        yield span


def client_span(name: str, attributes: Mapping[str, Any]) -> AbstractContextManager[Span]:
    """A client span (an HTTP call) under the current context."""
    current = trace.get_current_span()
    if type(current) is _PassedSpan:
        return nullcontext(current)
    if not recording():
        return _PassedOn(None)
    return _recorded(name, kind=SpanKind.CLIENT, attributes=attributes)


def set_error(span: Span, description: str) -> None:
    """Mark ``span`` as failed with ``description`` (a decision, not an exception)."""
    span.set_status(Status(StatusCode.ERROR, description))


def add_trace_ids(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current ``trace_id`` and ``span_id``, when there is one."""
    span = trace.get_current_span()
    if type(span) is _PassedSpan:
        event_dict.setdefault("trace_id", span.trace_id)
        event_dict.setdefault("span_id", span.span_id)
        return event_dict
    context = span.get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def _wanted() -> bool:
    """Whether the standard variables ask for an SDK at all."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(
        os.environ.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing() -> bool:
    """Set up the SDK from the standard ``OTEL_*`` variables, when they ask for it
    (``OTEL_TRACES_EXPORTER`` = ``otlp`` or ``console``, or an ``OTEL_EXPORTER_OTLP_*``
    endpoint) and the ``otel`` extra is installed. Returns whether spans are now recorded."""
    if not _wanted():
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        import structlog

        structlog.get_logger(__name__).warning(
            "tracing_not_configured",
            detail="OTEL_* variables ask for traces but the SDK is not installed: "
            "pip install 'do-db-provisioner[otel]'",
        )
        return False
    exporter: SpanExporter
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if names == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    # From OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the service's name where they
    # leave it unknown.
    resource = Resource.create({})
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # reads OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(exporter))  # reads OTEL_BSP_*
    trace.set_tracer_provider(provider)
    return True


def shutdown_tracing() -> None:
    """Flush and stop the SDK's exporter, if one was set up."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()
