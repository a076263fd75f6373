"""Metrics: the text a Prometheus server scrapes parses, and the numbers in it are right.

A small parser of the text exposition format 0.0.4 lives here, so the tests check what a
scraper would read rather than the registry's internals.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import get_args

import pytest
from prometheus_client import REGISTRY, generate_latest

from contracts.events import FailureReason
from service.metrics import OVERFLOW_LABEL, ProvisionerMetrics

# --- a parser of the text format ----------------------------------------------------------

_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^(?P<name>{_METRIC_NAME})(?:\{{(?P<labels>.*)\}})? (?P<value>\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')
_HELP = re.compile(rf"^# HELP (?P<name>{_METRIC_NAME}) (?P<text>.*)$")
_TYPE = re.compile(rf"^# TYPE (?P<name>{_METRIC_NAME}) (?P<kind>counter|gauge|histogram)$")


@dataclass
class Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, sample_name: str, **labels: str) -> float:
        matches = [v for n, ls, v in self.samples if n == sample_name and ls == labels]
        assert len(matches) == 1, f"{sample_name}{labels}: {len(matches)} samples"
        return matches[0]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match, f"bad label block at {text[position:]!r}"
        assert match.group(1) not in labels, f"label {match.group(1)} twice"
        labels[match.group(1)] = _unescape(match.group(2))
        position = match.end()
    return labels


def parse(text: str) -> dict[str, Family]:
    """Families by name; fails on any line that is not valid text format 0.0.4."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    current: Family | None = None
    pending_help: tuple[str, str] | None = None
    for line in text.splitlines():
        if help_match := _HELP.match(line):
            pending_help = (help_match["name"], help_match["text"])
            continue
        if type_match := _TYPE.match(line):
            name = type_match["name"]
            assert pending_help is not None and pending_help[0] == name, f"no HELP for {name}"
            assert name not in families, f"{name} declared twice"
            current = families[name] = Family(name, type_match["kind"], pending_help[1])
            continue
        sample = _SAMPLE.match(line)
        assert sample, f"not a sample line: {line!r}"
        assert current is not None, f"sample before any TYPE: {line!r}"
        allowed = (
            {f"{current.name}_bucket", f"{current.name}_sum", f"{current.name}_count"}
            if current.kind == "histogram"
            else {current.name}
        )
        assert sample["name"] in allowed, f"{sample['name']} under TYPE {current.name}"
        value = sample["value"]
        number = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(value)
        current.samples.append(
            (
                sample["name"],
                _parse_labels(sample["labels"] or ""),
                float(value) if number is None else number,
            )
        )
    return families


def test_the_parser_rejects_malformed_lines() -> None:
    # The parser is the judge of every test below, so it must be able to say no.
    for bad in (
        "x 1\n",  # a sample without TYPE
        '# HELP x h\n# TYPE x counter\nx{a="1} 1\n',  # unterminated label value
        "# HELP x h\n# TYPE x counter\ny 1\n",  # a sample of another family
        "# TYPE x counter\nx 1\n",  # TYPE without HELP
    ):
        with pytest.raises(AssertionError):
            parse(bad)


# --- what the service adds to the client ----------------------------------------------------


def test_series_past_the_bound_fold_into_one_overflow_series() -> None:
    metrics = ProvisionerMetrics()
    bound = metrics.api_calls.max_series
    for i in range(bound + 5):
        metrics.observe_api_call(f"op{i}", "200", 0.01)
    metrics.observe_api_call("op0", "200", 0.01)
    family = parse(metrics.render())["provisioner_api_calls_total"]
    assert len(family.samples) == bound + 1
    assert family.value("provisioner_api_calls_total", operation="op0", status="200") == 2
    assert (
        family.value("provisioner_api_calls_total", operation=OVERFLOW_LABEL, status=OVERFLOW_LABEL)
        == 5
    )


def test_two_services_in_one_process_keep_their_own_numbers() -> None:
    # Each has its own registry: neither the global one nor each other's.
    first, second = ProvisionerMetrics(), ProvisionerMetrics()
    first.count_command("accepted")
    assert first.value("provisioner_commands_total", outcome="accepted") == 1
    assert second.value("provisioner_commands_total", outcome="accepted") == 0
    assert "provisioner_commands_total" not in generate_latest(REGISTRY).decode()


