"""The contract Structs against the official DigitalOcean OpenAPI description.

Needs the spec (``do_spec`` skips with the reason where it is absent). The walk compares
each spec property with the Struct field msgspec reports for it: existence, a compatible
type, enum values, patterns, bounds, lengths and requiredness, recursively. The few places
where a Struct is deliberately different are listed below with the reason, so a change on
either side shows up here.
"""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi
import pytest

from contracts import rules
from contracts.digitalocean import (
    ENGINES,
    KNOWN_STATUSES,
    ApiErrorBody,
    CaResponse,
    DatabaseCluster,
    DatabaseClusterCreate,
    DatabaseClusterList,
    DatabaseClusterResponse,
    DatabaseCreate,
    DatabaseNameResponse,
    DatabaseOptions,
    DatabaseUserCreate,
    DatabaseUserResponse,
    FirewallRuleCreate,
)
from tests.fixtures.spec import SpecResolver

# Constraints the Structs add on purpose, beyond the spec: values DigitalOcean refuses
# anyway, caught before the call so the producer hears it from us with a JSON path.
STRICTER_THAN_SPEC = {
    ("DatabaseClusterCreate.name", "min_length", 1),
    ("DatabaseClusterCreate.num_nodes", "ge", 1),
    ("DatabaseClusterCreate.size", "min_length", 1),
    ("DatabaseClusterCreate.region", "min_length", 1),
    ("DatabaseClusterCreate.storage_size_mib", "ge", 0),
    ("DatabaseUserCreate.name", "min_length", 1),
    ("DatabaseCreate.name", "min_length", 1),
}

# Read-model fields required by a Struct though the spec does not list them as required:
# an object without them is useless to the service, so it should fail loudly.
REQUIRED_BEYOND_SPEC = {
    "DatabaseCluster.id",  # every lookup, watch and event needs the cluster id
    "LayoutOption.num_nodes",  # a layout is "sizes for this node count"
    "VersionAvailability.version",  # the availability of which version otherwise?
}

# Spec readOnly properties of the create body that the service accepts on purpose: it
# creates them itself once the cluster is online.
ACCEPTED_READ_ONLY = {"users", "db_names"}


