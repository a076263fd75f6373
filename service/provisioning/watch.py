"""Follow clusters from ``creating`` to ``online``, then finish them.

A watch is a message that cycles through a delay queue, so it lives in RabbitMQ and any
replica can take it. Due watches arrive in batches; a batch costs one list call, shared with
the batches around it (``ClusterSnapshot``), not one GET per cluster: that is what lets one
token follow thousands of clusters.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Final

import msgspec
import structlog
from opentelemetry.trace import Span, SpanKind

from contracts.digitalocean import (
    DatabaseCluster,
)
from contracts.events import ApiErrorDetail, Event, FailureReason
from contracts.names import WATCH_QUEUE
from service.digitalocean.errors import (
    ApiError,
    NotFound,
    Unauthorized,
)
from service.provisioning.credentials import CredentialSeal
from service.provisioning.events import EventFactory, api_error_detail
from service.provisioning.finishing import (
    FINISH_BUDGET_S,
    RESET_GRACE_S,
    TRANSIENT,
    Finished,
    Finisher,
    NoCredentials,
    ResetLater,
    StepFailed,
    settling,
)
from service.provisioning.messages import WatchState
from service.provisioning.outcomes import WatchOutcome
from service.provisioning.ports import ClusterApi, EventBus, WorkQueues
from service.provisioning.snapshot import ClusterSnapshot
from service.tracing import context_from_traceparent, messaging_span

__all__ = ["WatchHandler", "WatchOutcome", "due_after"]

log = structlog.get_logger(__name__)


Seen = tuple[str | None, DatabaseCluster | None]  # a cluster's status, and itself if at hand
Listed = dict[str, Seen]  # what a list showed of a batch's clusters, by id
# Watch steps in progress at once in one process, whatever the batches (publishes pipeline
# within them). Each holds its task, its publish and its event: a few KiB.
STEPS_AT_ONCE: Final = 64


def due_after(looked_at: float, poll_interval_s: float) -> float:
    """When a watch that looked at a list started at ``looked_at`` (wall clock) is due again:
    one poll interval after the list, not after the watch's own step, so that the watches one
    list served come back due together and share the next list."""
    return looked_at + poll_interval_s


def _routine(watch: WatchState, listed: Listed | None) -> bool:
    """True when this watch's step will most likely only send it back to wait: its cluster
    is as it was at the last look."""
    if watch.phase != "creating":
        return False
    seen = listed.get(watch.cluster_id) if listed is not None else None
    return seen is None or seen[0] in (None, watch.status)


def watch_step_span(watch: WatchState) -> AbstractContextManager[Span]:
    """The span of one watch step: a child of the command's span the watch carries."""
    return messaging_span(
        f"{WATCH_QUEUE} process",
        kind=SpanKind.CONSUMER,
        parent=context_from_traceparent(watch.traceparent, watch.tracestate),
        attributes={
            "messaging.operation.type": "process",
            "messaging.destination.name": WATCH_QUEUE,
            "provisioner.request_id": watch.request_id,
            "provisioner.cluster_id": watch.cluster_id,
            "provisioner.phase": watch.phase,
            "provisioner.status": watch.status or "",
        },
    )


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
        poll_interval_s: float,
        not_found_grace_s: float,
        finish_max_attempts: int,
        on_unauthorized: Callable[[], Awaitable[None]],
        wall: Callable[[], float] = time.time,
        steps_at_once: int = STEPS_AT_ONCE,
        finish_budget_s: float = FINISH_BUDGET_S,
        reset_grace_s: float = RESET_GRACE_S,
        seal: CredentialSeal | None = None,
    ) -> None:
        self._api = api
        self._events = events
        self._work = work
        self._factory = factory
        self._snapshot = snapshot  # None: per-cluster polling (accounts that cannot list)
        self._poll_interval_s = poll_interval_s
        self._grace_s = not_found_grace_s
        self._finish_max_attempts = finish_max_attempts
        # Without the deployment's seal (unit tests), a key of this process: watches another
        # process sealed are then finished by a password reset.
        self._seal = seal if seal is not None else CredentialSeal(secrets.token_hex(32))
        self._finisher = Finisher(
            api, self._seal, budget_s=finish_budget_s, reset_grace_s=reset_grace_s, wall=wall
        )
        self._on_unauthorized = on_unauthorized
        self._wall = wall
        # Shared by every batch: with the watch prefetch in hundreds, many small batches
        # can be in hand at once, and a limit per batch would bound nothing.
        self._steps = asyncio.Semaphore(steps_at_once)
        self._steps_at_once = steps_at_once

    async def handle_batch(
        self, watches: Sequence[WatchState], *, due: float | None = None
    ) -> list[WatchOutcome]:
        """Advance every watch; the outcome list is in the batch's order. ``due``: when the
        watches were due (wall clock, from ``DUE_HEADER``), if they say."""
        listed: Listed | None = None
        due_again: float | None = None  # for the watches sent back; None: none is known
        creating = [w.cluster_id for w in watches if w.phase == "creating"]
        if self._snapshot is not None and creating:
            self._snapshot.follow(creating)
            try:
                listing, started = await self._snapshot.fresh(len(creating), due=due)
            except ApiError as exc:
                log.warning("watch_list_failed", error=str(exc), batch=len(watches))
                # Each is looked at on its own now. With a due time on them, they do not wait
                # for others' next list when they come back, as watches without one may.
                due_again = due_after(self._wall(), self._poll_interval_s)
            else:
                due_again = due_after(started, self._poll_interval_s)
                # What the batch needs of the list, so that the list itself can go: with
                # thousands of clusters it is the largest thing a batch would hold.
                listed = {
                    i: (listing.statuses[i], listing.full.get(i))
                    for i in creating
                    if i in listing.statuses
                }
                del listing
        # A bounded number of steps at a time (``steps_at_once``, across batches), by workers
        # that take the batch's next watch when theirs is done: a task per watch waiting for
        # a slot would hold hundreds at once.
        # Watches with news go first (a cluster that changed status, one being finished): a
        # subscriber waits for their events, while the rest only go back to wait.
        results: list[WatchOutcome | Exception | None] = [None] * len(watches)
        queue = iter(sorted(enumerate(watches), key=lambda item: _routine(item[1], listed)))

        async def worker() -> None:
            for i, watch in queue:
                async with self._steps:
                    try:
                        with watch_step_span(watch):
                            results[i] = await self._advance(watch, listed, due_again)
                    except Exception as exc:
                        results[i] = exc

        workers = min(self._steps_at_once, len(watches))
        await asyncio.gather(*(worker() for _ in range(workers)))
        outcomes: list[WatchOutcome] = []
        for watch, result in zip(watches, results, strict=True):
            if result is None:  # pragma: no cover - every worker ran to the end
                raise RuntimeError("a watch step did not run")
            if isinstance(result, Exception):
                log.error(
                    "watch_step_crashed",
                    request_id=watch.request_id,
                    cluster_id=watch.cluster_id,
                    error=repr(result),
                )
                outcomes.append(WatchOutcome("requeue"))
            else:
                outcomes.append(result)
                if result.outcome in ("ready", "failed") and self._snapshot is not None:
                    self._snapshot.forget(watch.cluster_id)
        return outcomes

    async def _advance(
        self, watch: WatchState, listed: Listed | None, due: float | None
    ) -> WatchOutcome:
        with structlog.contextvars.bound_contextvars(
            request_id=watch.request_id,
            cluster_id=watch.cluster_id,
            correlation_id=watch.correlation_id,
        ):
            if watch.phase == "finishing":
                return await self._finish(watch, None, due)
            try:
                seen = await self._look(watch, listed)
            except NotFound:
                return await self._fail(
                    watch, "api_error", "the cluster no longer exists", step="watch"
                )
            except Unauthorized:
                # The service's token, not this cluster: keep the watch, stop the commands.
                await self._on_unauthorized()
                return await self._again(watch, due)
            except TRANSIENT as exc:
                log.info("watch_look_failed", error=str(exc))
                return await self._again(watch, due)
            if seen is None:  # not visible yet: a fresh cluster can 404 briefly
                return await self._again(watch, due)
            looked_status, cluster = seen
            status = looked_status or watch.status or "creating"
            announcing: asyncio.Task[None] | None = None
            if status != watch.status:
                changed = self._publish(
                    watch, self._factory.status_changed(watch, status, watch.status)
                )
                watch = msgspec.structs.replace(watch, status=status)
                if status == "online":
                    # Pipelined: the finishing calls need not wait for this event's confirm,
                    # only the next event about the cluster does.
                    announcing = asyncio.ensure_future(changed)
                else:
                    await changed
            if status == "online":
                return await self._finish(watch, cluster, due, after=announcing)
            if self._wall() >= watch.deadline:
                waited = self._wall() - watch.accepted_at
                return await self._fail(
                    watch,
                    "timeout",
                    f"the cluster was still {status!r} after {waited:.0f} s; it is left as it is",
                    step="watch",
                )
            return await self._again(watch, due)

    async def _look(self, watch: WatchState, listed: Listed | None) -> Seen | None:
        """The cluster's status and, when at hand, the cluster itself; None while a fresh
        cluster is not visible yet."""
        if listed is not None and watch.cluster_id in listed:
            return listed[watch.cluster_id]
        young = self._wall() - watch.accepted_at < self._grace_s
        if listed is not None and young:
            return None  # the list lags a fresh cluster; no extra call for it
        try:
            cluster = await self._api.get_cluster(watch.cluster_id)
        except NotFound:
            if young:
                return None
            raise
        return cluster.status, cluster

    async def _finish(
        self,
        watch: WatchState,
        cluster: DatabaseCluster | None,
        due: float | None,
        *,
        after: asyncio.Task[None] | None = None,
    ) -> WatchOutcome:
        """Create the requested users and databases, make sure of every password, fetch the
        CA, announce the details; nothing goes out before ``after`` (the event announcing
        ``online``) is confirmed. The cluster is held from the first step to the
        announcement (``Finisher.hold``)."""
        async with self._finisher.hold(watch.cluster_id):
            return await self._finish_held(watch, cluster, due, after=after)

    async def _finish_held(
        self,
        watch: WatchState,
        cluster: DatabaseCluster | None,
        due: float | None,
        *,
        after: asyncio.Task[None] | None = None,
    ) -> WatchOutcome:
        details: Finished | StepFailed | NoCredentials | ResetLater
        try:
            details = await self._finisher.details(watch, cluster)
        except (StepFailed, NoCredentials, ResetLater) as failed:
            details = failed
        finally:
            if after is not None:
                await after
        if isinstance(details, ResetLater):
            log.info(
                "password_reset_deferred", missing_for_s=round(self._wall() - details.since, 1)
            )
            return await self._again(
                msgspec.structs.replace(
                    watch,
                    phase="finishing",
                    missing_since=details.since,
                    kept=self._seal.seal(details.kept) or watch.kept,
                ),
                due,
            )
        if isinstance(details, NoCredentials):
            return await self._fail(
                watch,
                "credentials_unavailable",
                details.message,
                step=details.step,
                api_error=details.api_error,
            )
        if isinstance(details, StepFailed):
            step, exc = details.step, details.error
            if details.kept or details.reset:  # passwords had so far outlive this attempt
                watch = msgspec.structs.replace(
                    watch,
                    kept=self._seal.seal(details.kept),
                    credentials_reset=watch.credentials_reset or details.reset,
                )
            if isinstance(exc, Unauthorized):
                await self._on_unauthorized()
                return await self._again(msgspec.structs.replace(watch, phase="finishing"), due)
            if settling(exc):
                return await self._finish_later(watch, step, exc, due)
            return await self._fail(
                watch,
                "finishing",
                f"{step} failed: {exc.message}",
                step=step,
                api_error=api_error_detail(exc),
            )
        credentials = (
            self._seal.fingerprint(details.kept)
            if details.reset or watch.credentials_reset
            else None
        )
        event = self._factory.connection_ready(
            watch, details.cluster, details.ca.certificate, credentials=credentials
        )
        await self._publish(watch, event)
        took = self._wall() - watch.accepted_at
        log.info("connection_ready", seconds=round(took, 3), reset=credentials is not None)
        return WatchOutcome("ready", time_to_online_s=took)

    async def _finish_later(
        self, watch: WatchState, step: str, exc: ApiError, due: float | None
    ) -> WatchOutcome:
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
            msgspec.structs.replace(watch, phase="finishing", finish_attempts=attempts), due
        )

    async def _again(self, watch: WatchState, due: float | None) -> WatchOutcome:
        await self._work.schedule_watch(watch, due=due)
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
                producer=watch.producer,
            ),
        )
        return WatchOutcome("failed")

    async def _publish(self, watch: WatchState, event: Event) -> None:
        await self._events.publish(
            event, reply_to=watch.reply_to, correlation_id=watch.correlation_id
        )
