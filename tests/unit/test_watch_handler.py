"""``WatchHandler``: one step of each watch in a batch, against fakes of our own ports.

The snapshot lists through ``ListingApi``; the clocks are fixed, so the due time a watch is
sent back with is exact: one poll interval after the start of the list it looked at.
"""

from __future__ import annotations

import pytest

from contracts.events import Failed, StatusChanged
from service.digitalocean.errors import ApiError, ServerError, Unauthorized
from service.provisioning.events import EventFactory
from service.provisioning.messages import WatchState
from service.provisioning.snapshot import ClusterSnapshot
from service.provisioning.watch import WatchHandler
from tests.fixtures.fakes import TAG, ListingApi, Recorded, cluster, creating_watch

NOW = 1_000_000.0  # the wall clock, fixed
MONOTONIC = 500.0  # the monotonic clock, fixed
POLL_S = 10.0


class Watching:
    """A handler with a snapshot over ``api``, and what a test reads after a batch."""

    def __init__(self, api: ListingApi, *, snapshot: bool = True) -> None:
        self.api = api
        self.recorded = Recorded()
        self.unauthorized = 0
        self.handler = WatchHandler(
            api=api,
            events=self.recorded,
            work=self.recorded,
            factory=EventFactory("/test"),
            snapshot=(
                ClusterSnapshot(api, TAG, max_age_s=0.0, clock=lambda: MONOTONIC, wall=lambda: NOW)
                if snapshot
                else None
            ),
            poll_interval_s=POLL_S,
            not_found_grace_s=30.0,
            finish_max_attempts=3,
            on_unauthorized=self._on_unauthorized,
            wall=lambda: NOW,
        )

    async def _on_unauthorized(self) -> None:
        self.unauthorized += 1


def watch(i: int, *, deadline: float = NOW + 3600, accepted_at: float = NOW - 600) -> WatchState:
    return creating_watch(i, deadline=deadline, accepted_at=accepted_at)


async def test_watches_of_clusters_still_creating_go_back_due_one_interval_after_the_list() -> None:
    watching = Watching(ListingApi([cluster(1), cluster(2)], delay_s=0.0))
    outcomes = await watching.handler.handle_batch([watch(1), watch(2)])
    assert [o.outcome for o in outcomes] == ["waiting", "waiting"]
    assert watching.api.list_calls == 1 and watching.api.get_calls == 0
    assert watching.recorded.events == []
    # The list started at NOW (the fixed clocks): both are due again one interval later.
    assert watching.recorded.due == [NOW + POLL_S, NOW + POLL_S]


async def test_a_failed_list_sends_the_watches_back_due_one_interval_from_now() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    api.fail = True
    watching = Watching(api)
    api.clusters = []  # looked at one by one, the cluster does not show: a fresh one's grace
    outcomes = await watching.handler.handle_batch([watch(1, accepted_at=NOW)])
    assert [o.outcome for o in outcomes] == ["waiting"]
    assert watching.recorded.due == [NOW + POLL_S]


async def test_without_a_list_watches_go_back_without_a_due_time() -> None:
    watching = Watching(ListingApi([cluster(1)], delay_s=0.0), snapshot=False)
    await watching.handler.handle_batch([watch(1)])
    assert watching.api.get_calls == 1
    assert watching.recorded.due == [None]


async def test_a_status_change_is_announced_and_the_watch_carries_the_new_status() -> None:
    watching = Watching(ListingApi([cluster(1, "resizing")], delay_s=0.0))
    (outcome,) = await watching.handler.handle_batch([watch(1)])
    assert outcome.outcome == "waiting"
    (event,) = watching.recorded.events
    assert isinstance(event, StatusChanged)
    assert (event.data.previous_status, event.data.status) == ("creating", "resizing")
    (sent_back,) = watching.recorded.scheduled
    assert sent_back.status == "resizing"


async def test_an_online_cluster_is_finished_and_its_connection_announced() -> None:
    online = cluster(1, "online")
    watching = Watching(ListingApi([online], delay_s=0.0))
    (outcome,) = await watching.handler.handle_batch([watch(1)])
    assert outcome.outcome == "ready"
    assert outcome.time_to_online_s == 600
    assert [e.routing_key for e in watching.recorded.events] == [
        "database.cluster.status_changed",
        "database.cluster.connection_ready",
    ]
    assert watching.recorded.scheduled == []


async def test_a_cluster_still_creating_past_its_deadline_fails_with_timeout() -> None:
    watching = Watching(ListingApi([cluster(1)], delay_s=0.0))
    (outcome,) = await watching.handler.handle_batch([watch(1, deadline=NOW - 1)])
    assert outcome.outcome == "failed"
    (event,) = watching.recorded.events
    assert isinstance(event, Failed)
    assert (event.data.reason, event.data.step) == ("timeout", "watch")
    assert watching.recorded.scheduled == []


async def test_a_cluster_gone_from_the_account_fails_the_watch() -> None:
    watching = Watching(ListingApi([], delay_s=0.0))
    (outcome,) = await watching.handler.handle_batch([watch(1)])
    assert outcome.outcome == "failed"
    (event,) = watching.recorded.events
    assert isinstance(event, Failed) and event.data.reason == "api_error"


@pytest.mark.parametrize(
    ("error", "reported"),
    [
        (Unauthorized(operation="get_cluster", status=401, message="bad token"), 1),
        (ServerError(operation="get_cluster", status=503, message="busy"), 0),
    ],
    ids=["401", "503"],
)
async def test_a_401_or_a_transient_error_keeps_the_watch(error: ApiError, reported: int) -> None:
    watching = Watching(ListingApi([cluster(1)], delay_s=0.0), snapshot=False)
    watching.api.get_errors = [error]
    (outcome,) = await watching.handler.handle_batch([watch(1)])
    assert outcome.outcome == "waiting"
    assert watching.unauthorized == reported  # a 401 is the token's, reported once
    assert len(watching.recorded.scheduled) == 1
    assert watching.recorded.events == []
