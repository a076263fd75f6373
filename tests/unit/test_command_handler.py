"""``CommandHandler``: every way a create can end, against fakes of our own ports.

The API fake (``ListingApi``) answers a create as each test scripts it and lists what it holds;
``Recorded`` keeps the events, the retries and the watches. What the handler returns (the
outcome and the delivery's disposition) is read as a value.
"""

from __future__ import annotations

import json
import time

import msgspec

from contracts.digitalocean import DatabaseCluster, DatabaseClusterCreate
from contracts.events import Failed, StatusChanged
from service.digitalocean.errors import (
    AmbiguousCreate,
    ServerError,
    Unauthorized,
    Unprocessable,
)
from service.provisioning.commands import CommandHandler
from service.provisioning.events import EventFactory
from service.provisioning.messages import ATTEMPT_HEADER, FIRST_ATTEMPT_HEADER, encode_stamp
from service.provisioning.options import OfferCheck
from service.provisioning.outcomes import CommandOutcome
from service.provisioning.ports import Delivery
from service.provisioning.tags import request_tag, spec_tag
from tests.fixtures.fakes import TAG, ListingApi, Recorded

PRODUCER = "team"
SERVICE_USER = "provisioner-service"
GRACE_S = 60.0
MAX_ATTEMPTS = 3
CLUSTER = {
    "name": "orders",
    "engine": "pg",
    "version": "17",
    "region": "nyc3",
    "size": "db-s-1vcpu-2gb",
    "num_nodes": 1,
}


class Handled:
    """One handler with its fakes, and what a test reads after a command."""

    def __init__(self, api: ListingApi) -> None:
        self.api = api
        self.recorded = Recorded()
        self.unauthorized = 0
        self.handler = CommandHandler(
            api=api,
            events=self.recorded,
            work=self.recorded,
            factory=EventFactory("/test"),
            offer=OfferCheck(api, ttl_s=60.0),
            snapshot=None,
            service_user=SERVICE_USER,
            managed_tag=TAG,
            create_timeout_s=3600.0,
            not_found_grace_s=GRACE_S,
            max_attempts=MAX_ATTEMPTS,
            max_message_bytes=65536,
            on_unauthorized=self._on_unauthorized,
        )

    async def _on_unauthorized(self) -> None:
        self.unauthorized += 1

    async def handle(self, **headers: object) -> CommandOutcome:
        body = json.dumps({"request_id": "r-1", "cluster": CLUSTER}).encode()
        delivery = Delivery(
            body=body, content_type="application/json", user_id=PRODUCER, headers=dict(headers)
        )
        return await self.handler.handle(delivery)

    def failed(self) -> Failed:
        (event,) = [e for e in self.recorded.events if isinstance(e, Failed)]
        return event


def existing(*tags: str, name: str = "orders") -> DatabaseCluster:
    """A cluster already on the account (``creating``), named ``name``, with ``tags``."""
    return DatabaseCluster(
        id="c-existing",
        name=name,
        engine="pg",
        num_nodes=1,
        size="db-s-1vcpu-2gb",
        region="nyc3",
        status="creating",
        tags=[TAG, *tags],
    )


def mine() -> str:
    return request_tag(TAG, PRODUCER, "r-1")


def my_spec() -> str:
    return spec_tag(TAG, msgspec.convert(CLUSTER, DatabaseClusterCreate))


def name_taken() -> Unprocessable:
    return Unprocessable(operation="create_cluster", status=422, message="name already in use")


async def test_a_new_command_creates_its_cluster_and_starts_watching_it() -> None:
    handled = Handled(ListingApi([]))
    assert await handled.handle() == CommandOutcome("accepted", "ack")
    (body,) = handled.api.created
    assert mine() in (body.tags or [])
    (event,) = handled.recorded.events
    assert isinstance(event, StatusChanged)
    (watch,) = handled.recorded.scheduled
    assert watch.cluster_id == "id-orders"
    assert handled.recorded.due == [None]  # a new watch has looked at no list yet


async def test_a_name_taken_by_this_requests_own_cluster_adopts_it() -> None:
    api = ListingApi([existing(mine(), my_spec())], delay_s=0.0)
    api.create = [name_taken()]
    handled = Handled(api)
    assert await handled.handle() == CommandOutcome("adopted", "ack")
    (watch,) = handled.recorded.scheduled
    assert watch.cluster_id == "c-existing"
    assert not [e for e in handled.recorded.events if isinstance(e, Failed)]


