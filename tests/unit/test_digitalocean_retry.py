"""Backoff of the client's retries: full jitter, within an exponential cap, bounded."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.digitalocean import DEFAULT_RETRY, RetryPolicy

policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 10),
    base_delay_s=st.floats(0.0, 5.0),
    max_delay_s=st.floats(0.0, 120.0),
    max_total_s=st.floats(0.0, 600.0),
)


def test_default_policy_is_five_attempts_from_half_a_second_to_twenty() -> None:
    policy = DEFAULT_RETRY
    assert (policy.max_attempts, policy.base_delay_s, policy.max_delay_s) == (5, 0.5, 20.0)
    assert policy.max_total_s == 60.0
    assert RetryPolicy() == policy
    caps = [DEFAULT_RETRY.delay_cap_s(n) for n in range(8)]
    assert caps == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]


@given(policies, st.integers(0, 10_000), st.integers(0, 2**32))
def test_full_jitter_delay_stays_within_zero_and_the_cap(
    policy: RetryPolicy, retry: int, seed: int
) -> None:
    rng = random.Random(seed)
    delay = policy.delay_s(retry, rng.uniform)
    cap = policy.delay_cap_s(retry)
    assert 0.0 <= delay <= cap <= policy.max_delay_s
    assert cap == min(policy.max_delay_s, policy.base_delay_s * 2.0 ** min(retry, 64))


@given(policies, st.integers(0, 100))
def test_cap_never_shrinks_from_one_retry_to_the_next(policy: RetryPolicy, retry: int) -> None:
    assert policy.delay_cap_s(retry) <= policy.delay_cap_s(retry + 1)


def test_delay_is_drawn_over_the_whole_range_not_around_the_cap() -> None:
    # Full jitter means [0, cap], not cap/2 + jitter: both ends are reachable.
    assert DEFAULT_RETRY.delay_s(3, lambda low, high: low) == 0.0
    assert DEFAULT_RETRY.delay_s(3, lambda low, high: high) == 4.0
    rng = random.Random(1)
    draws = [DEFAULT_RETRY.delay_s(2, rng.uniform) for _ in range(2000)]
    assert min(draws) < 0.2
    assert max(draws) > 1.8


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"base_delay_s": -1.0}, {"max_total_s": -0.5}]
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
