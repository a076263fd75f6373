"""Prometheus metrics without a dependency: counters, gauges, histograms, text format 0.0.4.

:class:`Registry` renders every metric registered with it in the Prometheus text exposition
format 0.0.4 (``# HELP``/``# TYPE`` lines, escaped label values, ``_total`` counters,
cumulative ``_bucket{le=...}`` histograms with ``+Inf``, ``_sum`` and ``_count``).
:class:`ProvisionerMetrics` holds the service's own metrics, one instance per process.

Labels are bounded on purpose: they name operations, outcomes and HTTP statuses, never a
cluster id or a request id (that is what logs are for). A metric refuses to grow past
``max_series`` label sets; further label sets are folded into one whose values are all
:data:`OVERFLOW_LABEL`, so a bug cannot exhaust memory or the scraper.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Final, Literal, TypeVar, get_args

__all__ = [
    "API_CALL_BUCKETS",
    "CONTENT_TYPE",
    "DEFAULT_BUCKETS",
    "EVENT_PUBLISH_BUCKETS",
    "OVERFLOW_LABEL",
    "TIME_TO_ONLINE_BUCKETS",
    "CommandOutcome",
    "Consumer",
    "Counter",
    "DeadLetterReason",
    "Gauge",
    "Histogram",
    "ParkReason",
    "ProvisionerMetrics",
    "Registry",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of :meth:`Registry.render`'s output."""

OVERFLOW_LABEL: Final = "_overflow"
"""The value of every label of the series that absorbs label sets past ``max_series``."""

DEFAULT_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
API_CALL_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
EVENT_PUBLISH_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
# Real clusters take minutes; the simulator takes seconds. Both should land inside a bucket.
TIME_TO_ONLINE_BUCKETS: Final = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    900.0,
    1200.0,
    1800.0,
    3600.0,
)

_VALID_NAME_START: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_:")
_VALID_NAME_CHARS: Final = _VALID_NAME_START | frozenset("0123456789")

LabelValues = tuple[str, ...]


def _check_name(name: str, what: str, allow_colon: bool = True) -> None:
    ok = (
        bool(name)
        and name[0] in _VALID_NAME_START
        and all(c in _VALID_NAME_CHARS for c in name)
        and (allow_colon or ":" not in name)
    )
    if not ok:
        raise ValueError(f"invalid Prometheus {what} name: {name!r}")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (``+Inf``, ``-Inf``, ``NaN``, else Go-like floats)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def escape_label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and newline."""
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _label_block(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{escape_label_value(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


class _Metric:
    """What every metric kind shares: name, help, label names and the series by label values."""

    kind: str = "untyped"

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str] = (),
        *,
        max_series: int = 1000,
    ) -> None:
        _check_name(name, "metric")
        for label in label_names:
            _check_name(label, "label", allow_colon=False)
            if label.startswith("__"):
                raise ValueError(f"reserved label name: {label!r}")
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"duplicate label names in {list(label_names)}")
        self.name = name
        self.documentation = documentation
        self.label_names: tuple[str, ...] = tuple(label_names)
        self.max_series = max_series
        # A lock, not loop confinement: the HTTP handler, the loop and a worker thread
        # (if one ever reports) must not see half an update.
        self._lock = threading.Lock()

    @property
    def exposed_name(self) -> str:
        """The name on the ``# HELP`` and ``# TYPE`` lines."""
        return self.name

    def _key(self, labels: dict[str, str]) -> LabelValues:
        # As many labels as names, each name among them: the same two sets, without
        # building them on every update.
        if len(labels) == len(self.label_names):
            try:
                return tuple([str(labels[name]) for name in self.label_names])
            except KeyError:
                pass
        raise ValueError(f"{self.name} takes labels {list(self.label_names)}, got {sorted(labels)}")

    def _bounded(self, key: LabelValues, known: Collection[LabelValues]) -> LabelValues:
        if key in known or len(known) < self.max_series:
            return key
        return (OVERFLOW_LABEL,) * len(self.label_names)

    def samples(self) -> Iterator[str]:  # pragma: no cover - every kind overrides it
        """The sample lines of this metric, without ``# HELP``/``# TYPE``."""
        raise NotImplementedError

    def render(self) -> str:
        """``# HELP``, ``# TYPE`` and the sample lines, each ending in a newline."""
        lines = [
            f"# HELP {self.exposed_name} {_escape_help(self.documentation)}",
            f"# TYPE {self.exposed_name} {self.kind}",
            *self.samples(),
        ]
        return "\n".join(lines) + "\n"


