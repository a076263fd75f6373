"""The simulator's knobs: timing, rate limits and fault injection, all changeable at runtime."""

from __future__ import annotations

from datetime import date
from typing import Any

import msgspec

__all__ = ["SimulatorConfig"]


class SimulatorConfig(msgspec.Struct, kw_only=True):
    """How the simulated DigitalOcean API behaves.

    The simulator reads these fields on every request, so a test may change them between
    calls (``simulator.config.fail_500_fraction = 1.0``) without restarting anything.
    Fractions are probabilities in [0, 1], drawn from one ``random.Random(seed)``.
    """

    token: str = "sim-token"  # noqa: S105 (a throwaway default for a local fake API)
    """The only bearer token the API accepts."""

    ready_after_s: float = 2.0
    """Seconds a new cluster stays ``creating`` before it turns ``online``."""

    ready_jitter_s: float = 0.0
    """Uniform extra delay in [0, ready_jitter_s] added to each cluster's ``ready_after_s``."""

    stuck_fraction: float = 0.0
    """Fraction of new clusters that stay ``creating`` for ever (the API has no failed state)."""

    not_found_grace_s: float = 0.0
    """A new cluster answers 404 (and is missing from the list) for this long, as the real
    API sometimes does right after a create."""

    rate_limit_per_minute: int = 250
    """Requests per token accepted in any ``minute_window_s`` (the burst limit)."""

    rate_limit_per_hour: int = 5000
    """Requests per token accepted in any ``hour_window_s``; sent as ``ratelimit-limit``."""

    minute_window_s: float = 60.0
    """Length of the burst window; shorten it to compress time in tests and benchmarks."""

    hour_window_s: float = 3600.0
    """Length of the hourly window."""

    fail_500_fraction: float = 0.0
    """Fraction of accepted API requests answered 500 ``server_error`` (nothing changes)."""

    fail_429_fraction: float = 0.0
    """Fraction of accepted API requests answered 429 with ``retry-after: 1`` (nothing changes)."""

    latency_s: float = 0.0
    """Delay added before every API request is handled."""

    drop_fraction: float = 0.0
    """Fraction of accepted API requests whose connection is closed without an answer."""

    drop_after_effect_fraction: float = 1.0
    """Of the dropped requests, the fraction that took effect before the connection dropped.
    1.0 (the default) means a dropped create did create its cluster: the ambiguous case a
    client must resolve by looking the cluster up; 0.0 means nothing happened."""

    read_only_token: bool = False
    """The token may read but not see credentials: every password (and Kafka key) in every
    answer, POST or GET, is empty, as DigitalOcean answers a read-only token
    (terraform-provider-digitalocean issue #1165). Creates still work."""

    unsettled_s: float = 0.0
    """For this long after a cluster turns ``online``, creating users and databases and
    resetting passwords fail with 404, 412 or 5xx (one drawn per call), as the real API does
    while a new cluster settles (terraform-provider-digitalocean issue #493, PR #1027)."""

    user_create_s: float = 0.02
    """How long creating a user takes. Another user creation on the same cluster meanwhile
    fails with 500, as concurrent user creation does on the real API (PR #1027)."""

    options_date: date | None = None
    """The day ``GET /v2/databases/options`` is aged to (None: today, UTC): versions past
    their end of availability are not offered (see ``service.simulator.options``)."""

    seed: int | None = None
    """Seed of the random source behind every fraction, jitter and generated identifier
    that is not a secret (passwords and keys always come from ``secrets``)."""

    def __repr__(self) -> str:
        # The token may be a real one shared with the service (DIGITALOCEAN_TOKEN): never
        # show it, so a config printed by a failing test or a debugger leaks nothing.
        fields = ", ".join(f"{name}={value!r}" for name, value in self.__rich_repr__())
        return f"SimulatorConfig({fields})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        """What ``repr`` and rich show: every field, the token masked."""
        return [
            (name, "***" if name == "token" else getattr(self, name))
            for name in self.__struct_fields__
        ]
