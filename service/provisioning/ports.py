"""The two seams of the domain: the DigitalOcean API and the broker."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, Protocol

from msgspec import Struct

from contracts.digitalocean import (
    CaCertificate,
    DatabaseCluster,
    DatabaseClusterCreate,
    DatabaseName,
    DatabaseOptions,
    DatabaseUser,
    DatabaseUserCreate,
)
from contracts.errors import FieldError
from contracts.events import Event
from service.provisioning.messages import WatchState

__all__ = [
    "ClusterApi",
    "ClusterListing",
    "Delivery",
    "EventBus",
    "ParkReason",
    "ParkingFull",
    "WorkQueues",
]

ParkReason = Literal["invalid", "too_large", "unreadable_properties", "parking_full"]
"""Why a command went to the parking queue (``parking_full``: it could not, and was dropped
after its ``rejected`` event)."""


class ParkingFull(Exception):
    """The parking queue is at its bound and the broker refused the message."""


class ClusterListing(Protocol):
    """One reading of the cluster list, lean: every cluster's status, who carries a request
    tag, and only some clusters in full (``service.digitalocean.scan.ClusterScan``)."""

    @property
    def statuses(self) -> Mapping[str, str | None]:
        """Every listed cluster: id -> status."""
        ...

    @property
    def full(self) -> Mapping[str, DatabaseCluster]:
        """The clusters read in full, by id."""
        ...

    @property
    def creating(self) -> Mapping[str, int]:
        """How many ``creating`` clusters carry each tag that starts with the scan's
        ``count_prefix``."""
        ...

    def tagged_with(self, tag: str) -> str | None:
        """The id of the cluster that carries ``tag`` (one starting with the scan's
        ``tag_prefix``), if any; almost certainly right, so check the cluster's tags."""
        ...


class ClusterApi(Protocol):
    """What the domain needs of DigitalOcean (``service.digitalocean.DigitalOceanClient``)."""

    async def create_cluster(self, body: DatabaseClusterCreate) -> DatabaseCluster: ...
    async def get_cluster(self, cluster_id: str) -> DatabaseCluster: ...
    async def list_clusters(self, tag_name: str | None = None) -> list[DatabaseCluster]: ...
    async def scan_clusters(
        self,
        tag_name: str | None = None,
        *,
        tag_prefix: str | None = None,
        full: Callable[[str, str | None], bool] | None = None,
        count_prefix: str | None = None,
    ) -> ClusterListing:
        """The list of the clusters tagged ``tag_name``, read lean: in full at least those
        for which ``full(id, status)`` is true."""
        ...

    async def get_options(self) -> DatabaseOptions: ...
    async def get_ca(self, cluster_id: str) -> CaCertificate: ...
    async def add_user(self, cluster_id: str, user: DatabaseUserCreate) -> DatabaseUser: ...
    async def add_database(self, cluster_id: str, name: str) -> DatabaseName: ...
    async def reset_auth(self, cluster_id: str, user_name: str) -> DatabaseUser: ...


class Delivery(Struct, kw_only=True):
    """A command as it came off the queue: the bytes and the AMQP properties we use."""

    body: bytes
    content_type: str | None = None
    headers: dict[str, object] = {}
    reply_to: str | None = None
    correlation_id: str | None = None
    message_id: str | None = None
    user_id: str | None = None  # the publisher's RabbitMQ user, checked by the broker
    app_id: str | None = None
    redelivered: bool = False
    # What the frame layer could not hand on: properties it could not read (the command is
    # refused for them), and the size of a body larger than it reads whole (``body`` is then
    # only its first bytes).
    unreadable: list[FieldError] = []
    truncated_from: int | None = None

    @property
    def size(self) -> int:
        """How many bytes the producer sent as the body."""
        return len(self.body) if self.truncated_from is None else self.truncated_from


class EventBus(Protocol):
    """Publishes events, confirmed by the broker before it returns."""

    async def publish(
        self, event: Event, *, reply_to: str | None = None, correlation_id: str | None = None
    ) -> None: ...


class WorkQueues(Protocol):
    """The broker-held state of the work: retries, watches and parked commands."""

    async def retry_command(self, delivery: Delivery, attempt: int, producer: str) -> None:
        """Send ``producer``'s command back through the delay for retry number ``attempt``."""
        ...

    async def schedule_watch(self, watch: WatchState, *, due: float | None = None) -> None:
        """Look at this cluster again after one poll interval; ``due`` (wall clock), when
        given, travels with the watch as the time it is due (``messages.DUE_HEADER``)."""
        ...

    async def park(
        self, delivery: Delivery, errors: list[FieldError], producer: str | None
    ) -> None:
        """Move a bad command to the parking queue with its reasons in the headers (and the
        producer that sent it, when known); raises ``ParkingFull`` when the queue is at its
        bound."""
        ...
