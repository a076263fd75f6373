"""``ClusterSnapshot``: one list call of the managed clusters, shared by every caller it can
serve, and started at a bounded rate.

How the watches come to share lists, and why, is told in docs/architecture.md ("Watches travel
in waves"). The tuning constants below are the defaults; the service passes its own
``max_age_s`` and poll interval.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Final

from contracts.digitalocean import DatabaseCluster
from service.provisioning.ports import ClusterApi, ClusterListing
from service.provisioning.tags import owner_tag_prefix, request_tag_prefix

__all__ = ["ClusterSnapshot"]

# A batch without a due time takes a list that started at most this long before it came.
FRESH_S: Final = 0.1
# Replicas' clocks differ a little: a list this much older than a due time still counts.
DUE_SLACK_S: Final = 0.05
# A list started this little after another that served watches counts as that same list, so
# the watches it serves come back with the others instead of a moment apart.
SAME_LIST_S: Final = 0.2
# Lists that may start back to back; on average one per ``max_age_s``.
BURST: Final = 4.0
# Watches that may wait for a new list at once; a batch past that takes the latest list.
MAX_WAITING: Final = 400
# Watches without a due time that may wait for the next list of watches already coming back;
# a batch past that waits for a list of its own.
MAX_NEW_WAITING: Final = 200
# A cluster whose watch has not been seen for this long is no longer read in full.
FOLLOW_FOR_S: Final = 3600.0

Listed = tuple[ClusterListing, float]  # a list and when it started (wall clock)


class ClusterSnapshot:
    """The managed clusters as one list call saw them.

    * A command's pre-check (``created_by``, ``creating_with``) takes any list younger than
      ``max_age_s``.
    * A batch of watches (``fresh``) takes a list that started after the watches were due
      (``due``, from the watch's ``DUE_HEADER``), or it could miss a change by a poll
      interval. A batch without a due time (new watches) waits for the next list of the
      watches already coming back, at most one poll interval, or, with none in sight,
      takes a list that started at most ``fresh_s`` before it came.
    * Lists start one per ``max_age_s`` on average, ``burst`` at most back to back.

    The list is read lean: every cluster's status and request tag, and in full only the
    clusters past ``creating`` that this process follows (``follow``).
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
        max_waiting: int = MAX_WAITING,
        follow_for_s: float = FOLLOW_FOR_S,
        poll_interval_s: float | None = None,
        max_new_waiting: int = MAX_NEW_WAITING,
    ) -> None:
        self._api = api
        self._tag = tag
        self._request_tags = request_tag_prefix(tag)
        self._owner_tags = owner_tag_prefix(tag)
        self._max_age_s = max_age_s
        self._burst = burst
        self._tokens = burst  # lists that may start now, as of ``_tokens_at``
        self._tokens_at = clock()
        self._clock = clock
        self._wall = wall
        self._fresh_s = fresh_s
        self._max_waiting = max_waiting
        self._follow_for_s = follow_for_s
        self._listing: ClusterListing | None = None  # the latest list that landed
        self._taken_at = float("-inf")  # when the call behind ``_listing`` started
        self._pending: asyncio.Task[Listed] | None = None
        self._pending_start = float("-inf")
        self._started = 0  # lists started so far: who waits for which
        self._waiting = 0  # watches waiting for the next list to start
        self._next_start: asyncio.Future[None] | None = None  # resolved when a list starts
        self._followed: dict[str, float] = {}  # cluster id -> when a watch for it was seen
        self._poll_interval_s = poll_interval_s
        self._max_new_waiting = max_new_waiting
        self._new_waiting = 0  # watches without a due time waiting for another's next list
        # When the lists that served watches in the last poll interval started (monotonic):
        # those watches come back one interval later and start the next lists.
        self._served_starts: collections.deque[float] = collections.deque()
        self.calls = 0

    # --- what the callers ask ---------------------------------------------------------

    async def created_by(self, request_tag: str) -> DatabaseCluster | None:
        """The cluster carrying ``request_tag`` in a list younger than ``max_age_s``, or
        None; read in full (one GET when the list did not read it in full)."""
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

    async def fresh(self, watches: int = 1, *, due: float | None = None) -> Listed:
        """A list for a batch of ``watches`` watches that started no earlier than ``due``
        (wall clock), or without one, no earlier than ``fresh_s`` before this call; and when it
        started (wall clock). Waits at most ``max_age_s`` for a list to start. When
        ``max_waiting`` watches are waiting already, takes the latest list instead if it is
        younger than ``max_age_s``: more would wait than lists can serve."""
        if due is None:
            shared = await self._next_list_of_others(watches)
            if shared is not None:
                return shared
            after = self._clock() - self._fresh_s
        else:  # never a list from the future
            now = self._clock()
            after = min(now, due - self._wall() + now - DUE_SLACK_S)
        waits_for = -1  # the number of the list this caller waits for
        try:
            while True:
                if (at_hand := await self._at_hand(after)) is not None:
                    return at_hand
                pending = self._pending
                if waits_for != self._started:
                    overrun = self._waiting + watches > self._max_waiting
                    if (
                        overrun
                        and self._listing is not None
                        and self._clock() - self._taken_at <= self._max_age_s
                    ):
                        return self._served(self._listing, self._taken_at)
                    waits_for = self._started
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
            if waits_for == self._started:  # left before the list it waited for started
                self._waiting -= watches

    def follow(self, cluster_ids: Iterable[str]) -> None:
        """Watches for these clusters are in hand: read them in full once past ``creating``."""
        now = self._clock()
        for cluster_id in cluster_ids:
            # Interned, as the lean scan's ids are: one string per cluster in every index.
            self._followed[sys.intern(cluster_id)] = now

    def forget(self, cluster_id: str) -> None:
        """The watch for this cluster ended here."""
        self._followed.pop(cluster_id, None)

    # --- sharing lists ----------------------------------------------------------------

    async def _next_list_of_others(self, watches: int) -> Listed | None:
        """For watches without a due time: the next list of the watches coming back soonest.
        None when none are in sight, ``max_new_waiting`` watches wait so already, one of their
        lists just served (the caller takes it), or the list does not come in time."""
        now = self._clock()
        if self._served_starts and self._served_starts[-1] >= now - self._fresh_s:
            return None
        next_list = self._next_list_expected(now)
        if next_list is None or self._new_waiting + watches > self._max_new_waiting:
            return None
        expected, known = next_list
        after = expected - DUE_SLACK_S
        # Watches coming back start their list a little late; when none are known to come
        # (the clock's multiple), the caller starts it itself, on time.
        give_up_at = expected + max(self._max_age_s, self._fresh_s) if known else expected
        self._new_waiting += watches
        try:
            while True:
                if (at_hand := await self._at_hand(after)) is not None:
                    return at_hand
                wait_s = give_up_at - self._clock()
                if wait_s <= 0:
                    return None
                await self._until_a_list_starts(wait_s)
        finally:
            self._new_waiting -= watches

    def _next_list_expected(self, now: float) -> tuple[float, bool] | None:
        """When the next list of watches coming back is expected (monotonic), and whether any
        are known to come: one poll interval after the soonest list that served watches in
        the last interval; with none, the next multiple of the poll interval by the wall
        clock, which every replica agrees on, so that replicas end up sharing lists."""
        period = self._poll_interval_s
        if period is None or period <= 0:
            return None
        starts = self._served_starts
        while starts and starts[0] + period <= now:
            starts.popleft()
        if starts:
            return starts[0] + period, True
        return now + period - self._wall() % period, False

    async def _at_hand(self, after: float) -> Listed | None:
        """The list in progress or the latest one, if it started no earlier than ``after``."""
        pending = self._pending
        if pending is not None and self._pending_start >= after:
            return self._served(*await asyncio.shield(pending))
        if self._listing is not None and self._taken_at >= after:
            return self._served(self._listing, self._taken_at)
        return None

    async def _until_a_list_starts(self, timeout_s: float) -> None:
        """Wait until the next list starts, or ``timeout_s``."""
        if self._next_start is None:
            self._next_start = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._next_start), timeout_s)

    def _served(self, listing: ClusterListing, started: float) -> Listed:
        """A batch of watches took the list that started at ``started`` (monotonic): note it,
        since they come back one poll interval later; the list and its start by the wall
        clock (the time the watches' next due time is counted from)."""
        period = self._poll_interval_s
        if period is not None:
            starts = self._served_starts
            while starts and starts[0] + period <= started:
                starts.popleft()  # its next list is due already: nobody waits for it
            if starts and 0 < started - starts[-1] <= SAME_LIST_S:
                # A list a moment younger than one that served watches (a command's pre-check,
                # say) counts as that one: these watches come back with those, at the cost of
                # seeing the next list at most that moment later than they could.
                started = starts[-1]
            elif not starts or started > starts[-1]:
                starts.append(started)
        return listing, self._as_wall(started)

    def _as_wall(self, monotonic: float) -> float:
        return monotonic + self._wall() - self._clock()

    # --- the list call ----------------------------------------------------------------

    async def _recent(self) -> ClusterListing:
        if self._listing is not None and self._clock() - self._taken_at <= self._max_age_s:
            return self._listing
        pending = self._pending if self._pending is not None else self._start()
        listing, _ = await asyncio.shield(pending)
        return listing

    def _start(self) -> asyncio.Task[Listed]:
        started = self._clock()
        self._pending_start = started
        self._tokens = max(0.0, self._tokens_now(started) - 1.0)
        self._tokens_at = started
        task = asyncio.ensure_future(self._take(started))
        self._pending = task
        task.add_done_callback(self._landed)
        # Everyone waiting so far is served by this list.
        self._started += 1
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

    def _landed(self, task: asyncio.Task[Listed]) -> None:
        if self._pending is task:
            self._pending = None
        if not task.cancelled():
            task.exception()  # seen: every waiter gets it through its shield

    async def _take(self, started: float) -> Listed:
        self.calls += 1
        listing = await self._api.scan_clusters(
            self._tag,
            tag_prefix=self._request_tags,
            full=self._wanted,
            count_prefix=self._owner_tags,
        )
        horizon = started - self._follow_for_s
        self._followed = {k: seen for k, seen in self._followed.items() if seen >= horizon}
        if started >= self._taken_at:
            self._listing, self._taken_at = listing, started
        return listing, started

    def _wanted(self, cluster_id: str, status: str | None) -> bool:
        return status != "creating" and cluster_id in self._followed
