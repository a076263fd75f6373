"""The process-wide rate limiter: windows, in-flight requests, headers, 429 holds, pacing.

Most tests drive the limiter with a virtual clock whose ``sleep`` advances time, so waits of
a minute cost nothing; the concurrency test uses real time with a window of a fraction of a
second.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.digitalocean import (
    RateLimiter,
    RateLimitHeaders,
    RateLimitTimeout,
    parse_rate_limit_headers,
)

EPOCH = 1_700_000_000.0


class VirtualTime:
    """A monotonic clock, a wall clock and a ``sleep`` that moves both instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return EPOCH + self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def virtual_limiter(vt: VirtualTime, **kwargs: float) -> RateLimiter:
    return RateLimiter(clock=vt.monotonic, wall=vt.wall, sleep=vt.sleep, **kwargs)  # type: ignore[arg-type]


# --- windows ------------------------------------------------------------------------------


async def test_minute_budget_grants_at_once_then_waits_for_the_oldest_answer_to_expire() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt, per_minute=3, per_hour=100)
    for at in (0.0, 1.0, 2.0):
        vt.now = at
        await limiter.acquire()
        limiter.release()
    vt.now = 2.5
    # The oldest answer arrived at 0.0: its slot frees at 60.0.
    assert limiter.delay_s() == pytest.approx(57.5)
    await limiter.acquire()
    assert vt.now == pytest.approx(60.0)
    assert limiter.snapshot().waits == 1


async def test_request_in_flight_holds_its_slot_until_its_answer_arrives() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt, per_minute=2, per_hour=100)
    await limiter.acquire()
    await limiter.acquire()
    vt.now = 500.0
    # Neither answer has arrived: no amount of waiting frees a slot, only an answer does.
    assert math.isinf(limiter.delay_s())
    limiter.release(now=500.0)
    assert limiter.delay_s() == pytest.approx(60.0)
    assert limiter.snapshot().in_flight == 1
    assert limiter.snapshot().sent_last_minute == 2


async def test_waiting_caller_wakes_when_an_answer_arrives() -> None:
    vt = VirtualTime()
    limiter = RateLimiter(per_minute=1, per_hour=10, clock=vt.monotonic, wall=vt.wall)
    await limiter.acquire()
    waiter = asyncio.create_task(limiter.acquire(max_wait_s=120.0))
    for _ in range(5):  # let the waiter reach its wait
        await asyncio.sleep(0)
    assert not waiter.done()
    # The limiter sleeps for real here: the waiter must wake on the change, not on a timer.
    vt.now = 10.0
    limiter.release()
    vt.now = 70.0
    limiter.observe({}, 200)  # any change makes the waiter look again
    await asyncio.wait_for(waiter, timeout=2.0)


async def test_hour_budget_is_enforced_separately_from_the_minute() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt, per_minute=5, per_hour=6)
    for _ in range(5):
        await limiter.acquire()
        limiter.release()
    vt.now = 61.0
    await limiter.acquire()
    limiter.release()
    # Minute window is empty again, but the hour holds 6 answers; the first frees at 3600.
    assert limiter.delay_s() == pytest.approx(3600.0 - 61.0)
    assert limiter.snapshot().sent_last_hour == 6
    assert limiter.snapshot().sent_last_minute == 1


async def test_acquire_refuses_at_once_when_the_wait_exceeds_what_the_caller_allows() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt, per_minute=1, per_hour=100)
    await limiter.acquire()
    limiter.release()
    with pytest.raises(RateLimitTimeout) as caught:
        await limiter.acquire(max_wait_s=10.0)
    assert caught.value.wait_s == pytest.approx(60.0)
    assert vt.slept == []  # refused without waiting
    assert limiter.snapshot().in_flight == 0


async def test_slot_releases_when_the_request_fails() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt, per_minute=5)
    with pytest.raises(ConnectionResetError):
        async with limiter.slot():
            raise ConnectionResetError
    state = limiter.snapshot()
    assert state.in_flight == 0
    assert state.sent_last_minute == 1


def test_release_without_acquire_is_a_bug_not_a_free_slot() -> None:
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        RateLimiter().release()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"per_minute": 0}, "budgets"),
        ({"per_hour": 0}, "budgets"),
        ({"minute_window_s": 0.0}, "windows"),
        ({"reserve": 1.0}, "reserve"),
        ({"reserve": -0.1}, "reserve"),
        ({"fallback_hold_s": -1.0}, "fallback_hold_s"),
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


