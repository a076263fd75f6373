"""Finishing an online cluster: its users and databases, every password, its CA.

Finishing is idempotent: a user or database that already exists (a redelivered watch) is
skipped, a 422 "already exists" counts as done. One cluster is finished one step at a time in
a process (DigitalOcean fails concurrent user creations on one cluster with a 5xx), and the
errors a just-online cluster answers for a while are retried within the step. Where the
passwords come from is told in ``credentials``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Final, TypeVar

import structlog
from msgspec import Struct

from contracts.digitalocean import CaCertificate, DatabaseCluster, DatabaseUser, DatabaseUserCreate
from service.digitalocean.errors import (
    ApiError,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    TransportError,
    Unprocessable,
)
from service.provisioning.credentials import CredentialSeal, missing_passwords, with_passwords
from service.provisioning.events import api_error_detail
from service.provisioning.locks import KeyedLock
from service.provisioning.messages import WatchState
from service.provisioning.ports import ClusterApi

__all__ = [
    "FINISH_BUDGET_S",
    "RESET_GRACE_S",
    "TRANSIENT",
    "Finished",
    "Finisher",
    "NoCredentials",
    "ResetLater",
    "StepFailed",
    "settling",
]

log = structlog.get_logger(__name__)

TRANSIENT: Final = (RateLimited, ServerError, TransportError)
"""Errors worth trying again later: the call may well succeed then."""
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


class StepFailed(Exception):
    """A finishing step failed with an API error; the passwords had before it."""

    def __init__(self, step: str, error: ApiError, kept: dict[str, str], reset: bool) -> None:
        super().__init__(step)
        self.step = step
        self.error = error
        self.kept = kept
        self.reset = reset


class NoCredentials(Exception):
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


class ResetLater(Exception):
    """A watch lacks a password: it comes back before resetting it (``reset_grace_s``)."""

    def __init__(self, kept: dict[str, str], since: float) -> None:
        super().__init__("reset later")
        self.kept = kept
        self.since = since


class Finished(Struct, frozen=True):
    """A finished cluster with every password in place, its CA, the passwords had from POST
    answers, and whether one came from a reset."""

    cluster: DatabaseCluster
    ca: CaCertificate
    kept: dict[str, str]
    reset: bool


_T = TypeVar("_T")


def settling(exc: ApiError) -> bool:
    """An error a just-online cluster answers for a while, or a transient one: the call is
    worth trying again (docs/reliability.md lists where the API does this)."""
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
                if not settling(exc):
                    raise
                wait = delay * random.uniform(0.5, 1.5)
                if isinstance(exc, RateLimited):
                    wait = max(wait, exc.retry_after_s)
                if time.monotonic() + wait > self._deadline:
                    raise
                log.info("finish_step_retry", step=step, error=str(exc), wait_s=round(wait, 3))
                await asyncio.sleep(wait)
                delay = min(delay * 2, FINISH_BACKOFF_MAX_S)


class Finisher:
    """Brings one online cluster to what its watch asked for (``details``)."""

    def __init__(
        self,
        api: ClusterApi,
        seal: CredentialSeal,
        *,
        budget_s: float = FINISH_BUDGET_S,
        reset_grace_s: float = RESET_GRACE_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self._seal = seal
        self._budget_s = budget_s
        self._reset_grace_s = reset_grace_s
        self._wall = wall
        self._finishing = KeyedLock()

    async def details(self, watch: WatchState, cluster: DatabaseCluster | None) -> Finished:
        """The cluster as it is once its users and databases exist, with every password
        filled in, and its CA. Raises ``StepFailed`` naming the step an ``ApiError`` came
        from (with the passwords had so far), ``NoCredentials`` when DigitalOcean shows no
        password even for a reset.

        The caller holds :meth:`hold` for the cluster around this and the announcement."""
        kept = self._seal.open(watch.kept)
        reset = False
        budget = _Budget(time.monotonic() + self._budget_s)
        step = "get_cluster"
        cluster_id = watch.cluster_id
        wanted = [u.name for u in watch.users]
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
                raise NoCredentials(step, empty)
            step = "get_ca"
            ca = await budget.call(step, lambda: self._api.get_ca(cluster_id))
        except Forbidden as exc:
            if step.startswith("reset_auth:"):
                raise NoCredentials(step, [step.partition(":")[2]], exc) from exc
            raise StepFailed(step, exc, kept, reset) from exc
        except ApiError as exc:
            raise StepFailed(step, exc, kept, reset) from exc
        return Finished(with_passwords(cluster, kept), ca, kept, reset)

    def hold(self, cluster_id: str) -> AbstractAsyncContextManager[None]:
        """One finishing of ``cluster_id`` at a time in this process, from its first step to
        its announcement: DigitalOcean fails concurrent user creations on one cluster with a
        5xx, and a password reset by another watch of the cluster must not come between this
        one's reset and its announcement (the latest announcement is the one that works)."""
        return self._finishing.hold(cluster_id)

    def _reset_later(self, watch: WatchState, kept: dict[str, str]) -> None:
        """Raise ``ResetLater`` unless the watch has lacked a password for the grace."""
        now = self._wall()
        since = watch.missing_since if watch.missing_since is not None else now
        if now - since < self._reset_grace_s:
            raise ResetLater(kept, since)

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
