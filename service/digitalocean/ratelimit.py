"""The process's budget of DigitalOcean API requests, shared by every call.

DigitalOcean limits each token to 5,000 requests an hour and 250 a minute, in sliding windows:
each request counts for one full window after it was made. ``RateLimiter`` keeps the same two
windows locally and never lets the process send more than either budget, so a burst of calls
queues here instead of being refused there. Three things make it hold back further:

* the account's own numbers: every response carries ``ratelimit-remaining`` (of the hour, for
  the whole token, so other processes sharing it count too) and ``ratelimit-reset`` (when the
  oldest counted request expires). Once the remaining budget falls below ``reserve`` of the
  limit, requests are spread so that what remains lasts until the reset, instead of running dry;
* a 429: every call is held until ``retry-after`` (or ``ratelimit-reset``) has passed;
* requests still in flight: a request is counted from the moment it is granted, and its window
  timer starts when its answer arrives. DigitalOcean counted it at some moment in between, so
  the local count can only be ahead of DigitalOcean's, never behind it.

Waiting callers are served in arrival order, except that an *urgent* call (a create: it starts
the creation delay, the longest wait of the whole flow) is served as if it had arrived
``urgent_lead_s`` earlier. When the budget is scarce, creates go first and the clusters start
building sooner; a call that has waited longer than the lead still goes before a new create,
so nothing starves.

Time comes from injectable clocks (``clock`` for intervals, ``wall`` for the epoch values in
headers) and waiting from an injectable ``sleep``, so the arithmetic is testable without waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime

import msgspec
import structlog

__all__ = [
    "RateLimitHeaders",
    "RateLimitState",
    "RateLimitTimeout",
    "RateLimiter",
    "parse_rate_limit_headers",
]

log = structlog.get_logger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateLimitHeaders(msgspec.Struct, frozen=True):
    """The rate-limit headers of one response; ``None`` where missing or unreadable."""

    limit: int | None = None
    """``ratelimit-limit``: requests allowed per hour."""
    remaining: int | None = None
    """``ratelimit-remaining``: requests left in the hour, for the whole token."""
    reset_at: float | None = None
    """``ratelimit-reset``: Unix time at which the oldest counted request expires."""
    retry_after_s: float | None = None
    """``retry-after``: seconds to wait (sent with a 429), from seconds or an HTTP date."""


class RateLimitState(msgspec.Struct, frozen=True, kw_only=True):
    """What the limiter knows and has done, for metrics and tests."""

    remaining: int | None
    """The account's ``ratelimit-remaining`` as last observed."""
    limit: int | None
    """The account's ``ratelimit-limit`` as last observed."""
    reset_at: float | None
    """The account's ``ratelimit-reset`` (Unix time) as last observed."""
    sent_last_minute: int
    """Requests of this process counted in the minute window now (in flight included)."""
    sent_last_hour: int
    """Requests of this process counted in the hour window now (in flight included)."""
    blocked_until: float | None
    """Unix time until which a 429 holds every call; ``None`` when not held."""
    waits: int
    """Calls that could not be sent at once and waited for a slot."""
    in_flight: int = 0
    """Requests granted whose answer has not arrived yet."""
    waited_s: float = 0.0
    """Seconds spent waiting for slots, summed over calls."""
    holds: int = 0
    """429s observed (each holds every call for its ``retry-after``)."""


