"""``WatchHandler`` finishing a MongoDB-like cluster: users one at a time per cluster, the
errors of a just-online cluster retried within the step, passwords kept from POST answers or
had by a reset, and never an empty one announced.

A fake of our own seam (``ClusterApi``) plays a cluster whose GET hides every password, as
DigitalOcean's does for MongoDB; it remembers the passwords it handed out.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import msgspec

from contracts.digitalocean import (
    DatabaseCluster,
    DatabaseConnection,
    DatabaseName,
    DatabaseUser,
    DatabaseUserCreate,
)
from contracts.events import ConnectionReady, Event, Failed, event_id
from service.digitalocean.errors import NotFound, Unprocessable
from service.provisioning.credentials import CredentialSeal
from service.provisioning.events import EventFactory
from service.provisioning.messages import WatchState
from service.provisioning.watch import WatchHandler
from tests.fixtures.fakes import ListingApi, Recorded, unauthorized_never

CLUSTER_ID = "c-1"
TOKEN = "token-for-tests"
_counter = itertools.count(1)


class HidingApi(ListingApi):
    """One online cluster whose GET shows no password; POST answers do."""

    def __init__(self, *, empty: bool = False, settling_errors: int = 0) -> None:
        super().__init__([])
        self.passwords: dict[str, str] = {"doadmin": self._new()}
        self.empty = empty  # a token that may not see credentials
        self.settling_errors = settling_errors
        self.adding = 0
        self.most_adding = 0
        self.calls: list[str] = []

    def _new(self) -> str:
        return f"AVNS_{next(_counter):019d}"

    def _shown(self, password: str) -> str:
        return "" if self.empty else password

    async def get_cluster(self, cluster_id: str) -> DatabaseCluster:
        self.calls.append("get_cluster")
        conn = DatabaseConnection(
            uri="mongodb+srv://doadmin@h.example.com/admin?tls=true",
            host="h.example.com",
            user="doadmin",
            password="",
        )
        return DatabaseCluster(
            id=CLUSTER_ID,
            name="docs",
            engine="mongodb",
            region="nyc3",
            num_nodes=3,
            size="db-s-1vcpu-1gb",
            status="online",
            connection=conn,
            users=[
                DatabaseUser(name=n, role="primary" if n == "doadmin" else "normal", password="")
                for n in self.passwords
            ],
            db_names=["admin"],
        )

    async def add_user(self, cluster_id: str, user: DatabaseUserCreate) -> DatabaseUser:
        self.calls.append(f"add_user:{user.name}")
        if self.settling_errors:
            self.settling_errors -= 1
            raise NotFound(operation="add_user", status=404, message="cluster not found")
        if user.name in self.passwords:
            raise Unprocessable(operation="add_user", status=422, message="exists")
        self.adding += 1
        self.most_adding = max(self.most_adding, self.adding)
        await asyncio.sleep(0.01)
        self.adding -= 1
        self.passwords[user.name] = self._new()
        return DatabaseUser(name=user.name, password=self._shown(self.passwords[user.name]))

    async def reset_auth(self, cluster_id: str, user_name: str) -> DatabaseUser:
        self.calls.append(f"reset_auth:{user_name}")
        self.passwords[user_name] = self._new()
        return DatabaseUser(name=user_name, password=self._shown(self.passwords[user_name]))

    async def add_database(self, cluster_id: str, name: str) -> DatabaseName:
        return DatabaseName(name=name)


class Clock:
    """A wall clock a test moves by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def handler(
    api: HidingApi, recorded: Recorded, *, reset_grace_s: float = 0.0, wall: Clock | None = None
) -> WatchHandler:
    return WatchHandler(
        api=api,
        events=recorded,
        work=recorded,
        factory=EventFactory("/test"),
        snapshot=None,
        poll_interval_s=10.0,
        not_found_grace_s=0.0,
        finish_max_attempts=3,
        on_unauthorized=unauthorized_never,
        reset_grace_s=reset_grace_s,
        wall=wall or Clock(),
        seal=CredentialSeal(TOKEN),
    )


