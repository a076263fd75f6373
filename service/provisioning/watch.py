"""Follow clusters from ``creating`` to ``online``, then finish them.

A watch is a message that cycles through a delay queue, so it lives in RabbitMQ and
any replica can take it. Due watches arrive in batches; one batch costs one
``GET /v2/databases?tag_name=...`` (shared by batches that arrive close together), not one
GET per cluster, which is what lets one token follow thousands of clusters.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal

import msgspec
import structlog
from msgspec import Struct

from contracts.digitalocean import DatabaseCluster, DatabaseUserCreate
from contracts.events import ApiErrorDetail, Event, FailureReason
from service.digitalocean import (
    ApiError,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unprocessable,
)
from service.provisioning.events import EventFactory, api_error_detail
from service.provisioning.messages import WatchState
from service.provisioning.ports import ClusterApi, EventBus, WorkQueues

__all__ = ["ClusterSnapshot", "WatchHandler", "WatchOutcome"]

log = structlog.get_logger(__name__)

TRANSIENT: Final = (RateLimited, ServerError, TransportError)
Outcome = Literal["waiting", "ready", "failed", "requeue"]


class WatchOutcome(Struct, frozen=True):
    """What became of one watch in a tick."""

    outcome: Outcome
    time_to_online_s: float | None = None


class ClusterSnapshot:
    """One list call shared by every batch that asks within ``max_age_s`` of it."""

    def __init__(
        self,
        api: ClusterApi,
        tag: str,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._tag = tag
        self._max_age_s = max_age_s
        self._clock = clock
        self._taken_at = float("-inf")
        self._clusters: dict[str, DatabaseCluster] = {}
        self._pending: asyncio.Future[dict[str, DatabaseCluster]] | None = None
        self.calls = 0

    async def clusters(self) -> dict[str, DatabaseCluster]:
        """The managed clusters by id, fresh within ``max_age_s``; one call in flight."""
        if self._clock() - self._taken_at <= self._max_age_s:
            return self._clusters
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._take())
        pending = self._pending
        try:
            return await asyncio.shield(pending)
        finally:
            if pending.done() and self._pending is pending:
                self._pending = None

    async def _take(self) -> dict[str, DatabaseCluster]:
        started = self._clock()
        self.calls += 1
        listed = await self._api.list_clusters(tag_name=self._tag)
        self._clusters = {c.id: c for c in listed}
        self._taken_at = started
        return self._clusters


class WatchHandler:
    """Advances each watch of a batch by one step."""

    def __init__(
        self,
        *,
        api: ClusterApi,
        events: EventBus,
        work: WorkQueues,
        factory: EventFactory,
        snapshot: ClusterSnapshot | None,
        not_found_grace_s: float,
        finish_max_attempts: int,
        on_unauthorized: Callable[[], Awaitable[None]],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._events = events
        self._work = work
        self._factory = factory
        self._snapshot = snapshot  # None: per-cluster polling (accounts that cannot list)
        self._grace_s = not_found_grace_s
        self._finish_max_attempts = finish_max_attempts
        self._on_unauthorized = on_unauthorized
        self._wall = wall

    async def handle_batch(self, watches: Sequence[WatchState]) -> list[WatchOutcome]:
        """Advance every watch; the outcome list is in the batch's order."""
        listed: dict[str, DatabaseCluster] | None = None
        if self._snapshot is not None and any(w.phase == "creating" for w in watches):
            try:
                listed = await self._snapshot.clusters()
            except ApiError as exc:
                log.warning("watch_list_failed", error=str(exc), batch=len(watches))
        results = await asyncio.gather(
            *(self._advance(w, listed) for w in watches), return_exceptions=True
        )
        outcomes: list[WatchOutcome] = []
        for watch, result in zip(watches, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                log.error(
                    "watch_step_crashed",
                    request_id=watch.request_id,
                    cluster_id=watch.cluster_id,
                    error=repr(result),
                )
                outcomes.append(WatchOutcome("requeue"))
            else:
                outcomes.append(result)
        return outcomes

    async def _advance(
        self, watch: WatchState, listed: dict[str, DatabaseCluster] | None
    ) -> WatchOutcome:
        with structlog.contextvars.bound_contextvars(
            request_id=watch.request_id,
            cluster_id=watch.cluster_id,
            correlation_id=watch.correlation_id,
        ):
            if watch.phase == "finishing":
                return await self._finish(watch, None)
            try:
                cluster = await self._look(watch, listed)
            except NotFound:
                return await self._fail(
                    watch, "api_error", "the cluster no longer exists", step="watch"
                )
            except Unauthorized:
                # The service's token, not this cluster: keep the watch, stop the commands.
                await self._on_unauthorized()
                return await self._again(watch)
            except TRANSIENT as exc:
                log.info("watch_look_failed", error=str(exc))
                return await self._again(watch)
            if cluster is None:  # not visible yet: a fresh cluster can 404 briefly
                return await self._again(watch)
            status = cluster.status or watch.status or "creating"
            if status != watch.status:
                await self._publish(
                    watch, self._factory.status_changed(watch, status, watch.status)
                )
                watch = msgspec.structs.replace(watch, status=status)
            if status == "online":
                return await self._finish(watch, cluster)
            if self._wall() >= watch.deadline:
                waited = self._wall() - watch.accepted_at
                return await self._fail(
                    watch,
                    "timeout",
                    f"the cluster was still {status!r} after {waited:.0f} s; it is left as it is",
                    step="watch",
                )
            return await self._again(watch)

    async def _look(
        self, watch: WatchState, listed: dict[str, DatabaseCluster] | None
    ) -> DatabaseCluster | None:
        if listed is not None and watch.cluster_id in listed:
            return listed[watch.cluster_id]
        young = self._wall() - watch.accepted_at < self._grace_s
        if listed is not None and young:
            return None  # the list lags a fresh cluster; no extra call for it
        try:
            return await self._api.get_cluster(watch.cluster_id)
        except NotFound:
            if young:
                return None
            raise

    async def _finish(self, watch: WatchState, cluster: DatabaseCluster | None) -> WatchOutcome:
        """Create the requested users and databases, fetch the CA, announce the details."""
        step = "get_cluster"
        try:
            if cluster is None or watch.users or watch.db_names:
                cluster = await self._api.get_cluster(watch.cluster_id)
            have_users = {u.name for u in cluster.users or []}
            have_dbs = set(cluster.db_names or [])
            changed = False
            for user in watch.users:
                if user.name not in have_users:
                    step = f"add_user:{user.name}"
                    await self._add_user(watch.cluster_id, user)
                    changed = True
            for name in watch.db_names:
                if name not in have_dbs:
                    step = f"add_database:{name}"
                    await self._add_database(watch.cluster_id, name)
                    changed = True
            if changed:  # the users' passwords come with the cluster
                step = "get_cluster"
                cluster = await self._api.get_cluster(watch.cluster_id)
            step = "get_ca"
            ca = await self._api.get_ca(watch.cluster_id)
        except Unauthorized:
            await self._on_unauthorized()
            return await self._again(msgspec.structs.replace(watch, phase="finishing"))
        except TRANSIENT as exc:
            return await self._finish_later(watch, step, exc)
        except ApiError as exc:
            return await self._fail(
                watch,
                "finishing",
                f"{step} failed: {exc.message}",
                step=step,
                api_error=api_error_detail(exc),
            )
        await self._publish(watch, self._factory.connection_ready(watch, cluster, ca.certificate))
        took = self._wall() - watch.accepted_at
        log.info("connection_ready", seconds=round(took, 3))
        return WatchOutcome("ready", time_to_online_s=took)

    async def _add_user(self, cluster_id: str, user: DatabaseUserCreate) -> None:
        try:
            await self._api.add_user(cluster_id, user)
        except Unprocessable:
            # A redelivered watch may have created it already; get_cluster will show it.
            log.info("user_exists", user=user.name)

    async def _add_database(self, cluster_id: str, name: str) -> None:
        try:
            await self._api.add_database(cluster_id, name)
        except Unprocessable:
            log.info("database_exists", database=name)

    async def _finish_later(self, watch: WatchState, step: str, exc: ApiError) -> WatchOutcome:
        attempts = watch.finish_attempts + 1
        if attempts >= self._finish_max_attempts:
            return await self._fail(
                watch,
                "finishing",
                f"{step} kept failing after {attempts} attempts: {exc}",
                step=step,
                api_error=api_error_detail(exc),
            )
        log.info("finish_retry_scheduled", step=step, attempt=attempts, error=str(exc))
        return await self._again(
            msgspec.structs.replace(watch, phase="finishing", finish_attempts=attempts)
        )

    async def _again(self, watch: WatchState) -> WatchOutcome:
        await self._work.schedule_watch(watch)
        return WatchOutcome("waiting")

    async def _fail(
        self,
        watch: WatchState,
        reason: FailureReason,
        message: str,
        *,
        step: str,
        api_error: ApiErrorDetail | None = None,
    ) -> WatchOutcome:
        log.warning("provisioning_failed", reason=reason, step=step, detail=message)
        await self._publish(
            watch,
            self._factory.failed(
                watch.request_id,
                reason,
                message,
                cluster_id=watch.cluster_id,
                step=step,
                api_error=api_error,
                metadata=watch.metadata,
            ),
        )
        return WatchOutcome("failed")

    async def _publish(self, watch: WatchState, event: Event) -> None:
        await self._events.publish(
            event, reply_to=watch.reply_to, correlation_id=watch.correlation_id
        )