def _without_none(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        options = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(options) == 1:
            return options[0]
    return t


def _spec_type(prop: dict[str, Any]) -> str | None:
    kind = prop.get("type")
    if kind is None and "properties" in prop:
        return "object"
    return kind if isinstance(kind, str) else None


class WritableWalk:
    """Compares a request schema with a strict Struct, collecting every difference."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.stricter: set[tuple[str, str, object]] = set()

    def struct(
        self, schema: dict[str, Any], cls: type, *, accepted_read_only: frozenset[str] = frozenset()
    ) -> None:
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType)
        fields = {f.encode_name: f for f in info.fields}
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        read_only = rules.READ_ONLY_FIELDS.get(cls, frozenset())
        name = cls.__name__
        for prop_name, prop in props.items():
            where = f"{name}.{prop_name}"
            if prop.get("readOnly") and prop_name not in accepted_read_only:
                if prop_name in fields:
                    self.problems.append(f"{where} is readOnly in the spec but a field")
                if prop_name not in read_only:
                    self.problems.append(f"{where} is readOnly but not in READ_ONLY_FIELDS")
                continue
            field = fields.get(prop_name)
            if field is None:
                self.problems.append(f"{where} is writable in the spec but not a field")
                continue
            if field.required != (prop_name in required):
                self.problems.append(
                    f"{where}: required {field.required} here, {prop_name in required} in spec"
                )
            self.value(prop, field.type, where)
        for field_name in fields:
            if field_name not in props:
                self.problems.append(f"{name}.{field_name} is a field but not in the spec")
        invented = read_only - {p for p, s in props.items() if s.get("readOnly")}
        if invented:
            self.problems.append(f"{name}: READ_ONLY_FIELDS not readOnly in spec: {invented}")

    def value(self, prop: dict[str, Any], t: mi.Type, where: str) -> None:
        t = _without_none(t)
        kind = _spec_type(prop)
        if kind == "string":
            self._string(prop, t, where)
        elif kind == "integer":
            if not isinstance(t, mi.IntType):
                self.problems.append(f"{where}: integer in spec, {t} here")
                return
            self._same(where, "ge", prop.get("minimum"), t.ge)
            self._same(where, "le", prop.get("maximum"), t.le)
        elif kind == "boolean":
            if not isinstance(t, mi.BoolType):
                self.problems.append(f"{where}: boolean in spec, {t} here")
        elif kind == "array":
            if not isinstance(t, mi.ListType):
                self.problems.append(f"{where}: array in spec, {t} here")
                return
            self._same(where, "max_length", prop.get("maxItems"), t.max_length)
            self._same(where, "min_length", prop.get("minItems"), t.min_length)
            self.value(prop["items"], t.item_type, f"{where}[]")
        elif kind == "object":
            if not isinstance(t, mi.StructType):
                self.problems.append(f"{where}: object in spec, {t} here")
                return
            self.struct(prop, t.cls)
        else:
            self.problems.append(f"{where}: spec type {kind!r} is not handled by this test")

    def _string(self, prop: dict[str, Any], t: mi.Type, where: str) -> None:
        if "enum" in prop:
            if not isinstance(t, mi.LiteralType):
                self.problems.append(f"{where}: enum in spec, {t} here")
            elif set(t.values) != set(prop["enum"]):
                self.problems.append(f"{where}: enum {prop['enum']} in spec, {t.values} here")
            return
        if prop.get("format") == "date-time" and isinstance(t, mi.DateTimeType):
            return
        if not isinstance(t, mi.StrType):
            self.problems.append(f"{where}: string in spec, {t} here")
            return
        if prop.get("pattern") != t.pattern:
            self.problems.append(f"{where}: pattern {prop.get('pattern')!r} vs {t.pattern!r}")
        self._same(where, "max_length", prop.get("maxLength"), t.max_length)
        self._same(where, "min_length", prop.get("minLength"), t.min_length)

    def _same(self, where: str, what: str, spec: object, ours: object) -> None:
        if spec == ours:
            return
        if spec is None:
            self.stricter.add((where, what, ours))
        else:
            self.problems.append(f"{where}: {what} {spec!r} in spec, {ours!r} here")


class ReadWalk:
    """Checks a lenient read Struct holds every property of a response schema."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.required_beyond: set[str] = set()

    def struct(self, schema: dict[str, Any], cls: type) -> None:
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType)
        fields = {f.encode_name: f for f in info.fields}
        props: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", []))
        for prop_name, prop in props.items():
            field = fields.get(prop_name)
            where = f"{cls.__name__}.{prop_name}"
            if field is None:
                self.problems.append(f"{where} is in the spec but not a field")
                continue
            self.value(prop, field.type, where)
        for field in info.fields:
            if field.required and field.encode_name not in required:
                self.required_beyond.add(f"{cls.__name__}.{field.encode_name}")

    def value(self, prop: dict[str, Any], t: mi.Type, where: str) -> None:
        t = _without_none(t)
        kind = _spec_type(prop)
        expected: tuple[type[mi.Type], ...]
        if kind == "string":
            expected = (mi.StrType, mi.LiteralType, mi.DateTimeType)
            if isinstance(t, mi.LiteralType) and not set(prop.get("enum", [])) <= set(t.values):
                self.problems.append(f"{where}: spec enum {prop.get('enum')} vs {t.values}")
        elif kind == "integer":
            expected = (mi.IntType,)
        elif kind == "boolean":
            expected = (mi.BoolType,)
        elif kind == "array":
            expected = (mi.ListType,)
            if isinstance(t, mi.ListType):
                self.value(prop["items"], t.item_type, f"{where}[]")
        elif kind == "object":
            expected = (mi.StructType, mi.DictType)
            if isinstance(t, mi.StructType):
                self.struct(prop, t.cls)
            elif isinstance(t, mi.DictType):
                # An object keyed by engine in the spec, an open dict here.
                for key, sub in prop.get("properties", {}).items():
                    self.value(sub, t.value_type, f"{where}[{key}]")
        else:
            self.problems.append(f"{where}: spec type {kind!r} is not handled by this test")
            return
        if not isinstance(t, expected):
            self.problems.append(f"{where}: {kind} in spec, {t} here")


def operation_part(do_spec: SpecResolver, operation: str, key: str) -> dict[str, Any]:
    """One part of an operation (``requestBody``, ``responses``), resolved.

    Not ``SpecResolver.operation``: it resolves the whole file, and the ``x-codeSamples``
    references point at an ``examples/`` folder the spec copy leaves out.
    """
    path = do_spec.root / "resources" / "databases" / f"{operation}.yml"
    part: dict[str, Any] = do_spec.resolve(do_spec.load(path)[key], path)
    return part


def _request_schema(do_spec: SpecResolver, operation: str) -> dict[str, Any]:
    body = operation_part(do_spec, operation, "requestBody")
    schema: dict[str, Any] = body["content"]["application/json"]["schema"]
    return schema


