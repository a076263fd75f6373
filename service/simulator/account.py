"""The simulated account: its clusters and the rules the real API applies to changes.

Every operation takes the monotonic time ``now`` and the current config, so the account
holds no clock of its own and a test can reason about time exactly.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Final, TypeVar

import msgspec

from contracts.digitalocean import (
    DatabaseClusterCreate,
    DatabaseCreate,
    DatabaseUser,
    DatabaseUserCreate,
    FirewallRule,
    KafkaAclRead,
    MaintenanceWindow,
    MySQLSettingsRead,
    UserSettingsRead,
)
from contracts.rules import USER_SETTING_ENGINES, check_cluster, user_settings_present
from service.simulator import credentials
from service.simulator.clusters import ENGINE_PROFILES, HOST_DOMAIN, ClusterRecord, host_label
from service.simulator.config import SimulatorConfig
from service.simulator.errors import ApiError, not_found, unprocessable
from service.simulator.options import options_as_of, past

__all__ = ["Account", "decode_body"]

T = TypeVar("T")

_WEEKDAYS: Final = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_MYSQL_ENGINES: Final = frozenset({"mysql", "advanced_mysql"})
# Fields of DatabaseClusterCreate that this project adds for its own commands: the real
# create body has no such fields, so the real API refuses them like any unknown field.
_NOT_IN_CREATE_BODY: Final = ("users", "db_names")


def decode_body(raw: bytes, kind: type[T]) -> T:
    """Decode a request body strictly, the way the API validates it (422 with the reason)."""
    try:
        return msgspec.json.decode(raw, type=kind, strict=True)
    except msgspec.ValidationError as exc:
        raise unprocessable(str(exc)) from None
    except msgspec.DecodeError:
        raise ApiError(400, "bad_request", "error parsing request body") from None


class Account:
    """One DigitalOcean account: its clusters, by id and by name."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._clusters: dict[str, ClusterRecord] = {}
        self._ids_by_name: dict[str, str] = {}
        # Stable per account, like a real account's number, default project and VPCs.
        self.account_number = rng.randint(10_000_000, 99_999_999)
        self.default_project_id = self._uuid()
        self._default_vpcs: dict[str, str] = {}

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def __len__(self) -> int:
        return len(self._clusters)

    def __iter__(self) -> Iterator[ClusterRecord]:
        return iter(list(self._clusters.values()))

    def record(self, cluster_id: str) -> ClusterRecord:
        """The cluster with ``cluster_id``, visible or not; ``KeyError`` if there is none."""
        return self._clusters[cluster_id]

    def find(self, cluster_id: str, now: float, config: SimulatorConfig) -> ClusterRecord:
        """The cluster as the API sees it: 404 if unknown or still inside its grace moment."""
        cluster = self._clusters.get(cluster_id)
        if cluster is None or not cluster.visible(now, config.not_found_grace_s):
            raise not_found()
        return cluster

    def listed(self, now: float, config: SimulatorConfig, tag: str | None) -> list[ClusterRecord]:
        """The clusters ``GET /v2/databases`` shows, oldest first, optionally by tag."""
        return [
            c
            for c in self._clusters.values()
            if c.visible(now, config.not_found_grace_s) and (tag is None or tag in (c.tags or ()))
        ]

    def statuses(self, now: float) -> dict[str, int]:
        """How many clusters are in each status now."""
        return dict(Counter(c.status(now) for c in self._clusters.values()))

    # --- create --------------------------------------------------------------------------

    def check_create(self, body: DatabaseClusterCreate, today: date) -> str:
        """Validate a decoded create body against the options served on ``today`` and the
        account; the version. The spec's own examples that the options refuse (advanced_pg
        with 3 nodes on ``db-s-2vcpu-4gb``) are refused too: the options win."""
        for field in _NOT_IN_CREATE_BODY:
            if getattr(body, field) is not None:
                raise unprocessable(f"Object contains unknown field `{field}`")
        errors = check_cluster(body)
        if errors:
            raise unprocessable("; ".join(e.message for e in errors))
        options = options_as_of(today)
        engine = options.options.get(body.engine)
        if engine is None:
            raise unprocessable(f"invalid engine {body.engine!r}")
        if not engine.versions:
            raise unprocessable(f"{body.engine} clusters can no longer be created")
        if body.region not in engine.regions:
            raise unprocessable(
                f"invalid region {body.region!r} for engine {body.engine!r}; "
                f"available: {', '.join(engine.regions)}"
            )
        version = body.version if body.version is not None else engine.default_version
        ended = next(
            (
                item.end_of_availability
                for item in options.version_availability.get(body.engine, [])
                if item.version == version and past(item.end_of_availability, today)
            ),
            None,
        )
        if ended is not None:
            raise unprocessable(
                f"{body.engine} version {version} reached its end of availability on "
                f"{ended[:10]}; available: {', '.join(engine.versions)}"
            )
        if version is None or version not in engine.versions:
            raise unprocessable(
                f"invalid version {body.version!r} for engine {body.engine!r}; "
                f"available: {', '.join(engine.versions)}"
            )
        layout = next((lay for lay in engine.layouts if lay.num_nodes == body.num_nodes), None)
        if layout is None:
            counts = ", ".join(str(lay.num_nodes) for lay in engine.layouts)
            raise unprocessable(
                f"invalid num_nodes {body.num_nodes} for engine {body.engine!r}; "
                f"available: {counts}"
            )
        if body.size not in layout.sizes:
            raise unprocessable(
                f"invalid size {body.size!r} for {body.num_nodes}-node {body.engine!r} clusters"
            )
        if body.name in self._ids_by_name:
            raise unprocessable("cluster name is not available")
        restore = body.backup_restore
        if restore is not None:
            source = self._ids_by_name.get(restore.database_name)
            if source is None or self._clusters[source].engine != body.engine:
                raise unprocessable(
                    f"no {body.engine!r} cluster named {restore.database_name!r} to restore from"
                )
        return version

    def create(
        self, body: DatabaseClusterCreate, now: float, config: SimulatorConfig
    ) -> ClusterRecord:
        """Add a cluster in ``creating`` after ``check_create``; 422 on any broken rule."""
        today = config.options_date or datetime.now(UTC).date()
        version = self.check_create(body, today)
        rng = self._rng
        cluster_id = self._uuid()
        created_at = datetime.now(UTC).replace(microsecond=0)
        ready_at: float | None = None
        if not rng.random() < config.stuck_fraction:
            ready_at = now + config.ready_after_s + rng.uniform(0.0, config.ready_jitter_s)
        password = credentials.generate_password()
        profile = ENGINE_PROFILES[body.engine]
        admin = DatabaseUser(name=profile.admin_user, role="primary", password=password)
        if body.engine == "kafka":
            admin.access_cert = credentials.kafka_access_cert()
            admin.access_key = credentials.kafka_access_key()
        availability = next(
            (
                v
                for v in options_as_of(today).version_availability.get(body.engine, [])
                if v.version == version
            ),
            None,
        )
        record = ClusterRecord(
            cluster_id=cluster_id,
            name=body.name,
            engine=body.engine,
            version=version,
            num_nodes=body.num_nodes,
            size=body.size,
            region=body.region,
            tags=list(body.tags) if body.tags is not None else None,
            project_id=body.project_id or self.default_project_id,
            private_network_uuid=body.private_network_uuid or self._default_vpc(body.region),
            created_at=created_at,
            created_mono=now,
            ready_at=ready_at,
            host=(f"{host_label(body.name)}-do-user-{self.account_number}-0.{HOST_DOMAIN}"),
            password=password,
            admin_user=admin,
            rules=(
                [
                    FirewallRule(
                        type=rule.type,
                        value=rule.value,
                        uuid=rule.uuid or self._uuid(),
                        cluster_uuid=cluster_id,
                        created_at=created_at,
                        description=rule.description,
                    )
                    for rule in body.rules
                ]
                if body.rules is not None
                else None
            ),
            storage_size_mib=body.storage_size_mib or _base_storage_mib(body.size),
            do_settings=body.do_settings,
            maintenance_window=MaintenanceWindow(
                day=rng.choice(_WEEKDAYS),
                hour=f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}",
                pending=False,
                description=[],
            ),
            version_end_of_life=availability.end_of_life if availability else None,
            version_end_of_availability=availability.end_of_availability if availability else None,
        )
        self._clusters[cluster_id] = record
        self._ids_by_name[body.name] = cluster_id
        return record

    def _default_vpc(self, region: str) -> str:
        vpc = self._default_vpcs.get(region)
        if vpc is None:
            vpc = self._default_vpcs[region] = self._uuid()
        return vpc

    # --- delete, users, databases --------------------------------------------------------

    def delete(self, cluster_id: str, now: float, config: SimulatorConfig) -> None:
        """Destroy a cluster; its name is free again."""
        cluster = self.find(cluster_id, now, config)
        del self._clusters[cluster.id]
        del self._ids_by_name[cluster.name]

    def add_user(
        self, cluster_id: str, raw: bytes, now: float, config: SimulatorConfig
    ) -> DatabaseUser:
        """``POST /v2/databases/{id}/users``: a user with a generated password."""
        cluster = self.find(cluster_id, now, config)
        if not cluster.profile.manages_users:
            raise unprocessable(f"user management is not supported for {cluster.engine} clusters")
        body = decode_body(raw, DatabaseUserCreate)
        for setting in user_settings_present(body):
            if cluster.engine not in USER_SETTING_ENGINES[setting]:
                raise unprocessable(f"{setting} is not supported for {cluster.engine} clusters")
        _require_online(cluster, now)
        self._require_settled(cluster, now, config)
        if any(user.name == body.name for user in cluster.users):
            raise unprocessable(f"user {body.name!r} already exists")
        user = DatabaseUser(
            name=body.name,
            role="normal",
            password=credentials.generate_password(),
            mysql_settings=_as_read(body.mysql_settings, MySQLSettingsRead),
            settings=_as_read(body.settings, UserSettingsRead),
        )
        if cluster.engine in _MYSQL_ENGINES and user.mysql_settings is None:
            # MySQL 8 creates users with its default plugin; the API reports it.
            user.mysql_settings = MySQLSettingsRead(auth_plugin="caching_sha2_password")
        if cluster.engine == "kafka":
            user.access_cert = credentials.kafka_access_cert()
            user.access_key = credentials.kafka_access_key()
            if body.settings is not None and body.settings.acl is not None:
                # ACL ids are computed by DigitalOcean.
                acl = [
                    KafkaAclRead(topic=a.topic, permission=a.permission, id=f"acl{self._hex(12)}")
                    for a in body.settings.acl
                ]
                user.settings = msgspec.structs.replace(
                    user.settings or UserSettingsRead(), acl=acl
                )
        if cluster.engine in ("pg", "advanced_pg"):
            settings = user.settings or UserSettingsRead()
            if settings.pg_allow_replication is None:
                # The spec: omitted means false.
                user.settings = msgspec.structs.replace(settings, pg_allow_replication=False)
        cluster.users.append(user)
        return user

    def add_database(self, cluster_id: str, raw: bytes, now: float, config: SimulatorConfig) -> str:
        """``POST /v2/databases/{id}/dbs``: the name of the new database."""
        cluster = self.find(cluster_id, now, config)
        if not cluster.profile.manages_databases:
            raise unprocessable(
                f"database management is not supported for {cluster.engine} clusters"
            )
        body = decode_body(raw, DatabaseCreate)
        _require_online(cluster, now)
        self._require_settled(cluster, now, config)
        names = cluster.db_names if cluster.db_names is not None else []
        if body.name in names:
            raise unprocessable(f"database {body.name!r} already exists")
        cluster.db_names = [*names, body.name]
        return body.name

    def reset_password(
        self, cluster_id: str, user_name: str, raw: bytes, now: float, config: SimulatorConfig
    ) -> DatabaseUser:
        """``POST /v2/databases/{id}/users/{user}/reset_auth``: a new password (the admin
        user's too: the cluster's connection then carries it)."""
        cluster = self.find(cluster_id, now, config)
        if raw.strip():
            decode_body(raw, ResetAuth)
        _require_online(cluster, now)
        self._require_settled(cluster, now, config)
        try:
            return cluster.set_password(user_name, credentials.generate_password())
        except KeyError:
            raise not_found("user") from None

    def _require_settled(self, cluster: ClusterRecord, now: float, config: SimulatorConfig) -> None:
        """While a new cluster settles, user and database calls fail (one error drawn)."""
        if config.unsettled_s <= 0 or cluster.forced_status is not None:
            return  # a status a test pinned has no settling time
        if cluster.ready_at is None or now >= cluster.ready_at + config.unsettled_s:
            return
        raise self._rng.choice(_UNSETTLED)

    def _hex(self, n: int) -> str:
        return f"{self._rng.getrandbits(4 * n):0{n}x}"


