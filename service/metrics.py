"""The service's Prometheus metrics, through the standard client (``prometheus_client``).

:class:`ProvisionerMetrics` holds one process's metrics on a :class:`CollectorRegistry` of its
own (not the client's global one), so several services in one test process never collide;
:meth:`ProvisionerMetrics.render` is the text format 0.0.4 that ``/metrics`` serves.

Labels are bounded on purpose: they name operations, outcomes and HTTP statuses, never a
cluster id or a request id (that is what logs and traces are for). A metric refuses to grow
past its ``max_series`` label sets; further label sets are folded into one whose values are
all :data:`OVERFLOW_LABEL`, so a bug cannot exhaust memory or the scraper.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Final, Generic, Literal, TypeVar, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contracts.events import FailureReason
from service.provisioning.outcomes import CommandResult, WatchResult
from service.provisioning.ports import ParkReason

__all__ = [
    "API_CALL_BUCKETS",
    "CONTENT_TYPE",
    "EVENT_PUBLISH_BUCKETS",
    "OVERFLOW_LABEL",
    "TIME_TO_ONLINE_BUCKETS",
    "Bounded",
    "Consumer",
    "DeadLetterReason",
    "ProvisionerMetrics",
    "ReplyOutcome",
]

# The ``_created`` series double every counter and histogram and no alert or dashboard reads
# them; the text format 0.0.4 has no place for them either.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE: Final = CONTENT_TYPE_PLAIN_0_0_4
"""The ``Content-Type`` of :meth:`ProvisionerMetrics.render`'s output."""

OVERFLOW_LABEL: Final = "_overflow"
"""The value of every label of the series that absorbs label sets past ``max_series``."""

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

Consumer = Literal["commands", "watches"]
"""The label values of ``consumer``."""
DeadLetterReason = Literal["rejected", "delivery_limit"]
"""The label values of ``reason`` in ``provisioner_messages_dead_lettered_total``."""
ReplyOutcome = Literal["sent", "refused", "failed"]
"""What became of a copy to ``reply_to``: the label values of
``provisioner_reply_copies_total``."""

_COMMAND_OUTCOMES: Final[tuple[str, ...]] = get_args(CommandResult)
_CONSUMERS: Final[tuple[str, ...]] = get_args(Consumer)
_PARK_REASONS: Final[tuple[str, ...]] = get_args(ParkReason)
_WATCH_STEPS: Final[tuple[str, ...]] = get_args(WatchResult)
# The label values of provisioner_requests_failed_total: the failed event's data.reason.
_FAILURE_REASONS: Final[tuple[str, ...]] = get_args(FailureReason)
_REPLY_OUTCOMES: Final[tuple[str, ...]] = get_args(ReplyOutcome)

_M = TypeVar("_M", Counter, Gauge, Histogram)


class Bounded(Generic[_M]):
    """A labelled metric that takes at most ``max_series`` label sets; later ones fold into
    the one series whose labels are all :data:`OVERFLOW_LABEL`."""

    def __init__(self, metric: _M, max_series: int) -> None:
        self.metric: _M = metric
        self.max_series = max_series
        # The children by label values (the client's own lookup takes a lock and builds
        # its key each time; this is one dict read on the hot path).
        self._children: dict[tuple[str, ...], _M] = {}
        self._lock = threading.Lock()

    def labels(self, *values: str) -> _M:
        """The child of ``values`` (or of the overflow series past the bound)."""
        child = self._children.get(values)
        if child is not None:
            return child
        with self._lock:
            child = self._children.get(values)
            if child is None:
                if len(self._children) >= self.max_series:
                    child = self.metric.labels(*((OVERFLOW_LABEL,) * len(values)))
                    # Not remembered: the bound counts label sets, not lookups.
                    return child
                child = self._children[values] = self.metric.labels(*values)
        return child