def _create_schema(do_spec: SpecResolver) -> dict[str, Any]:
    """The create body; each ``users`` item is the add-user body, the call that creates it."""
    schema = _request_schema(do_spec, "databases_create_cluster")
    schema["properties"]["users"]["items"] = _request_schema(do_spec, "databases_add_user")
    return schema


def _response_schema(do_spec: SpecResolver, operation: str, status: str) -> dict[str, Any]:
    response = operation_part(do_spec, operation, "responses")[status]
    schema: dict[str, Any] = response["content"]["application/json"]["schema"]
    return schema


def test_create_body_has_every_writable_property_with_the_spec_type_enum_and_bounds(
    do_spec: SpecResolver,
) -> None:
    walk = WritableWalk()
    walk.struct(
        _create_schema(do_spec),
        DatabaseClusterCreate,
        accepted_read_only=frozenset(ACCEPTED_READ_ONLY),
    )
    assert walk.problems == []


def test_create_body_is_no_stricter_than_spec_except_where_listed(do_spec: SpecResolver) -> None:
    walk = WritableWalk()
    walk.struct(
        _create_schema(do_spec),
        DatabaseClusterCreate,
        accepted_read_only=frozenset(ACCEPTED_READ_ONLY),
    )
    walk.struct(_add_user_schema(do_spec), DatabaseUserCreate)
    walk.struct(_add_db_schema(do_spec), DatabaseCreate)
    assert walk.stricter == STRICTER_THAN_SPEC


def test_create_body_checks_nested_objects_against_the_spec(do_spec: SpecResolver) -> None:
    # The walk must really reach the nested objects, or the test above proves little.
    props = _create_schema(do_spec)["properties"]
    assert props["rules"]["items"]["properties"]["type"]["enum"] == [
        "droplet",
        "k8s",
        "ip_addr",
        "tag",
        "app",
    ]
    assert props["autoscale"]["properties"]["storage"]["properties"]["threshold_percent"] == {
        **props["autoscale"]["properties"]["storage"]["properties"]["threshold_percent"],
        "minimum": 15,
        "maximum": 95,
    }
    assert props["do_settings"]["properties"]["service_cnames"]["maxItems"] == 16
    assert props["backup_restore"]["required"] == ["database_name"]
    broken = WritableWalk()
    changed = _create_schema(do_spec)
    changed["properties"]["do_settings"]["properties"]["service_cnames"]["maxItems"] = 17
    changed["properties"]["rules"]["items"]["properties"]["type"]["enum"].append("vpc")
    broken.struct(changed, DatabaseClusterCreate, accepted_read_only=frozenset(ACCEPTED_READ_ONLY))
    assert any("service_cnames: max_length 17" in p for p in broken.problems)
    assert any("FirewallRuleCreate.type: enum" in p for p in broken.problems)


def test_create_body_requires_exactly_what_the_spec_requires(do_spec: SpecResolver) -> None:
    info = mi.type_info(DatabaseClusterCreate)
    assert isinstance(info, mi.StructType)
    ours = {f.encode_name for f in info.fields if f.required}
    assert ours == set(_create_schema(do_spec)["required"])
    assert ours == {"name", "engine", "num_nodes", "size", "region"}


def test_engine_literal_has_the_nine_spec_engines(do_spec: SpecResolver) -> None:
    spec_engines = _create_schema(do_spec)["properties"]["engine"]["enum"]
    assert len(spec_engines) == 9
    assert set(ENGINES) == set(spec_engines)
    info = mi.type_info(DatabaseClusterCreate)
    assert isinstance(info, mi.StructType)
    engine = next(f for f in info.fields if f.name == "engine")
    assert isinstance(engine.type, mi.LiteralType)
    assert set(engine.type.values) == set(spec_engines)


def test_read_only_fields_of_the_create_body_are_refused_or_accepted_on_purpose(
    do_spec: SpecResolver,
) -> None:
    props = _create_schema(do_spec)["properties"]
    spec_read_only = {name for name, prop in props.items() if prop.get("readOnly")}
    assert spec_read_only - ACCEPTED_READ_ONLY == rules.READ_ONLY_FIELDS[DatabaseClusterCreate]
    assert spec_read_only >= ACCEPTED_READ_ONLY
    rule_props = props["rules"]["items"]["properties"]
    assert {n for n, p in rule_props.items() if p.get("readOnly")} == rules.READ_ONLY_FIELDS[
        FirewallRuleCreate
    ]


