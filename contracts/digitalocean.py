"""DigitalOcean Databases API models, as its OpenAPI description defines them.

Two families live here:

* what we send (``DatabaseClusterCreate`` and its parts, the user and database
  create bodies): strict. Unknown fields are errors, enums, patterns and bounds
  are the spec's, so a typo never reaches the API silently;
* what the API sends (``DatabaseCluster`` and the response wrappers): lenient.
  Unknown fields are ignored and open sets such as ``status`` are plain strings,
  so a response still decodes when DigitalOcean adds a field or a status value.

Small structs that appear on both sides (user settings, autoscale, ``do_settings``)
are lenient as types; ``contracts.decode_command`` still reports unknown fields in
them, with their JSON path, when a producer sends them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

__all__ = [
    "ENGINES",
    "KNOWN_STATUSES",
    "ApiErrorBody",
    "Autoscale",
    "AutoscaleRead",
    "CaCertificate",
    "CaResponse",
    "DatabaseBackup",
    "DatabaseCluster",
    "DatabaseClusterCreate",
    "DatabaseClusterList",
    "DatabaseClusterResponse",
    "DatabaseConnection",
    "DatabaseCreate",
    "DatabaseName",
    "DatabaseNameResponse",
    "DatabaseOptions",
    "DatabaseUser",
    "DatabaseUserCreate",
    "DatabaseUserResponse",
    "DoSettings",
    "DoSettingsRead",
    "Engine",
    "EngineOptions",
    "FirewallRule",
    "FirewallRuleCreate",
    "KafkaAcl",
    "KafkaAclRead",
    "LayoutOption",
    "MaintenanceWindow",
    "MongoUserSettings",
    "MongoUserSettingsRead",
    "MySQLSettings",
    "MySQLSettingsRead",
    "OpenSearchAcl",
    "OpenSearchAclRead",
    "ServiceConnection",
    "ServiceEndpoint",
    "StorageAutoscale",
    "StorageAutoscaleRead",
    "UserSettings",
    "UserSettingsRead",
    "VersionAvailability",
]

Engine = Literal[
    "pg",
    "mysql",
    "redis",
    "valkey",
    "mongodb",
    "kafka",
    "opensearch",
    "advanced_pg",
    "advanced_mysql",
]
ENGINES: Final[tuple[Engine, ...]] = (
    "pg",
    "mysql",
    "redis",
    "valkey",
    "mongodb",
    "kafka",
    "opensearch",
    "advanced_pg",
    "advanced_mysql",
)

# The spec's status enum; the read model keeps ``status`` a plain string so that a
# value DigitalOcean adds later still decodes.
KNOWN_STATUSES: Final[tuple[str, ...]] = ("creating", "online", "resizing", "migrating", "forking")

# Verbatim from the spec (models/database_cluster.yml, firewall_rule.yml). JSON Schema
# patterns are unanchored (re.search), as msgspec applies them.
UUID_OR_EMPTY: Final = r"^$|[0-9a-f]{8}\b-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-\b[0-9a-f]{12}"
HOSTNAME: Final = (
    r"^[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+$"
)

UuidOrEmpty = Annotated[str, Meta(pattern=UUID_OR_EMPTY)]
Hostname = Annotated[str, Meta(pattern=HOSTNAME, max_length=253)]
FirewallRuleType = Literal["droplet", "k8s", "ip_addr", "tag", "app"]
OpenSearchPermission = Literal["deny", "admin", "read", "readwrite", "write"]
KafkaPermission = Literal["admin", "consume", "produce", "produceconsume"]
MongoRole = Literal["readOnly", "readWrite", "dbAdmin"]
AuthPlugin = Literal["mysql_native_password", "caching_sha2_password"]


# --- shared by requests and responses -------------------------------------------------


class MySQLSettings(Struct, omit_defaults=True):
    """``mysql_settings`` of a user (MySQL engines only)."""

    auth_plugin: AuthPlugin


class OpenSearchAcl(Struct, omit_defaults=True):
    """One OpenSearch index ACL of a user."""

    index: str | None = None
    permission: OpenSearchPermission | None = None


class KafkaAcl(Struct, omit_defaults=True):
    """One Kafka topic ACL of a user; ``id`` is computed by DigitalOcean."""

    topic: str
    permission: KafkaPermission
    id: str | None = None


class MongoUserSettings(Struct, omit_defaults=True):
    """MongoDB-only user settings."""

    databases: list[str] | None = None
    role: MongoRole | None = None


class UserSettings(Struct, omit_defaults=True):
    """``settings`` of a user; each field belongs to one engine family (see rules.py)."""

    pg_allow_replication: bool | None = None
    opensearch_acl: list[OpenSearchAcl] | None = None
    acl: list[KafkaAcl] | None = None
    mongo_user_settings: MongoUserSettings | None = None


class StorageAutoscale(Struct, omit_defaults=True):
    """Storage autoscaling of a cluster."""

    enabled: bool
    threshold_percent: Annotated[int, Meta(ge=15, le=95)] | None = None
    increment_gib: Annotated[int, Meta(ge=10, le=500)] | None = None


class Autoscale(Struct, omit_defaults=True):
    """Autoscaling configuration (storage only, for now)."""

    storage: StorageAutoscale | None = None


class DoSettings(Struct, omit_defaults=True):
    """DigitalOcean-specific settings: custom service CNAMEs."""

    service_cnames: Annotated[list[Hostname], Meta(max_length=16)] | None = None


# --- what the service sends -------------------------------------------------------------


class FirewallRuleCreate(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A trusted source to set at creation; ``cluster_uuid``/``created_at`` are read-only."""

    type: FirewallRuleType
    value: str
    uuid: UuidOrEmpty | None = None
    description: str | None = None