async def test_a_name_taken_by_someone_elses_cluster_fails_without_naming_it() -> None:
    other = request_tag(TAG, "another-team", "r-1")
    api = ListingApi([existing(other)], delay_s=0.0)
    api.create = [name_taken()]
    handled = Handled(api)
    assert await handled.handle() == CommandOutcome("failed", "ack")
    failed = handled.failed()
    assert failed.data.reason == "api_error"
    assert "taken by a cluster this request did not create" in failed.data.message
    assert "c-existing" not in failed.data.message and failed.data.cluster_id is None
    assert handled.recorded.scheduled == []


async def test_a_422_whose_cluster_is_not_listed_yet_is_retried_within_the_grace() -> None:
    api = ListingApi([], delay_s=0.0)
    api.create = [name_taken()]
    handled = Handled(api)
    assert await handled.handle() == CommandOutcome("retried", "ack")
    ((delivery, attempt, producer),) = handled.recorded.retried
    assert (attempt, producer) == (1, PRODUCER)
    # The first attempt's time travels with the retries: the grace counts from it.
    assert FIRST_ATTEMPT_HEADER in delivery.headers
    assert handled.recorded.events == []


async def test_a_422_whose_cluster_is_still_not_listed_after_the_grace_fails() -> None:
    api = ListingApi([], delay_s=0.0)
    api.create = [name_taken()]
    handled = Handled(api)
    long_ago = encode_stamp(time.time() - GRACE_S - 1)
    outcome = await handled.handle(**{FIRST_ATTEMPT_HEADER: long_ago, ATTEMPT_HEADER: 2})
    assert outcome == CommandOutcome("failed", "ack")
    assert handled.failed().data.reason == "api_error"
    assert handled.recorded.retried == []


async def test_a_request_id_reused_for_another_cluster_fails_with_request_conflict() -> None:
    other_spec = f"{TAG}:spec:{'0' * 32}"
    api = ListingApi([existing(mine(), other_spec)], delay_s=0.0)
    api.create = [name_taken()]
    handled = Handled(api)
    assert await handled.handle() == CommandOutcome("failed", "ack")
    failed = handled.failed()
    assert failed.data.reason == "request_conflict"
    assert failed.data.cluster_id == "c-existing"
    assert handled.recorded.scheduled == []


async def test_an_ambiguous_create_goes_through_the_delay_queue_not_a_replay() -> None:
    api = ListingApi([], delay_s=0.0)
    api.create = [
        AmbiguousCreate(operation="create_cluster", message="no answer", cluster_name="orders")
    ]
    handled = Handled(api)
    assert await handled.handle() == CommandOutcome("retried", "ack")
    assert len(api.created) == 1  # one POST: the next attempt meets the 422 and adopts
    ((_, attempt, _),) = handled.recorded.retried
    assert attempt == 1


async def test_a_transient_error_on_the_last_attempt_fails_with_retries_exhausted() -> None:
    attempt = MAX_ATTEMPTS
    api = ListingApi([], delay_s=0.0)
    api.create = [ServerError(operation="create_cluster", status=503, message="busy")]
    handled = Handled(api)
    assert await handled.handle(**{ATTEMPT_HEADER: attempt}) == CommandOutcome("failed", "ack")
    failed = handled.failed()
    assert (failed.data.reason, failed.data.attempts) == ("retries_exhausted", attempt)
    assert handled.recorded.retried == []


async def test_a_transient_error_before_the_last_attempt_is_retried() -> None:
    api = ListingApi([], delay_s=0.0)
    api.create = [ServerError(operation="create_cluster", status=503, message="busy")]
    handled = Handled(api)
    outcome = await handled.handle(**{ATTEMPT_HEADER: MAX_ATTEMPTS - 1})
    assert outcome == CommandOutcome("retried", "ack")
    ((_, attempt, _),) = handled.recorded.retried
    assert attempt == MAX_ATTEMPTS - 1


async def test_a_401_requeues_the_command_and_reports_the_token() -> None:
    api = ListingApi([], delay_s=0.0)
    api.create = [Unauthorized(operation="create_cluster", status=401, message="bad token")]
    handled = Handled(api)
    assert await handled.handle() == CommandOutcome("requeued", "requeue")
    assert handled.unauthorized == 1
    assert handled.recorded.events == [] and handled.recorded.retried == []
