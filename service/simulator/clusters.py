"""One simulated cluster: its state over time and how it looks to the API, per engine.

Status is computed from the clock when asked (``creating`` until ``ready_at``, then
``online``), so no task runs per cluster and thousands of them cost nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Final

import msgspec

from contracts.digitalocean import (
    DatabaseCluster,
    DatabaseConnection,
    DatabaseUser,
    DoSettings,
    DoSettingsRead,
    FirewallRule,
    MaintenanceWindow,
    ServiceConnection,
    ServiceEndpoint,
)

__all__ = [
    "ENGINE_PROFILES",
    "HOST_DOMAIN",
    "ClusterRecord",
    "EngineProfile",
    "hidden",
    "semantic_version",
]

HOST_DOMAIN: Final = "db.ondigitalocean.com"
"""Every simulated host is ``NAME-do-user-ACCOUNT-0.db.ondigitalocean.com``, as in the spec's
examples. Nothing ever connects to these hosts: the service only passes them on."""

METRICS_PORT: Final = 9273


class EngineProfile(msgspec.Struct, frozen=True):
    """How one engine's connection details look."""

    scheme: str | None
    """URI scheme; ``None`` where DigitalOcean sends no URI (Kafka)."""
    port: int
    admin_user: str
    database: str | None
    """The default database named in the connection (and in ``db_names``), if the engine
    has databases at all."""
    query: str = ""
    """What follows the path in the URI (``?sslmode=require``)."""
    has_standby: bool = True
    """Whether a multi-node cluster has standby nodes with their own connection. MongoDB,
    Kafka and OpenSearch clients connect to the whole set instead."""
    manages_users: bool = True
    manages_databases: bool = True


ENGINE_PROFILES: Final[Mapping[str, EngineProfile]] = {
    "pg": EngineProfile("postgresql", 25060, "doadmin", "defaultdb", "?sslmode=require"),
    "advanced_pg": EngineProfile("postgresql", 25060, "doadmin", "defaultdb", "?sslmode=require"),
    "mysql": EngineProfile("mysql", 25060, "doadmin", "defaultdb", "?ssl-mode=REQUIRED"),
    "advanced_mysql": EngineProfile("mysql", 25060, "doadmin", "defaultdb", "?ssl-mode=REQUIRED"),
    "mongodb": EngineProfile(
        "mongodb+srv",
        27017,
        "doadmin",
        "admin",
        "?tls=true&authSource=admin&replicaSet={name}",
        has_standby=False,
    ),
    "valkey": EngineProfile(
        "rediss", 25061, "default", None, manages_users=False, manages_databases=False
    ),
    "redis": EngineProfile(
        "rediss", 25061, "default", None, manages_users=False, manages_databases=False
    ),
    "kafka": EngineProfile(None, 25073, "doadmin", None, has_standby=False),
    "opensearch": EngineProfile("https", 25060, "doadmin", None, has_standby=False),
}

_SEMANTIC_VERSIONS: Final[Mapping[tuple[str, str], str]] = {
    ("pg", "13"): "13.20",
    ("pg", "14"): "14.17",
    ("pg", "15"): "15.12",
    ("pg", "16"): "16.8",
    ("pg", "17"): "17.4",
    ("advanced_pg", "16"): "16.8",
    ("advanced_pg", "17"): "17.4",
    ("advanced_pg", "18"): "18.1",
    ("mysql", "8"): "8.0.41",
    ("advanced_mysql", "8.4.8"): "8.4.8",
    ("mongodb", "6.0"): "6.0.19",
    ("mongodb", "7.0"): "7.0.16",
    ("kafka", "3.8"): "3.8.1",
    ("opensearch", "1"): "1.3.20",
    ("opensearch", "2"): "2.17.1",
    ("valkey", "8"): "8.0.2",
    ("redis", "7"): "7.2.4",
}


def hidden(user: DatabaseUser) -> DatabaseUser:
    """``user`` as an answer without credentials shows it: empty password (and Kafka key)."""
    return msgspec.structs.replace(
        user, password="", access_key="" if user.access_key is not None else None
    )


def semantic_version(engine: str, version: str) -> str:
    """The patch release a cluster of ``engine`` ``version`` reports."""
    return _SEMANTIC_VERSIONS.get((engine, version), f"{version}.0")


