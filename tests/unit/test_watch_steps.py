"""``WatchHandler``: how many watch steps are in progress at once, across batches.

Each step in progress holds its task, its publish and its event; the watch prefetch puts
hundreds of watches in hand, often in many small batches, so the limit is per process.
A fake of our own seam (``WorkQueues``) holds every step at its publish until released.
"""

from __future__ import annotations

import asyncio
import time

from contracts.events import Event
from service.provisioning.events import EventFactory
from service.provisioning.messages import WatchState
from service.provisioning.watch import WatchHandler
from tests.fixtures.fakes import (
    HeldQueues,
    ListingApi,
    cluster,
    creating_watch,
    unauthorized_never,
)


class NoEvents:
    async def publish(
        self, event: Event, *, reply_to: str | None = None, correlation_id: str | None = None
    ) -> None:
        raise AssertionError("a creating cluster announces nothing")


def watch(i: int) -> WatchState:
    return creating_watch(i, deadline=time.time() + 3600, accepted_at=time.time() - 3600)


async def test_steps_in_progress_are_bounded_across_batches() -> None:
    api = ListingApi([cluster(i) for i in range(10)])
    queues = HeldQueues()
    handler = WatchHandler(
        api=api,
        events=NoEvents(),
        work=queues,
        factory=EventFactory("test"),
        snapshot=None,
        poll_interval_s=10.0,
        not_found_grace_s=0.0,
        finish_max_attempts=3,
        on_unauthorized=unauthorized_never,
        steps_at_once=3,
    )
    batches = [
        asyncio.ensure_future(handler.handle_batch([watch(i) for i in range(5)])),
        asyncio.ensure_future(handler.handle_batch([watch(i) for i in range(5, 10)])),
    ]
    async with queues.changed:
        await queues.changed.wait_for(lambda: queues.waiting == 3)
    for _ in range(20):  # turns of the loop in which a fourth step could have started
        await asyncio.sleep(0)
    assert queues.waiting == 3
    queues.released.set()
    outcomes = await asyncio.gather(*batches)
    assert queues.most == 3
    assert [[o.outcome for o in batch] for batch in outcomes] == [["waiting"] * 5] * 2
    assert sorted(w.cluster_id for w in queues.scheduled) == sorted(f"id-{i}" for i in range(10))
    assert api.get_calls == 10
