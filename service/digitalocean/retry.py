"""How often and how long the client retries a call that is safe to send again.

Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff and
Jitter"): the n-th retry waits a uniform random time in [0, min(max_delay_s, base * 2**n)].
The jitter spreads the retries of many callers that failed together (one 5xx burst, one
429), so they do not come back as one burst again.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import msgspec

__all__ = ["RetryPolicy"]

Uniform = Callable[[float, float], float]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds of the retries of one idempotent call (GET, DELETE)."""

    max_attempts: int = 5
    """Attempts in all, the first one included; 1 disables retries."""
    base_delay_s: float = 0.5
    """Cap of the first retry's delay; doubles with each retry."""
    max_delay_s: float = 20.0
    """No single delay is longer than this."""
    max_total_s: float = 60.0
    """No retry starts (nor waits) past this many seconds after the call began."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be at least 1")
        if min(self.base_delay_s, self.max_delay_s, self.max_total_s) < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def delay_cap_s(self, retry: int) -> float:
        """The longest the ``retry``-th retry (0 for the first) may wait."""
        # min() before the power would overflow: 2**1100 is fine as an int, not as a float.
        exponent = min(retry, 64)
        return min(self.max_delay_s, self.base_delay_s * 2.0**exponent)

    def delay_s(self, retry: int, uniform: Uniform = random.uniform) -> float:
        """A full-jitter delay for the ``retry``-th retry: uniform in [0, ``delay_cap_s``]."""
        return uniform(0.0, self.delay_cap_s(retry))