def finishing(users: list[str], kept: dict[str, str] | None = None, **extra: object) -> WatchState:
    watch = WatchState(
        request_id="r-1",
        cluster_id=CLUSTER_ID,
        name="docs",
        engine="mongodb",
        region="nyc3",
        status="online",
        deadline=time.time() + 3600,
        accepted_at=time.time(),
        phase="finishing",
        users=[DatabaseUserCreate(name=n) for n in users],
        kept=CredentialSeal(TOKEN).seal(kept or {}),
        producer="team",
    )
    return msgspec.structs.replace(watch, **extra)


def announced(recorded: Recorded) -> ConnectionReady:
    (ready,) = [e for e in recorded.events if isinstance(e, ConnectionReady)]
    return ready


def passwords_of(ready: ConnectionReady) -> dict[str, str]:
    return {u.name: u.password or "" for u in ready.data.users}


async def test_kept_and_posted_passwords_are_announced_without_a_reset() -> None:
    api, recorded = HidingApi(), Recorded()
    create_answer = {"doadmin": api.passwords["doadmin"]}
    outcomes = await handler(api, recorded).handle_batch(
        [finishing(["app", "etl"], kept=create_answer)]
    )
    assert [o.outcome for o in outcomes] == ["ready"]
    ready = announced(recorded)
    assert passwords_of(ready) == api.passwords
    assert ready.data.connection is not None
    assert ready.data.connection.password == api.passwords["doadmin"]
    assert f":{api.passwords['doadmin']}@" in (ready.data.connection.uri or "")
    assert not [c for c in api.calls if c.startswith("reset_auth")]
    assert ready.id == event_id("r-1", "connection_ready", "team")


async def test_two_watches_of_one_cluster_create_its_users_one_at_a_time() -> None:
    api, recorded, clock = HidingApi(), Recorded(), Clock()
    kept = {"doadmin": api.passwords["doadmin"]}
    watches = [finishing(["a", "b", "c"], kept=kept), finishing(["a", "b", "c"], kept=kept)]
    work = handler(api, recorded, reset_grace_s=60.0, wall=clock)
    outcomes = await work.handle_batch(watches)
    assert api.most_adding == 1
    assert [c for c in api.calls if c.startswith("add_user")] == [
        "add_user:a",
        "add_user:b",
        "add_user:c",
    ]
    # The second finds the users made and their passwords hidden: it leaves the first to
    # announce, and comes back.
    assert sorted(o.outcome for o in outcomes) == ["ready", "waiting"]
    (second,) = recorded.scheduled
    assert second.missing_since == clock.now
    clock.now += 59.0
    assert [o.outcome for o in await work.handle_batch([second])] == ["waiting"]
    assert recorded.scheduled[-1].missing_since == second.missing_since
    # Past the grace it resets every hidden password and announces them under another id:
    # the latest announcement is the one that works.
    clock.now += 2.0
    assert [o.outcome for o in await work.handle_batch([recorded.scheduled[-1]])] == ["ready"]
    first, latest = [e for e in recorded.events if isinstance(e, ConnectionReady)]
    assert first.id != latest.id
    assert passwords_of(latest) == api.passwords
    assert sorted(c for c in api.calls if c.startswith("reset_auth")) == [
        "reset_auth:a",
        "reset_auth:b",
        "reset_auth:c",
        "reset_auth:doadmin",
    ]


async def test_a_just_online_clusters_404s_are_retried_within_the_step() -> None:
    api, recorded = HidingApi(settling_errors=2), Recorded()
    kept = {"doadmin": api.passwords["doadmin"]}
    outcomes = await handler(api, recorded).handle_batch([finishing(["app"], kept=kept)])
    assert [o.outcome for o in outcomes] == ["ready"]
    assert api.calls.count("add_user:app") == 3
    assert recorded.scheduled == []  # no trip through the delay queue


