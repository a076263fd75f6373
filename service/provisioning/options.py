"""Check a create body against DigitalOcean's current offer (``GET /v2/databases/options``).

The offer changes rarely, so it is cached. When it cannot be had the check fails open:
DigitalOcean itself still refuses a bad region or size, and a provisioning service that
stops accepting work because an auxiliary endpoint is down would be worse.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import structlog

from contracts.digitalocean import DatabaseClusterCreate, DatabaseOptions
from contracts.errors import FieldError
from service.digitalocean.errors import ApiError
from service.provisioning.ports import ClusterApi

__all__ = ["NEAR_END_S", "OfferCheck", "availability_warnings", "check_against_options"]

log = structlog.get_logger(__name__)


def check_against_options(
    cluster: DatabaseClusterCreate,
    options: DatabaseOptions,
    path: str = "$.cluster",
    now: datetime | None = None,
) -> list[FieldError]:
    """Region, version, node count and size the engine offers. A version the options offer
    is accepted whatever its dates say (see ``availability_warnings``): the check is never
    stricter than the API."""
    offer = options.options.get(cluster.engine)
    if offer is None:
        return []  # an engine the options do not list: let the API decide
    errors: list[FieldError] = []
    if offer.regions and cluster.region not in offer.regions:
        errors.append(
            FieldError(
                f"{path}.region",
                f"`{cluster.engine}` is not offered in region {cluster.region!r}; "
                f"offered: {', '.join(offer.regions)}",
            )
        )
    if cluster.version is not None and offer.versions and cluster.version not in offer.versions:
        errors.append(
            FieldError(
                f"{path}.version",
                f"`{cluster.engine}` version {cluster.version!r} is not offered; "
                f"offered: {', '.join(offer.versions)}",
            )
        )
    layouts = {layout.num_nodes: layout.sizes for layout in offer.layouts}
    if layouts and cluster.num_nodes not in layouts:
        counts = ", ".join(str(n) for n in sorted(layouts))
        errors.append(
            FieldError(
                f"{path}.num_nodes",
                f"`{cluster.engine}` clusters take {counts} nodes, not {cluster.num_nodes}",
            )
        )
    elif layouts and cluster.size not in layouts[cluster.num_nodes]:
        errors.append(
            FieldError(
                f"{path}.size",
                f"size {cluster.size!r} is not offered for `{cluster.engine}` with "
                f"{cluster.num_nodes} node(s)",
            )
        )
    return errors


NEAR_END_S: Final = 90 * 86400.0
"""A version whose end of availability or end of life is this close is announced as near it."""


def availability_warnings(
    cluster: DatabaseClusterCreate, options: DatabaseOptions, now: datetime | None = None
) -> list[str]:
    """What the events say of the version asked for (the engine's default when none was):
    past or near its end of availability or end of life. Warnings, never errors: the
    options document is DigitalOcean's word on what it offers, and its dates age with the
    calendar (a version past its date was still offered; the API decides)."""
    offer = options.options.get(cluster.engine)
    version = cluster.version or (offer.default_version if offer is not None else None)
    if version is None:
        return []
    now = now or datetime.now(UTC)
    warnings: list[str] = []
    for item in options.version_availability.get(cluster.engine, []):
        if item.version != version:
            continue
        for label, stamp in (
            ("end of availability", item.end_of_availability),
            ("end of life", item.end_of_life),
        ):
            if not stamp:
                continue
            try:
                end = datetime.fromisoformat(stamp)
            except ValueError:
                continue
            if end.tzinfo is None:
                end = end.replace(tzinfo=UTC)
            if end <= now:
                warnings.append(
                    f"`{cluster.engine}` version {version!r} is past its {label} "
                    f"({stamp[:10]}); DigitalOcean may stop offering or supporting it"
                )
            elif (end - now).total_seconds() <= NEAR_END_S:
                warnings.append(
                    f"`{cluster.engine}` version {version!r} reaches its {label} on {stamp[:10]}"
                )
    return warnings


class OfferCheck:
    """The options, fetched once per ``ttl_s`` and shared by every concurrent command."""

    def __init__(
        self, api: ClusterApi, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._api = api
        self._ttl_s = ttl_s
        self._clock = clock
        self._options: DatabaseOptions | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def check(self, cluster: DatabaseClusterCreate) -> list[FieldError]:
        """The offer errors of ``cluster``; none when the options cannot be had."""
        options = await self._current()
        return [] if options is None else check_against_options(cluster, options)

    async def warnings(self, cluster: DatabaseClusterCreate) -> list[str]:
        """The version warnings of ``cluster`` (cached options; none when they cannot be
        had)."""
        options = await self._current()
        return [] if options is None else availability_warnings(cluster, options)

    async def _current(self) -> DatabaseOptions | None:
        if self._clock() - self._fetched_at < self._ttl_s:
            return self._options
        async with self._lock:
            if self._clock() - self._fetched_at < self._ttl_s:
                return self._options
            try:
                self._options = await self._api.get_options()
            except ApiError as exc:
                # Fail open, and do not ask again for a minute: every command would pay.
                log.warning("options_unavailable_checks_skipped", error=str(exc))
                self._fetched_at = self._clock() - self._ttl_s + min(60.0, self._ttl_s)
                return self._options
            self._fetched_at = self._clock()
            return self._options
