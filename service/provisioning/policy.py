"""Who may ask for what: the per-producer policy (``PROVISIONER_POLICY_FILE``).

One DigitalOcean token serves every team, so the service decides what each producer (the
RabbitMQ user that published the command) may do with it. The file is TOML, one table per
producer and ``"*"`` for every producer without a table of its own::

    ["*"]
    engines = ["pg", "mysql", "valkey"]
    max_nodes = 3
    max_clusters_in_flight = 5
    names = ["{producer}-*"]

    [orders-producer]
    regions = ["nyc3", "ams3"]
    sizes = ["db-s-*"]
    project_ids = ["4de7ac8b-495b-4884-9a69-1050c6793cd6"]
    reply_to = ["amq.rabbitmq.reply-to", "orders.replies.*"]

    [reporting]
    provision = false

A producer's table overrides the fields it sets; the others come from ``"*"``; what neither
sets is the default (:data:`DEFAULT_RULES`): any engine, region, size, node count, project and
VPC, no limit on clusters in flight, restores only from the producer's own clusters, replies
only to RabbitMQ's Direct Reply-to or to queues named ``<producer>.<anything>``. Without a file
every producer gets the default, so producers are kept apart even then.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Final

import msgspec
from msgspec import Meta, Struct

from contracts.commands import ProvisionDatabase
from contracts.digitalocean import Engine
from contracts.errors import FieldError

__all__ = [
    "DEFAULT_RULES",
    "DIRECT_REPLY_TO",
    "Policy",
    "PolicyError",
    "Rules",
    "load_policy",
]

DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"
"""RabbitMQ's Direct Reply-to pseudo-queue; the broker rewrites it to
``amq.rabbitmq.reply-to.<channel>`` in the message the service receives."""
DEFAULT_TABLE: Final = "*"


class PolicyError(ValueError):
    """The policy file cannot be read or breaks a rule; the message names the file and field."""


class Rules(Struct, forbid_unknown_fields=True, omit_defaults=True, kw_only=True):
    """What one producer may ask for; ``None`` means "as the default table says"."""

    provision: bool | None = None
    """False: every command of this producer is refused."""
    names: list[Annotated[str, Meta(min_length=1)]] | None = None
    """Cluster names or shell-style patterns (``{producer}`` is the producer's name): keeps a
    team from taking the names another team will use."""
    engines: list[Engine] | None = None
    regions: list[Annotated[str, Meta(min_length=1)]] | None = None
    sizes: list[Annotated[str, Meta(min_length=1)]] | None = None
    """Size slugs or shell-style patterns (``db-s-*``)."""
    max_nodes: Annotated[int, Meta(ge=1)] | None = None
    max_storage_size_mib: Annotated[int, Meta(ge=0)] | None = None
    """Most ``storage_size_mib`` a command may ask for (storage above the size's own costs)."""
    autoscale: bool | None = None
    """False: ``autoscale`` (storage that grows by itself, and its bill) is refused."""
    max_clusters_in_flight: Annotated[int, Meta(ge=0)] | None = None
    """How many of this producer's clusters may be ``creating`` at once (as the last list of
    the managed clusters shows them: commands handled at the same moment can pass together)."""
    project_ids: list[Annotated[str, Meta(min_length=1)]] | None = None
    """When set, ``project_id`` is required and must be one of these."""
    private_network_uuids: list[Annotated[str, Meta(min_length=1)]] | None = None
    """When set, ``private_network_uuid`` is required and must be one of these."""
    restore: bool | None = None
    """Whether ``backup_restore`` is allowed at all; it only ever restores a cluster the same
    producer created through this service."""
    reply_to: list[Annotated[str, Meta(min_length=1)]] | None = None
    """Queue names or shell-style patterns the replies may go to; ``{producer}`` stands for
    the producer's name, and ``amq.rabbitmq.reply-to`` allows RabbitMQ's Direct Reply-to."""


DEFAULT_RULES: Final = Rules(
    provision=True,
    restore=True,
    reply_to=[DIRECT_REPLY_TO, "{producer}.*"],
)
"""What applies where neither the producer's table nor ``"*"`` says otherwise."""

_FIELDS: Final = tuple(f.name for f in msgspec.structs.fields(Rules))


def _merge(*layers: Rules) -> Rules:
    """The later layers' set fields over the earlier ones'."""
    merged: dict[str, object] = {}
    for layer in layers:
        for name in _FIELDS:
            value = getattr(layer, name)
            if value is not None:
                merged[name] = value
    return msgspec.structs.replace(Rules(), **merged)


class Policy:
    """The rules of every producer, as one file (or the default) says."""

    def __init__(self, tables: Mapping[str, Rules] | None = None, *, source: str = "") -> None:
        tables = dict(tables or {})
        self.source = source or "the default policy"
        self._default = _merge(DEFAULT_RULES, tables.pop(DEFAULT_TABLE, Rules()))
        self._tables = tables
        self._resolved: dict[str, Rules] = {}

    def rules_for(self, producer: str) -> Rules:
        """The rules that apply to ``producer``, every field set."""
        rules = self._resolved.get(producer)
        if rules is None:
            table = self._tables.get(producer)
            rules = self._default if table is None else _merge(self._default, table)
            if len(self._resolved) < 10_000:  # producers are few; never grow without bound
                self._resolved[producer] = rules
        return rules

    def check(
        self, producer: str, command: ProvisionDatabase, reply_to: str | None
    ) -> list[FieldError]:
        """Every rule ``command`` (sent with ``reply_to``) breaks for ``producer``; the checks
        that need DigitalOcean (clusters in flight, the restore's source) are not here."""
        rules = self.rules_for(producer)
        who = f"producer {producer!r}"
        if rules.provision is False:
            return [FieldError("$", f"{who} may not provision clusters ({self.source})")]
        cluster = command.cluster
        errors: list[FieldError] = []

        def allowed(path: str, what: str, value: str | None, values: Sequence[str] | None) -> None:
            if values is None:
                return
            if value is None:
                errors.append(
                    FieldError(path, f"required: {who} may only use {what} {_listed(values)}")
                )
            elif value not in values:
                errors.append(
                    FieldError(
                        path, f"{who} may not use {what} {value!r}; allowed: {_listed(values)}"
                    )
                )

        if rules.names is not None and not any(
            _pattern(p, producer).fullmatch(cluster.name) for p in rules.names
        ):
            patterns = [p.replace("{producer}", producer) for p in rules.names]
            errors.append(
                FieldError(
                    "$.cluster.name",
                    f"{who} may not name a cluster {cluster.name[:64]!r}; allowed: "
                    f"{_listed(patterns)}",
                )
            )
        allowed("$.cluster.engine", "engine", cluster.engine, rules.engines)
        allowed("$.cluster.region", "region", cluster.region, rules.regions)
        if rules.sizes is not None and not any(
            fnmatch.fnmatchcase(cluster.size, pattern) for pattern in rules.sizes
        ):
            errors.append(
                FieldError(
                    "$.cluster.size",
                    f"{who} may not use size {cluster.size!r}; allowed: {_listed(rules.sizes)}",
                )
            )
        if rules.max_nodes is not None and cluster.num_nodes > rules.max_nodes:
            errors.append(
                FieldError(
                    "$.cluster.num_nodes",
                    f"{who} may create clusters of at most {rules.max_nodes} nodes, "
                    f"not {cluster.num_nodes}",
                )
            )
        storage = rules.max_storage_size_mib
        if storage is not None and (cluster.storage_size_mib or 0) > storage:
            errors.append(
                FieldError(
                    "$.cluster.storage_size_mib",
                    f"{who} may ask for at most {storage} MiB of storage, "
                    f"not {cluster.storage_size_mib}",
                )
            )
        if rules.autoscale is False and cluster.autoscale is not None:
            errors.append(FieldError("$.cluster.autoscale", f"{who} may not use autoscale"))
        allowed("$.cluster.project_id", "project", cluster.project_id, rules.project_ids)
        allowed(
            "$.cluster.private_network_uuid",
            "VPC",
            cluster.private_network_uuid,
            rules.private_network_uuids,
        )
        if cluster.backup_restore is not None and rules.restore is False:
            errors.append(FieldError("$.cluster.backup_restore", f"{who} may not restore backups"))
        if reply_to is not None and not self.reply_allowed(producer, reply_to):
            patterns = [p.replace("{producer}", producer) for p in rules.reply_to or []]
            errors.append(
                FieldError(
                    "properties.reply_to",
                    f"{who} may not have replies sent to {reply_to[:128]!r}; allowed: "
                    f"{_listed(patterns) if patterns else 'none'}",
                )
            )
        return errors

    def reply_allowed(self, producer: str, reply_to: str) -> bool:
        """Whether replies of ``producer`` may go to the queue ``reply_to``."""
        name = reply_to
        if name.startswith(DIRECT_REPLY_TO + "."):
            name = DIRECT_REPLY_TO  # the broker's rewriting of the pseudo-queue
        return any(
            _pattern(p, producer).fullmatch(name) is not None
            for p in self.rules_for(producer).reply_to or []
        )


@lru_cache(maxsize=1024)
def _pattern(pattern: str, producer: str) -> re.Pattern[str]:
    """A name pattern as a regex: ``*`` any run of characters, ``?`` one, ``{producer}``
    the producer's name taken literally, everything else literally."""
    out = []
    for i, part in enumerate(pattern.split("{producer}")):
        if i:
            out.append(re.escape(producer))
        out.extend(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in part)
    return re.compile("".join(out), re.DOTALL)


def _listed(values: Sequence[str]) -> str:
    shown = ", ".join(values[:20])
    return shown + (f" and {len(values) - 20} more" if len(values) > 20 else "")


def load_policy(path: str | Path | None) -> Policy:
    """The policy in the TOML file at ``path`` (the default policy when None); raises
    ``PolicyError`` naming the file, the table and the field at fault."""
    if path is None or str(path) == "":
        return Policy()
    where = str(path)
    try:
        document = tomllib.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise PolicyError(f"{where}: cannot read the policy file: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{where}: not valid TOML: {exc}") from None
    tables: dict[str, Rules] = {}
    for name, table in document.items():
        if not isinstance(table, dict):
            raise PolicyError(
                f"{where}: {name!r} must be a table ([{name}]) of rules for one producer"
            )
        nested = next((key for key, value in table.items() if isinstance(value, dict)), None)
        if nested is not None:
            # TOML reads [a.b] as a table b inside a: a user name with a dot needs quotes.
            raise PolicyError(
                f"{where}: [{name}] holds a table {nested!r}; a producer whose name has a dot "
                f'is written with quotes: ["{name}.{nested}"]'
            )
        try:
            tables[name] = msgspec.convert(table, Rules)
        except msgspec.ValidationError as exc:
            # msgspec says "... - at `$.max_nodes`": name the table and the field instead.
            problem, _, at = str(exc).partition(" - at ")
            field = at.strip("`").removeprefix("$").removeprefix(".")
            place = f"[{name}] {field}" if field else f"[{name}]"
            raise PolicyError(f"{where}: {place}: {problem}") from None
    return Policy(tables, source=f"policy {where}")