def test_readiness_is_read_at_each_scrape_and_a_broken_check_reads_not_ready() -> None:
    checks: dict[str, bool] = {"broker_connected": True, "api_token_accepted": True}
    broken = False

    def readiness() -> dict[str, bool]:
        if broken:
            raise RuntimeError("channel closed")
        return checks

    metrics = ProvisionerMetrics()
    metrics.watch_readiness(readiness)
    assert metrics.value("provisioner_ready") == 1
    checks["api_token_accepted"] = False
    families = parse(metrics.render())
    assert families["provisioner_ready"].value("provisioner_ready") == 0
    each = families["provisioner_readiness_check"]
    assert each.value("provisioner_readiness_check", check="api_token_accepted") == 0
    assert each.value("provisioner_readiness_check", check="broker_connected") == 1
    broken = True
    assert metrics.value("provisioner_ready") == 0


def test_the_text_has_no_created_series() -> None:
    # Not in format 0.0.4, read by no alert: and they would double every counter.
    assert "_created" not in ProvisionerMetrics().render()


# --- the service's metrics ------------------------------------------------------------------


def test_provisioner_metrics_expose_every_named_family_with_prefix() -> None:
    families = parse(ProvisionerMetrics().render())
    assert {name: family.kind for name, family in families.items()} == {
        "provisioner_commands_total": "counter",
        "provisioner_api_calls_total": "counter",
        "provisioner_api_call_seconds": "histogram",
        "provisioner_ratelimit_remaining": "gauge",
        "provisioner_ratelimit_sent_last_minute": "gauge",
        "provisioner_watches_in_flight": "gauge",
        "provisioner_watch_steps_total": "counter",
        "provisioner_requests_failed_total": "counter",
        "provisioner_clusters_time_to_online_seconds": "histogram",
        "provisioner_event_publish_seconds": "histogram",
        "provisioner_events_published_total": "counter",
        "provisioner_handler_crashes_total": "counter",
        "provisioner_handlers_stopped_total": "counter",
        "provisioner_messages_parked_total": "counter",
        "provisioner_messages_dead_lettered_total": "counter",
        "provisioner_undecodable_messages_total": "counter",
        "provisioner_producer_headers_dropped_total": "counter",
        "provisioner_broker_connection_drops_total": "counter",
        "provisioner_broker_reconnects_total": "counter",
        "provisioner_broker_setup_restarts_total": "counter",
        "provisioner_reply_copies_total": "counter",
        "provisioner_reply_copy_retries_total": "counter",
        "provisioner_queue_messages": "gauge",
        "provisioner_queue_max_messages": "gauge",
        "provisioner_queue_max_bytes": "gauge",
    }
    # Every outcome is there from the start, so rate() works before the first failure.
    commands = families["provisioner_commands_total"]
    assert sorted(ls["outcome"] for _, ls, _ in commands.samples) == [
        "accepted",
        "adopted",
        "failed",
        "rejected",
        "requeued",
        "retried",
    ]
    assert all(v == 0 for _, _, v in commands.samples)


def test_provisioner_metrics_count_what_the_service_reports() -> None:
    metrics = ProvisionerMetrics()
    # The client's CallObserver type: the method must fit it as is.
    observer: Callable[[str, str, float], None] = metrics.observe_api_call
    observer("create_cluster", "201", 0.2)
    observer("create_cluster", "429", 0.01)
    observer("list_clusters", "200", 0.04)
    metrics.count_command("accepted")
    metrics.count_command("accepted")
    metrics.count_command("rejected")
    metrics.set_ratelimit(4990, 10)
    metrics.set_ratelimit(None, 11)
    metrics.watches_in_flight.inc()
    metrics.observe_time_to_online(75.0)
    metrics.observe_event_published("database.cluster.status_changed", 0.003)
    metrics.observe_event_published("database.cluster.status_changed", 0.004)

    f = parse(metrics.render())
    commands = f["provisioner_commands_total"]
    assert commands.value("provisioner_commands_total", outcome="accepted") == 2
    assert commands.value("provisioner_commands_total", outcome="rejected") == 1
    calls = f["provisioner_api_calls_total"]
    assert calls.value("provisioner_api_calls_total", operation="create_cluster", status="429") == 1
    seconds = f["provisioner_api_call_seconds"]
    assert seconds.value("provisioner_api_call_seconds_count", operation="create_cluster") == 2
    assert (
        seconds.value("provisioner_api_call_seconds_bucket", operation="create_cluster", le="0.025")
        == 1
    )
    remaining = f["provisioner_ratelimit_remaining"]
    assert remaining.value("provisioner_ratelimit_remaining") == 4990  # None leaves it alone
    sent = f["provisioner_ratelimit_sent_last_minute"]
    assert sent.value("provisioner_ratelimit_sent_last_minute") == 11
    watches = f["provisioner_watches_in_flight"]
    assert watches.value("provisioner_watches_in_flight") == 1
    online = f["provisioner_clusters_time_to_online_seconds"]
    assert online.value("provisioner_clusters_time_to_online_seconds_bucket", le="60.0") == 0
    assert online.value("provisioner_clusters_time_to_online_seconds_bucket", le="120.0") == 1
    events = f["provisioner_events_published_total"]
    assert (
        events.value("provisioner_events_published_total", type="database.cluster.status_changed")
        == 2
    )
    publish = f["provisioner_event_publish_seconds"]
    assert publish.value("provisioner_event_publish_seconds_count") == 2