async def test_a_password_no_answer_kept_is_reset_and_announced_under_its_own_id() -> None:
    api, recorded = HidingApi(), Recorded()
    outcomes = await handler(api, recorded).handle_batch([finishing(["app"])])
    assert [o.outcome for o in outcomes] == ["ready"]
    ready = announced(recorded)
    assert passwords_of(ready) == api.passwords
    assert api.calls.count("reset_auth:doadmin") == 1
    assert "reset_auth:app" not in api.calls  # its password came with its own POST
    assert ready.id != event_id("r-1", "connection_ready", "team")


async def test_a_watch_lacking_a_password_waits_the_grace_before_touching_the_cluster() -> None:
    api, recorded, clock = HidingApi(), Recorded(), Clock()
    api.passwords["app"] = "AVNS_made_by_another_watch"
    watch = finishing(["app"])  # adopted: no answer of the create at hand
    work = handler(api, recorded, reset_grace_s=10.0, wall=clock)
    first_seen = clock.now
    for _ in range(2):
        outcomes = await work.handle_batch([watch])
        assert [o.outcome for o in outcomes] == ["waiting"]
        (watch,) = recorded.scheduled[-1:]
        assert watch.missing_since == first_seen
        assert api.calls[-1] == "get_cluster"  # nothing was touched
        clock.now += 4.0
    clock.now += 4.0
    outcomes = await work.handle_batch([watch])
    assert [o.outcome for o in outcomes] == ["ready"]
    assert sorted(c for c in api.calls if c.startswith("reset_auth")) == [
        "reset_auth:app",
        "reset_auth:doadmin",
    ]
    assert passwords_of(announced(recorded)) == api.passwords


async def test_empty_passwords_even_after_a_reset_fail_naming_a_read_only_token() -> None:
    api, recorded = HidingApi(empty=True), Recorded()
    outcomes = await handler(api, recorded).handle_batch([finishing(["app"])])
    assert [o.outcome for o in outcomes] == ["failed"]
    (failed,) = recorded.events
    assert isinstance(failed, Failed)
    assert failed.data.reason == "credentials_unavailable"
    assert "read-only token" in failed.data.message
    assert failed.data.cluster_id == CLUSTER_ID


class SlowFirstAnnouncement(Recorded):
    """Events published as given, but the first ``connection_ready`` takes its time: it
    lets every other task run (up to a bound) before it goes out, as a publish waiting for
    its confirm does."""

    def __init__(self, api: HidingApi) -> None:
        super().__init__()
        self._api = api
        self._slowed = False

    async def publish(
        self, event: Event, *, reply_to: str | None = None, correlation_id: str | None = None
    ) -> None:
        if isinstance(event, ConnectionReady) and not self._slowed:
            self._slowed = True
            resets = self._api.calls.count("reset_auth:doadmin")
            for _ in range(200):  # room for another watch's whole finishing
                if self._api.calls.count("reset_auth:doadmin") > resets:
                    break
                await asyncio.sleep(0)
        await super().publish(event, reply_to=reply_to, correlation_id=correlation_id)


async def test_the_latest_announcement_carries_the_passwords_that_work() -> None:
    """Two watches of one cluster both reset its hidden password: the second reset may not
    come between the first's reset and its announcement, else the announcement that arrives
    last would carry a password the second reset had already replaced."""
    api, clock = HidingApi(), Clock()
    recorded = SlowFirstAnnouncement(api)
    long_missing = clock.now - 120.0
    watches = [finishing([], missing_since=long_missing) for _ in range(2)]
    work = handler(api, recorded, reset_grace_s=60.0, wall=clock)
    outcomes = await work.handle_batch(watches)
    assert [o.outcome for o in outcomes] == ["ready", "ready"]
    assert api.calls.count("reset_auth:doadmin") == 2
    first, latest = [e for e in recorded.events if isinstance(e, ConnectionReady)]
    assert passwords_of(first) != passwords_of(latest)
    assert passwords_of(latest) == api.passwords
