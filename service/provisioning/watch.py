"""Follow clusters from ``creating`` to ``online``, then finish them.

A watch is a message that cycles through a delay queue, so it lives in RabbitMQ and
any replica can take it. Due watches arrive in batches; one batch costs one
``GET /v2/databases?tag_name=...`` (shared by batches that arrive close together), not one
GET per cluster, which is what lets one token follow thousands of clusters.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Final, Literal, Protocol, TypeVar, runtime_checkable

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
from service.digitalocean import (
    ApiError,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unprocessable,
)
from service.digitalocean.client import ClusterScan
from service.provisioning.credentials import CredentialSeal, missing_passwords, with_passwords
from service.provisioning.events import EventFactory, api_error_detail
from service.provisioning.locks import KeyedLock
from service.provisioning.messages import WatchState
from service.provisioning.ports import ClusterApi, EventBus, WorkQueues
from service.tracing import watch_step_span

__all__ = [
    "DUE_HEADER",
    "LOOKED_AT",
    "ClusterScanner",
    "ClusterSnapshot",
    "WatchHandler",
    "WatchOutcome",
]

log = structlog.get_logger(__name__)

TRANSIENT: Final = (RateLimited, ServerError, TransportError)

DUE_HEADER: Final = "x-provisioner-due"
"""On a watch message: when it is due again (wall clock, seconds, as a string, since AMQP
would send a float as 32 bits): one poll interval after the start of the list it last saw.
A batch needs a list started after that, not after its own arrival, so that the watches one
list served, however spread out they come back, share the next list too."""
LOOKED_AT: ContextVar[float | None] = ContextVar("provisioner_watch_looked_at", default=None)
"""While a watch step runs: when the list it looked at started (wall clock); the publisher
turns it into the ``DUE_HEADER`` of the watch it sends back."""
Outcome = Literal["waiting", "ready", "failed", "requeue"]
Seen = tuple[str | None, DatabaseCluster | None]  # a cluster's status, and itself if at hand
Listed = dict[str, Seen]  # what a list showed of a batch's clusters, by id
# A watch on its first look takes a list that started at most this long before it came.
FRESH_S: Final = 0.1
# Clocks of replicas differ a little: a list this much older than a watch's due time does.
DUE_SLACK_S: Final = 0.05
# A batch served by a list this little younger than a wave's travels with that wave.
SNAP_S: Final = 0.2
# Lists for due watches that may start back to back; on average one per max age.
BURST: Final = 4.0
# Watches that may wait for a fresh list at once; more take the latest list instead.
WAVE: Final = 400
# First looks that may wait for a wave's next list at once; more start a wave of their own.
JOIN: Final = 200
# Watch steps in progress at once in one process, whatever the batches (publishes pipeline
# within them). Each holds its task, its publish and its event: a few KiB.
STEPS_AT_ONCE: Final = 64
# A cluster whose watch has not been seen for this long is no longer read in full.
FOLLOW_FOR_S: Final = 3600.0
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


class WatchOutcome(Struct, frozen=True):
    """What became of one watch in a tick."""

    outcome: Outcome
    time_to_online_s: float | None = None


@runtime_checkable
class ClusterScanner(Protocol):
    """An API that can read the cluster list lean (``DigitalOceanClient.scan_clusters``)."""

    async def scan_clusters(
        self,
        tag_name: str | None = None,
        *,
        tag_prefix: str | None = None,
        full: Callable[[str, str | None], bool] | None = None,
        count_prefix: str | None = None,
    ) -> ClusterScan: ...


class ClusterSnapshot:
    """The managed clusters as one list call saw them, shared by every caller it can serve.

    Two kinds of callers ask:

    * a command's precheck (``clusters``, ``created_by``) takes any list younger than
      ``max_age_s``;
    * a batch of due watches (``fresh``) needs a list that started after the watches were
      due (``DUE_HEADER``), or a watch could miss a change by one more poll interval. The
      watches that one list served are due together and share the next list too, however
      spread out they come back: they travel as a wave. A watch on its first look carries
      no due time. Given the poll interval (``period_s``), it joins the wave whose next
      list comes soonest: it waits for that list, at most a poll interval (its cluster was
      created a poll interval ago and is hardly ever ready yet), so that new clusters add
      no lists of their own however they trickle in. With no wave to join (or ``join``
      watches joining already), it needs a list that started at most ``fresh_s`` before
      it came and waits for the next one; the watches that list serves are handled, sent
      back and so come back together, as a tight wave: a new one. Lists
      start one per ``max_age_s`` on average (a bucket of ``burst`` lists that refills at
      that rate): a batch that finds the bucket empty waits for the next one, and so joins
      another wave; the burst lets waves that come a little early or late keep their own
      list instead of waiting for a slot on a fixed grid. Only when more than ``wave``
      watches would be waiting (more than lists can serve) does a batch take the latest
      list, as a command does.

    With an API that can scan (``ClusterScanner``) the list is read lean: every cluster's
    status and request tag, and in full only the clusters past ``creating`` that this
    process follows (``follow``): memory stays flat with thousands of clusters. Otherwise
    every cluster is read in full.
    """

    def __init__(
        self,
        api: ClusterApi,
        tag: str,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        wall: Callable[[], float] = time.time,
        fresh_s: float = FRESH_S,
        burst: float = BURST,
        wave: int = WAVE,
        follow_for_s: float = FOLLOW_FOR_S,
        period_s: float | None = None,
        join: int = JOIN,
    ) -> None:
        self._api = api
        self._tag = tag
        self._request_tags = f"{tag}:req:"  # commands.request_tag's shape
        self._owner_tags = f"{tag}:owner:"  # commands.owner_tag's shape
        self._max_age_s = max_age_s
        self._burst = burst
        self._tokens = burst  # lists that may start now, as of ``_tokens_at``
        self._tokens_at = clock()
        self._clock = clock
        self._wall = wall
        self._fresh_s = fresh_s
        self._wave_size = wave
        self._follow_for_s = follow_for_s
        self._listing = ClusterScan(statuses={}, tagged={}, full={})
        self._taken_at = float("-inf")  # when the call behind ``_listing`` started
        self._pending: asyncio.Task[tuple[ClusterScan, float]] | None = None
        self._pending_start = float("-inf")
        self._wave = 0  # counts the lists started for waiting watches
        self._waiting = 0  # watches waiting for the next list to start
        self._next_start: asyncio.Future[None] | None = None  # resolved when a list starts
        self._followed: dict[str, float] = {}  # cluster id -> when a watch for it was seen
        self._period_s = period_s
        self._join_limit = join
        self._joining = 0  # first looks waiting for a wave's next list
        self._wave_starts: collections.deque[float] = collections.deque()  # last period's
        self.calls = 0

    # --- what the callers ask ---------------------------------------------------------

    async def clusters(self) -> dict[str, DatabaseCluster]:
        """The managed clusters read in full, by id, from a list younger than
        ``max_age_s`` (every cluster, unless the list was scanned lean)."""
        return (await self._recent()).full

    async def created_by(self, request_tag: str) -> DatabaseCluster | None:
        """The cluster carrying ``request_tag`` in a list younger than ``max_age_s``, or
        None; read in full (one GET when the list was scanned lean)."""
        listing = await self._recent()
        cluster_id = listing.tagged_with(request_tag)
        if cluster_id is None:
            return None
        cluster = listing.full.get(cluster_id)
        if cluster is None:
            cluster = await self._api.get_cluster(cluster_id)
        return cluster if request_tag in (cluster.tags or ()) else None

    async def creating_with(self, tag: str, unlisted: Iterable[str] = ()) -> int:
        """How many clusters carrying ``tag`` (an owner tag) were ``creating`` in a list
        younger than ``max_age_s``, plus those of ``unlisted`` (ids of clusters known to carry
        it, created lately) that the list does not show yet."""
        listing = await self._recent()
        return listing.creating.get(tag, 0) + sum(
            1 for cluster_id in unlisted if cluster_id not in listing.statuses
        )

    async def fresh(
        self, watches: int = 1, *, due: float | None = None
    ) -> tuple[ClusterScan, float]:
        """A list that started no earlier than ``due`` (wall clock: when the batch's watches
        were due, see ``DUE_HEADER``), or without one, no earlier than ``fresh_s`` before this
        call; for a batch of ``watches`` due watches (see the class docstring). Returns the
        list and when it started (wall clock). Waits at most ``max_age_s`` for the list to
        start. When ``wave`` watches are waiting already, the batch takes the latest list if
        it is younger than ``max_age_s`` instead: past that many, waiting would hold more
        watches than lists can serve. A batch of first looks may join a wave instead (see the
        class docstring)."""
        if due is None:
            joined = await self._join(watches)
            if joined is not None:
                return joined
            after = self._clock() - self._fresh_s
        else:  # never a list from the future; a little slack for clocks between replicas
            now = self._clock()
            after = min(now, due - self._wall() + now - DUE_SLACK_S)
        wave = -1  # the wave this caller waits in
        try:
            while True:
                if (at_hand := await self._at_hand(after)) is not None:
                    return at_hand
                pending = self._pending
                if wave != self._wave:
                    overrun = self._waiting + watches > self._wave_size
                    if overrun and self._clock() - self._taken_at <= self._max_age_s:
                        return self._served(self._listing, self._taken_at)
                    wave = self._wave
                    self._waiting += watches
                if pending is not None:  # started too early for us: let it land, then ours
                    await asyncio.wait([pending])
                    continue
                wait_s = self._token_wait_s()
                if wait_s > 0:
                    await self._until_a_list_starts(wait_s)
                    continue
                self._start()
        finally:
            if wave == self._wave:  # left before the list it waited for started
                self._waiting -= watches

    async def _join(self, watches: int) -> tuple[ClusterScan, float] | None:
        """The next list of the wave due soonest, for a batch of first looks; None when
        there is no wave to join, too many watches are joining already, a wave's list that is
        fresh enough for them is at hand, or the wave does not come (then the batch has a list
        of its own)."""
        now = self._clock()
        if self._wave_starts and self._wave_starts[-1] >= now - self._fresh_s:
            return None  # a wave's list just served a batch: taking it is joining that wave
        next_wave = self._next_wave(now)
        if next_wave is None or self._joining + watches > self._join_limit:
            return None
        expected, known = next_wave
        after = expected - DUE_SLACK_S
        # A known wave's watches start its list when they come back, a little late; on the
        # clock's multiple nobody may come: then the batch starts it, on time.
        give_up_at = expected + max(self._max_age_s, self._fresh_s) if known else expected
        self._joining += watches
        try:
            while True:
                if (at_hand := await self._at_hand(after)) is not None:
                    return at_hand
                wait_s = give_up_at - self._clock()
                if wait_s <= 0:
                    return None
                await self._until_a_list_starts(wait_s)
        finally:
            self._joining -= watches

    async def _at_hand(self, after: float) -> tuple[ClusterScan, float] | None:
        """The list in progress or the latest one, if it started no earlier than ``after``."""
        pending = self._pending
        if pending is not None and self._pending_start >= after:
            return self._served(*await asyncio.shield(pending))
        if self._taken_at >= after:
            return self._served(self._listing, self._taken_at)
        return None

    async def _until_a_list_starts(self, timeout_s: float) -> None:
        """Wait until the next list starts, or ``timeout_s``."""
        if self._next_start is None:
            self._next_start = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._next_start), timeout_s)

    def _served(self, listing: ClusterScan, started: float) -> tuple[ClusterScan, float]:
        """A batch of watches looked at the list that started at ``started`` (monotonic):
        they come back together one poll interval later, as a wave; the list and its start
        by the wall clock."""
        if self._period_s is not None:
            starts = self._wave_starts
            while starts and starts[0] + self._period_s <= started:
                starts.popleft()  # its next list is due already: no first look waits for it
            if starts and 0 < started - starts[-1] <= SNAP_S:
                # A list a moment younger than a wave's (a command's pre-check, say): the
                # batch counts as looked at with that wave, so it comes back with it instead
                # of as a wave of its own a moment apart, at the cost of seeing the next
                # list at most that moment later than it could.
                started = starts[-1]
            elif not starts or started > starts[-1]:
                starts.append(started)
        return listing, self._as_wall(started)

    def _next_wave(self, now: float) -> tuple[float, bool] | None:
        """When the next list of a wave is expected (monotonic): one poll interval after a
        list that served a batch of watches within the last interval; the soonest such (and
        True). With no wave in sight, the next multiple of the poll interval by the wall clock:
        every replica agrees on it, so the waves that replicas start apart become one, and
        a wave's watches, whichever replica they come back to, share its list."""
        if self._period_s is None or self._period_s <= 0:
            return None
        starts = self._wave_starts
        while starts and starts[0] + self._period_s <= now:
            starts.popleft()
        if starts:
            return starts[0] + self._period_s, True
        return now + self._period_s - self._wall() % self._period_s, False

    def _as_wall(self, monotonic: float) -> float:
        return monotonic + self._wall() - self._clock()

    def follow(self, cluster_ids: Iterable[str]) -> None:
        """Watches for these clusters are in hand: read them in full once past ``creating``."""
        now = self._clock()
        for cluster_id in cluster_ids:
            # Interned, as the lean scan's ids are: one string per cluster in every index.
            self._followed[sys.intern(cluster_id)] = now

    def forget(self, cluster_id: str) -> None:
        """The watch for this cluster ended here."""
        self._followed.pop(cluster_id, None)

    # --- the list call ----------------------------------------------------------------

    async def _recent(self) -> ClusterScan:
        if self._clock() - self._taken_at <= self._max_age_s:
            return self._listing
        pending = self._pending if self._pending is not None else self._start()
        listing, _ = await asyncio.shield(pending)
        return listing

    def _start(self) -> asyncio.Task[tuple[ClusterScan, float]]:
        started = self._clock()
        self._pending_start = started
        self._tokens = max(0.0, self._tokens_now(started) - 1.0)
        self._tokens_at = started
        task = asyncio.ensure_future(self._take(started))
        self._pending = task
        task.add_done_callback(self._landed)
        # Everyone waiting so far is served by this list: a new wave begins.
        self._wave += 1
        self._waiting = 0
        if self._next_start is not None:
            self._next_start.set_result(None)
            self._next_start = None
        return task

    def _tokens_now(self, now: float) -> float:
        if self._max_age_s <= 0:
            return self._burst
        return min(self._burst, self._tokens + (now - self._tokens_at) / self._max_age_s)

    def _token_wait_s(self) -> float:
        """Seconds until a list may start (0: now)."""
        missing = 1.0 - self._tokens_now(self._clock())
        return max(0.0, missing * self._max_age_s)

    def _landed(self, task: asyncio.Task[tuple[ClusterScan, float]]) -> None:
        if self._pending is task:
            self._pending = None
        if not task.cancelled():
            task.exception()  # seen: every waiter gets it through its shield

    async def _take(self, started: float) -> tuple[ClusterScan, float]:
        self.calls += 1
        if isinstance(self._api, ClusterScanner):
            listing = await self._api.scan_clusters(
                self._tag,
                tag_prefix=self._request_tags,
                full=self._wanted,
                count_prefix=self._owner_tags,
            )
        else:
            listing = self._index(await self._api.list_clusters(tag_name=self._tag))
        horizon = started - self._follow_for_s
        self._followed = {k: seen for k, seen in self._followed.items() if seen >= horizon}
        if started >= self._taken_at:
            self._listing, self._taken_at = listing, started
        return listing, started

    def _wanted(self, cluster_id: str, status: str | None) -> bool:
        return status != "creating" and cluster_id in self._followed

    def _index(self, clusters: Sequence[DatabaseCluster]) -> ClusterScan:
        prefix = self._request_tags
        creating: dict[str, int] = {}
        for c in clusters:
            if c.status == "creating":
                for t in c.tags or ():
                    if t.startswith(self._owner_tags):
                        creating[t] = creating.get(t, 0) + 1
        return ClusterScan(
            statuses={c.id: c.status for c in clusters},
            tagged={hash(t): c.id for c in clusters for t in c.tags or () if t.startswith(prefix)},
            full={c.id: c for c in clusters},
            creating=creating,
        )


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
        creating = [w.cluster_id for w in watches if w.phase == "creating"]
        if self._snapshot is not None and creating:
            self._snapshot.follow(creating)
            try:
                listing, started = await self._snapshot.fresh(len(creating), due=due)
            except ApiError as exc:
                log.warning("watch_list_failed", error=str(exc), batch=len(watches))
                # Each is looked at on its own now: due again one interval from now, not
                # taken for a first look (which may wait for a wave) when it comes back.
                LOOKED_AT.set(self._wall())
            else:
                # The watches sent back are due again one interval after this list: with
                # that on them, the ones this list served come back as one wave.
                LOOKED_AT.set(started)
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
                            results[i] = await self._advance(watch, listed)
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

    async def _advance(self, watch: WatchState, listed: Listed | None) -> WatchOutcome:
        with structlog.contextvars.bound_contextvars(
            request_id=watch.request_id,
            cluster_id=watch.cluster_id,
            correlation_id=watch.correlation_id,
        ):
            if watch.phase == "finishing":
                return await self._finish(watch, None)
            try:
                seen = await self._look(watch, listed)
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
            if seen is None:  # not visible yet: a fresh cluster can 404 briefly
                return await self._again(watch)
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
                return await self._finish(watch, cluster, after=announcing)
            if self._wall() >= watch.deadline:
                waited = self._wall() - watch.accepted_at
                return await self._fail(
                    watch,
                    "timeout",
                    f"the cluster was still {status!r} after {waited:.0f} s; it is left as it is",
                    step="watch",
                )
            return await self._again(watch)

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
                )
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
                return await self._again(msgspec.structs.replace(watch, phase="finishing"))
            if _settling(exc):
                return await self._finish_later(watch, step, exc)
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
                producer=watch.producer,
            ),
        )
        return WatchOutcome("failed")

    async def _publish(self, watch: WatchState, event: Event) -> None:
        await self._events.publish(
            event, reply_to=watch.reply_to, correlation_id=watch.correlation_id
        )
