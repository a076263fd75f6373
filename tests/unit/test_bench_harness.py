"""The pure parts of the benchmark harness: percentiles, the makespan bound, the report and
the service's environment. No broker, no timing."""

from __future__ import annotations

import json

import pytest

from bench._harness import emit, makespan_bound, percentile, print_table, service_env
from service.config import load_settings


def test_percentile_interpolates_between_closest_ranks() -> None:
    sample = [4.0, 1.0, 3.0, 2.0]
    assert percentile(sample, 0) == 1.0
    assert percentile(sample, 50) == 2.5
    assert percentile(sample, 100) == 4.0
    assert percentile(sample, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("q", [-1.0, 100.5])
def test_percentile_refuses_nonsense(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)
    with pytest.raises(ValueError):
        percentile([], 50)


def bound(clusters: int, ready_after_s: float, window_s: float = 10.0) -> float:
    return makespan_bound(
        clusters=clusters,
        calls_per_cluster_after_online=1,
        fixed_calls=1,
        per_window=250,
        window_s=window_s,
        per_long_window=5000,
        long_window_s=600.0,
        ready_after_s=ready_after_s,
    )


def test_bound_is_set_by_the_budget_when_clusters_build_fast() -> None:
    # 1,000 creates, 1,000 CA fetches and the options call: request 2,000 (0-based) cannot
    # go before eight full windows.
    assert bound(1000, ready_after_s=24.0) == 80.0


def test_bound_is_set_by_the_creation_delay_when_clusters_build_slowly() -> None:
    # The last create (request 1,000) goes in the fifth window, at 40 s at the earliest.
    assert bound(1000, ready_after_s=60.0) == 100.0
    assert bound(10, ready_after_s=5.0) == 5.0


def test_bound_counts_the_long_window_too() -> None:
    # 3,000 clusters need 6,001 requests: more than the 5,000 of one long window.
    assert bound(3000, ready_after_s=0.0, window_s=0.01) == 600.0


def test_report_ends_with_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    print_table("t", ("name", "value"), [("a", 1.23456), ("b", 12345)])
    emit({"goal_met": True, "ratio": 1.1})
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == {"goal_met": True, "ratio": 1.1}
    assert any("12,345" in line for line in lines)


def test_service_env_is_what_the_service_reads() -> None:
    env = service_env(
        "amqp://guest:guest@127.0.0.1:5672/x",
        "http://127.0.0.1:1",
        poll_interval_s=2.5,
        retry_delays_s=(1.0, 2.0),
        poll_mode="per-cluster",
    )
    settings = load_settings(env)
    assert settings.poll_interval_s == 2.5
    assert settings.retry_delays_s == (1.0, 2.0)
    assert settings.poll_mode == "per-cluster"
    with pytest.raises(KeyError):
        service_env("amqp://x", "http://127.0.0.1:1", no_such_setting=1)