class _Readiness(Collector):
    """``provisioner_ready`` and ``provisioner_readiness_check{check}``, read at each scrape
    from the same checks ``/readyz`` answers with."""

    def __init__(self, checks: Callable[[], Mapping[str, bool]]) -> None:
        self._checks = checks

    def collect(self) -> Iterator[Metric]:
        try:
            checks = {name: bool(ok) for name, ok in self._checks().items()}
        except Exception:
            checks = {"readiness_check": False}  # as /readyz: a broken check is not ready
        each = GaugeMetricFamily(
            "provisioner_readiness_check",
            "Each readiness check of /readyz: 1 when it holds.",
            labels=["check"],
        )
        for name, ok in sorted(checks.items()):
            each.add_metric([name], 1.0 if ok else 0.0)
        ready = GaugeMetricFamily(
            "provisioner_ready", "1 when every readiness check holds (/readyz answers 200)."
        )
        ready.add_metric([], 1.0 if all(checks.values()) else 0.0)
        yield ready
        yield each


class ProvisionerMetrics:
    """The service's metrics (prefix ``provisioner_``); create one per process.

    The metric objects are public for the rare caller that needs them; the methods are the
    intended way in, since they keep the label values bounded.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.commands = Bounded(
            Counter(
                "provisioner_commands",
                "Commands handled, by what became of them.",
                ["outcome"],
                registry=r,
            ),
            max_series=len(_COMMAND_OUTCOMES),
        )
        for outcome in _COMMAND_OUTCOMES:
            self.commands.labels(outcome)
        self.api_calls = Bounded(
            Counter(
                "provisioner_api_calls",
                "DigitalOcean API requests (each attempt), by operation and HTTP status or error.",
                ["operation", "status"],
                registry=r,
            ),
            max_series=200,
        )
        self.api_call_seconds = Bounded(
            Histogram(
                "provisioner_api_call_seconds",
                "DigitalOcean API request latency (each attempt), by operation.",
                ["operation"],
                buckets=API_CALL_BUCKETS,
                registry=r,
            ),
            max_series=50,
        )
        self.ratelimit_remaining = Gauge(
            "provisioner_ratelimit_remaining",
            "Requests left in the DigitalOcean hourly window (ratelimit-remaining).",
            registry=r,
        )
        self.ratelimit_sent_last_minute = Gauge(
            "provisioner_ratelimit_sent_last_minute",
            "DigitalOcean requests this process sent in the last 60 seconds.",
            registry=r,
        )
        self.watches_in_flight = Gauge(
            "provisioner_watches_in_flight",
            "Cluster watches this process is handling now.",
            registry=r,
        )
        self.watch_steps = Bounded(
            Counter(
                "provisioner_watch_steps",
                "Watch steps this process ran, by what they ended in (waiting: sent back to wait).",
                ["outcome"],
                registry=r,
            ),
            max_series=len(_WATCH_STEPS),
        )
        for step in _WATCH_STEPS:
            self.watch_steps.labels(step)
        self.requests_failed = Bounded(
            Counter(
                "provisioner_requests_failed",
                "Requests that ended in a failed event, by its reason (timeout: the cluster was "
                "not online before the request's deadline).",
                ["reason"],
                registry=r,
            ),
            max_series=len(_FAILURE_REASONS),
        )
        for reason in _FAILURE_REASONS:
            self.requests_failed.labels(reason)
        self.time_to_online = Histogram(
            "provisioner_clusters_time_to_online_seconds",
            "Seconds from the create call to the cluster being online.",
            buckets=TIME_TO_ONLINE_BUCKETS,
            registry=r,
        )
        self.event_publish_seconds = Histogram(
            "provisioner_event_publish_seconds",
            "Seconds from publishing an event to the broker's confirm.",
            buckets=EVENT_PUBLISH_BUCKETS,
            registry=r,
        )
        self.events_published = Bounded(
            Counter(
                "provisioner_events_published",
                "Events confirmed by the broker, by CloudEvents type.",
                ["type"],
                registry=r,
            ),
            max_series=20,
        )
        self._register_robustness(r)

    def watch_readiness(self, checks: Callable[[], Mapping[str, bool]]) -> None:
        """Expose ``checks`` (what ``/readyz`` answers) as ``provisioner_ready`` and
        ``provisioner_readiness_check{check}``, read at each scrape."""
        self.registry.register(_Readiness(checks))

    def count_handler_crash(self, consumer: Consumer) -> None:
        """A handler of ``consumer`` raised; its message went back to its queue."""
        self.handler_crashes.labels(consumer).inc()

    def count_handlers_stopped(self, consumer: Consumer, handlers: int) -> None:
        """``handlers`` of ``consumer`` were cancelled: their channel was lost, and their
        messages are redelivered."""
        self.handlers_stopped.labels(consumer).inc(handlers)

    def count_parked(self, reason: ParkReason) -> None:
        """A bad command was parked for ``reason`` (``parking_full``: it could not be)."""
        if reason not in _PARK_REASONS:
            raise ValueError(f"unknown park reason {reason!r}")
        self.messages_parked.labels(reason).inc()

    def count_dead_lettered(self, queue: str, reason: DeadLetterReason) -> None:
        """This process sent a message of ``queue`` to the dead-letter queue."""
        self.messages_dead_lettered.labels(queue, reason).inc()

    def count_undecodable(self, consumer: Consumer) -> None:
        """A message whose AMQP properties could not be read in full reached ``consumer``."""
        self.undecodable_messages.labels(consumer).inc()

    def count_headers_dropped(self, headers: int) -> None:
        """``headers`` producer headers were left out of a copy the service wrote."""
        self.producer_headers_dropped.inc(headers)

    def count_connection_drop(self) -> None:
        """The broker connection was lost."""
        self.broker_connection_drops.inc()

    def count_reconnect(self) -> None:
        """The broker connection was restored."""
        self.broker_reconnects.inc()

    def count_broker_setup_restart(self) -> None:
        """The broker setup at start failed or took too long, and starts over."""
        self.broker_setup_restarts.inc()

    def count_reply_copy(self, outcome: ReplyOutcome) -> None:
        """A copy to ``reply_to`` was sent, refused or given up."""
        self.reply_copies.labels(outcome).inc()

    def count_reply_copy_retry(self) -> None:
        """A copy to ``reply_to`` is sent again (no confirm in time, or its connection cut)."""
        self.reply_copy_retries.inc()

    def set_queue_bounds(self, queue: str, messages: int, size: int) -> None:
        """The bounds ``queue`` was declared with."""
        self.queue_max_messages.labels(queue).set(messages)
        self.queue_max_bytes.labels(queue).set(size)

    def set_queue_messages(self, queue: str, messages: int) -> None:
        """How many messages ``queue`` held when last asked."""
        self.queue_messages.labels(queue).set(messages)

    def count_command(self, outcome: CommandResult) -> None:
        """One command ended as ``outcome``."""
        if outcome not in _COMMAND_OUTCOMES:
            raise ValueError(f"unknown command outcome {outcome!r}")
        self.commands.labels(outcome).inc()

    def count_watch_step(self, outcome: WatchResult) -> None:
        """One watch step ended as ``outcome``."""
        if outcome not in _WATCH_STEPS:
            raise ValueError(f"unknown watch step outcome {outcome!r}")
        self.watch_steps.labels(outcome).inc()

    def count_failed(self, reason: str) -> None:
        """A ``failed`` event went out with ``reason``."""
        self.requests_failed.labels(reason if reason in _FAILURE_REASONS else OVERFLOW_LABEL).inc()

    def observe_api_call(self, operation: str, status: str, seconds: float) -> None:
        """One API call: fits the client's ``CallObserver = Callable[[str, str, float], None]``."""
        self.api_calls.labels(operation, status).inc()
        self.api_call_seconds.labels(operation).observe(seconds)

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
        self.events_published.labels(event_type).inc()
        self.event_publish_seconds.observe(seconds)

    def value(self, name: str, **labels: str) -> float:
        """The current value of the sample ``name`` (as exposed, e.g. with ``_total``) for
        ``labels``; 0 for a series not there yet."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def _register_robustness(self, r: CollectorRegistry) -> None:
        """What shows a hostile or broken message, a lost broker and the bounded queues."""
        self.handler_crashes = Bounded(
            Counter(
                "provisioner_handler_crashes",
                "Handler runs that raised; their messages went back to the queue (whose "
                "delivery limit dead-letters a message that keeps failing), by consumer.",
                ["consumer"],
                registry=r,
            ),
            max_series=len(_CONSUMERS),
        )
        self.handlers_stopped = Bounded(
            Counter(
                "provisioner_handlers_stopped",
                "Handler runs cancelled because the channel their message came on was lost "
                "(the broker redelivers the message, perhaps to another replica), by consumer.",
                ["consumer"],
                registry=r,
            ),
            max_series=len(_CONSUMERS),
        )
        self.messages_parked = Bounded(
            Counter(
                "provisioner_messages_parked",
                "Bad commands moved to the parking queue, by why; parking_full counts those "
                "the queue refused at its bound (dropped after their rejected event).",
                ["reason"],
                registry=r,
            ),
            max_series=len(_PARK_REASONS),
        )
        self.messages_dead_lettered = Bounded(
            Counter(
                "provisioner_messages_dead_lettered",
                "Messages this process sent to the dead-letter queue: rejected (unreadable) "
                "or returned past the queue's delivery limit, by queue and reason.",
                ["queue", "reason"],
                registry=r,
            ),
            max_series=20,
        )
        self.undecodable_messages = Bounded(
            Counter(
                "provisioner_undecodable_messages",
                "Messages whose AMQP properties could not be read in full (refused and "
                "parked or dead-lettered, never a dropped connection), by consumer.",
                ["consumer"],
                registry=r,
            ),
            max_series=len(_CONSUMERS),
        )
        self.producer_headers_dropped = Counter(
            "provisioner_producer_headers_dropped",
            "Producer headers left out of a parked or retried copy because they cannot "
            "be written back as they came.",
            registry=r,
        )
        self.broker_connection_drops = Counter(
            "provisioner_broker_connection_drops",
            "Times the connection to the broker was lost (not the service's own close).",
            registry=r,
        )
        self.broker_reconnects = Counter(
            "provisioner_broker_reconnects",
            "Times the connection to the broker was restored after it was lost.",
            registry=r,
        )
        self.broker_setup_restarts = Counter(
            "provisioner_broker_setup_restarts",
            "Times the broker setup at start (declaring, opening channels, consuming) failed "
            "or took too long and started over on a new connection.",
            registry=r,
        )
        self.reply_copies = Bounded(
            Counter(
                "provisioner_reply_copies",
                "Copies of events to a producer's reply_to queue, by outcome: sent (confirmed), "
                "refused (a name the service will not publish to) or failed (given up).",
                ["outcome"],
                registry=r,
            ),
            max_series=len(_REPLY_OUTCOMES),
        )
        self.reply_copy_retries = Counter(
            "provisioner_reply_copy_retries",
            "Copies to reply_to sent again after no confirm in time or a cut connection.",
            registry=r,
        )
        self.queue_messages = Bounded(
            Gauge(
                "provisioner_queue_messages",
                "Messages ready in the parking and dead-letter queues when last read.",
                ["queue"],
                registry=r,
            ),
            max_series=10,
        )
        self.queue_max_messages = Bounded(
            Gauge(
                "provisioner_queue_max_messages",
                "The most messages the queue holds; at the bound it refuses new ones.",
                ["queue"],
                registry=r,
            ),
            max_series=10,
        )
        self.queue_max_bytes = Bounded(
            Gauge(
                "provisioner_queue_max_bytes",
                "The most bytes of bodies the queue holds; at the bound it refuses new ones.",
                ["queue"],
                registry=r,
            ),
            max_series=10,
        )
        # rate() and alerts work before the first crash or park.
        for consumer in _CONSUMERS:
            self.handler_crashes.labels(consumer)
            self.handlers_stopped.labels(consumer)
            self.undecodable_messages.labels(consumer)
        for reason in _PARK_REASONS:
            self.messages_parked.labels(reason)
        for outcome in _REPLY_OUTCOMES:
            self.reply_copies.labels(outcome)

    def render(self) -> str:
        """Every metric of this process in the text exposition format 0.0.4."""
        return generate_latest(self.registry).decode("utf-8")
