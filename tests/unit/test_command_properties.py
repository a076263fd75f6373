"""Properties of ``decode_command`` over generated input (hypothesis).

* every valid command survives ``encode_command`` then ``decode_command`` unchanged;
* random bytes, random JSON, command-shaped JSON with random values and valid commands
  with random edits never raise anything but ``InvalidCommand``, and what it accepts the
  typed msgspec decoder accepts too;
* the field-by-field checker finds every problem msgspec finds: an object's errors always
  point below the root, never at msgspec's fallback message.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any, get_args

import msgspec
import msgspec.structs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import InvalidCommand, ProvisionDatabase, decode_command, encode_command
from contracts.digitalocean import (
    ENGINES,
    AuthPlugin,
    Autoscale,
    DatabaseBackup,
    DatabaseClusterCreate,
    DatabaseUserCreate,
    DoSettings,
    FirewallRuleCreate,
    FirewallRuleType,
    KafkaAcl,
    KafkaPermission,
    MongoRole,
    MongoUserSettings,
    MySQLSettings,
    OpenSearchAcl,
    OpenSearchPermission,
    StorageAutoscale,
    UserSettings,
)
from contracts.rules import (
    NO_USER_MANAGEMENT,
    NODE_COUNTS,
    READ_ONLY_FIELDS,
    USER_SETTING_ENGINES,
    unsafe_character,
)

# deadline=None: a CI machine with two cores and a broker beside it has no stable timing,
# and timing is not what these properties are about. The example counts keep the module
# well under 20 s.
settings.register_profile(
    "contracts",
    deadline=None,
    max_examples=100,
    suppress_health_check=(HealthCheck.too_slow, HealthCheck.data_too_large),
)
PROPERTIES = settings.get_profile("contracts")

CREATABLE = sorted(set(ENGINES) - {"redis"})
# Controls, bidirectional and zero-width characters: never in a request_id, name or tag.
UNSAFE = [chr(i) for i in range(0x10000) if unsafe_character(chr(i)) is not None]

# The root-level messages decode_command gives when there is no field to point at.
ROOT_MESSAGES = ("invalid JSON", "invalid UTF-8", "JSON is nested too deeply", "message is ")

words = st.text(min_size=1, max_size=12)
names = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=UNSAFE), min_size=1, max_size=12
)
request_ids = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=UNSAFE),
    min_size=1,
    max_size=128,
)
uuid_or_empty = st.just("") | st.uuids().map(str)
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
# RFC 1123 labels built directly: st.from_regex(HOSTNAME) is several times slower.
_labels = st.builds(
    lambda first, middle, last: first + middle + last,
    st.sampled_from(_ALNUM),
    st.text(alphabet=_ALNUM + "-", max_size=6),
    st.text(alphabet=_ALNUM, max_size=1),
).filter(lambda label: not label.endswith("-"))
hostnames = st.lists(_labels, min_size=2, max_size=4).map(".".join)


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


firewall_rules = st.builds(
    FirewallRuleCreate,
    type=st.sampled_from(get_args(FirewallRuleType)),
    value=st.text(max_size=20),
    uuid=optional(uuid_or_empty),
    description=optional(st.text(max_size=20)),
)
autoscales = st.builds(
    Autoscale,
    storage=optional(
        st.builds(
            StorageAutoscale,
            enabled=st.booleans(),
            threshold_percent=optional(st.integers(15, 95)),
            increment_gib=optional(st.integers(10, 500)),
        )
    ),
)
do_settings = st.builds(DoSettings, service_cnames=optional(st.lists(hostnames, max_size=3)))
backups = st.builds(
    DatabaseBackup,
    database_name=words,
    backup_created_at=optional(st.datetimes(timezones=st.none() | st.just(UTC))),
)
user_setting_values: dict[str, st.SearchStrategy[Any]] = {
    "mysql_settings": st.builds(MySQLSettings, auth_plugin=st.sampled_from(get_args(AuthPlugin))),
    "readonly": st.booleans(),
    "settings.pg_allow_replication": st.booleans(),
    "settings.opensearch_acl": st.lists(
        st.builds(
            OpenSearchAcl,
            index=optional(words),
            permission=optional(st.sampled_from(get_args(OpenSearchPermission))),
        ),
        max_size=2,
    ),
    "settings.acl": st.lists(
        st.builds(
            KafkaAcl,
            topic=words,
            permission=st.sampled_from(get_args(KafkaPermission)),
            id=optional(words),
        ),
        max_size=2,
    ),
    "settings.mongo_user_settings": st.builds(
        MongoUserSettings,
        databases=optional(st.lists(words, max_size=2)),
        role=optional(st.sampled_from(get_args(MongoRole))),
    ),
}


@st.composite
def users_for(draw: st.DrawFn, engine: str) -> list[DatabaseUserCreate]:
    """Users with unique names and only the settings ``engine`` takes."""
    allowed = [s for s, engines in USER_SETTING_ENGINES.items() if engine in engines]
    users = []
    for name in draw(st.lists(names, unique=True, max_size=3)):
        chosen = {
            setting: draw(user_setting_values[setting])
            for setting in allowed
            if draw(st.booleans())
        }
        nested = {k.split(".", 1)[1]: v for k, v in chosen.items() if k.startswith("settings.")}
        empty_settings: bool = draw(st.booleans())
        users.append(
            DatabaseUserCreate(
                name=name,
                mysql_settings=chosen.get("mysql_settings"),
                readonly=chosen.get("readonly"),
                settings=UserSettings(**nested) if nested or empty_settings else None,
            )
        )
    return users


@st.composite
def clusters(draw: st.DrawFn) -> DatabaseClusterCreate:
    """A create body that passes every type and rule."""
    engine = draw(st.sampled_from(CREATABLE))
    counts = NODE_COUNTS.get(engine)
    num_nodes = draw(st.sampled_from(counts) if counts else st.integers(1, 64))
    managed = engine not in NO_USER_MANAGEMENT
    return DatabaseClusterCreate(
        name=draw(names),
        engine=engine,
        num_nodes=num_nodes,
        size=draw(words),
        region=draw(words),
        version=draw(optional(words)),
        private_network_uuid=draw(optional(uuid_or_empty)),
        tags=draw(optional(st.lists(names, max_size=3))),
        project_id=draw(optional(st.uuids().map(str))),
        rules=draw(optional(st.lists(firewall_rules, max_size=3))),
        storage_size_mib=draw(optional(st.integers(0, 10_000_000))),
        autoscale=draw(optional(autoscales)),
        do_settings=draw(optional(do_settings)),
        backup_restore=draw(optional(backups)) if managed else None,
        users=draw(optional(users_for(engine))) if managed else None,
        db_names=(
            draw(optional(st.lists(names.filter(str.strip), unique=True, max_size=3)))
            if managed
            else None
        ),
    )


commands = st.builds(
    ProvisionDatabase,
    request_id=request_ids,
    cluster=clusters(),
    metadata=optional(st.dictionaries(names, st.text(max_size=40), max_size=4)),
    timeout_s=optional(st.integers(1, 7 * 24 * 3600)),
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

_cluster_keys = [f.encode_name for f in msgspec.structs.fields(DatabaseClusterCreate)]
small_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=2) | st.dictionaries(st.text(max_size=6), children, max_size=2)
    ),
    max_leaves=4,
)
shaped_commands = st.fixed_dictionaries(
    {},
    optional={
        "request_id": small_json_values | request_ids,
        "metadata": small_json_values,
        "timeout_s": small_json_values,
        "cluster": st.fixed_dictionaries(
            {},
            optional={
                key: small_json_values
                for key in [*_cluster_keys, *READ_ONLY_FIELDS[DatabaseClusterCreate], "num_node"]
            },
        ),
    },
)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) pair of a JSON document, the root's keys included."""
    found: list[tuple[Any, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found.append((node, key))
            found.extend(_slots(value))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.append((node, index))
            found.extend(_slots(value))
    return found


def check_outcome(data: bytes) -> None:
    """``decode_command`` accepts consistently with msgspec or raises a useful error."""
    try:
        command = decode_command(data)
    except InvalidCommand as exc:
        assert exc.errors
        for error in exc.errors:
            assert error.path.startswith("$")
            assert error.message
            if error.path == "$":
                assert error.message.startswith(ROOT_MESSAGES) or "Expected `object`" in (
                    error.message
                ), f"the checker missed what msgspec found: {error.message}"
        return
    typed = msgspec.json.decode(data, type=ProvisionDatabase)
    assert typed == command
    assert decode_command(encode_command(command)) == command


@PROPERTIES
@given(commands)
def test_any_valid_command_round_trips_through_encode_and_decode(
    command: ProvisionDatabase,
) -> None:
    assert decode_command(encode_command(command)) == command


@PROPERTIES
@given(st.binary(max_size=512))
def test_random_bytes_raise_nothing_but_invalid_command(data: bytes) -> None:
    check_outcome(data)


@PROPERTIES
@given(json_values)
def test_random_json_raises_nothing_but_invalid_command(document: Any) -> None:
    check_outcome(msgspec.json.encode(document))


@PROPERTIES
@given(shaped_commands)
def test_command_shaped_json_with_random_values_raises_nothing_but_invalid_command(
    document: dict[str, Any],
) -> None:
    check_outcome(msgspec.json.encode(document))


@PROPERTIES
@given(commands, st.data())
def test_valid_commands_with_random_edits_raise_nothing_but_invalid_command(
    command: ProvisionDatabase, data: st.DataObject
) -> None:
    document = msgspec.to_builtins(command)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        container, key = data.draw(st.sampled_from(_slots(document)), label="where")
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if action == "replace":
            container[key] = data.draw(json_values, label="value")
        elif action == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[data.draw(st.text(max_size=10), label="new key")] = data.draw(json_values)
        else:
            container.append(data.draw(json_values, label="new item"))
        if not _slots(document):
            break
    check_outcome(msgspec.json.encode(document))
