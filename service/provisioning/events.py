"""Build the events of one request, with the deployment's source and secrets policy."""

from __future__ import annotations

from typing import Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec

from contracts.digitalocean import (
    DatabaseCluster,
    DatabaseConnection,
    DatabaseUser,
    ServiceConnection,
)
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
from service.digitalocean import ApiError
from service.provisioning.messages import WatchState

__all__ = ["EventFactory", "api_error_detail", "strip_uri_password"]


def api_error_detail(exc: ApiError) -> ApiErrorDetail:
    """What a ``failed`` event says of an API error."""
    return ApiErrorDetail(
        status=exc.status or 0, id=exc.id, message=exc.message, request_id=exc.request_id
    )


def strip_uri_password(uri: str | None) -> str | None:
    """``scheme://user:secret@host`` -> ``scheme://user@host``; other URIs unchanged."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_Conn = TypeVar("_Conn", DatabaseConnection, ServiceConnection)


def _omit_connection(conn: _Conn | None) -> _Conn | None:
    if conn is None:
        return None
    return msgspec.structs.replace(conn, password=None, uri=strip_uri_password(conn.uri))


def _omit_user(user: DatabaseUser) -> DatabaseUser:
    return msgspec.structs.replace(user, password=None, access_key=None)


class EventFactory:
    """One place that knows how each event of a request is shaped."""

    def __init__(self, source: str, secrets: Literal["include", "omit"] = "include") -> None:
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
            metadata=watch.metadata,
        )
        return StatusChanged.of(data, source=self.source)

    def connection_ready(
        self, watch: WatchState, cluster: DatabaseCluster, ca_certificate: str | None
    ) -> ConnectionReady:
        """The finished cluster's connection details (secrets per the policy)."""
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
            metadata=watch.metadata,
        )
        if self.secrets == "omit":
            data = msgspec.structs.replace(
                data,
                connection=_omit_connection(data.connection),
                private_connection=_omit_connection(data.private_connection),
                standby_connection=_omit_connection(data.standby_connection),
                standby_private_connection=_omit_connection(data.standby_private_connection),
                ui_connection=_omit_connection(data.ui_connection),
                schema_registry_connection=_omit_connection(data.schema_registry_connection),
                users=[_omit_user(u) for u in data.users],
                secrets="omitted",
            )
        return ConnectionReady.of(data, source=self.source)

    def rejected(
        self,
        body: bytes,
        errors: list[FieldError],
        request_id: str | None,
        metadata: dict[str, str] | None = None,
    ) -> Rejected:
        """The command in ``body`` was refused for ``errors``."""
        data = RejectedData(errors=errors, request_id=request_id, metadata=metadata)
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
            metadata=metadata,
        )
        return Failed.of(data, source=self.source)