class RateLimitTimeout(TimeoutError):
    """No slot within the wait a caller allowed; ``wait_s`` estimates when one frees up."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        super().__init__(f"no rate-limit slot for {wait_s:.3g} s")


def _parse_count(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return int(number)


def _parse_epoch(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None


def _parse_retry_after(value: str | None, wall_now: float) -> float | None:
    # RFC 9110 allows delay-seconds or an HTTP-date; DigitalOcean sends seconds.
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - wall_now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def parse_rate_limit_headers(headers: Mapping[str, str], wall_now: float) -> RateLimitHeaders:
    """Read the rate-limit headers (any letter case); missing or garbage values are ``None``."""
    lowered = {key.lower(): value for key, value in headers.items()}
    return RateLimitHeaders(
        limit=_parse_count(lowered.get("ratelimit-limit")),
        remaining=_parse_count(lowered.get("ratelimit-remaining")),
        reset_at=_parse_epoch(lowered.get("ratelimit-reset")),
        retry_after_s=_parse_retry_after(lowered.get("retry-after"), wall_now),
    )


class _Ticket:
    """One waiting caller: its place in the queue and the event that tells it its turn."""

    __slots__ = ("active", "key", "seq", "turn")

    def __init__(self, key: float, seq: int) -> None:
        self.key = key
        self.seq = seq
        self.turn = asyncio.Event()
        self.active = True

    def __lt__(self, other: _Ticket) -> bool:
        return (self.key, self.seq) < (other.key, other.seq)


class RateLimiter:
    """Sliding-window budget of API requests for the whole process; see the module docstring.

    Use one instance for every client of a process: ``async with limiter.slot(): send()``,
    then ``observe(response.headers, response.status)``.
    """

    def __init__(
        self,
        per_minute: int = 250,
        per_hour: int = 5000,
        minute_window_s: float = 60.0,
        hour_window_s: float = 3600.0,
        reserve: float = 0.2,
        *,
        fallback_hold_s: float = 1.0,
        urgent_lead_s: float | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``reserve``: once the account's remaining budget is below this fraction of its
        limit, requests are spread over the time to ``ratelimit-reset``. ``fallback_hold_s``:
        how long a 429 without ``retry-after`` or ``ratelimit-reset`` holds calls.
        ``urgent_lead_s``: how far ahead of the queue an urgent call is placed (default: one
        minute window)."""
        if per_minute < 1 or per_hour < 1:
            raise ValueError("RateLimiter budgets must be at least 1 request")
        if minute_window_s <= 0 or hour_window_s <= 0:
            raise ValueError("RateLimiter windows must be positive")
        if not 0.0 <= reserve < 1.0:
            raise ValueError("RateLimiter.reserve is a fraction in [0, 1)")
        if fallback_hold_s < 0:
            raise ValueError("RateLimiter.fallback_hold_s must not be negative")
        if urgent_lead_s is not None and urgent_lead_s < 0:
            raise ValueError("RateLimiter.urgent_lead_s must not be negative")
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.minute_window_s = minute_window_s
        self.hour_window_s = hour_window_s
        self.reserve = reserve
        self.fallback_hold_s = fallback_hold_s
        self.urgent_lead_s = minute_window_s if urgent_lead_s is None else urgent_lead_s
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        # Times (``clock``) at which answers to granted requests arrived, oldest first.
        self._minute: deque[float] = deque()
        self._hour: deque[float] = deque()
        self._in_flight = 0
        self._last_grant = -math.inf
        self._blocked_until = -math.inf
        # The account, as the last response told it.
        self._limit: int | None = None
        self._remaining: int | None = None
        self._reset_at: float | None = None
        # Grants the last observed ``remaining`` may not include yet.
        self._uncounted = 0
        self._waits = 0
        self._waited_s = 0.0
        self._holds = 0
        # The waiting callers, first to be served on top; only the head decides and waits
        # for the budget, the others wait for their turn. Tickets that gave up stay in the
        # heap marked inactive until they reach the top.
        self._queue: list[_Ticket] = []
        self._tickets = itertools.count()
        # Set by release() and observe(): a waiting caller looks again.
        self._changed = asyncio.Event()

    # --- the calls a client makes -------------------------------------------------------

    async def acquire(self, max_wait_s: float | None = None, *, urgent: bool = False) -> None:
        """Wait for a slot and count one request as sent; pair with :meth:`release`.

        ``urgent`` places the call ``urgent_lead_s`` ahead in the queue (see the module
        docstring). Raises :class:`RateLimitTimeout` at once when, its turn come, the wait is
        known to exceed ``max_wait_s`` (default: the hour window), or when it has run out.
        """
        allowed = self.hour_window_s if max_wait_s is None else max(0.0, max_wait_s)
        start = self._clock()
        deadline = start + allowed
        ticket = _Ticket(start - self.urgent_lead_s if urgent else start, next(self._tickets))
        heapq.heappush(self._queue, ticket)
        waited = self._head() is not ticket
        if not waited and len(self._queue) > 1:
            self._changed.set()  # it went ahead of the waiting head: that one steps back
        try:
            # Each pass grants, raises, or waits for its turn, for time to pass or for the
            # state to change; the deadline bounds the passes in time once it is the head.
            while True:
                if self._head() is not ticket:
                    ticket.turn.clear()
                    await ticket.turn.wait()
                    continue
                self._changed.clear()
                now = self._clock()
                delay = self._delay_s(now)
                if delay <= 0.0:
                    heapq.heappop(self._queue)
                    ticket.active = False
                    self._grant(now)
                    self._wake_head()
                    return
                waited = True
                left = deadline - now
                if left <= 0.0 or (math.isfinite(delay) and delay > left):
                    raise RateLimitTimeout(delay if math.isfinite(delay) else self.minute_window_s)
                await self._pause(min(delay, left))
        finally:
            if ticket.active:  # gave up (timeout, cancelled): let the next one decide
                ticket.active = False
                self._wake_head()
            if waited:
                self._waits += 1
                self._waited_s += max(0.0, self._clock() - start)

    def _head(self) -> _Ticket | None:
        queue = self._queue
        while queue and not queue[0].active:
            heapq.heappop(queue)
        return queue[0] if queue else None

    def _wake_head(self) -> None:
        head = self._head()
        if head is not None:
            head.turn.set()

    def release(self, now: float | None = None) -> None:
        """The answer to a granted request arrived (or it failed): start its window timers."""
        if self._in_flight <= 0:
            raise RuntimeError("RateLimiter.release() without a matching acquire()")
        now = self._clock() if now is None else now
        self._in_flight -= 1
        self._minute.append(now)
        self._hour.append(now)
        self._changed.set()

    @asynccontextmanager
    async def slot(
        self, max_wait_s: float | None = None, *, urgent: bool = False
    ) -> AsyncIterator[None]:
        """``acquire`` on entry, ``release`` on exit, whatever happens in between."""
        await self.acquire(max_wait_s, urgent=urgent)
        try:
            yield
        finally:
            self.release()

    def observe(
        self, headers: Mapping[str, str], status: int, now: float | None = None
    ) -> float | None:
        """Learn from one response's headers; for a 429, hold every call and return the hold.

        Headers that are missing or unreadable leave what was known unchanged.
        """
        now = self._clock() if now is None else now
        wall_now = self._wall()
        parsed = parse_rate_limit_headers(headers, wall_now)
        # A reset further away than a whole window is garbage; never trust it past that.
        reset_at = parsed.reset_at
        if reset_at is not None:
            reset_at = min(reset_at, wall_now + self.hour_window_s)
        self._changed.set()
        if status == 429:
            # The refusal's own numbers describe the burst, not the hour: keep the hour's
            # last known state and hold for as long as the answer says.
            if parsed.retry_after_s is not None:
                hold = parsed.retry_after_s
            elif reset_at is not None and reset_at > wall_now:
                hold = reset_at - wall_now
            else:
                hold = self.fallback_hold_s
            hold = min(hold, self.hour_window_s)
            self._holds += 1
            if now + hold > self._blocked_until:
                self._blocked_until = now + hold
                log.info("digitalocean.rate_limit.hold", hold_s=round(hold, 3), status=status)
            return hold
        if parsed.limit is not None:
            self._limit = parsed.limit
        if parsed.remaining is not None:
            self._remaining = parsed.remaining
            self._uncounted = self._in_flight
        if reset_at is not None:
            self._reset_at = reset_at
        return None

    def snapshot(self) -> RateLimitState:
        """The limiter's state now."""
        now = self._clock()
        wall_now = self._wall()
        self._expire(now)
        blocked = self._blocked_until > now
        return RateLimitState(
            remaining=self._remaining,
            limit=self._limit,
            reset_at=self._reset_at,
            sent_last_minute=len(self._minute) + self._in_flight,
            sent_last_hour=len(self._hour) + self._in_flight,
            blocked_until=wall_now + (self._blocked_until - now) if blocked else None,
            waits=self._waits,
            in_flight=self._in_flight,
            waited_s=self._waited_s,
            holds=self._holds,
        )

    # --- the decision ---------------------------------------------------------------------

    def delay_s(self, now: float | None = None) -> float:
        """Seconds until a request may be sent (0: now; ``inf``: when an answer arrives)."""
        return self._delay_s(self._clock() if now is None else now)

    def _delay_s(self, now: float) -> float:
        self._expire(now)
        return max(
            0.0,
            self._blocked_until - now,
            self._window_delay_s(self._minute, self.per_minute, self.minute_window_s, now),
            self._window_delay_s(self._hour, self.per_hour, self.hour_window_s, now),
            self._pacing_delay_s(now),
        )

    def _window_delay_s(
        self, times: deque[float], budget: int, window_s: float, now: float
    ) -> float:
        used = len(times) + self._in_flight
        if used < budget:
            return 0.0
        must_expire = used - budget + 1
        if must_expire > len(times):
            # Requests in flight hold the rest of the budget; their window has not started.
            return math.inf
        return times[must_expire - 1] + window_s - now

    def _pacing_delay_s(self, now: float) -> float:
        if self._remaining is None or self._reset_at is None:
            return 0.0
        reset_in = self._reset_at - self._wall()
        if reset_in <= 0.0:
            # The oldest counted request has expired since: the budget is coming back.
            return 0.0
        if self._remaining <= 0:
            # The account's hour is spent: DigitalOcean refuses everything until the reset.
            return reset_in
        estimate = self._remaining - self._uncounted
        if estimate <= 0:
            # Our own grants since may have used it all; their answers will tell.
            return math.inf if self._in_flight > 0 else reset_in
        limit = self._limit if self._limit else self.per_hour
        if estimate >= self.reserve * limit:
            return 0.0
        # Spread what remains evenly until the reset, so it lasts instead of running out.
        return max(0.0, self._last_grant + reset_in / estimate - now)

    def _grant(self, now: float) -> None:
        self._in_flight += 1
        self._uncounted += 1
        self._last_grant = now

    def _expire(self, now: float) -> None:
        for times, window_s in (
            (self._minute, self.minute_window_s),
            (self._hour, self.hour_window_s),
        ):
            while times and times[0] + window_s <= now:
                times.popleft()

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if a release or an observation changes things."""
        sleeper = asyncio.ensure_future(self._sleep(delay))
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait((sleeper, changed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            changed.cancel()