def host_label(name: str) -> str:
    """``name`` made safe for a DNS label (cluster names are free text in the spec)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return label[:40] or "db"


class ClusterRecord:
    """A cluster in the simulated account (mutable: users and databases are added)."""

    def __init__(
        self,
        *,
        cluster_id: str,
        name: str,
        engine: str,
        version: str,
        num_nodes: int,
        size: str,
        region: str,
        tags: list[str] | None,
        project_id: str,
        private_network_uuid: str,
        created_at: datetime,
        created_mono: float,
        ready_at: float | None,
        host: str,
        password: str,
        admin_user: DatabaseUser,
        rules: list[FirewallRule] | None,
        storage_size_mib: int,
        do_settings: DoSettings | None,
        maintenance_window: MaintenanceWindow,
        version_end_of_life: str | None,
        version_end_of_availability: str | None,
    ) -> None:
        self.id = cluster_id
        self.name = name
        self.engine = engine
        self.version = version
        self.num_nodes = num_nodes
        self.size = size
        self.region = region
        self.tags = tags
        self.project_id = project_id
        self.private_network_uuid = private_network_uuid
        self.created_at = created_at
        self.created_mono = created_mono
        self.ready_at = ready_at
        """Monotonic time the cluster turns online; ``None``: stuck in ``creating``."""
        self.forced_status: str | None = None
        """Set by tests (``Simulator.force_status``); wins over the clock."""
        self.host = host
        self._password = password
        self.users: list[DatabaseUser] = [admin_user]
        profile = ENGINE_PROFILES[engine]
        self.db_names: list[str] | None = [profile.database] if profile.database else None
        self.rules = rules
        self.storage_size_mib = storage_size_mib
        self.do_settings = do_settings
        self.maintenance_window = maintenance_window
        self.version_end_of_life = version_end_of_life
        self.version_end_of_availability = version_end_of_availability

    def __repr__(self) -> str:
        # Never the password: a record may end up in a test's failure output.
        return f"ClusterRecord(id={self.id!r}, name={self.name!r}, engine={self.engine!r})"

    @property
    def profile(self) -> EngineProfile:
        """The connection shape of this cluster's engine."""
        return ENGINE_PROFILES[self.engine]

    def status(self, now: float) -> str:
        """``creating`` or ``online`` at monotonic time ``now`` (or a forced status)."""
        if self.forced_status is not None:
            return self.forced_status
        if self.ready_at is None or now < self.ready_at:
            return "creating"
        return "online"

    def visible(self, now: float, grace_s: float) -> bool:
        """False during the moment after a create when the real API still answers 404."""
        return now >= self.created_mono + grace_s

    @property
    def hides_passwords(self) -> bool:
        """MongoDB: passwords only in the answer to the POST that made them (the cluster's
        create, a user's create, a password reset), never in a GET or a list
        (terraform-provider-digitalocean PR #614, issue #814)."""
        return self.engine == "mongodb"

    def set_password(self, user_name: str, password: str) -> DatabaseUser:
        """A password reset: ``user_name`` (the admin too) gets ``password``; the user."""
        for i, user in enumerate(self.users):
            if user.name == user_name:
                self.users[i] = msgspec.structs.replace(user, password=password)
                if user_name == self.profile.admin_user:
                    self._password = password
                return self.users[i]
        raise KeyError(user_name)

    def _connection(self, host: str, reveal: bool) -> DatabaseConnection:
        profile = self.profile
        user, port = profile.admin_user, profile.port
        password = self._password if reveal else ""
        # Without its password a URI names the user alone, as a GET of a MongoDB cluster does.
        userinfo = f"{user}:{password}" if password else user
        uri: str | None = None
        if profile.scheme == "mongodb+srv":
            # SRV records carry the port, so a mongodb+srv URI has none.
            query = profile.query.format(name=host_label(self.name))
            uri = f"mongodb+srv://{userinfo}@{host}/{profile.database}{query}"
        elif profile.scheme is not None:
            path = f"/{profile.database}" if profile.database else ""
            uri = f"{profile.scheme}://{userinfo}@{host}:{port}{path}{profile.query}"
        return DatabaseConnection(
            uri=uri,
            database=profile.database,
            host=host,
            port=port,
            user=user,
            password=password,
            ssl=True,
        )

    def _service_connection(self, host: str, port: int, reveal: bool) -> ServiceConnection:
        user = self.profile.admin_user
        password = self._password if reveal else ""
        userinfo = f"{user}:{password}" if password else user
        return ServiceConnection(
            uri=f"https://{userinfo}@{host}:{port}",
            host=host,
            port=port,
            user=user,
            password=password,
            ssl=True,
        )

    def to_api(self, now: float, *, reveal: bool = True) -> DatabaseCluster:
        """The cluster as ``GET /v2/databases/{id}`` returns it at monotonic time ``now``;
        ``reveal=False``: every password (and Kafka key) empty, as DigitalOcean sends them to
        a token that may not see credentials, and for MongoDB to anything but a POST."""
        profile = self.profile
        standby = profile.has_standby and self.num_nodes > 1
        metrics = [ServiceEndpoint(host=self.host, port=METRICS_PORT)]
        if standby:
            metrics.append(ServiceEndpoint(host=f"replica-{self.host}", port=METRICS_PORT))
        return DatabaseCluster(
            id=self.id,
            name=self.name,
            engine=self.engine,
            version=self.version,
            semantic_version=semantic_version(self.engine, self.version),
            num_nodes=self.num_nodes,
            size=self.size,
            region=self.region,
            status=self.status(now),
            created_at=self.created_at,
            private_network_uuid=self.private_network_uuid,
            tags=list(self.tags) if self.tags is not None else None,
            db_names=list(self.db_names) if self.db_names is not None else None,
            ui_connection=(
                self._service_connection(self.host, profile.port, reveal)
                if self.engine == "opensearch"
                else None
            ),
            schema_registry_connection=(
                self._service_connection(self.host, 25065, reveal)
                if self.engine == "kafka"
                else None
            ),
            connection=self._connection(self.host, reveal),
            private_connection=self._connection(f"private-{self.host}", reveal),
            standby_connection=(
                self._connection(f"replica-{self.host}", reveal) if standby else None
            ),
            standby_private_connection=(
                self._connection(f"private-replica-{self.host}", reveal) if standby else None
            ),
            users=list(self.users) if reveal else [hidden(u) for u in self.users],
            maintenance_window=self.maintenance_window,
            project_id=self.project_id,
            rules=list(self.rules) if self.rules is not None else None,
            version_end_of_life=self.version_end_of_life,
            version_end_of_availability=self.version_end_of_availability,
            storage_size_mib=self.storage_size_mib,
            metrics_endpoints=metrics,
            do_settings=(
                DoSettingsRead(service_cnames=self.do_settings.service_cnames)
                if self.do_settings is not None
                else None
            ),
        )