async def test_concurrent_callers_never_exceed_the_budget_in_any_window() -> None:
    # Real time, a 0.15 s window of 8 requests, 60 callers with random latencies. For every
    # grant, the requests granted before it whose answer arrived less than a window earlier
    # (or has not arrived) must number fewer than the budget: that is what guarantees that
    # DigitalOcean, which counts each request somewhere between grant and answer, never
    # sees more than the budget in any window.
    budget, window = 8, 0.15
    limiter = RateLimiter(per_minute=budget, per_hour=10_000, minute_window_s=window)
    rng = random.Random(7)
    grants: list[float] = []
    answers: dict[int, float] = {}

    async def call(latency: float) -> None:
        await limiter.acquire(max_wait_s=10.0)
        index = len(grants)
        grants.append(time.monotonic())
        await asyncio.sleep(latency)  # the request's round trip
        answered = time.monotonic()
        answers[index] = answered
        limiter.release(now=answered)

    started = time.monotonic()
    await asyncio.wait_for(
        asyncio.gather(*(call(rng.uniform(0.0, 0.03)) for _ in range(60))), timeout=10.0
    )
    elapsed = time.monotonic() - started
    tolerance = 0.002  # grant times are read just after the limiter's own reading
    for k, granted in enumerate(grants):
        occupying = sum(
            1 for j in range(k) if answers[j] + window > granted + tolerance or answers[j] > granted
        )
        assert occupying < budget, f"grant {k} at {granted - started:.3f}s saw {occupying}"
    # 60 requests at 8 per window need at least 7 full windows after the first burst.
    assert elapsed >= 7 * window


# --- headers ------------------------------------------------------------------------------


def test_rate_limit_headers_are_read_whatever_their_letter_case() -> None:
    headers = {
        "RateLimit-Limit": "5000",
        "ratelimit-remaining": "4816",
        "rateLimit-reset": "1444931833",
        "Retry-After": "29",
    }
    assert parse_rate_limit_headers(headers, EPOCH) == RateLimitHeaders(
        limit=5000, remaining=4816, reset_at=1444931833.0, retry_after_s=29.0
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"ratelimit-limit": "", "ratelimit-remaining": "lots", "ratelimit-reset": "soon"},
        {"ratelimit-limit": "-5", "ratelimit-remaining": "nan", "ratelimit-reset": "inf"},
        {"ratelimit-reset": "-1", "retry-after": "in a while"},
    ],
)
def test_missing_or_garbage_rate_limit_headers_read_as_unknown(headers: dict[str, str]) -> None:
    assert parse_rate_limit_headers(headers, EPOCH) == RateLimitHeaders()


def test_retry_after_as_an_http_date_becomes_seconds_from_now() -> None:
    when = datetime.fromtimestamp(EPOCH + 42, tz=UTC)
    parsed = parse_rate_limit_headers({"retry-after": format_datetime(when, usegmt=True)}, EPOCH)
    assert parsed.retry_after_s == pytest.approx(42.0)


@given(
    st.dictionaries(
        st.sampled_from(
            ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after", "x-other"]
        ),
        st.text(max_size=40),
    )
)
def test_no_header_value_makes_parsing_fail(headers: dict[str, str]) -> None:
    parsed = parse_rate_limit_headers(headers, EPOCH)
    for value in (parsed.limit, parsed.remaining):
        assert value is None or value >= 0
    assert parsed.retry_after_s is None or parsed.retry_after_s >= 0
    assert parsed.reset_at is None or (math.isfinite(parsed.reset_at) and parsed.reset_at > 0)


async def test_garbage_headers_leave_what_was_known_unchanged() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)
    limiter.observe(
        {"ratelimit-limit": "5000", "ratelimit-remaining": "4000", "ratelimit-reset": "1700000100"},
        200,
    )
    limiter.observe(
        {"ratelimit-limit": "x", "ratelimit-remaining": "", "ratelimit-reset": "?"}, 200
    )
    state = limiter.snapshot()
    assert (state.limit, state.remaining, state.reset_at) == (5000, 4000, 1700000100.0)


# --- 429 ------------------------------------------------------------------------------------


