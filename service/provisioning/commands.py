"""Handle one ``ProvisionDatabase`` command: validate, authorize, create (or adopt), watch.

The handler says what to do with the delivery (``ack`` or ``requeue``); the broker layer
does it. It acks only after every event and message the command produced was confirmed
by the broker, so a crash at any point redelivers the command, and adoption (below) makes
the redelivery harmless: one request, one cluster.

A request is a producer's: the RabbitMQ user that published it (the AMQP ``user_id``, which
the broker checks against the connection) together with its ``request_id``. Adoption, events
and replies never cross producers, and what a producer may ask for is its policy's to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import msgspec
import structlog
from msgspec import Struct

from contracts.commands import COMMAND_CONTENT_TYPE, ProvisionDatabase, decode_command
from contracts.digitalocean import DatabaseCluster
from contracts.errors import FieldError, InvalidCommand
from contracts.events import EVENT_CONTENT_TYPE, ApiErrorDetail
from contracts.sealed import SealedSecrets, SealedSecretsError, seal_secrets
from service.digitalocean.errors import (
    AmbiguousCreate,
    ApiError,
    RateLimited,
    ServerError,
    TransportError,
    Unauthorized,
    Unprocessable,
)
from service.provisioning.credentials import CredentialSeal, passwords_of
from service.provisioning.events import EventFactory, api_error_detail
from service.provisioning.locks import KeyedLock
from service.provisioning.messages import (
    APP_ID,
    ATTEMPT_HEADER,
    FIRST_ATTEMPT_HEADER,
    OVERSIZED_CONTENT_TYPE,
    PRODUCER_HEADER,
    OversizedRecord,
    WatchState,
    decode_stamp,
    encode_oversized,
    encode_stamp,
    request_id_in_prefix,
)
from service.provisioning.options import OfferCheck
from service.provisioning.outcomes import CommandOutcome, CommandResult
from service.provisioning.policy import Policy
from service.provisioning.ports import (
    ClusterApi,
    Delivery,
    EventBus,
    ParkingFull,
    ParkReason,
    WorkQueues,
)
from service.provisioning.snapshot import ClusterSnapshot
from service.provisioning.tags import owner_tag, request_tag, spec_tag

__all__ = ["CommandHandler", "CommandOutcome", "owner_tag", "request_tag", "spec_tag"]

log = structlog.get_logger(__name__)

TRANSIENT: Final = (RateLimited, ServerError, TransportError, AmbiguousCreate)
PRECHECK_TIMEOUT_S: Final = 5.0
RECENT_CLUSTERS: Final = 10_000
JSON_TYPES: Final = frozenset({COMMAND_CONTENT_TYPE, "text/json"})
# What an oversized command's parked record keeps of its body, for a person to recognise it.
OVERSIZED_HEAD_BYTES: Final = 1024


def _attempt(delivery: Delivery) -> int:
    value = delivery.headers.get(ATTEMPT_HEADER, 1)
    try:
        return max(1, int(str(value)))
    except ValueError:
        return 1


class _Peek(Struct):
    """What a rejected command can still tell: its request_id and metadata, if readable."""

    request_id: str | None = None
    metadata: dict[str, str] | None = None


def _peek(body: bytes, max_bytes: int) -> _Peek:
    # Each part is echoed only when it is valid on its own, so an event never carries
    # something the contract would refuse.
    if len(body) > max_bytes:
        return _Peek()
    try:
        raw = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return _Peek()
    if not isinstance(raw, dict):
        return _Peek()
    peek = _Peek()
    rid, metadata = raw.get("request_id"), raw.get("metadata")
    if isinstance(rid, str) and 0 < len(rid) <= 128 and rid.isprintable():
        peek.request_id = rid
    if (
        isinstance(metadata, dict)
        and len(metadata) <= 64
        and all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 128 and len(v) <= 1024
            for k, v in metadata.items()
        )
    ):
        peek.metadata = metadata
    return peek


def _too_large(size: int, limit: int) -> FieldError:
    return FieldError("$", f"message is {size} bytes; the limit is {limit}")


def _oversized_record(
    delivery: Delivery, errors: list[FieldError], request_id: str | None, producer: str | None
) -> Delivery:
    """What is parked of a command over the size limit: who, which request, how big, why,
    and the first bytes; bounded whatever the producer sent."""
    record = OversizedRecord(
        reason="; ".join(str(e) for e in errors),
        size=delivery.size,
        producer=producer,
        request_id=request_id,
        content_type=delivery.content_type,
        head=delivery.body[:OVERSIZED_HEAD_BYTES].decode("utf-8", "replace"),
    )
    return msgspec.structs.replace(
        delivery,
        body=encode_oversized(record),
        content_type=OVERSIZED_CONTENT_TYPE,
        truncated_from=None,
    )


class _ListFailed(Exception):
    """DigitalOcean refused the list of a producer's clusters that its policy needs."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def _header_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value if isinstance(value, str) and value else None


