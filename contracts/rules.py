"""The checks a type cannot express: engine-specific fields and read-only fields.

Each rule comes from the DigitalOcean spec's prose (``databases_create_cluster.yml``,
``databases_add_user.yml``, ``databases_add.yml``, ``user_settings.yml``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from contracts.digitalocean import DatabaseClusterCreate, DatabaseUserCreate, FirewallRuleCreate
from contracts.errors import FieldError

if TYPE_CHECKING:
    from contracts.commands import ProvisionDatabase

__all__ = [
    "READ_ONLY_FIELDS",
    "UNSAFE_CHARACTERS",
    "check_cluster",
    "check_command",
    "unsafe_character",
    "user_settings_present",
]

# Characters that make a name or an id lie about itself where a person reads it: controls
# (C0, DEL, C1), bidirectional controls (U+202E shows "orders-dbXXX" backwards) and invisible
# ones (zero-width space, joiners, word joiner, byte order mark, line separators). A regex
# character class, shared with the pattern of ``request_id``.
UNSAFE_CHARACTERS: Final = (
    r"\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
)
_UNSAFE: Final = re.compile(f"[{UNSAFE_CHARACTERS}]")
UNSAFE_HELP: Final = "must not contain control, bidirectional or zero-width characters"


def unsafe_character(text: str) -> str | None:
    """Why ``text`` cannot name anything (the first unsafe character and where), or None."""
    found = _UNSAFE.search(text)
    if found is None:
        return None
    return f"{UNSAFE_HELP} (U+{ord(found.group()):04X} at index {found.start()})"


# Fields the spec marks readOnly on each object we accept. ``users`` and ``db_names`` are
# read-only on the cluster too, but this service accepts them and applies them once the
# cluster is online.
READ_ONLY_FIELDS: Final[Mapping[type, frozenset[str]]] = {
    DatabaseClusterCreate: frozenset(
        {
            "id",
            "status",
            "semantic_version",
            "created_at",
            "version_end_of_life",
            "version_end_of_availability",
            "metrics_endpoints",
            "connection",
            "private_connection",
            "standby_connection",
            "standby_private_connection",
            "ui_connection",
            "schema_registry_connection",
            "maintenance_window",
        }
    ),
    FirewallRuleCreate: frozenset({"cluster_uuid", "created_at"}),
    DatabaseUserCreate: frozenset({"password", "role", "access_key", "access_cert"}),
}

NO_USER_MANAGEMENT: Final = frozenset({"redis", "valkey"})
NODE_COUNTS: Final[Mapping[str, tuple[int, ...]]] = {
    "advanced_pg": (1, 2, 3),
    "advanced_mysql": (1, 3),
}
# Which engines each engine-specific user setting belongs to.
USER_SETTING_ENGINES: Final[Mapping[str, frozenset[str]]] = {
    "mysql_settings": frozenset({"mysql", "advanced_mysql"}),
    "settings.pg_allow_replication": frozenset({"pg", "advanced_pg"}),
    "settings.opensearch_acl": frozenset({"opensearch"}),
    "settings.acl": frozenset({"kafka"}),
    "settings.mongo_user_settings": frozenset({"mongodb"}),
    "readonly": frozenset({"mongodb"}),
}


def check_command(command: ProvisionDatabase) -> list[FieldError]:
    """Every rule broken by a decoded command."""
    return check_cluster(command.cluster, "$.cluster")


def check_cluster(cluster: DatabaseClusterCreate, path: str = "$") -> list[FieldError]:
    """Every rule broken by a create body whose types are already valid."""
    errors: list[FieldError] = []
    engine = cluster.engine
    if engine == "redis":
        errors.append(
            FieldError(
                f"{path}.engine",
                "DigitalOcean no longer creates Caching (`redis`) clusters since "
                "2025-04-30; use `valkey` instead",
            )
        )
    if cluster.backup_restore is not None and engine in NO_USER_MANAGEMENT:
        errors.append(
            FieldError(
                f"{path}.backup_restore",
                f"backups are not supported for `{engine}` clusters, so none can be restored",
            )
        )
    allowed = NODE_COUNTS.get(engine)
    if allowed is not None and cluster.num_nodes not in allowed:
        counts = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"
        errors.append(
            FieldError(
                f"{path}.num_nodes",
                f"`{engine}` clusters take {counts} nodes, not {cluster.num_nodes}",
            )
        )
    errors.extend(_check_names(cluster, path))
    errors.extend(_check_users(cluster, path))
    errors.extend(_check_db_names(cluster, path))
    return errors


def _check_names(cluster: DatabaseClusterCreate, path: str) -> list[FieldError]:
    """Names and tags a person will read in the console, in events and in logs."""
    named = [(f"{path}.name", cluster.name)]
    named += [(f"{path}.tags[{i}]", tag) for i, tag in enumerate(cluster.tags or [])]
    named += [(f"{path}.users[{i}].name", u.name) for i, u in enumerate(cluster.users or [])]
    # A blank database name has its own error.
    named += [
        (f"{path}.db_names[{i}]", n) for i, n in enumerate(cluster.db_names or []) if n.strip()
    ]
    return [
        FieldError(where, why)
        for where, text in named
        if (why := unsafe_character(text)) is not None
    ]


def _check_users(cluster: DatabaseClusterCreate, path: str) -> list[FieldError]:
    if not cluster.users:
        return []
    engine = cluster.engine
    if engine in NO_USER_MANAGEMENT:
        return [
            FieldError(
                f"{path}.users",
                f"user management is not supported for `{engine}` clusters; remove `users`",
            )
        ]
    errors: list[FieldError] = []
    first: dict[str, int] = {}
    for i, user in enumerate(cluster.users):
        where = f"{path}.users[{i}]"
        j = first.setdefault(user.name, i)
        if j != i:
            errors.append(
                FieldError(f"{where}.name", f"duplicate user name {user.name!r} (as users[{j}])")
            )
        for setting in user_settings_present(user):
            engines = USER_SETTING_ENGINES[setting]
            if engine not in engines:
                names = " and ".join(f"`{e}`" for e in sorted(engines))
                errors.append(
                    FieldError(
                        f"{where}.{setting}",
                        f"`{setting.rsplit('.', 1)[-1]}` applies only to {names} clusters, "
                        f"not `{engine}`",
                    )
                )
    return errors


def user_settings_present(user: DatabaseUserCreate) -> list[str]:
    """The engine-specific settings a user sets, as keys of ``USER_SETTING_ENGINES``."""
    present = []
    if user.mysql_settings is not None:
        present.append("mysql_settings")
    if user.readonly is not None:
        present.append("readonly")
    s = user.settings
    if s is not None:
        for name in ("pg_allow_replication", "opensearch_acl", "acl", "mongo_user_settings"):
            if getattr(s, name) is not None:
                present.append(f"settings.{name}")
    return present


def _check_db_names(cluster: DatabaseClusterCreate, path: str) -> list[FieldError]:
    if not cluster.db_names:
        return []
    if cluster.engine in NO_USER_MANAGEMENT:
        return [
            FieldError(
                f"{path}.db_names",
                f"database management is not supported for `{cluster.engine}` clusters; "
                "remove `db_names`",
            )
        ]
    errors: list[FieldError] = []
    first: dict[str, int] = {}
    for i, name in enumerate(cluster.db_names):
        j = first.setdefault(name, i)
        if not name.strip():
            errors.append(FieldError(f"{path}.db_names[{i}]", "database name must not be empty"))
        elif j != i:
            errors.append(
                FieldError(
                    f"{path}.db_names[{i}]", f"duplicate database name {name!r} (as db_names[{j}])"
                )
            )
    return errors