class DatabaseBackup(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``backup_restore``: create the cluster from a backup of another one."""

    database_name: str
    backup_created_at: datetime | None = None


class DatabaseUserCreate(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``POST /v2/databases/{id}/users``; also an item of a command's ``users``."""

    name: Annotated[str, Meta(min_length=1)]
    mysql_settings: MySQLSettings | None = None
    settings: UserSettings | None = None
    # The spec marks it "to be deprecated" in favour of mongo_user_settings.role.
    readonly: bool | None = None


class DatabaseCreate(Struct, forbid_unknown_fields=True):
    """Body of ``POST /v2/databases/{id}/dbs``."""

    name: Annotated[str, Meta(min_length=1)]


class DatabaseClusterCreate(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of ``POST /v2/databases``: every writable field of ``database_cluster`` plus
    ``backup_restore``, and ``users``/``db_names``, which the create call cannot take and
    the service applies once the cluster is online (``api_body`` leaves them out)."""

    name: Annotated[str, Meta(min_length=1)]
    engine: Engine
    num_nodes: Annotated[int, Meta(ge=1)]
    size: Annotated[str, Meta(min_length=1)]
    region: Annotated[str, Meta(min_length=1)]
    version: str | None = None
    private_network_uuid: UuidOrEmpty | None = None
    tags: list[str] | None = None
    project_id: str | None = None
    rules: list[FirewallRuleCreate] | None = None
    storage_size_mib: Annotated[int, Meta(ge=0)] | None = None
    autoscale: Autoscale | None = None
    do_settings: DoSettings | None = None
    backup_restore: DatabaseBackup | None = None
    users: list[DatabaseUserCreate] | None = None
    db_names: list[str] | None = None

    def api_body(self, *, managed_tag: str | None = None) -> DatabaseClusterCreate:
        """The body to POST: without ``users``/``db_names``, with ``managed_tag`` added."""
        tags = list(self.tags or [])
        if managed_tag is not None and managed_tag not in tags:
            tags.append(managed_tag)
        return DatabaseClusterCreate(
            name=self.name,
            engine=self.engine,
            num_nodes=self.num_nodes,
            size=self.size,
            region=self.region,
            version=self.version,
            private_network_uuid=self.private_network_uuid,
            tags=tags or None,
            project_id=self.project_id,
            rules=self.rules,
            storage_size_mib=self.storage_size_mib,
            autoscale=self.autoscale,
            do_settings=self.do_settings,
            backup_restore=self.backup_restore,
        )


# --- what the API sends -----------------------------------------------------------------
# Read-side twins of the request-side settings: the same fields with open strings and no
# bounds, so a value DigitalOcean adds later (a new ACL permission, a longer CNAME list)
# does not make a whole response undecodable.


class MySQLSettingsRead(Struct, omit_defaults=True):
    """``mysql_settings`` of a user as the API returns it."""

    auth_plugin: str | None = None


class OpenSearchAclRead(Struct, omit_defaults=True):
    """An OpenSearch index ACL as the API returns it."""

    index: str | None = None
    permission: str | None = None


class KafkaAclRead(Struct, omit_defaults=True):
    """A Kafka topic ACL as the API returns it."""

    topic: str | None = None
    permission: str | None = None
    id: str | None = None


class MongoUserSettingsRead(Struct, omit_defaults=True):
    """MongoDB user settings as the API returns them."""

    databases: list[str] | None = None
    role: str | None = None


class UserSettingsRead(Struct, omit_defaults=True):
    """A user's ``settings`` as the API returns them."""

    pg_allow_replication: bool | None = None
    opensearch_acl: list[OpenSearchAclRead] | None = None
    acl: list[KafkaAclRead] | None = None
    mongo_user_settings: MongoUserSettingsRead | None = None


class StorageAutoscaleRead(Struct, omit_defaults=True):
    """Storage autoscaling as the API returns it."""

    enabled: bool | None = None
    threshold_percent: int | None = None
    increment_gib: int | None = None


class AutoscaleRead(Struct, omit_defaults=True):
    """Autoscaling as the API returns it."""

    storage: StorageAutoscaleRead | None = None


class DoSettingsRead(Struct, omit_defaults=True):
    """``do_settings`` as the API returns it."""

    service_cnames: list[str] | None = None


class DatabaseConnection(Struct, omit_defaults=True):
    """Connection details of a cluster (``connection``, ``private_connection``, standby)."""

    uri: str | None = None
    database: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    ssl: bool | None = None


class ServiceConnection(Struct, omit_defaults=True):
    """OpenSearch dashboard (``ui_connection``) or Kafka schema registry connection."""

    uri: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None
    ssl: bool | None = None


class DatabaseUser(Struct, omit_defaults=True):
    """A database user as the API returns it, with its generated password."""

    name: str
    role: str | None = None
    password: str | None = None
    access_cert: str | None = None
    access_key: str | None = None
    mysql_settings: MySQLSettingsRead | None = None
    settings: UserSettingsRead | None = None


class MaintenanceWindow(Struct, omit_defaults=True):
    """When DigitalOcean applies maintenance to the cluster."""

    day: str
    hour: str
    pending: bool | None = None
    description: list[str] | None = None


class FirewallRule(Struct, omit_defaults=True):
    """A trusted source as the API returns it."""

    type: str
    value: str
    uuid: str | None = None
    cluster_uuid: str | None = None
    created_at: datetime | None = None
    description: str | None = None


class ServiceEndpoint(Struct, omit_defaults=True):
    """Host and port of a metrics endpoint."""

    host: str | None = None
    port: int | None = None


class DatabaseCluster(Struct, omit_defaults=True):
    """A cluster as the API returns it (``database_cluster_read``)."""

    id: str
    name: str
    engine: str
    num_nodes: int
    size: str
    region: str
    status: str | None = None
    version: str | None = None
    semantic_version: str | None = None
    created_at: datetime | None = None
    private_network_uuid: str | None = None
    tags: list[str] | None = None
    db_names: list[str] | None = None
    ui_connection: ServiceConnection | None = None
    schema_registry_connection: ServiceConnection | None = None
    connection: DatabaseConnection | None = None
    private_connection: DatabaseConnection | None = None
    standby_connection: DatabaseConnection | None = None
    standby_private_connection: DatabaseConnection | None = None
    users: list[DatabaseUser] | None = None
    maintenance_window: MaintenanceWindow | None = None
    project_id: str | None = None
    rules: list[FirewallRule] | None = None
    version_end_of_life: str | None = None
    version_end_of_availability: str | None = None
    storage_size_mib: int | None = None
    metrics_endpoints: list[ServiceEndpoint] | None = None
    autoscale: AutoscaleRead | None = None
    do_settings: DoSettingsRead | None = None


class DatabaseClusterResponse(Struct):
    """``{"database": {...}}``: create and get."""

    database: DatabaseCluster


class DatabaseClusterList(Struct):
    """``{"databases": [...]}``: list (``null`` when the account has none)."""

    databases: list[DatabaseCluster] | None = None


class DatabaseUserResponse(Struct):
    """``{"user": {...}}``: add user."""

    user: DatabaseUser


class DatabaseName(Struct):
    """A database inside a cluster."""

    name: str


class DatabaseNameResponse(Struct):
    """``{"db": {...}}``: add database."""

    db: DatabaseName


class CaCertificate(Struct):
    """The cluster's CA certificate, base64-encoded PEM."""

    certificate: str


class CaResponse(Struct):
    """``{"ca": {...}}``: get CA."""

    ca: CaCertificate


class LayoutOption(Struct):
    """Sizes available for one node count."""

    num_nodes: int
    sizes: list[str] = []


class EngineOptions(Struct):
    """Regions, versions and layouts one engine offers."""

    regions: list[str] = []
    versions: list[str] = []
    layouts: list[LayoutOption] = []
    default_version: str | None = None


class VersionAvailability(Struct):
    """End of life and end of availability of one engine version."""

    version: str
    end_of_life: str | None = None
    end_of_availability: str | None = None
    default: bool | None = None


class DatabaseOptions(Struct):
    """``GET /v2/databases/options``, keyed by engine slug (open: new engines decode)."""

    options: dict[str, EngineOptions] = {}
    version_availability: dict[str, list[VersionAvailability]] = {}


class ApiErrorBody(Struct):
    """DigitalOcean's error body."""

    id: str
    message: str
    request_id: str | None = None
