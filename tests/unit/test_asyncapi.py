"""The AsyncAPI document and the per-message JSON Schemas.

The document goes through the official parser (``@asyncapi/parser``, run by
``scripts/validate-asyncapi.mjs``); the schemas must come from the Structs and agree with
``decode_command`` and with what the service encodes.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator, ValidationError

from contracts import InvalidCommand, decode_command
from contracts.asyncapi import (
    JSON_SCHEMA_DIALECT,
    MESSAGE_TYPES,
    YamlNotInstalled,
    build_document,
    dump,
    message_schemas,
    write_schemas,
)
from contracts.digitalocean import ENGINES, FirewallRuleType
from contracts.errors import FieldError
from contracts.events import (
    EVENT_CONTENT_TYPE,
    EVENT_TYPES,
    ConnectionReady,
    ConnectionReadyData,
    Event,
    Failed,
    FailedData,
    Rejected,
    RejectedData,
    StatusChanged,
    StatusChangedData,
    encode_event,
)
from contracts.names import (
    COMMAND_EXCHANGE,
    COMMAND_ROUTING_KEY,
    EVENT_EXCHANGE,
    REJECTED_QUEUE,
    REJECTION_REASON_HEADER,
    REQUEST_QUEUE,
)
from service import __version__
from service.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "scripts" / "validate-asyncapi.mjs"
ROUTING_KEYS = [
    "database.cluster.status_changed",
    "database.cluster.connection_ready",
    "database.cluster.rejected",
    "database.cluster.failed",
]

VALID_COMMAND: dict[str, Any] = {
    "request_id": "req-1",
    "cluster": {
        "name": "orders",
        "engine": "kafka",
        "num_nodes": 3,
        "size": "gd-2vcpu-8gb",
        "region": "nyc3",
        "rules": [{"type": "ip_addr", "value": "192.168.1.1"}],
        "autoscale": {"storage": {"enabled": True, "threshold_percent": 80}},
        "users": [{"name": "app", "settings": {"acl": [{"topic": "t", "permission": "admin"}]}}],
        "db_names": ["orders"],
    },
    "metadata": {"team": "orders"},
}


def run_validator(path: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the AsyncAPI parser runs on Node.js")
    parser = ROOT / "node_modules" / "@asyncapi" / "parser"
    assert parser.is_dir(), "the AsyncAPI parser is missing: run `make node` (npm install)"
    return subprocess.run(
        [node, str(VALIDATOR), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document(version="1.2.3")


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return message_schemas()


def component_validator(document: dict[str, Any], name: str) -> Any:
    """A validator for ``components.schemas[name]`` that resolves the document's refs.

    AsyncAPI 3's default schema format is a superset of JSON Schema draft 7.
    """
    return Draft7Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def events() -> list[Event]:
    return [
        StatusChanged.of(
            StatusChangedData(
                request_id="r", cluster_id="c", name="n", engine="pg", status="creating"
            )
        ),
        ConnectionReady.of(
            ConnectionReadyData(request_id="r", cluster_id="c", name="n", engine="pg", region="x")
        ),
        Rejected.of(RejectedData(errors=[FieldError("$", "invalid JSON")]), b"{"),
        Failed.of(FailedData(request_id="r", reason="api_error", message="422 from the API")),
    ]


def flatten(errors: Iterable[ValidationError]) -> Iterator[ValidationError]:
    """Every error, with those inside ``anyOf`` branches (optional fields are ``X | null``)."""
    for error in errors:
        yield error
        yield from flatten(error.context or [])


# --- the official parser --------------------------------------------------------------------


def test_document_passes_the_official_asyncapi_parser(
    document: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "asyncapi.yaml"
    path.write_text(dump(document, "yaml"))
    result = run_validator(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid AsyncAPI 3.0.0: 4 channels, 4 operations" in result.stdout
    assert " error " not in result.stdout


def test_validator_fails_on_a_document_the_parser_refuses(
    document: dict[str, Any], tmp_path: Path
) -> None:
    broken = copy.deepcopy(document)
    broken["channels"]["events"]["bindings"]["amqp"]["exchange"]["type"] = "fanout-ish"
    broken["operations"]["sendEvents"]["channel"] = {"$ref": "#/channels/missing"}
    path = tmp_path / "broken.json"
    path.write_text(dump(broken, "json"))
    result = run_validator(path)
    assert result.returncode == 1
    assert "error" in result.stdout
    assert "exchange.type" in result.stdout
    assert "#/channels/missing" in result.stdout


def test_yaml_and_json_dumps_hold_the_same_document(document: dict[str, Any]) -> None:
    assert yaml.safe_load(dump(document, "yaml")) == document
    assert json.loads(dump(document, "json")) == document


def test_yaml_without_pyyaml_says_how_to_install_it(
    document: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(YamlNotInstalled, match="pip install pyyaml"):
        dump(document, "yaml")


# --- the shape of the document --------------------------------------------------------------


def test_info_version_comes_from_the_parameter(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["version"] == "1.2.3"
    assert document["info"]["title"]
    assert document["info"]["description"]


def test_server_is_the_amqp_broker(document: dict[str, Any]) -> None:
    (server,) = document["servers"].values()
    assert server["protocol"] == "amqp"
    assert server["host"] == "localhost:5672"
    other = build_document(host="rabbitmq.internal:5671")
    assert next(iter(other["servers"].values()))["host"] == "rabbitmq.internal:5671"


def test_command_channel_is_the_direct_exchange_and_the_quorum_queue(
    document: dict[str, Any],
) -> None:
    channel = document["channels"]["commands"]
    assert channel["address"] == COMMAND_ROUTING_KEY == "database.cluster.create"
    amqp = channel["bindings"]["amqp"]
    assert amqp["is"] == "routingKey"
    assert amqp["exchange"]["name"] == COMMAND_EXCHANGE == "provisioner.commands"
    assert amqp["exchange"]["type"] == "direct"
    assert amqp["x-queue"]["name"] == REQUEST_QUEUE == "provisioner.requests"
    assert amqp["x-queue"]["arguments"]["x-queue-type"] == "quorum"
    (message,) = channel["messages"].values()
    command = document["components"]["messages"]["ProvisionDatabase"]
    assert message == {"$ref": "#/components/messages/ProvisionDatabase"}
    assert command["contentType"] == "application/json"
    assert command["payload"] == {"$ref": "#/components/schemas/ProvisionDatabase"}


def test_events_channel_is_the_topic_exchange_with_the_four_events(
    document: dict[str, Any],
) -> None:
    channel = document["channels"]["events"]
    amqp = channel["bindings"]["amqp"]
    assert amqp["exchange"] == {**amqp["exchange"], "name": EVENT_EXCHANGE, "type": "topic"}
    assert EVENT_EXCHANGE == "provisioner.events"
    assert channel["address"] == "database.cluster.{event}"
    short = [key.rsplit(".", 1)[1] for key in ROUTING_KEYS]
    assert channel["parameters"]["event"]["enum"] == short
    messages = [
        document["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]
        for ref in channel["messages"].values()
    ]
    assert [m["name"] for m in messages] == ROUTING_KEYS
    assert {m["contentType"] for m in messages} == {EVENT_CONTENT_TYPE}
    assert EVENT_CONTENT_TYPE == "application/cloudevents+json"


def test_reply_to_channel_is_dynamic_with_the_four_events_and_their_correlation_id(
    document: dict[str, Any],
) -> None:
    channel = document["channels"]["replyTo"]
    assert channel["address"] is None
    messages = list(channel["messages"].values())
    assert [m["name"] for m in messages] == ROUTING_KEYS
    for message in messages:
        assert message["correlationId"]["location"] == "$message.header#/correlation_id"
        assert message["contentType"] == EVENT_CONTENT_TYPE


def test_parking_queue_keeps_the_original_message_with_the_reason_header(
    document: dict[str, Any],
) -> None:
    channel = document["channels"]["rejected"]
    amqp = channel["bindings"]["amqp"]
    assert amqp["is"] == "queue"
    assert amqp["queue"]["name"] == REJECTED_QUEUE == "provisioner.rejected"
    message = document["components"]["messages"]["RejectedCommand"]
    assert REJECTION_REASON_HEADER == "x-rejection-reason"
    assert message["headers"]["required"] == [REJECTION_REASON_HEADER]


def test_operations_receive_commands_and_send_events_and_replies(
    document: dict[str, Any],
) -> None:
    actions = {(op["action"], op["channel"]["$ref"]) for op in document["operations"].values()}
    assert ("receive", "#/channels/commands") in actions
    assert ("send", "#/channels/events") in actions
    assert ("send", "#/channels/replyTo") in actions
    assert ("send", "#/channels/rejected") in actions
    receive = document["operations"]["receiveProvisionDatabase"]
    assert receive["reply"]["channel"] == {"$ref": "#/channels/replyTo"}


def test_document_names_what_the_service_declares_on_the_broker() -> None:
    # The contracts cannot import the service: the service takes its default names from them.
    from service.broker.topology import Topology

    topology = Topology()
    assert topology.commands_exchange == COMMAND_EXCHANGE
    assert topology.command_routing_key == COMMAND_ROUTING_KEY
    assert topology.requests_queue == REQUEST_QUEUE
    assert topology.events_exchange == EVENT_EXCHANGE
    assert topology.rejected_queue == REJECTED_QUEUE


# --- schemas generated from the Structs -----------------------------------------------------


def test_payload_schemas_are_generated_from_the_structs(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    engine = components["DatabaseClusterCreate"]["properties"]["engine"]
    assert set(engine["enum"]) == set(ENGINES)
    rule_type = components["FirewallRuleCreate"]["properties"]["type"]
    assert set(rule_type["enum"]) == set(get_args(FirewallRuleType))
    _, generated = msgspec.json.schema_components(
        list(MESSAGE_TYPES.values()), ref_template="#/components/schemas/{name}"
    )
    assert set(components) == set(generated)
    for name, schema in generated.items():
        assert components[name].get("properties") == schema.get("properties"), name
    for cls in EVENT_TYPES:
        assert components[cls.__name__]["properties"]["type"]["enum"] == [cls.__struct_config__.tag]


def test_every_object_of_the_command_forbids_unknown_fields(document: dict[str, Any]) -> None:
    components = document["components"]["schemas"]
    for name in [
        "ProvisionDatabase",
        "DatabaseClusterCreate",
        "FirewallRuleCreate",
        "Autoscale",
        "StorageAutoscale",
        "DoSettings",
        "DatabaseBackup",
        "DatabaseUserCreate",
        "UserSettings",
        "MySQLSettings",
        "KafkaAcl",
        "OpenSearchAcl",
        "MongoUserSettings",
    ]:
        assert components[name]["additionalProperties"] is False, name
    metadata = components["ProvisionDatabase"]["properties"]["metadata"]["anyOf"][0]
    assert metadata["additionalProperties"] == {"type": "string", "maxLength": 1024}


def test_cloudevents_attributes_the_encoder_always_writes_are_required(
    document: dict[str, Any],
) -> None:
    for cls in EVENT_TYPES:
        required = document["components"]["schemas"][cls.__name__]["required"]
        for attribute in ("specversion", "id", "source", "type", "time", "datacontenttype"):
            assert attribute in required, (cls.__name__, attribute)
        assert "subject" not in required


def test_every_example_in_the_document_fits_its_payload_schema(document: dict[str, Any]) -> None:
    checked = 0
    for message in document["components"]["messages"].values():
        ref = message["payload"].get("$ref")
        for example in message.get("examples", []):
            assert ref is not None
            errors = list(
                component_validator(document, ref.rsplit("/", 1)[1]).iter_errors(example["payload"])
            )
            assert errors == [], (message["name"], [e.message for e in errors])
            checked += 1
    assert checked == 5


def test_command_example_in_the_document_is_a_valid_command(document: dict[str, Any]) -> None:
    (example,) = document["components"]["messages"]["ProvisionDatabase"]["examples"]
    assert decode_command(msgspec.json.encode(example["payload"])).request_id


# --- standalone JSON Schemas ----------------------------------------------------------------


def test_one_schema_per_message_in_json_schema_2020_12(
    schemas: dict[str, dict[str, Any]],
) -> None:
    assert set(schemas) == {"ProvisionDatabase", *(cls.__name__ for cls in EVENT_TYPES)}
    for name, schema in schemas.items():
        assert schema["$schema"] == JSON_SCHEMA_DIALECT
        assert schema["$ref"] == f"#/$defs/{name}"
        assert name in schema["$defs"]
        Draft202012Validator.check_schema(schema)


def test_write_schemas_writes_one_file_per_message(
    tmp_path: Path, schemas: dict[str, dict[str, Any]]
) -> None:
    paths = write_schemas(tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(f"{n}.schema.json" for n in schemas)
    for path in paths:
        assert json.loads(path.read_text()) == schemas[path.name.removesuffix(".schema.json")]


def test_valid_command_passes_the_command_schema(schemas: dict[str, dict[str, Any]]) -> None:
    validator = Draft202012Validator(schemas["ProvisionDatabase"])
    assert list(validator.iter_errors(VALID_COMMAND)) == []
    assert decode_command(msgspec.json.encode(VALID_COMMAND)).request_id == "req-1"


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        ("cluster", "num_node", 3),
        ("cluster.autoscale.storage", "step", 10),
        ("cluster.users.0.settings", "superuser", True),
        ("", "priority", "high"),
    ],
)
def test_unknown_field_fails_the_command_schema_as_it_fails_decoding(
    schemas: dict[str, dict[str, Any]], where: str, key: str, value: Any
) -> None:
    command = copy.deepcopy(VALID_COMMAND)
    node: Any = command
    for part in filter(None, where.split(".")):
        node = node[int(part)] if part.isdigit() else node[part]
    node[key] = value
    errors = list(Draft202012Validator(schemas["ProvisionDatabase"]).iter_errors(command))
    assert errors
    assert any(
        e.validator == "additionalProperties" and repr(key) in e.message for e in flatten(errors)
    )
    with pytest.raises(InvalidCommand, match=key):
        decode_command(msgspec.json.encode(command))


@pytest.mark.parametrize(
    ("path", "value"),
    [("cluster.engine", "postgres"), ("cluster.num_nodes", "3"), ("request_id", "")],
)
def test_wrong_values_fail_the_command_schema(
    schemas: dict[str, dict[str, Any]], path: str, value: Any
) -> None:
    command = copy.deepcopy(VALID_COMMAND)
    *parents, last = path.split(".")
    node: Any = command
    for part in parents:
        node = node[part]
    node[last] = value
    assert list(Draft202012Validator(schemas["ProvisionDatabase"]).iter_errors(command))


@pytest.mark.parametrize("event", events(), ids=lambda e: e.routing_key)
def test_encoded_events_pass_their_schema(
    schemas: dict[str, dict[str, Any]], document: dict[str, Any], event: Event
) -> None:
    name = type(event).__name__
    encoded = msgspec.json.decode(encode_event(event))
    assert list(Draft202012Validator(schemas[name]).iter_errors(encoded)) == []
    assert list(component_validator(document, name).iter_errors(encoded)) == []


def test_event_without_specversion_fails_its_schema(schemas: dict[str, dict[str, Any]]) -> None:
    encoded = msgspec.json.decode(encode_event(events()[0]))
    del encoded["specversion"]
    errors = list(Draft202012Validator(schemas["StatusChanged"]).iter_errors(encoded))
    assert [e.validator for e in errors] == ["required"]


# --- provisioner asyncapi -------------------------------------------------------------------


def test_cli_prints_the_document_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["asyncapi", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == build_document(version=__version__)


def test_cli_prints_yaml_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["asyncapi"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["asyncapi"] == "3.0.0"


def test_cli_writes_the_schemas_and_prints_their_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["asyncapi", "--schemas", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(
        f"{name}.schema.json" for name in MESSAGE_TYPES
    )
    assert all(Path(p).is_file() for p in printed)


def test_cli_without_pyyaml_fails_with_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert cli_main(["asyncapi", "--format", "yaml"]) == 1
    assert "pip install pyyaml" in capsys.readouterr().err
