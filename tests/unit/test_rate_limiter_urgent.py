"""The order in which the rate limiter serves waiting callers: arrival order, urgent calls
(creates, list calls) a lead ahead, and no caller lost when the one ahead gives up.

Real time with windows of a fraction of a second: the order of grants is what is checked.
"""

from __future__ import annotations

import asyncio

from service.digitalocean import RateLimiter

WINDOW_S = 0.2


async def _settle() -> None:
    # Let every task that can run reach its next wait.
    for _ in range(10):
        await asyncio.sleep(0)


async def _spend_the_window(limiter: RateLimiter) -> None:
    await limiter.acquire()
    limiter.release()


async def test_urgent_call_is_served_before_earlier_ordinary_ones() -> None:
    limiter = RateLimiter(per_minute=1, per_hour=100, minute_window_s=WINDOW_S)
    await _spend_the_window(limiter)
    granted: list[str] = []

    async def call(name: str, urgent: bool) -> None:
        await limiter.acquire(max_wait_s=5.0, urgent=urgent)
        granted.append(name)
        limiter.release()

    first = asyncio.create_task(call("ordinary-1", False))
    await _settle()
    second = asyncio.create_task(call("ordinary-2", False))
    await _settle()
    create = asyncio.create_task(call("create", True))
    await asyncio.wait_for(asyncio.gather(first, second, create), timeout=5.0)
    assert granted == ["create", "ordinary-1", "ordinary-2"]


async def test_a_call_that_waited_longer_than_the_lead_goes_before_a_new_urgent_one() -> None:
    limiter = RateLimiter(per_minute=1, per_hour=100, minute_window_s=WINDOW_S, urgent_lead_s=0.02)
    await _spend_the_window(limiter)
    granted: list[str] = []

    async def call(name: str, urgent: bool) -> None:
        await limiter.acquire(max_wait_s=5.0, urgent=urgent)
        granted.append(name)
        limiter.release()

    old = asyncio.create_task(call("waited", False))
    await asyncio.sleep(0.06)  # three leads: it has aged past any new urgent call
    create = asyncio.create_task(call("create", True))
    await asyncio.wait_for(asyncio.gather(old, create), timeout=5.0)
    assert granted == ["waited", "create"]


async def test_the_next_caller_is_served_when_the_one_ahead_is_cancelled() -> None:
    limiter = RateLimiter(per_minute=1, per_hour=100, minute_window_s=WINDOW_S)
    await _spend_the_window(limiter)
    ahead = asyncio.create_task(limiter.acquire(max_wait_s=5.0, urgent=True))
    await _settle()
    behind = asyncio.create_task(limiter.acquire(max_wait_s=5.0))
    await _settle()
    ahead.cancel()
    await asyncio.wait_for(behind, timeout=5.0)
    state = limiter.snapshot()
    assert state.in_flight == 1
    assert ahead.cancelled()


async def test_urgent_calls_never_exceed_the_budget() -> None:
    budget = 3
    limiter = RateLimiter(per_minute=budget, per_hour=100, minute_window_s=WINDOW_S)
    loop = asyncio.get_running_loop()
    grants: list[float] = []

    async def call(urgent: bool) -> None:
        await limiter.acquire(max_wait_s=5.0, urgent=urgent)
        grants.append(loop.time())
        limiter.release()

    await asyncio.wait_for(
        asyncio.gather(*(call(i % 2 == 0) for i in range(3 * budget))), timeout=5.0
    )
    # Three full windows of three: no window ever held more than the budget.
    for k in range(budget, len(grants)):
        assert grants[k] - grants[k - budget] >= WINDOW_S * 0.99
