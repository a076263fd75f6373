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

import structlog

from contracts.digitalocean import DatabaseClusterCreate, DatabaseOptions
from contracts.errors import FieldError
from service.digitalocean import ApiError
from service.provisioning.ports import ClusterApi

__all__ = ["OfferCheck", "check_against_options"]

log = structlog.get_logger(__name__)


def check_against_options(
    cluster: DatabaseClusterCreate,
    options: DatabaseOptions,
    path: str = "$.cluster",
    now: datetime | None = None,
) -> list[FieldError]:
    """Region, version, node count and size the engine offers; versions still available."""
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
    elif cluster.version is not None:
        errors.extend(_availability(cluster, options, path, now or datetime.now(UTC)))
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


def _availability(
    cluster: DatabaseClusterCreate, options: DatabaseOptions, path: str, now: datetime
) -> list[FieldError]:
    for item in options.version_availability.get(cluster.engine, []):
        if item.version != cluster.version or not item.end_of_availability:
            continue
        try:
            end = datetime.fromisoformat(item.end_of_availability)
        except ValueError:
            return []
        if end <= now:
            return [
                FieldError(
                    f"{path}.version",
                    f"`{cluster.engine}` version {cluster.version!r} can no longer be "
                    f"created (end of availability {item.end_of_availability})",
                )
            ]
    return []


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
