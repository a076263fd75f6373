"""Build the events of one request, with the deployment's source and secrets policy."""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.digitalocean import DatabaseCluster
from contracts.errors import FieldError
from contracts.events import (
    ApiErrorDetail,
    ConnectionReady,
    ConnectionReadyData,
    Failed,
    FailedData,
    FailureReason,
    Rejected,
    RejectedData,
    StatusChanged,
    StatusChangedData,
)
from contracts.sealed import seal_secrets, without_secrets
from service.digitalocean.errors import ApiError
from service.provisioning.messages import WatchState

__all__ = ["EventFactory", "SecretsPolicy", "api_error_detail"]

SecretsPolicy = Literal["include", "omit", "sealed"]
"""``PROVISIONER_EVENT_SECRETS``: how ``connection_ready`` carries credentials when the
command gave no ``recipient_public_key`` (``sealed`` refuses such commands)."""


def api_error_detail(exc: ApiError) -> ApiErrorDetail:
    """What a ``failed`` event says of an API error."""
    return ApiErrorDetail(
        status=exc.status or 0, id=exc.id, message=exc.message, request_id=exc.request_id
    )


class EventFactory:
    """One place that knows how each event of a request is shaped."""

    def __init__(self, source: str, secrets: SecretsPolicy = "include") -> None:
        self.source = source
        self.secrets = secrets

    def status_changed(self, watch: WatchState, status: str, previous: str | None) -> StatusChanged:
        """``previous`` -> ``status`` for the watched cluster."""
        data = StatusChangedData(
            request_id=watch.request_id,
            cluster_id=watch.cluster_id,
            name=watch.name,
            engine=watch.engine,
            status=status,
            previous_status=previous,
            warnings=list(watch.warnings),
            producer=watch.producer,
            metadata=watch.metadata,
        )
        return StatusChanged.of(data, source=self.source)

    def connection_ready(
        self,
        watch: WatchState,
        cluster: DatabaseCluster,
        ca_certificate: str | None,
        *,
        credentials: str | None = None,
    ) -> ConnectionReady:
        """The finished cluster's connection details: secrets sealed to the command's
        ``recipient_public_key`` when it gave one, else per the deployment's policy.
        ``credentials``: see ``ConnectionReady.of`` (passwords made anew by a reset)."""
        wanted = {u.name for u in watch.users}
        users = [u for u in cluster.users or [] if u.name in wanted or u.role == "primary"]
        data = ConnectionReadyData(
            request_id=watch.request_id,
            cluster_id=cluster.id,
            name=cluster.name,
            engine=cluster.engine,
            region=cluster.region,
            connection=cluster.connection,
            private_connection=cluster.private_connection,
            standby_connection=cluster.standby_connection,
            standby_private_connection=cluster.standby_private_connection,
            ui_connection=cluster.ui_connection,
            schema_registry_connection=cluster.schema_registry_connection,
            users=users,
            db_names=list(cluster.db_names or []),
            ca_certificate=ca_certificate,
            warnings=list(watch.warnings),
            producer=watch.producer,
            metadata=watch.metadata,
        )
        if watch.recipient_public_key is not None:
            data, taken = without_secrets(data)
            sealed = seal_secrets(taken, watch.recipient_public_key)
            data = msgspec.structs.replace(data, secrets="sealed", sealed_secrets=sealed)
        elif self.secrets != "include":
            # "sealed" without a key: a watch accepted before the setting changed; never plain.
            data, _ = without_secrets(data)
        return ConnectionReady.of(data, source=self.source, credentials=credentials)

    def rejected(
        self,
        body: bytes,
        errors: list[FieldError],
        request_id: str | None,
        metadata: dict[str, str] | None = None,
        producer: str | None = None,
    ) -> Rejected:
        """The command in ``body`` was refused for ``errors``."""
        data = RejectedData(
            errors=errors, request_id=request_id, producer=producer, metadata=metadata
        )
        return Rejected.of(data, body, source=self.source)

    def failed(
        self,
        request_id: str,
        reason: FailureReason,
        message: str,
        *,
        cluster_id: str | None = None,
        step: str | None = None,
        attempts: int | None = None,
        api_error: ApiErrorDetail | None = None,
        metadata: dict[str, str] | None = None,
        producer: str | None = None,
    ) -> Failed:
        """The request cannot be completed."""
        data = FailedData(
            request_id=request_id,
            reason=reason,
            message=message,
            cluster_id=cluster_id,
            step=step,
            attempts=attempts,
            api_error=api_error,
            producer=producer,
            metadata=metadata,
        )
        return Failed.of(data, source=self.source)
