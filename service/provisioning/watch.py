"""Follow clusters from ``creating`` to ``online``, then finish them.

A watch is a message that cycles through a delay queue, so it lives in RabbitMQ and any
replica can take it. Due watches arrive in batches; a batch costs one list call, shared with
the batches around it (``ClusterSnapshot``), not one GET per cluster: that is what lets one
token follow thousands of clusters.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

import msgspec
import structlog
from msgspec import Struct

from contracts.digitalocean import (
    CaCertificate,
    DatabaseCluster,
    DatabaseUser,
    DatabaseUserCreate,
)
from contracts.events import ApiErrorDetail, Event, FailureReason
from service.digitalocean.errors import (
    ApiError,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unprocessable,
)
from service.provisioning.credentials import CredentialSeal, missing_passwords, with_passwords
from service.provisioning.events import EventFactory, api_error_detail
from service.provisioning.locks import KeyedLock
from service.provisioning.messages import WatchState
from service.provisioning.outcomes import WatchOutcome
from service.provisioning.ports import ClusterApi, EventBus, WorkQueues
from service.provisioning.snapshot import ClusterSnapshot
from service.tracing import watch_step_span

__all__ = ["WatchHandler", "WatchOutcome", "due_after"]

log = structlog.get_logger(__name__)

TRANSIENT: Final = (RateLimited, ServerError, TransportError)

Seen = tuple[str | None, DatabaseCluster | None]  # a cluster's status, and itself if at hand
Listed = dict[str, Seen]  # what a list showed of a batch's clusters, by id
# Watch steps in progress at once in one process, whatever the batches (publishes pipeline
# within them). Each holds its task, its publish and its event: a few KiB.
STEPS_AT_ONCE: Final = 64
# Finishing calls that a just-online cluster refuses are tried again within one step for
# this long, backing off from FINISH_BACKOFF_S to FINISH_BACKOFF_MAX_S (jittered); then the
# watch comes back one poll later (``PROVISIONER_FINISH_MAX_ATTEMPTS`` times at most).
FINISH_BUDGET_S: Final = 30.0
FINISH_BACKOFF_S: Final = 0.1
FINISH_BACKOFF_MAX_S: Final = 5.0
# A watch that lacks a password resets it only this long after it first found it missing
# (``reset_grace_s``; the service uses its finishing budget plus two poll intervals): another
# watch of the same cluster (a command or watch delivered twice) may hold the POST answers and
# be finishing meanwhile; it announces first, and the reset's announcement supersedes it.
RESET_GRACE_S: Final = FINISH_BUDGET_S + 20.0


def due_after(looked_at: float, poll_interval_s: float) -> float:
    """When a watch that looked at a list started at ``looked_at`` (wall clock) is due again:
    one poll interval after the list, not after the watch's own step, so that the watches one
    list served come back due together and share the next list."""
    return looked_at + poll_interval_s


class _StepFailed(Exception):
    """A finishing step failed with an API error; the passwords had before it."""

    def __init__(self, step: str, error: ApiError, kept: dict[str, str], reset: bool) -> None:
        super().__init__(step)
        self.step = step
        self.error = error
        self.kept = kept
        self.reset = reset


class _NoCredentials(Exception):
    """DigitalOcean showed no password for these users, not even for a reset."""

    def __init__(self, step: str, users: list[str], error: ApiError | None = None) -> None:
        super().__init__(step)
        self.step = step
        self.api_error = api_error_detail(error) if error is not None else None
        refused = f" (the reset was refused: {error.message})" if error is not None else ""
        self.message = (
            f"DigitalOcean showed no password for {', '.join(users)}, not even in the answer "
            f"to a password reset{refused}: the API token may read but not see credentials "
            "(a read-only token, or one without the database:view_credentials scope); give "
            "the service a token with read and write access to databases. The cluster is "
            "left as it is."
        )


class _ResetLater(Exception):
    """A watch lacks a password: it comes back before resetting it (``reset_grace_s``)."""

    def __init__(self, kept: dict[str, str], since: float) -> None:
        super().__init__("reset later")
        self.kept = kept
        self.since = since


class _Finished(Struct, frozen=True):
    """A finished cluster with every password in place, its CA, the passwords had from POST
    answers, and whether one came from a reset."""

    cluster: DatabaseCluster
    ca: CaCertificate
    kept: dict[str, str]
    reset: bool


_T = TypeVar("_T")


def _settling(exc: ApiError) -> bool:
    """An error a just-online cluster answers for a while (issue #493, PR #1027), or a
    transient one: the call is worth trying again."""
    return isinstance(exc, (NotFound, *TRANSIENT)) or exc.status in (409, 412)


class _Budget:
    """Retries of finishing calls with jittered exponential backoff, until ``deadline``
    (monotonic): past it the error goes up, and the watch comes back one poll later."""

    def __init__(self, deadline: float) -> None:
        self._deadline = deadline

    async def call(self, step: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        delay = FINISH_BACKOFF_S
        while True:
            try:
                return await attempt()
            except ApiError as exc:
                if not _settling(exc):
                    raise
                wait = delay * random.uniform(0.5, 1.5)
                if isinstance(exc, RateLimited):
                    wait = max(wait, exc.retry_after_s)
                if time.monotonic() + wait > self._deadline:
                    raise
                log.info("finish_step_retry", step=step, error=str(exc), wait_s=round(wait, 3))
                await asyncio.sleep(wait)
                delay = min(delay * 2, FINISH_BACKOFF_MAX_S)


def _routine(watch: WatchState, listed: Listed | None) -> bool:
    """True when this watch's step will most likely only send it back to wait: its cluster
    is as it was at the last look."""
    if watch.phase != "creating":
        return False
    seen = listed.get(watch.cluster_id) if listed is not None else None
    return seen is None or seen[0] in (None, watch.status)


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
        self._finish_budget_s = finish_budget_s
        self._reset_grace_s = reset_grace_s
        # Without the deployment's seal (unit tests), a key of this process: watches another
        # process sealed are then finished by a password reset.
        self._seal = seal if seal is not None else CredentialSeal(secrets.token_hex(32))
        self._finishing = KeyedLock()
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
        ``online``) is confirmed."""
        details: _Finished | _StepFailed | _NoCredentials | _ResetLater
        try:
            details = await self._details(watch, cluster)
        except (_StepFailed, _NoCredentials, _ResetLater) as failed:
            details = failed
        finally:
            if after is not None:
                await after
        if isinstance(details, _ResetLater):
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
        if isinstance(details, _NoCredentials):
            return await self._fail(
                watch,
                "credentials_unavailable",
                details.message,
                step=details.step,
                api_error=details.api_error,
            )
        if isinstance(details, _StepFailed):
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
            if _settling(exc):
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

    async def _details(self, watch: WatchState, cluster: DatabaseCluster | None) -> _Finished:
        """The cluster as it is once its users and databases exist, with every password
        filled in, and its CA. Raises ``_StepFailed`` naming the step an ``ApiError`` came
        from (with the passwords had so far), ``_NoCredentials`` when DigitalOcean shows no
        password even for a reset.

        One cluster is finished by one step at a time in this process (and a cluster has one
        watch): DigitalOcean fails concurrent user creations on one cluster with a 5xx."""
        kept = self._seal.open(watch.kept)
        reset = False
        budget = _Budget(time.monotonic() + self._finish_budget_s)
        step = "get_cluster"
        cluster_id = watch.cluster_id
        wanted = [u.name for u in watch.users]
        async with self._finishing.hold(cluster_id):
            try:
                if cluster is None or watch.users or watch.db_names:
                    cluster = await budget.call(step, lambda: self._api.get_cluster(cluster_id))
                have_users = {u.name for u in cluster.users or []}
                have_dbs = set(cluster.db_names or [])
                existing = [name for name in wanted if name in have_users]
                if missing_passwords(cluster, existing, kept):
                    # Before touching anything: another watch of this cluster, if there is
                    # one, holds the POST answers and finishes the cluster meanwhile.
                    self._reset_later(watch, kept)
                changed = False
                fresh: set[str] = set()  # passwords from this step's own POST answers
                for user in watch.users:
                    if user.name not in have_users:
                        step = f"add_user:{user.name}"
                        created = await budget.call(step, self._add_user(cluster_id, user))
                        if created is not None and created.password:
                            kept[user.name] = created.password
                            fresh.add(user.name)
                        changed = True
                for name in watch.db_names:
                    if name not in have_dbs:
                        step = f"add_database:{name}"
                        await budget.call(step, self._add_database(cluster_id, name))
                        changed = True
                if changed:  # the users' passwords come with the cluster (but MongoDB's)
                    step = "get_cluster"
                    cluster = await budget.call(step, lambda: self._api.get_cluster(cluster_id))
                if missing_passwords(cluster, wanted, kept):
                    self._reset_later(watch, kept)
                    # Shown by no answer this watch kept (an adopted MongoDB cluster, a lost
                    # answer): a reset is the only way to a working password. Every password
                    # the cluster does not show is reset together (but those this step just
                    # got), so that the announcement holds none that another watch of the
                    # same cluster may have reset since this one kept it.
                    for name in missing_passwords(cluster, wanted, {}):
                        if name in fresh:
                            continue
                        step = f"reset_auth:{name}"
                        again = await budget.call(step, self._reset(cluster_id, name))
                        reset = True
                        kept.pop(name, None)
                        if again.password:
                            kept[name] = again.password
                empty = missing_passwords(cluster, wanted, kept)
                if empty:
                    raise _NoCredentials(step, empty)
                step = "get_ca"
                ca = await budget.call(step, lambda: self._api.get_ca(cluster_id))
            except Forbidden as exc:
                if step.startswith("reset_auth:"):
                    raise _NoCredentials(step, [step.partition(":")[2]], exc) from exc
                raise _StepFailed(step, exc, kept, reset) from exc
            except ApiError as exc:
                raise _StepFailed(step, exc, kept, reset) from exc
        return _Finished(with_passwords(cluster, kept), ca, kept, reset)

    def _reset_later(self, watch: WatchState, kept: dict[str, str]) -> None:
        """Raise ``_ResetLater`` unless the watch has lacked a password for the grace."""
        now = self._wall()
        since = watch.missing_since if watch.missing_since is not None else now
        if now - since < self._reset_grace_s:
            raise _ResetLater(kept, since)

    def _add_user(
        self, cluster_id: str, user: DatabaseUserCreate
    ) -> Callable[[], Awaitable[DatabaseUser | None]]:
        async def add() -> DatabaseUser | None:
            try:
                return await self._api.add_user(cluster_id, user)
            except Unprocessable:
                # A redelivered watch (or an earlier try whose answer was lost) created it.
                log.info("user_exists", user=user.name)
                return None

        return add

    def _add_database(self, cluster_id: str, name: str) -> Callable[[], Awaitable[None]]:
        async def add() -> None:
            try:
                await self._api.add_database(cluster_id, name)
            except Unprocessable:
                log.info("database_exists", database=name)

        return add

    def _reset(self, cluster_id: str, name: str) -> Callable[[], Awaitable[DatabaseUser]]:
        async def reset() -> DatabaseUser:
            log.info("password_reset", user=name)
            return await self._api.reset_auth(cluster_id, name)

        return reset

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
