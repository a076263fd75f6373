"""The examples the AsyncAPI document carries: one command and one of each event.

They are real encodings of the Structs, so the AsyncAPI parser checks the generated schemas
against them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from contracts.commands import ProvisionDatabase
from contracts.digitalocean import (
    DatabaseClusterCreate,
    DatabaseConnection,
    DatabaseUserCreate,
    MySQLSettings,
)
from contracts.errors import FieldError
from contracts.events import (
    ConnectionReady,
    ConnectionReadyData,
    Event,
    Failed,
    FailedData,
    Rejected,
    RejectedData,
    StatusChanged,
    StatusChangedData,
)

__all__ = ["example_command", "example_events"]

_EXAMPLE_TIME: Final = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
_EXAMPLE_REQUEST: Final = "orders-db-2025-01"
_EXAMPLE_CLUSTER: Final = "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30"
_EXAMPLE_METADATA: Final = {"team": "orders"}


def example_command() -> ProvisionDatabase:
    """A MySQL cluster with one user and one database."""
    return ProvisionDatabase(
        request_id=_EXAMPLE_REQUEST,
        cluster=DatabaseClusterCreate(
            name="orders",
            engine="mysql",
            num_nodes=2,
            size="db-s-2vcpu-4gb",
            region="nyc3",
            version="8",
            tags=["production"],
            users=[
                DatabaseUserCreate(
                    name="app",
                    mysql_settings=MySQLSettings(auth_plugin="caching_sha2_password"),
                )
            ],
            db_names=["orders"],
        ),
        metadata=_EXAMPLE_METADATA,
    )


def example_events() -> dict[str, Event]:
    """One event of each type, keyed by Struct name, all at the same fixed time."""
    status = StatusChanged.of(
        StatusChangedData(
            request_id=_EXAMPLE_REQUEST,
            cluster_id=_EXAMPLE_CLUSTER,
            name="orders",
            engine="mysql",
            status="online",
            previous_status="creating",
            metadata=_EXAMPLE_METADATA,
        )
    )
    ready = ConnectionReady.of(
        ConnectionReadyData(
            request_id=_EXAMPLE_REQUEST,
            cluster_id=_EXAMPLE_CLUSTER,
            name="orders",
            engine="mysql",
            region="nyc3",
            connection=DatabaseConnection(
                database="defaultdb",
                host="orders-do-user-1-0.db.ondigitalocean.com",
                port=25060,
                user="doadmin",
                ssl=True,
            ),
            db_names=["defaultdb", "orders"],
            secrets="omitted",
            metadata=_EXAMPLE_METADATA,
        )
    )
    body = b'{"request_id": "orders-db-2025-01", "cluster": {"name": "orders", "num_node": 2}}'
    rejected = Rejected.of(
        RejectedData(
            request_id=_EXAMPLE_REQUEST,
            errors=[
                FieldError("$.cluster.num_node", "unknown field `num_node`"),
                FieldError("$.cluster.engine", "required field `engine` is missing"),
            ],
        ),
        body,
    )
    failed = Failed.of(
        FailedData(
            request_id=_EXAMPLE_REQUEST,
            reason="timeout",
            message="the cluster was not online after 1800 s",
            cluster_id=_EXAMPLE_CLUSTER,
            metadata=_EXAMPLE_METADATA,
        )
    )
    events: list[Event] = [status, ready, rejected, failed]
    for event in events:
        event.time = _EXAMPLE_TIME
    return {type(event).__name__: event for event in events}
