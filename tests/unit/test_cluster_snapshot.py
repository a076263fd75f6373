"""``ClusterSnapshot``: who shares a list call, who waits for a fresh one, what is read in full.

A recording fake of the API (our own seam, ``ClusterApi``) stands in for DigitalOcean; the
timings are real but short (lists at most every 0.1 s).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from contracts.digitalocean import DatabaseCluster
from service.digitalocean.errors import ServerError
from service.provisioning.snapshot import ClusterSnapshot
from tests.fixtures.fakes import TAG, ListingApi, ScanningApi, cluster

MAX_AGE_S = 0.1


async def test_batches_arriving_together_share_one_fresh_list() -> None:
    api = ListingApi([cluster(1), cluster(2)])
    snapshot = ClusterSnapshot(api, TAG, MAX_AGE_S)
    (first, started), (second, _) = await asyncio.gather(snapshot.fresh(), snapshot.fresh())
    assert first is second
    assert abs(started - time.time()) < 1.0  # when the list started, by the wall clock
    assert api.list_calls == 1
    assert set(first.statuses) == {"id-1", "id-2"}


async def test_a_later_batch_waits_for_a_list_started_after_it_arrived() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    snapshot = ClusterSnapshot(api, TAG, MAX_AGE_S, fresh_s=0.01, burst=1.0)
    await snapshot.fresh()
    api.clusters = [cluster(1, "online")]
    await asyncio.sleep(0.03)  # the first list is stale for a batch arriving now
    arrived = time.monotonic()
    listing, _ = await snapshot.fresh()
    waited = time.monotonic() - arrived
    assert listing.statuses["id-1"] == "online"
    assert api.list_calls == 2
    # With a bucket of one, lists start at most once per max_age: this one waited its turn.
    assert MAX_AGE_S - 0.03 - 0.02 <= waited <= MAX_AGE_S + 0.2


async def test_prechecks_take_any_list_younger_than_max_age() -> None:
    api = ListingApi([cluster(1)])
    snapshot = ClusterSnapshot(api, TAG, MAX_AGE_S)
    assert await snapshot.created_by(f"{TAG}:req:1") is not None
    assert await snapshot.creating_with(f"{TAG}:owner:x") == 0
    assert api.list_calls == 1
    await asyncio.sleep(MAX_AGE_S * 1.5)
    await snapshot.created_by(f"{TAG}:req:1")
    assert api.list_calls == 2


async def test_created_by_finds_the_cluster_of_a_request_tag() -> None:
    api = ListingApi([cluster(1), cluster(2)])
    snapshot = ClusterSnapshot(api, TAG, MAX_AGE_S)
    found = await snapshot.created_by(f"{TAG}:req:2")
    assert found is not None
    assert found.id == "id-2"
    assert await snapshot.created_by(f"{TAG}:req:3") is None
    assert api.get_calls == 0  # a full list holds the cluster already


async def test_a_lean_scan_reads_in_full_only_followed_clusters_past_creating() -> None:
    api = ScanningApi([cluster(1, "online"), cluster(2, "online"), cluster(3)])
    snapshot = ClusterSnapshot(api, TAG, MAX_AGE_S)
    snapshot.follow(["id-1", "id-3"])
    listing, _ = await snapshot.fresh()
    assert api.scans == 1
    assert listing.statuses == {"id-1": "online", "id-2": "online", "id-3": "creating"}
    assert set(listing.full) == {"id-1"}
    # A request tag of a cluster not read in full costs one GET, only when asked.
    found = await snapshot.created_by(f"{TAG}:req:2")
    assert found is not None and found.id == "id-2"
    assert api.get_calls == 1


async def test_forgotten_clusters_are_no_longer_read_in_full() -> None:
    api = ScanningApi([cluster(1, "online")])
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.0, fresh_s=0.0)
    snapshot.follow(["id-1"])
    assert set((await snapshot.fresh())[0].full) == {"id-1"}
    snapshot.forget("id-1")
    await asyncio.sleep(0.01)
    assert (await snapshot.fresh())[0].full == {}


async def test_a_failed_list_reaches_its_waiters_and_the_next_call_tries_again() -> None:
    api = ListingApi([cluster(1)])
    api.fail = True
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.0)
    results = await asyncio.gather(snapshot.fresh(), snapshot.fresh(), return_exceptions=True)
    assert all(isinstance(r, ServerError) for r in results)
    assert api.list_calls == 1
    assert set((await snapshot.fresh())[0].statuses) == {"id-1"}


@pytest.mark.parametrize("max_age_s", [0.0, MAX_AGE_S])
async def test_fresh_lists_start_one_per_max_age_after_a_burst(max_age_s: float) -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    snapshot = ClusterSnapshot(api, TAG, max_age_s, fresh_s=0.0, burst=2.0)
    started = time.monotonic()
    for _ in range(5):
        await snapshot.fresh()
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - started
    assert api.list_calls == 5
    # Two at once from the full bucket, then one per max_age: three waits.
    assert elapsed >= 3 * max_age_s * 0.9
    assert elapsed < 3 * max_age_s + 0.2


async def test_past_a_full_wave_of_waiting_watches_a_batch_takes_the_latest_list() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.5, fresh_s=0.0, burst=1.0, max_waiting=10)
    first, _ = await snapshot.fresh()
    waiting = asyncio.create_task(snapshot.fresh(8))  # fits the wave: waits for a new list
    await asyncio.sleep(0.05)
    assert not waiting.done()
    started = time.monotonic()
    latest, _ = await snapshot.fresh(5)  # 8 + 5 would not: takes what there is, at once
    assert time.monotonic() - started < 0.1
    assert latest is first
    assert api.list_calls == 1
    assert (await asyncio.wait_for(waiting, timeout=2.0))[0] is not first
    assert api.list_calls == 2


async def test_watches_due_after_one_list_share_the_next_however_late_they_come() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.2, fresh_s=0.0, burst=1.0)
    _, looked = await snapshot.fresh()  # the list a wave of watches looked at
    due = looked + 0.25  # they are due again a (short) poll interval later
    await asyncio.sleep(0.3)
    first, started = await snapshot.fresh(due=due)  # the wave's first batch: a new list
    assert started >= due - 0.06
    await asyncio.sleep(0.3)  # stragglers of the same wave, long after the list started
    straggler, _ = await snapshot.fresh(due=due)
    assert straggler is first
    assert api.list_calls == 2


async def test_a_due_time_in_the_future_asks_for_no_more_than_a_new_list() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.0)
    await asyncio.wait_for(snapshot.fresh(due=time.time() + 3600), timeout=1.0)
    assert api.list_calls == 1


async def test_a_first_look_joins_the_next_list_of_the_wave_due_soonest() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    period = 0.3
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.05, fresh_s=0.0, poll_interval_s=period)
    _, looked = await snapshot.fresh()  # a wave's list
    await asyncio.sleep(0.1)
    joining = asyncio.create_task(snapshot.fresh())  # a new cluster's first look
    await asyncio.sleep(0.1)
    assert not joining.done()  # waits for the wave instead of listing on its own
    assert api.list_calls == 1
    await asyncio.sleep(max(0.0, looked + period - time.time()))
    wave, started = await snapshot.fresh(due=looked + period)  # the wave comes back
    joined, joined_started = await asyncio.wait_for(joining, timeout=1.0)
    assert joined is wave
    assert joined_started == pytest.approx(started, abs=1e-3)  # the same list
    assert api.list_calls == 2


async def test_a_first_look_whose_wave_does_not_come_lists_on_its_own() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    period = 0.2
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.05, fresh_s=0.0, poll_interval_s=period)
    _, looked = await snapshot.fresh()  # a wave whose clusters all finish: it never returns
    listing, started = await asyncio.wait_for(snapshot.fresh(), timeout=1.0)
    assert api.list_calls == 2
    assert started >= looked + period  # it waited for the wave first
    assert listing.statuses == {"id-1": "creating"}


async def test_first_looks_past_the_join_limit_list_on_their_own_at_once() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    snapshot = ClusterSnapshot(
        api, TAG, max_age_s=0.0, fresh_s=0.0, poll_interval_s=10.0, max_new_waiting=3
    )
    await snapshot.fresh(due=time.time())  # a wave's list
    joining = asyncio.create_task(snapshot.fresh(2))  # joins the wave, ten seconds away
    await asyncio.sleep(0.05)
    arrived = time.monotonic()
    await asyncio.wait_for(snapshot.fresh(2), timeout=1.0)  # 2 + 2 > 3: a list of its own
    assert time.monotonic() - arrived < 0.5
    assert api.list_calls == 2
    assert not joining.done()
    joining.cancel()


async def test_without_a_poll_interval_first_looks_never_wait_for_a_wave() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.0, fresh_s=0.0)
    await snapshot.fresh()
    await asyncio.sleep(0.01)
    await asyncio.wait_for(snapshot.fresh(), timeout=0.5)
    assert api.list_calls == 2


async def test_with_no_wave_in_sight_a_first_look_lists_on_the_clocks_multiple() -> None:
    # Replicas agree on the wall clock's multiples of the poll interval, so the waves they
    # start apart coincide.
    api = ListingApi([cluster(1)], delay_s=0.0)
    period = 0.2
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.05, fresh_s=0.0, poll_interval_s=period)
    asked = time.time()
    _, started = await asyncio.wait_for(snapshot.fresh(), timeout=1.0)
    assert asked <= started <= asked + period + 0.05
    phase = started % period
    assert min(phase, period - phase) < 0.05
    assert api.list_calls == 1


async def test_the_waves_remembered_are_those_of_the_last_interval() -> None:
    api = ListingApi([cluster(1)], delay_s=0.0)
    period = 0.05
    snapshot = ClusterSnapshot(api, TAG, max_age_s=0.0, fresh_s=0.0, poll_interval_s=period)
    for _ in range(40):  # watches that only come back, a list each time
        await snapshot.fresh(due=time.time())
        await asyncio.sleep(0.01)
    assert api.list_calls >= 5
    assert len(snapshot._served_starts) <= 3  # not one per list ever made


def owned(i: int, owner: str, status: str) -> DatabaseCluster:
    base = cluster(i, status)
    return DatabaseCluster(
        id=base.id,
        name=base.name,
        engine=base.engine,
        num_nodes=1,
        size=base.size,
        region=base.region,
        status=status,
        tags=[*(base.tags or []), f"{TAG}:owner:{owner}"],
    )


@pytest.mark.parametrize("api_type", [ListingApi, ScanningApi], ids=["list", "scan"])
async def test_creating_with_counts_an_owners_clusters_still_creating(
    api_type: type[ListingApi],
) -> None:
    api = api_type(
        [
            owned(1, "a", "creating"),
            owned(2, "a", "creating"),
            owned(3, "a", "online"),
            owned(4, "b", "creating"),
            cluster(5),
        ]
    )
    snapshot = ClusterSnapshot(api, TAG, MAX_AGE_S)
    assert await snapshot.creating_with(f"{TAG}:owner:a") == 2
    assert await snapshot.creating_with(f"{TAG}:owner:b") == 1
    assert await snapshot.creating_with(f"{TAG}:owner:c") == 0
    assert api.list_calls == 1  # one recent list answers every question