async def test_429_holds_every_caller_until_retry_after_has_passed() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)
    vt.now = 5.0
    hold = limiter.observe(
        {"retry-after": "7", "ratelimit-remaining": "0", "ratelimit-reset": str(EPOCH + 3000)}, 429
    )
    assert hold == 7.0
    assert limiter.snapshot().blocked_until == pytest.approx(EPOCH + 12.0)
    granted: list[float] = []

    async def call() -> None:
        await limiter.acquire()
        granted.append(vt.now)
        limiter.release()

    await asyncio.wait_for(asyncio.gather(*(call() for _ in range(5))), timeout=5.0)
    assert len(granted) == 5
    assert min(granted) >= 12.0
    # The refusal's remaining=0 describes the burst: it must not hold calls for the hour.
    assert max(granted) < 13.0
    state = limiter.snapshot()
    assert state.holds == 1
    assert state.blocked_until is None


async def test_429_without_retry_after_holds_until_ratelimit_reset() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)
    hold = limiter.observe({"ratelimit-reset": str(int(EPOCH + 12))}, 429)
    assert hold == pytest.approx(12.0)
    assert limiter.delay_s() == pytest.approx(12.0)


async def test_429_without_any_header_holds_for_the_fallback() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt, fallback_hold_s=3.0)
    assert limiter.observe({}, 429) == 3.0
    assert limiter.delay_s() == pytest.approx(3.0)


async def test_absurd_retry_after_is_capped_at_the_hour_window() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt, hour_window_s=100.0)
    assert limiter.observe({"retry-after": "99999999"}, 429) == 100.0


async def test_a_shorter_later_hold_does_not_shorten_a_longer_one() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)
    limiter.observe({"retry-after": "30"}, 429)
    limiter.observe({"retry-after": "1"}, 429)
    assert limiter.delay_s() == pytest.approx(30.0)


# --- the account's budget, shared with other processes ---------------------------------------


def account(remaining: int, reset_in: float, limit: int = 5000) -> dict[str, str]:
    return {
        "ratelimit-limit": str(limit),
        "ratelimit-remaining": str(remaining),
        "ratelimit-reset": str(EPOCH + reset_in),
    }


async def test_plenty_remaining_means_no_pacing() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)
    limiter.observe(account(remaining=2000, reset_in=600), 200)
    await limiter.acquire()
    limiter.release()
    assert limiter.delay_s() == 0.0


async def test_low_remaining_spreads_what_is_left_until_the_reset() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)  # reserve 0.2 of 5000 = 1000
    limiter.observe(account(remaining=101, reset_in=100), 200)
    await limiter.acquire()
    # One of the 101 may be ours: 100 left for 100 s, one a second.
    assert limiter.delay_s() == pytest.approx(1.0)
    limiter.release()
    limiter.observe(account(remaining=100, reset_in=100), 200)
    assert limiter.delay_s() == pytest.approx(1.0)
    vt.now += 0.4
    # Measured from the last grant (at 0), over what is left of the time to the reset.
    assert limiter.delay_s() == pytest.approx(99.6 / 100 - 0.4)


async def test_spent_account_holds_calls_until_its_reset() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)
    limiter.observe(account(remaining=0, reset_in=40), 200)
    assert limiter.delay_s() == pytest.approx(40.0)
    await limiter.acquire()
    assert vt.now == pytest.approx(40.0)


async def test_a_reset_in_the_past_lifts_pacing() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)
    limiter.observe(account(remaining=0, reset_in=-1), 200)
    assert limiter.delay_s() == 0.0


async def test_own_grants_since_the_last_answer_count_against_the_remaining() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt, reserve=0.0)
    limiter.observe(account(remaining=2, reset_in=600), 200)
    await limiter.acquire()
    await limiter.acquire()
    # Two requests in flight may take the last two: wait for their answers, not a timer.
    assert math.isinf(limiter.delay_s())
    limiter.release()
    limiter.observe(account(remaining=1, reset_in=600), 200)  # counted the first only
    assert math.isinf(limiter.delay_s())  # the second is still uncounted
    limiter.release()
    limiter.observe(account(remaining=1, reset_in=600), 200)  # the second did not count
    assert limiter.delay_s() == 0.0


async def test_snapshot_reports_the_account_and_the_process() -> None:
    vt = VirtualTime()
    limiter = virtual_limiter(vt)
    limiter.observe(account(remaining=4321, reset_in=100, limit=5000), 200)
    await limiter.acquire()
    state = limiter.snapshot()
    assert (state.limit, state.remaining, state.reset_at) == (5000, 4321, EPOCH + 100)
    assert (state.sent_last_minute, state.sent_last_hour, state.in_flight) == (1, 1, 1)
    assert state.blocked_until is None
    assert state.waits == 0
