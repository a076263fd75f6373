"""The simulator's sliding windows, driven with explicit timestamps (no clock, no HTTP)."""

from __future__ import annotations

import math

from service.simulator.config import SimulatorConfig
from service.simulator.ratelimit import SlidingWindowLimiter

EPOCH_OFFSET = 1_700_000_000.0


def limiter(**overrides: float) -> SlidingWindowLimiter:
    config = SimulatorConfig(
        rate_limit_per_minute=int(overrides.pop("per_minute", 3)),
        rate_limit_per_hour=int(overrides.pop("per_hour", 10)),
        minute_window_s=overrides.pop("minute", 60.0),
        hour_window_s=overrides.pop("hour", 3600.0),
    )
    assert not overrides
    return SlidingWindowLimiter(config, EPOCH_OFFSET)


def test_each_accepted_request_lowers_hourly_remaining_by_one() -> None:
    rl = limiter(per_minute=100, per_hour=10)
    remaining = [rl.acquire("t", 100.0 + i).remaining for i in range(4)]
    assert remaining == [9, 8, 7, 6]
    assert rl.acquire("t", 104.0).limit == 10


def test_burst_past_the_minute_limit_is_refused_with_retry_after_until_oldest_expires() -> None:
    rl = limiter(per_minute=3, per_hour=100)
    for t in (10.0, 10.5, 11.0):
        assert rl.acquire("t", t).allowed
    refused = rl.acquire("t", 20.2)
    assert not refused.allowed
    assert refused.exhausted == "minute"
    assert refused.remaining == 0
    # The oldest request (t=10.0) expires at 70.0: 49.8 s away, rounded up.
    assert refused.retry_after_s == 50
    assert refused.headers()["retry-after"] == "50"


def test_window_slides_per_request_rather_than_resetting_at_once() -> None:
    rl = limiter(per_minute=3, per_hour=100)
    for t in (0.0, 30.0, 40.0):
        assert rl.acquire("t", t).allowed
    assert not rl.acquire("t", 59.0).allowed
    # At 60.0 only the first request has expired: exactly one more fits.
    assert rl.acquire("t", 60.0).allowed
    assert not rl.acquire("t", 61.0).allowed
    assert rl.acquire("t", 90.0).allowed


def test_refused_requests_do_not_count_against_the_window() -> None:
    rl = limiter(per_minute=2, per_hour=100)
    rl.acquire("t", 0.0)
    rl.acquire("t", 1.0)
    for t in range(2, 50):
        assert not rl.acquire("t", float(t)).allowed
    minute, hour = rl.windows("t", 50.0)
    assert (minute.used, hour.used) == (2, 2)
    # Had the refusals counted, the window would still be full at 61.
    assert rl.acquire("t", 61.0).allowed


def test_exhausted_hour_is_refused_even_when_the_minute_has_room() -> None:
    rl = limiter(per_minute=100, per_hour=3, minute=1.0, hour=10.0)
    for t in (0.0, 2.0, 4.0):
        assert rl.acquire("t", t).allowed
    refused = rl.acquire("t", 6.0)
    assert (refused.allowed, refused.exhausted, refused.retry_after_s) == (False, "hour", 4)
    assert rl.acquire("t", 10.0).allowed


def test_ratelimit_reset_is_the_epoch_when_the_oldest_counted_request_expires() -> None:
    rl = limiter(per_minute=100, per_hour=100, hour=3600.0)
    first = rl.acquire("t", 500.25)
    assert first.reset_epoch == math.ceil(500.25 + 3600.0 + EPOCH_OFFSET)
    later = rl.acquire("t", 900.0)
    assert later.reset_epoch == first.reset_epoch


def test_reset_is_now_when_nothing_is_counted() -> None:
    rl = limiter()
    assert rl.peek("t", 42.0).reset_epoch == math.ceil(42.0 + EPOCH_OFFSET)
    assert rl.peek("t", 42.0).remaining == 10


def test_tokens_have_separate_windows() -> None:
    rl = limiter(per_minute=1, per_hour=100)
    assert rl.acquire("a", 0.0).allowed
    assert not rl.acquire("a", 0.1).allowed
    assert rl.acquire("b", 0.1).allowed


def test_peak_records_the_fullest_window_seen() -> None:
    rl = limiter(per_minute=3, per_hour=100, minute=1.0)
    for t in (0.0, 0.1, 0.2, 1.5):
        rl.acquire("t", t)
    minute, hour = rl.windows("t", 1.6)
    assert (minute.peak, minute.used, hour.peak) == (3, 1, 4)


def test_limits_changed_at_runtime_apply_to_the_next_request() -> None:
    rl = limiter(per_minute=5, per_hour=100)
    for t in range(3):
        assert rl.acquire("t", float(t)).allowed
    rl.config.rate_limit_per_minute = 3
    assert not rl.acquire("t", 3.0).allowed
    rl.config.rate_limit_per_minute = 10
    assert rl.acquire("t", 3.0).allowed


def test_zero_limit_refuses_everything_and_suggests_one_window() -> None:
    rl = limiter(per_minute=0, per_hour=100, minute=2.5)
    refused = rl.acquire("t", 0.0)
    assert (refused.allowed, refused.retry_after_s) == (False, 3)