class CommandHandler:
    """Turns a delivery into a cluster being watched, a rejection or a failure."""

    def __init__(
        self,
        *,
        api: ClusterApi,
        events: EventBus,
        work: WorkQueues,
        factory: EventFactory,
        offer: OfferCheck,
        snapshot: ClusterSnapshot | None,
        service_user: str,
        policy: Policy | None = None,
        managed_tag: str,
        create_timeout_s: float,
        not_found_grace_s: float,
        max_attempts: int,
        max_message_bytes: int,
        on_unauthorized: Callable[[], Awaitable[None]],
        on_parked: Callable[[ParkReason], None] | None = None,
        wall: Callable[[], float] = time.time,
        seal: CredentialSeal | None = None,
    ) -> None:
        self._api = api
        # Without the deployment's seal (unit tests), a key of this process: another replica
        # then finishes the cluster by a password reset.
        self._seal = seal if seal is not None else CredentialSeal(secrets.token_hex(32))
        self._events = events
        self._work = work
        self._factory = factory
        self._offer = offer
        self._snapshot = snapshot  # None: the account may not list; rely on the 422 alone
        # The service's own RabbitMQ user: on its retries the producer travels in a header.
        self._service_user = service_user
        self._policy = policy if policy is not None else Policy()
        self._busy = KeyedLock()
        self._one_create = KeyedLock()
        # Clusters this replica created or adopted lately, by request tag: answers the
        # pre-check for a repeated request_id before any list can show the cluster.
        self._recent: OrderedDict[str, DatabaseCluster] = OrderedDict()
        self._managed_tag = managed_tag
        self._create_timeout_s = create_timeout_s
        self._not_found_grace_s = not_found_grace_s
        self._max_attempts = max_attempts
        self._max_bytes = max_message_bytes
        self._on_unauthorized = on_unauthorized
        self._on_parked = on_parked
        self._wall = wall

    async def handle(self, delivery: Delivery) -> CommandOutcome:
        """Validate, authorize and provision; never raises for anything the command contains."""
        if (
            delivery.user_id == self._service_user
            and delivery.app_id == APP_ID
            and delivery.content_type == EVENT_CONTENT_TYPE
        ):
            # One of the service's own events routed back into the command queue (a producer's
            # queue may dead-letter into provisioner.commands): no command, and no event about
            # it that could loop again. It goes to the dead-letter queue, for a person.
            log.warning("own_event_looped_back", message_id=delivery.message_id)
            return CommandOutcome("rejected", "reject")
        producer = self._producer(delivery)
        errors: list[FieldError] = []
        if producer is None:
            errors.append(
                FieldError(
                    "properties.user_id",
                    "required: publish the command with the AMQP user_id property set to the "
                    "RabbitMQ user you connect as (RabbitMQ checks it; it says whose request "
                    "this is)",
                )
            )
        try:
            command = self._decode(delivery)
        except InvalidCommand as exc:
            await self._reject(delivery, errors + exc.errors, producer)
            return CommandOutcome("rejected", "ack")
        if producer is not None:
            errors += self._authorize(producer, command, delivery)
        warnings: list[str] = []
        if not errors:
            errors += await self._offer.check(command.cluster)
            warnings = await self._offer.warnings(command.cluster)
        if producer is None or errors:
            await self._reject(delivery, errors, producer)
            return CommandOutcome("rejected", "ack")
        structlog.contextvars.bind_contextvars(
            request_id=command.request_id,
            producer=producer,
            correlation_id=delivery.correlation_id,
        )
        # One command per request at a time in this replica: a second one (a producer's
        # retry, a reused id) then sees what the first created instead of racing it.
        async with self._busy.hold(request_tag(self._managed_tag, producer, command.request_id)):
            return await self._provision(delivery, command, producer, _attempt(delivery), warnings)

    def _producer(self, delivery: Delivery) -> str | None:
        """Whose command this is: its ``user_id``, which RabbitMQ vouches for; on a copy the
        service sent on (a retry) the producer it names, believed because only the service's
        own user can publish with the service's ``user_id``."""
        user = delivery.user_id or None
        if user is not None and user == self._service_user:
            return _header_text(delivery.headers.get(PRODUCER_HEADER)) or user
        return user

    def _authorize(
        self, producer: str, command: ProvisionDatabase, delivery: Delivery
    ) -> list[FieldError]:
        """What the deployment forbids this producer, before any API call."""
        errors: list[FieldError] = []
        managed = self._managed_tag.lower()
        for i, tag in enumerate(command.cluster.tags or []):
            if tag.lower() == managed or tag.lower().startswith(managed + ":"):
                errors.append(
                    FieldError(
                        f"$.cluster.tags[{i}]",
                        f"tag {tag[:64]!r} is reserved: the service marks its clusters with "
                        f"`{self._managed_tag}` and `{self._managed_tag}:*` tags",
                    )
                )
        key = command.recipient_public_key
        if key is None and self._factory.secrets == "sealed":
            errors.append(
                FieldError(
                    "$.recipient_public_key",
                    "required: this service sends credentials only sealed "
                    "(PROVISIONER_EVENT_SECRETS=sealed); add the base64 X25519 public key "
                    "that `provisioner keygen` prints",
                )
            )
        elif key is not None:
            try:
                seal_secrets(SealedSecrets(), key)
            except SealedSecretsError as exc:
                errors.append(FieldError("$.recipient_public_key", str(exc)))
        errors += self._policy.check(producer, command, delivery.reply_to)
        return errors

    def _decode(self, delivery: Delivery) -> ProvisionDatabase:
        if delivery.unreadable or delivery.size > self._max_bytes:
            # Properties the frame layer could not read make the whole message suspect, and
            # a body over the limit is not read at all (often only its head was kept).
            errors = list(delivery.unreadable)
            if delivery.size > self._max_bytes:
                errors.append(_too_large(delivery.size, self._max_bytes))
            raise InvalidCommand(errors)
        content_type = (delivery.content_type or "").split(";")[0].strip().lower()
        if content_type and content_type not in JSON_TYPES:
            raise InvalidCommand(
                [
                    FieldError(
                        "$",
                        f"content-type {content_type!r} is not JSON; "
                        f"publish commands as {COMMAND_CONTENT_TYPE}",
                    )
                ]
            )
        return decode_command(delivery.body, max_bytes=self._max_bytes)

    async def _reject(
        self, delivery: Delivery, errors: list[FieldError], producer: str | None
    ) -> None:
        oversized = delivery.size > self._max_bytes
        peek = (
            _Peek(request_id_in_prefix(delivery.body))
            if oversized
            else _peek(delivery.body, self._max_bytes)
        )
        log.info(
            "command_rejected", request_id=peek.request_id, producer=producer, errors=len(errors)
        )
        event = self._factory.rejected(
            delivery.body, errors, peek.request_id, peek.metadata, producer=producer
        )
        reason: ParkReason = (
            "too_large"
            if oversized
            else "unreadable_properties"
            if delivery.unreadable
            else "invalid"
        )
        # An oversized command is parked as a small record of it, never whole.
        parked = (
            _oversized_record(delivery, errors, peek.request_id, producer)
            if oversized
            else delivery
        )
        # Park first: if the event publish fails the redelivery parks again (harmless),
        # whereas the other order could announce a rejection whose message is lost.
        try:
            await self._work.park(parked, errors, producer)
        except ParkingFull:
            # The parking queue is at its bound: the broker keeps what it holds, and this
            # message goes no further than the rejected event (which says why) and a metric.
            log.warning("parking_queue_full", request_id=peek.request_id, producer=producer)
            reason = "parking_full"
        if self._on_parked is not None:
            self._on_parked(reason)
        # A copy goes to reply_to only where the producer's policy allows replies to go, so
        # a refused command cannot steer even its rejection into someone else's queue.
        reply_to = delivery.reply_to
        if reply_to is not None and (
            producer is None or not self._policy.reply_allowed(producer, reply_to)
        ):
            reply_to = None
        await self._events.publish(event, reply_to=reply_to, correlation_id=delivery.correlation_id)

    async def _provision(
        self,
        delivery: Delivery,
        command: ProvisionDatabase,
        producer: str,
        attempt: int,
        warnings: list[str],
    ) -> CommandOutcome:
        mine = request_tag(self._managed_tag, producer, command.request_id)
        spec = spec_tag(self._managed_tag, command.cluster)
        owner = owner_tag(self._managed_tag, producer)
        body = command.cluster.api_body(managed_tag=self._managed_tag)
        body = msgspec.structs.replace(body, tags=[*(body.tags or []), owner, mine, spec])
        try:
            # A cluster this request already created (a redelivery, a producer's retry):
            # a recent list answers it without a doomed POST.
            cluster = await self._created_by(mine)
            outcome: CommandResult = "adopted"
            if cluster is None:
                # With a limit on clusters in flight: one create of the producer at a time in
                # this replica, so that each one counts those before it.
                limited = self._policy.rules_for(producer).max_clusters_in_flight is not None
                async with self._one_create.hold(owner) if limited else contextlib.nullcontext():
                    denied = await self._limits(producer, command, owner, attempt)
                    if denied:
                        await self._reject(delivery, denied, producer)
                        return CommandOutcome("rejected", "ack")
                    try:
                        cluster = await self._api.create_cluster(body)
                        outcome = "accepted"
                        self._remember(mine, cluster)
                    except Unprocessable as exc:
                        # Most often the name is taken, by the cluster an earlier delivery of
                        # this very request created (crash before ack, ambiguous create).
                        cluster = await self._find_by_name(command.cluster.name)
                        if cluster is None and self._may_be_hidden(delivery):
                            # This request (an earlier attempt, another copy of the command)
                            # may have created it, and a fresh cluster can be missing from the
                            # list for a while: look again later, within that grace.
                            return await self._retry_or_fail(
                                delivery, command, producer, attempt, exc
                            )
                        if cluster is None:
                            return await self._fail_api(delivery, command, producer, exc, attempt)
                        if mine not in (cluster.tags or []):
                            # Someone else's cluster: say nothing of it (not its id, not whose).
                            return await self._fail(
                                delivery,
                                command,
                                producer,
                                "api_error",
                                f"the name {command.cluster.name!r} is taken by a cluster this "
                                "request did not create; choose another name",
                                api_error=api_error_detail(exc),
                            )
        except _ListFailed as exc:
            return await self._fail(
                delivery,
                command,
                producer,
                "api_error",
                "DigitalOcean refused to list the producer's clusters, which its policy needs: "
                f"{exc.error.message}",
                api_error=api_error_detail(exc.error),
            )
        except Unauthorized:
            await self._on_unauthorized()
            return CommandOutcome("requeued", "requeue")
        except TRANSIENT as exc:
            return await self._retry_or_fail(delivery, command, producer, attempt, exc)
        except ApiError as exc:
            return await self._fail_api(delivery, command, producer, exc, attempt)
        if outcome == "adopted":
            if spec not in (cluster.tags or []):
                return await self._fail(
                    delivery,
                    command,
                    producer,
                    "request_conflict",
                    f"request_id {command.request_id!r} was already used for a different "
                    f"cluster ({cluster.name!r}); use a new request_id for a new cluster",
                    cluster_id=cluster.id,
                )
            log.info("cluster_adopted", cluster_id=cluster.id)
        self._remember(mine, cluster)
        await self._start_watching(delivery, command, producer, cluster, warnings)
        return CommandOutcome(outcome, "ack")

    async def _limits(
        self, producer: str, command: ProvisionDatabase, owner: str, attempt: int
    ) -> list[FieldError]:
        """The rules that need DigitalOcean's word: clusters in flight and the restore's
        source. Raises a transient ``ApiError`` when it cannot be had now (the command is
        retried), ``_ListFailed`` when DigitalOcean refuses the list."""
        try:
            return await self._limits_broken(producer, command, owner, attempt)
        except (Unauthorized, *TRANSIENT):
            raise
        except ApiError as exc:
            raise _ListFailed(exc) from exc

    async def _limits_broken(
        self, producer: str, command: ProvisionDatabase, owner: str, attempt: int
    ) -> list[FieldError]:
        rules = self._policy.rules_for(producer)
        errors: list[FieldError] = []
        limit = rules.max_clusters_in_flight
        # Counted on the first attempt only: a retry may follow a create that went through
        # (an ambiguous answer) and must go on to adopt that cluster, not be refused for it.
        if limit is not None and attempt == 1:
            creating = await self._creating(owner)
            if limit == 0:
                errors.append(
                    FieldError(
                        "$",
                        f"producer {producer!r} may not create clusters (its policy: "
                        "max_clusters_in_flight = 0)",
                    )
                )
            elif creating >= limit:
                errors.append(
                    FieldError(
                        "$",
                        f"producer {producer!r} has {creating} clusters being created; its "
                        f"policy allows {limit} at once: try again when one is online",
                    )
                )
        restore = command.cluster.backup_restore
        if restore is not None:
            owned = await self._api.list_clusters(tag_name=owner)
            if restore.database_name not in {c.name for c in owned}:
                errors.append(
                    FieldError(
                        "$.cluster.backup_restore.database_name",
                        f"producer {producer!r} may only restore clusters it created through "
                        f"this service; {restore.database_name[:64]!r} is not one of them",
                    )
                )
        return errors

    async def _creating(self, owner: str) -> int:
        # This replica's own creations count even where the list does not show them yet.
        mine = {c.id for c in self._recent.values() if owner in (c.tags or ())}
        if self._snapshot is not None:
            return await self._snapshot.creating_with(owner, mine)
        clusters = await self._api.list_clusters(tag_name=owner)
        listed = {c.id for c in clusters}
        return sum(1 for c in clusters if c.status == "creating") + len(mine - listed)

    def _remember(self, tag: str, cluster: DatabaseCluster) -> None:
        self._recent[tag] = cluster
        self._recent.move_to_end(tag)
        while len(self._recent) > RECENT_CLUSTERS:
            self._recent.popitem(last=False)

    async def _created_by(self, tag: str) -> DatabaseCluster | None:
        if tag in self._recent:
            return self._recent[tag]
        if self._snapshot is None:
            return None
        try:
            # Only an optimisation and a conflict check: when the list is slow or failing,
            # go on to the POST, whose 422 still catches a cluster this request created.
            # The snapshot's index answers it in one lookup, not a walk over every cluster.
            return await asyncio.wait_for(self._snapshot.created_by(tag), PRECHECK_TIMEOUT_S)
        except (ApiError, TimeoutError) as exc:
            log.info("precheck_skipped", error=str(exc) or type(exc).__name__)
            return None

    async def _find_by_name(self, name: str) -> DatabaseCluster | None:
        for cluster in await self._api.list_clusters(tag_name=self._managed_tag):
            if cluster.name == name:
                return cluster
        return None

    async def _start_watching(
        self,
        delivery: Delivery,
        command: ProvisionDatabase,
        producer: str,
        cluster: DatabaseCluster,
        warnings: list[str],
    ) -> None:
        structlog.contextvars.bind_contextvars(cluster_id=cluster.id)
        now = self._wall()
        timeout = command.timeout_s or self._create_timeout_s
        watch = WatchState(
            request_id=command.request_id,
            cluster_id=cluster.id,
            name=cluster.name,
            engine=cluster.engine,
            region=cluster.region,
            status=cluster.status or "creating",
            deadline=now + timeout,
            accepted_at=now,
            users=list(command.cluster.users or []),
            db_names=list(command.cluster.db_names or []),
            metadata=command.metadata,
            reply_to=delivery.reply_to,
            correlation_id=delivery.correlation_id,
            producer=producer,
            recipient_public_key=command.recipient_public_key,
            # The create's answer may be the only one that ever shows the admin's password
            # (MongoDB): kept, sealed, until connection_ready.
            kept=self._seal.seal(passwords_of(cluster)),
            warnings=warnings,
        )
        event = self._factory.status_changed(watch, watch.status or "creating", None)
        await self._events.publish(
            event, reply_to=delivery.reply_to, correlation_id=delivery.correlation_id
        )
        await self._work.schedule_watch(watch)
        log.info("cluster_creating", status=watch.status, deadline_s=timeout)

    def _first_attempt_at(self, delivery: Delivery) -> float:
        stamp = decode_stamp(delivery.headers.get(FIRST_ATTEMPT_HEADER))
        return self._wall() if stamp is None else stamp

    def _may_be_hidden(self, delivery: Delivery) -> bool:
        return self._wall() - self._first_attempt_at(delivery) < self._not_found_grace_s

    async def _retry_or_fail(
        self,
        delivery: Delivery,
        command: ProvisionDatabase,
        producer: str,
        attempt: int,
        exc: ApiError,
    ) -> CommandOutcome:
        if attempt < self._max_attempts:
            log.info("create_retry_scheduled", attempt=attempt, error=str(exc))
            first = {FIRST_ATTEMPT_HEADER: encode_stamp(self._first_attempt_at(delivery))}
            delivery = msgspec.structs.replace(delivery, headers={**first, **delivery.headers})
            await self._work.retry_command(delivery, attempt, producer)
            return CommandOutcome("retried", "ack")
        if isinstance(exc, Unprocessable):
            # Looked for long enough: no cluster of this request hides behind the 422.
            return await self._fail_api(delivery, command, producer, exc, attempt)
        return await self._fail(
            delivery,
            command,
            producer,
            "retries_exhausted",
            f"DigitalOcean did not accept the create after {attempt} attempts: {exc}",
            attempts=attempt,
            api_error=api_error_detail(exc),
        )

    async def _fail_api(
        self,
        delivery: Delivery,
        command: ProvisionDatabase,
        producer: str,
        exc: ApiError,
        attempt: int,
    ) -> CommandOutcome:
        return await self._fail(
            delivery,
            command,
            producer,
            "api_error",
            f"DigitalOcean refused the create: {exc.message}",
            attempts=attempt,
            api_error=api_error_detail(exc),
        )

    async def _fail(
        self,
        delivery: Delivery,
        command: ProvisionDatabase,
        producer: str,
        reason: Literal["api_error", "retries_exhausted", "request_conflict"],
        message: str,
        *,
        cluster_id: str | None = None,
        attempts: int | None = None,
        api_error: ApiErrorDetail | None = None,
    ) -> CommandOutcome:
        log.warning("command_failed", reason=reason, detail=message)
        event = self._factory.failed(
            command.request_id,
            reason,
            message,
            cluster_id=cluster_id,
            step="create",
            attempts=attempts,
            api_error=api_error,
            metadata=command.metadata,
            producer=producer,
        )
        await self._events.publish(
            event, reply_to=delivery.reply_to, correlation_id=delivery.correlation_id
        )
        return CommandOutcome("failed", "ack")
