"""What the simulator saw: calls per endpoint and status, 429s, faults, window usage.

Served as JSON at ``GET /_simulator/stats`` and returned by ``Simulator.stats()``, so tests
and benchmarks can prove what reached the API (for example that no burst ever exceeded
the window's budget).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import msgspec

from service.simulator.ratelimit import WindowState

__all__ = ["SimulatorStats", "StatsRecorder"]

DROPPED = "dropped"
"""The "status" of a request whose connection was closed without an answer."""


class SimulatorStats(msgspec.Struct, kw_only=True):
    """A snapshot of the simulator's counters (for the configured token's windows)."""

    requests: int
    """API requests received (every ``/v2`` path, whatever the outcome)."""
    calls: dict[str, dict[str, int]]
    """``"GET /v2/databases/{id}"`` -> ``{"200": 3, "404": 1, "dropped": 1}``."""
    clusters: dict[str, int]
    """Clusters in the account by status now."""
    clusters_total: int
    too_many_requests: int
    """Every 429 sent: refused by the rate limit or injected by ``fail_429_fraction``."""
    rate_limited: int
    """429s sent because a window was exhausted (``rate_limited_by_window`` splits them)."""
    rate_limited_by_window: dict[str, int]
    faults: dict[str, int]
    """Injected faults by kind: ``server_error``, ``too_many_requests``, ``dropped``,
    ``latency``."""
    minute_window: WindowState
    hour_window: WindowState

    def count(self, endpoint: str, status: int | str | None = None) -> int:
        """Calls to ``endpoint`` (``"POST /v2/databases"``), optionally with one status."""
        by_status = self.calls.get(endpoint, {})
        if status is None:
            return sum(by_status.values())
        return by_status.get(str(status), 0)


class StatsRecorder:
    """The live counters behind ``SimulatorStats``."""

    def __init__(self) -> None:
        self.requests = 0
        self.calls: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.too_many_requests = 0
        self.rate_limited: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()

    def call(self, endpoint: str, status: int | str) -> None:
        """One answered (or dropped) API request."""
        self.requests += 1
        self.calls[endpoint][str(status)] += 1
        if status == 429:
            self.too_many_requests += 1

    def snapshot(
        self,
        clusters: dict[str, int],
        windows: tuple[WindowState, WindowState],
    ) -> SimulatorStats:
        """The counters now, with the account's clusters and the token's windows."""
        return SimulatorStats(
            requests=self.requests,
            calls={endpoint: dict(by_status) for endpoint, by_status in self.calls.items()},
            clusters=clusters,
            clusters_total=sum(clusters.values()),
            too_many_requests=self.too_many_requests,
            rate_limited=sum(self.rate_limited.values()),
            rate_limited_by_window=dict(self.rate_limited),
            faults=dict(self.faults),
            minute_window=windows[0],
            hour_window=windows[1],
        )
