"""DigitalOcean's rate limits: per token, two sliding windows (a minute burst and an hour).

As ``description.yml`` documents it, each request has its own timer: it counts against the
limit for one full window after it was made, and ``ratelimit-reset`` is when the oldest
counted request expires. Windows and limits are read from the config on every call, so a
benchmark can compress an hour into seconds and a test can change them mid-run.
"""

from __future__ import annotations

import math
from collections import deque

import msgspec

from service.simulator.config import SimulatorConfig

__all__ = ["RateDecision", "SlidingWindowLimiter", "WindowState"]


class RateDecision(msgspec.Struct, frozen=True):
    """Whether one request is accepted, and the headers its response carries."""

    allowed: bool
    limit: int
    remaining: int
    reset_epoch: int
    retry_after_s: int | None = None
    """Seconds to wait; set only on a refusal."""
    exhausted: str | None = None
    """Which window refused the request: ``"minute"`` or ``"hour"``."""

    def headers(self) -> dict[str, str]:
        """The ``ratelimit-*`` headers (and ``retry-after`` on a refusal)."""
        out = {
            "ratelimit-limit": str(self.limit),
            "ratelimit-remaining": str(self.remaining),
            "ratelimit-reset": str(self.reset_epoch),
        }
        if self.retry_after_s is not None:
            out["retry-after"] = str(self.retry_after_s)
        return out


class WindowState(msgspec.Struct, frozen=True):
    """One window of one token, for stats: how much of it is used now and at worst."""

    limit: int
    window_s: float
    used: int
    remaining: int
    peak: int
    """The most requests ever counted in this window at once: never above the limit that
    was in force when they were counted."""


class _Bucket:
    """The accepted requests of one token (monotonic timestamps), one deque per window."""

    __slots__ = ("hour", "minute", "peak_hour", "peak_minute")

    def __init__(self) -> None:
        self.minute: deque[float] = deque()
        self.hour: deque[float] = deque()
        self.peak_minute = 0
        self.peak_hour = 0


class SlidingWindowLimiter:
    """Counts requests per token in a minute and an hour window, refusing past either limit.

    A refused request is not counted: DigitalOcean's documentation describes the limit as
    lifting when the oldest counted request expires, which implies that 429s do not extend
    it. A client that keeps hammering is therefore refused until the window frees up, no
    longer.
    """

    def __init__(self, config: SimulatorConfig, epoch_offset: float) -> None:
        """``epoch_offset`` turns the monotonic clock into Unix time (``time() - monotonic()``)."""
        self.config = config
        self._epoch_offset = epoch_offset
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        return bucket

    def _expire(self, bucket: _Bucket, now: float) -> None:
        minute_edge = now - self.config.minute_window_s
        while bucket.minute and bucket.minute[0] <= minute_edge:
            bucket.minute.popleft()
        hour_edge = now - self.config.hour_window_s
        while bucket.hour and bucket.hour[0] <= hour_edge:
            bucket.hour.popleft()
        # A limit lowered at runtime leaves more timestamps than it allows; keep them, they
        # expire on their own and the refusals below hold until they do.

    def _reset_epoch(self, bucket: _Bucket, now: float) -> int:
        oldest_expiry = bucket.hour[0] + self.config.hour_window_s if bucket.hour else now
        return math.ceil(oldest_expiry + self._epoch_offset)

    def acquire(self, key: str, now: float) -> RateDecision:
        """Count one request of ``key`` at monotonic time ``now``, or refuse it."""
        config = self.config
        bucket = self._bucket(key)
        self._expire(bucket, now)
        hour_limit = config.rate_limit_per_hour
        reset = self._reset_epoch(bucket, now)
        if len(bucket.hour) >= hour_limit:
            wait = _wait(bucket.hour, hour_limit, config.hour_window_s, now)
            return RateDecision(False, hour_limit, 0, reset, wait, "hour")
        minute_limit = config.rate_limit_per_minute
        if len(bucket.minute) >= minute_limit:
            wait = _wait(bucket.minute, minute_limit, config.minute_window_s, now)
            return RateDecision(False, hour_limit, 0, reset, wait, "minute")
        bucket.minute.append(now)
        bucket.hour.append(now)
        bucket.peak_minute = max(bucket.peak_minute, len(bucket.minute))
        bucket.peak_hour = max(bucket.peak_hour, len(bucket.hour))
        return RateDecision(
            True, hour_limit, hour_limit - len(bucket.hour), self._reset_epoch(bucket, now)
        )

    def peek(self, key: str, now: float) -> RateDecision:
        """The headers ``key`` would see now, without counting a request."""
        bucket = self._bucket(key)
        self._expire(bucket, now)
        limit = self.config.rate_limit_per_hour
        return RateDecision(
            True, limit, max(0, limit - len(bucket.hour)), self._reset_epoch(bucket, now)
        )

    def windows(self, key: str, now: float) -> tuple[WindowState, WindowState]:
        """The minute and hour windows of ``key`` as they stand at ``now``."""
        config = self.config
        bucket = self._bucket(key)
        self._expire(bucket, now)
        minute = WindowState(
            limit=config.rate_limit_per_minute,
            window_s=config.minute_window_s,
            used=len(bucket.minute),
            remaining=max(0, config.rate_limit_per_minute - len(bucket.minute)),
            peak=bucket.peak_minute,
        )
        hour = WindowState(
            limit=config.rate_limit_per_hour,
            window_s=config.hour_window_s,
            used=len(bucket.hour),
            remaining=max(0, config.rate_limit_per_hour - len(bucket.hour)),
            peak=bucket.peak_hour,
        )
        return minute, hour


def _wait(times: deque[float], limit: int, window_s: float, now: float) -> int:
    """``retry-after`` for a full window: until enough of its oldest requests expire that
    one more fits. Whole seconds, rounded up, at least 1."""
    if limit <= 0 or not times:
        # A zero limit (a test closing the API) frees nothing; suggest one window.
        return max(1, math.ceil(window_s))
    return max(1, math.ceil(times[len(times) - limit] + window_s - now))