class _ValueMetric(_Metric):
    """A metric with one number per label set: the base of counters and gauges."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str] = (),
        *,
        max_series: int = 1000,
    ) -> None:
        super().__init__(name, documentation, label_names, max_series=max_series)
        self._values: dict[LabelValues, float] = {}
        if not self.label_names:
            self._values[()] = 0.0

    def _add(self, amount: float, labels: dict[str, str]) -> None:
        key = self._key(labels)
        with self._lock:
            key = self._bounded(key, self._values)
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The current value for ``labels`` (0 for a label set never touched)."""
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterator[str]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.exposed_name}{_label_block(self.label_names, key)} {format_value(value)}"


class Counter(_ValueMetric):
    """A number that only goes up; exposed as ``<name>_total``."""

    kind = "counter"

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str] = (),
        *,
        max_series: int = 1000,
    ) -> None:
        if name.endswith("_total"):
            raise ValueError(f"give the counter's name without '_total': {name!r}")
        super().__init__(name, documentation, label_names, max_series=max_series)

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` (not negative) to the series of ``labels``."""
        if amount < 0 or math.isnan(amount):
            raise ValueError(f"a counter cannot go down: inc({amount})")
        self._add(amount, labels)

    def touch(self, **labels: str) -> None:
        """Make the series of ``labels`` appear (at 0) before anything happened to it."""
        self._add(0.0, labels)


class Gauge(_ValueMetric):
    """A number that goes up and down."""

    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        """Set the series of ``labels`` to ``value``."""
        key = self._key(labels)
        with self._lock:
            key = self._bounded(key, self._values)
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to the series of ``labels``."""
        self._add(amount, labels)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        """Subtract ``amount`` from the series of ``labels``."""
        self._add(-amount, labels)


class _HistogramSeries:
    """One label set's bucket counts (not cumulative: summed when rendered), sum and count."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0
        self.count = 0


class Histogram(_Metric):
    """Observations counted by upper bound: ``_bucket{le=...}``, ``_sum`` and ``_count``."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        label_names: Sequence[str] = (),
        *,
        buckets: Iterable[float] = DEFAULT_BUCKETS,
        max_series: int = 1000,
    ) -> None:
        if "le" in label_names:
            raise ValueError("'le' is the histogram's own bucket label")
        super().__init__(name, documentation, label_names, max_series=max_series)
        bounds = sorted(float(b) for b in buckets if not math.isinf(b))
        if not bounds or len(set(bounds)) != len(bounds) or any(math.isnan(b) for b in bounds):
            raise ValueError(f"histogram buckets must be distinct numbers: {list(buckets)}")
        # +Inf is always the last bucket, whether or not the caller listed it.
        self.buckets: tuple[float, ...] = (*bounds, math.inf)
        self._series: dict[LabelValues, _HistogramSeries] = {}
        if not self.label_names:
            self._series[()] = _HistogramSeries(len(self.buckets))

    def observe(self, value: float, **labels: str) -> None:
        """Count one observation of ``value`` (seconds, bytes, ...) for ``labels``."""
        if math.isnan(value):
            return  # a NaN would poison _sum forever; it carries no information either
        key = self._key(labels)
        # Buckets are "less than or equal": bisect_left finds the first bound >= value.
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            key = self._bounded(key, self._series)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = _HistogramSeries(len(self.buckets))
            series.counts[index] += 1
            series.sum += value
            series.count += 1

    def count(self, **labels: str) -> int:
        """How many observations the series of ``labels`` has."""
        series = self._series.get(self._key(labels))
        return 0 if series is None else series.count

    def samples(self) -> Iterator[str]:
        with self._lock:
            snapshot = sorted(
                (key, list(s.counts), s.sum, s.count) for key, s in self._series.items()
            )
        names = (*self.label_names, "le")
        for key, counts, total, count in snapshot:
            cumulative = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                cumulative += n
                block = _label_block(names, (*key, format_value(bound)))
                yield f"{self.name}_bucket{block} {cumulative}"
            block = _label_block(self.label_names, key)
            yield f"{self.name}_sum{block} {format_value(total)}"
            yield f"{self.name}_count{block} {count}"


_M = TypeVar("_M", bound=_Metric)


class Registry:
    """The metrics one ``/metrics`` endpoint exposes, in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def register(self, metric: _M) -> _M:
        """Add ``metric`` and return it; a second metric with the same name is an error."""
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name!r} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        """Every metric in the Prometheus text exposition format 0.0.4."""
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(metric.render() for metric in metrics)


CommandOutcome = Literal["accepted", "adopted", "rejected", "failed", "retried", "requeued"]
"""What became of a command: the label values of ``provisioner_commands_total``."""

_COMMAND_OUTCOMES: Final[tuple[str, ...]] = get_args(CommandOutcome)

Consumer = Literal["commands", "watches"]
"""The label values of ``consumer``."""
ParkReason = Literal["invalid", "too_large", "unreadable_properties", "parking_full"]
"""The label values of ``provisioner_messages_parked_total``."""
DeadLetterReason = Literal["rejected", "delivery_limit"]
"""The label values of ``reason`` in ``provisioner_messages_dead_lettered_total``."""

_CONSUMERS: Final[tuple[str, ...]] = get_args(Consumer)
_PARK_REASONS: Final[tuple[str, ...]] = get_args(ParkReason)


class ProvisionerMetrics:
    """The service's metrics (prefix ``provisioner_``); create one per process.

    The metric objects are public for the rare caller that needs them; the methods are the
    intended way in, since they keep the label values bounded.
    """

    def __init__(self, registry: Registry | None = None) -> None:
        self.registry = registry if registry is not None else Registry()
        r = self.registry
        self.commands = r.register(
            Counter(
                "provisioner_commands",
                "Commands handled, by what became of them.",
                ["outcome"],
                max_series=len(_COMMAND_OUTCOMES),
            )
        )
        for outcome in _COMMAND_OUTCOMES:
            self.commands.touch(outcome=outcome)
        self.api_calls = r.register(
            Counter(
                "provisioner_api_calls",
                "DigitalOcean API requests (each attempt), by operation and HTTP status or error.",
                ["operation", "status"],
                max_series=200,
            )
        )
        self.api_call_seconds = r.register(
            Histogram(
                "provisioner_api_call_seconds",
                "DigitalOcean API request latency (each attempt), by operation.",
                ["operation"],
                buckets=API_CALL_BUCKETS,
                max_series=50,
            )
        )
        self.ratelimit_remaining = r.register(
            Gauge(
                "provisioner_ratelimit_remaining",
                "Requests left in the DigitalOcean hourly window (ratelimit-remaining).",
            )
        )
        self.ratelimit_sent_last_minute = r.register(
            Gauge(
                "provisioner_ratelimit_sent_last_minute",
                "DigitalOcean requests this process sent in the last 60 seconds.",
            )
        )
        self.watches_in_flight = r.register(
            Gauge(
                "provisioner_watches_in_flight",
                "Cluster watches this process is handling now.",
            )
        )
        self.time_to_online = r.register(
            Histogram(
                "provisioner_clusters_time_to_online_seconds",
                "Seconds from the create call to the cluster being online.",
                buckets=TIME_TO_ONLINE_BUCKETS,
            )
        )
        self.event_publish_seconds = r.register(
            Histogram(
                "provisioner_event_publish_seconds",
                "Seconds from publishing an event to the broker's confirm.",
                buckets=EVENT_PUBLISH_BUCKETS,
            )
        )
        self.events_published = r.register(
            Counter(
                "provisioner_events_published",
                "Events confirmed by the broker, by CloudEvents type.",
                ["type"],
                max_series=20,
            )
        )
        self._register_robustness(r)

    def count_handler_crash(self, consumer: Consumer) -> None:
        """A handler of ``consumer`` raised; its message went back to its queue."""
        self.handler_crashes.inc(consumer=consumer)

    def count_parked(self, reason: ParkReason) -> None:
        """A bad command was parked for ``reason`` (``parking_full``: it could not be)."""
        if reason not in _PARK_REASONS:
            raise ValueError(f"unknown park reason {reason!r}")
        self.messages_parked.inc(reason=reason)

    def count_dead_lettered(self, queue: str, reason: DeadLetterReason) -> None:
        """This process sent a message of ``queue`` to the dead-letter queue."""
        self.messages_dead_lettered.inc(queue=queue, reason=reason)

    def count_undecodable(self, consumer: Consumer) -> None:
        """A message whose AMQP properties could not be read in full reached ``consumer``."""
        self.undecodable_messages.inc(consumer=consumer)

    def count_headers_dropped(self, headers: int) -> None:
        """``headers`` producer headers were left out of a copy the service wrote."""
        self.producer_headers_dropped.inc(headers)

    def count_connection_drop(self) -> None:
        """The broker connection was lost."""
        self.broker_connection_drops.inc()

    def count_reconnect(self) -> None:
        """The broker connection was restored."""
        self.broker_reconnects.inc()

    def set_queue_bounds(self, queue: str, messages: int, size: int) -> None:
        """The bounds ``queue`` was declared with."""
        self.queue_max_messages.set(messages, queue=queue)
        self.queue_max_bytes.set(size, queue=queue)

    def set_queue_messages(self, queue: str, messages: int) -> None:
        """How many messages ``queue`` held when last asked."""
        self.queue_messages.set(messages, queue=queue)

    def count_command(self, outcome: CommandOutcome) -> None:
        """One command ended as ``outcome``."""
        if outcome not in _COMMAND_OUTCOMES:
            raise ValueError(f"unknown command outcome {outcome!r}")
        self.commands.inc(outcome=outcome)

    def observe_api_call(self, operation: str, status: str, seconds: float) -> None:
        """One API call: fits the client's ``CallObserver = Callable[[str, str, float], None]``."""
        self.api_calls.inc(operation=operation, status=status)
        self.api_call_seconds.observe(seconds, operation=operation)

    def set_ratelimit(self, remaining: float | None, sent_last_minute: float) -> None:
        """The client's view of the rate limit (``remaining`` unknown before the first answer)."""
        if remaining is not None:
            self.ratelimit_remaining.set(remaining)
        self.ratelimit_sent_last_minute.set(sent_last_minute)

    def observe_time_to_online(self, seconds: float) -> None:
        """A cluster reached ``online`` ``seconds`` after its create call."""
        self.time_to_online.observe(seconds)

    def observe_event_published(self, event_type: str, seconds: float) -> None:
        """An event of ``event_type`` was confirmed ``seconds`` after it was published."""
        self.events_published.inc(type=event_type)
        self.event_publish_seconds.observe(seconds)

    def _register_robustness(self, r: Registry) -> None:
        """What shows a hostile or broken message, a lost broker and the bounded queues."""
        self.handler_crashes = r.register(
            Counter(
                "provisioner_handler_crashes",
                "Handler runs that raised; their messages went back to the queue (whose "
                "delivery limit dead-letters a message that keeps failing), by consumer.",
                ["consumer"],
                max_series=len(_CONSUMERS),
            )
        )
        self.messages_parked = r.register(
            Counter(
                "provisioner_messages_parked",
                "Bad commands moved to the parking queue, by why; parking_full counts those "
                "the queue refused at its bound (dropped after their rejected event).",
                ["reason"],
                max_series=len(_PARK_REASONS),
            )
        )
        self.messages_dead_lettered = r.register(
            Counter(
                "provisioner_messages_dead_lettered",
                "Messages this process sent to the dead-letter queue: rejected (unreadable) "
                "or returned past the queue's delivery limit, by queue and reason.",
                ["queue", "reason"],
                max_series=20,
            )
        )
        self.undecodable_messages = r.register(
            Counter(
                "provisioner_undecodable_messages",
                "Messages whose AMQP properties could not be read in full (refused and "
                "parked or dead-lettered, never a dropped connection), by consumer.",
                ["consumer"],
                max_series=len(_CONSUMERS),
            )
        )
        self.producer_headers_dropped = r.register(
            Counter(
                "provisioner_producer_headers_dropped",
                "Producer headers left out of a parked or retried copy because they cannot "
                "be written back as they came.",
            )
        )
        self.broker_connection_drops = r.register(
            Counter(
                "provisioner_broker_connection_drops",
                "Times the connection to the broker was lost (not the service's own close).",
            )
        )
        self.broker_reconnects = r.register(
            Counter(
                "provisioner_broker_reconnects",
                "Times the connection to the broker was restored after it was lost.",
            )
        )
        self.queue_messages = r.register(
            Gauge(
                "provisioner_queue_messages",
                "Messages ready in the parking and dead-letter queues when last read.",
                ["queue"],
                max_series=10,
            )
        )
        self.queue_max_messages = r.register(
            Gauge(
                "provisioner_queue_max_messages",
                "The most messages the queue holds; at the bound it refuses new ones.",
                ["queue"],
                max_series=10,
            )
        )
        self.queue_max_bytes = r.register(
            Gauge(
                "provisioner_queue_max_bytes",
                "The most bytes of bodies the queue holds; at the bound it refuses new ones.",
                ["queue"],
                max_series=10,
            )
        )
        for consumer in _CONSUMERS:
            self.handler_crashes.touch(consumer=consumer)
            self.undecodable_messages.touch(consumer=consumer)
        for reason in _PARK_REASONS:
            self.messages_parked.touch(reason=reason)

    def render(self) -> str:
        """Every metric of this process in the text exposition format."""
        return self.registry.render()