def _add_user_schema(do_spec: SpecResolver) -> dict[str, Any]:
    return _request_schema(do_spec, "databases_add_user")


def _add_db_schema(do_spec: SpecResolver) -> dict[str, Any]:
    return _request_schema(do_spec, "databases_add")


def test_user_create_body_matches_the_add_user_request(do_spec: SpecResolver) -> None:
    walk = WritableWalk()
    walk.struct(_add_user_schema(do_spec), DatabaseUserCreate)
    assert walk.problems == []
    spec_read_only = {
        n for n, p in _add_user_schema(do_spec)["properties"].items() if p.get("readOnly")
    }
    assert spec_read_only == rules.READ_ONLY_FIELDS[DatabaseUserCreate]


def test_database_create_body_matches_the_add_database_request(do_spec: SpecResolver) -> None:
    walk = WritableWalk()
    walk.struct(_add_db_schema(do_spec), DatabaseCreate)
    assert walk.problems == []


@pytest.mark.parametrize("model", ["database_cluster_read.yml", "database_cluster.yml"])
def test_read_model_has_every_property_of_the_cluster(do_spec: SpecResolver, model: str) -> None:
    path = do_spec.root / "resources" / "databases" / "models" / model
    schema = do_spec.resolve(do_spec.load(path), path)
    walk = ReadWalk()
    walk.struct(schema, DatabaseCluster)
    assert walk.problems == []
    assert walk.required_beyond <= REQUIRED_BEYOND_SPEC


def test_read_model_reaches_the_nested_objects(do_spec: SpecResolver) -> None:
    path = do_spec.root / "resources" / "databases" / "models" / "database_cluster_read.yml"
    schema = do_spec.resolve(do_spec.load(path), path)
    # A property the struct lacks, deep down, must be reported with its owner's name.
    schema["properties"]["users"]["items"]["properties"]["settings"]["properties"]["new"] = {
        "type": "string"
    }
    schema["properties"]["maintenance_window"]["properties"]["window_id"] = {"type": "string"}
    walk = ReadWalk()
    walk.struct(schema, DatabaseCluster)
    # The user's settings struct may be a read-side twin (UserSettingsRead) of the request's.
    assert any(
        p.startswith("UserSettings") and p.endswith(".new is in the spec but not a field")
        for p in walk.problems
    ), walk.problems
    assert "MaintenanceWindow.window_id is in the spec but not a field" in walk.problems


def test_read_model_status_is_open_but_knows_the_spec_values(do_spec: SpecResolver) -> None:
    path = do_spec.root / "resources" / "databases" / "models" / "database_cluster_read.yml"
    schema = do_spec.resolve(do_spec.load(path), path)
    assert tuple(schema["properties"]["status"]["enum"]) == KNOWN_STATUSES
    info = mi.type_info(DatabaseCluster)
    assert isinstance(info, mi.StructType)
    status = next(f for f in info.fields if f.name == "status")
    # A plain string: a status DigitalOcean adds later must still decode.
    assert isinstance(_without_none(status.type), mi.StrType)


@pytest.mark.parametrize(
    ("operation", "status", "wrapper"),
    [
        ("databases_create_cluster", "201", DatabaseClusterResponse),
        ("databases_get_cluster", "200", DatabaseClusterResponse),
        ("databases_list_clusters", "200", DatabaseClusterList),
        ("databases_list_options", "200", DatabaseOptions),
        ("databases_get_ca", "200", CaResponse),
        ("databases_add_user", "201", DatabaseUserResponse),
        ("databases_add", "201", DatabaseNameResponse),
        ("databases_create_cluster", "401", ApiErrorBody),
        ("databases_create_cluster", "404", ApiErrorBody),
        ("databases_create_cluster", "429", ApiErrorBody),
        ("databases_create_cluster", "500", ApiErrorBody),
        ("databases_create_cluster", "default", ApiErrorBody),
    ],
)
def test_response_types_have_every_property_of_the_response(
    do_spec: SpecResolver, operation: str, status: str, wrapper: type
) -> None:
    walk = ReadWalk()
    walk.struct(_response_schema(do_spec, operation, status), wrapper)
    assert walk.problems == []
    assert walk.required_beyond <= REQUIRED_BEYOND_SPEC


def test_options_are_offered_for_exactly_the_nine_engines(do_spec: SpecResolver) -> None:
    schema = _response_schema(do_spec, "databases_list_options", "200")
    assert set(schema["properties"]["options"]["properties"]) == set(ENGINES)
    assert set(schema["properties"]["version_availability"]["properties"]) == set(ENGINES)