def test_unknown_command_outcome_is_refused_rather_than_a_new_series() -> None:
    metrics = ProvisionerMetrics()
    with pytest.raises(ValueError, match="unknown command outcome"):
        metrics.count_command("exploded")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown watch step outcome"):
        metrics.count_watch_step("exploded")  # type: ignore[arg-type]


def test_watch_steps_and_failures_by_reason_are_counted() -> None:
    metrics = ProvisionerMetrics()
    metrics.count_watch_step("waiting")
    metrics.count_watch_step("waiting")
    metrics.count_failed("timeout")
    metrics.count_failed("something new")
    assert metrics.value("provisioner_watch_steps_total", outcome="waiting") == 2
    assert metrics.value("provisioner_watch_steps_total", outcome="ready") == 0
    assert metrics.value("provisioner_requests_failed_total", reason="timeout") == 1
    assert metrics.value("provisioner_requests_failed_total", reason=OVERFLOW_LABEL) == 1
    # Every reason a failed event can carry has a series of its own (none folds into the
    # overflow series).
    for reason in get_args(FailureReason):
        metrics.count_failed(reason)
        assert metrics.value("provisioner_requests_failed_total", reason=reason) == (
            2 if reason == "timeout" else 1
        )
    assert metrics.value("provisioner_requests_failed_total", reason=OVERFLOW_LABEL) == 1


def test_robustness_series_are_there_from_the_start_and_count() -> None:
    metrics = ProvisionerMetrics()
    families = parse(metrics.render())
    # rate() and alerts work before the first crash or park.
    for consumer in ("commands", "watches"):
        assert (
            families["provisioner_handler_crashes_total"].value(
                "provisioner_handler_crashes_total", consumer=consumer
            )
            == 0
        )
    for reason in ("invalid", "too_large", "unreadable_properties", "parking_full"):
        assert (
            families["provisioner_messages_parked_total"].value(
                "provisioner_messages_parked_total", reason=reason
            )
            == 0
        )
    metrics.count_parked("too_large")
    metrics.count_handler_crash("watches")
    metrics.count_handlers_stopped("watches", 3)
    metrics.count_dead_lettered("provisioner.requests", "delivery_limit")
    metrics.count_undecodable("commands")
    metrics.count_connection_drop()
    metrics.count_reconnect()
    metrics.count_broker_setup_restart()
    metrics.count_reply_copy("sent")
    metrics.count_reply_copy("failed")
    metrics.count_reply_copy_retry()
    metrics.count_reply_copy_retry()
    metrics.count_headers_dropped(3)
    metrics.set_queue_bounds("provisioner.rejected", 100, 2048)
    metrics.set_queue_messages("provisioner.rejected", 7)
    families = parse(metrics.render())

    def value(name: str, **labels: str) -> float:
        return families[name].value(name, **labels)

    assert value("provisioner_messages_parked_total", reason="too_large") == 1
    assert value("provisioner_handler_crashes_total", consumer="watches") == 1
    assert value("provisioner_handlers_stopped_total", consumer="watches") == 3
    assert value("provisioner_handlers_stopped_total", consumer="commands") == 0
    assert (
        value(
            "provisioner_messages_dead_lettered_total",
            queue="provisioner.requests",
            reason="delivery_limit",
        )
        == 1
    )
    assert value("provisioner_undecodable_messages_total", consumer="commands") == 1
    assert value("provisioner_broker_connection_drops_total") == 1
    assert value("provisioner_broker_reconnects_total") == 1
    assert value("provisioner_broker_setup_restarts_total") == 1
    assert value("provisioner_reply_copies_total", outcome="sent") == 1
    assert value("provisioner_reply_copies_total", outcome="failed") == 1
    assert value("provisioner_reply_copies_total", outcome="refused") == 0
    assert value("provisioner_reply_copy_retries_total") == 2
    assert value("provisioner_producer_headers_dropped_total") == 3
    assert value("provisioner_queue_max_messages", queue="provisioner.rejected") == 100
    assert value("provisioner_queue_max_bytes", queue="provisioner.rejected") == 2048
    assert value("provisioner_queue_messages", queue="provisioner.rejected") == 7
    with pytest.raises(ValueError, match="unknown park reason"):
        metrics.count_parked("lost")  # type: ignore[arg-type]