class ResetAuth(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``reset_auth`` (MySQL may name the new password's plugin)."""

    mysql_settings: MySQLSettingsRead | None = None


# What a just-online cluster answers user and database calls with, one drawn per call.
_UNSETTLED: Final = (
    ApiError(404, "not_found", "cluster not found"),
    ApiError(412, "precondition_failed", "cluster is not ready to accept this operation"),
    ApiError(500, "server_error", "Unexpected server-side error"),
    ApiError(503, "service_unavailable", "service temporarily unavailable"),
)


def _require_online(cluster: ClusterRecord, now: float) -> None:
    # 409 conflict rather than 422: the request itself is valid and succeeds unchanged once
    # the cluster is online, which is what 409 (a clash with the resource's current state)
    # tells a client; 422 says "this body will never work". The spec ships a conflict body.
    status = cluster.status(now)
    if status != "online":
        raise ApiError(409, "conflict", f"cluster is not online yet (status {status})")


def _base_storage_mib(size: str) -> int:
    """The disk that comes with a size slug: 10 GiB per GiB of memory, as a rough rule."""
    for part in reversed(size.split("-")):
        if part.endswith("gb") and part[:-2].isdigit():
            return int(part[:-2]) * 10 * 1024
    return 10 * 1024


_Read = TypeVar("_Read", bound=msgspec.Struct)


def _as_read(value: msgspec.Struct | None, read_type: type[_Read]) -> _Read | None:
    """A request-side struct as its lenient read-side twin (what the API echoes back)."""
    return None if value is None else msgspec.convert(msgspec.to_builtins(value), read_type)
