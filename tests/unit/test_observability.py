"""Logging: what reaches the output is structured, carries the bound context, and holds no secret.

Most tests run :func:`configure_logging` for real and read the bytes it wrote, since that is
what an operator (and the chaos run's log scan) sees.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import aio_pika
import msgspec
import pytest
import structlog
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody

from contracts.digitalocean import DatabaseConnection, DatabaseUser
from service import observability
from service.observability import (
    REDACTED,
    SecretRegistry,
    capture_logs,
    configure_logging,
    redact_secrets,
    register_secret,
    scrub_text,
)


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """configure_logging changes process-wide state: put it back for the next test.

    Each test also gets an empty process-wide registry, so what other tests registered
    (a broker password such as "guest") cannot change what this one sees.
    """
    monkeypatch.setattr(observability, "secret_registry", SecretRegistry())
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    structlog_config = structlog.get_config()
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.configure(**structlog_config)
    structlog.contextvars.clear_contextvars()


def fresh_secret(prefix: str = "") -> str:
    """A unique value, so tests never depend on what another test registered."""
    return prefix + secrets.token_urlsafe(18)


def redact(event: dict[str, Any]) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", event))


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line written, each parsed as one JSON object (fails if a line is not one)."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


# --- redaction by key ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_password",
        "Password",
        "passwd",
        "token",
        "api_token",
        "DIGITALOCEAN_TOKEN",
        "access_token",
        "access_key",
        "access_cert",
        "authorization",
        "Authorization",
        "secret",
        "client_secret",
        "api_key",
        "api-key",
        "private_key",
        "certificate",
        "ca_certificate",
        "cookie",
    ],
)
def test_value_of_sensitive_key_is_redacted(key: str) -> None:
    out = redact({"event": "connecting", key: "hunter2-value"})
    assert out[key] == REDACTED
    assert out["event"] == "connecting"


def test_sensitive_key_in_nested_dicts_and_lists_is_redacted() -> None:
    event: dict[str, Any] = {
        "event": "user_created",
        "users": [{"name": "app", "password": "pw-one-1234"}, {"name": "ro", "password": "pw-2"}],
        "response": {"connection": {"host": "db.example", "password": "pw-three-5678"}},
    }
    out = redact(event)
    assert out["users"] == [
        {"name": "app", "password": REDACTED},
        {"name": "ro", "password": REDACTED},
    ]
    assert out["response"] == {"connection": {"host": "db.example", "password": REDACTED}}
    # The caller's objects are not modified behind its back.
    assert event["users"][0]["password"] == "pw-one-1234"


def test_boolean_and_number_under_sensitive_key_are_kept() -> None:
    # `api_token_accepted` is a readiness flag, not a token; a bool cannot leak anything.
    out = redact(
        {"event": "ready", "api_token_accepted": False, "token_count": 3, "password": None}
    )
    assert out == {
        "event": "ready",
        "api_token_accepted": False,
        "token_count": 3,
        "password": None,
    }


def test_event_without_secrets_is_returned_as_is() -> None:
    event = {"event": "cluster_online", "cluster_id": "9cc10173", "nodes": [1, 2], "ok": True}
    assert redact_secrets(None, "info", event) is event


# --- redaction by shape -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "amqp://guest:guest@127.0.0.1:5672/",
            "amqp://guest:***@127.0.0.1:5672/",
        ),
        (
            "amqps://svc:p%40ss@rabbit.internal:5671/prod?heartbeat=30",
            "amqps://svc:***@rabbit.internal:5671/prod?heartbeat=30",
        ),
        (
            "connect failed: postgresql://doadmin:AVNS_abc123@db-host:25060/defaultdb?sslmode=require",
            "connect failed: postgresql://doadmin:***@db-host:25060/defaultdb?sslmode=require",
        ),
        (
            "mongodb+srv://doadmin:s3cr3t@mongo-host/admin",
            "mongodb+srv://doadmin:***@mongo-host/admin",
        ),
        # An unencoded "@" in the password must not leave its tail behind.
        ("rediss://default:pa@ss@redis-host:25061", "rediss://default:***@redis-host:25061"),
    ],
)
def test_password_in_url_userinfo_is_redacted(text: str, expected: str) -> None:
    assert scrub_text(text, SecretRegistry()) == expected


@pytest.mark.parametrize(
    "text",
    [
        "https://api.digitalocean.com/v2/databases?tag_name=provisioner",
        "http://127.0.0.1:8080/healthz",
        "user@example.com wrote at 10:30",
    ],
)
def test_url_without_password_is_left_alone(text: str) -> None:
    assert scrub_text(text, SecretRegistry()) == text


def test_uri_field_keeps_everything_but_the_password() -> None:
    out = redact({"event": "x", "uri": "postgresql://doadmin:AVNS_pw@h:25060/defaultdb"})
    assert out["uri"] == "postgresql://doadmin:***@h:25060/defaultdb"


def test_bearer_credential_and_digitalocean_token_shapes_are_redacted() -> None:
    token = "dop_v1_" + "ab12" * 16
    text = f"headers={{'Authorization': 'Bearer {token}'}} also {token} and bearer xyz.abc"
    scrubbed = scrub_text(text, SecretRegistry())
    assert token not in scrubbed
    assert "xyz.abc" not in scrubbed
    assert "Bearer ***" in scrubbed


def test_pem_private_key_is_redacted_but_not_its_label() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    scrubbed = scrub_text(f"loaded key {pem} ok", SecretRegistry())
    assert "MIIEvQ" not in scrubbed
    assert scrubbed == "loaded key -----BEGIN PRIVATE KEY-----*** ok"


# --- redaction by registered value --------------------------------------------------------


def test_registered_secret_is_scrubbed_inside_any_string() -> None:
    value = fresh_secret()
    register_secret(value)
    event = {
        "event": f"got {value} back",
        "detail": {"body": f'{{"note": "{value}"}}', "parts": ("a", f"x{value}y")},
        f"key-{value}": 1,
    }
    rendered = json.dumps(redact(event))
    assert value not in rendered
    assert "got *** back" in rendered
    assert "x***y" in rendered


def test_registered_secret_is_scrubbed_in_url_encoded_form() -> None:
    value = "p@ss/wörd+" + secrets.token_hex(4)
    register_secret(value)
    encoded = "p%40ss%2Fw%C3%B6rd%2B"
    out = scrub_text(f"amqp-ish text user={encoded}{value[-8:]} end")
    assert encoded not in out
    assert out == "amqp-ish text user=*** end"


def test_msgspec_struct_is_logged_as_redacted_fields_not_its_repr() -> None:
    password = fresh_secret()
    user = DatabaseUser(name="app", role="normal", password=password)
    connection = DatabaseConnection(
        uri=f"postgresql://app:{password}@h:25060/db", host="h", port=25060, user="app"
    )
    out = redact({"event": "user", "user": user, "connection": connection})
    rendered = json.dumps(out)
    assert password not in rendered
    assert out["user"]["name"] == "app"
    assert out["user"]["password"] == REDACTED
    assert out["connection"]["uri"] == "postgresql://app:***@h:25060/db"


def test_dataclass_and_unknown_object_reprs_are_scrubbed() -> None:
    value = fresh_secret()
    register_secret(value)

    @dataclasses.dataclass
    class Settings:
        region: str
        password: str

    class Opaque:
        def __repr__(self) -> str:
            return f"Opaque(key={value})"

    out = redact({"event": "x", "settings": Settings("nyc3", value), "thing": Opaque()})
    assert out["settings"] == {"region": "nyc3", "password": REDACTED}
    assert out["thing"] == "Opaque(key=***)"


def test_cyclic_or_deeply_nested_values_are_cut_off_not_walked_forever() -> None:
    value = fresh_secret()
    register_secret(value)
    cyclic: list[Any] = [value]
    cyclic.append(cyclic)
    out = redact({"event": "x", "data": cyclic})
    rendered = json.dumps(out)  # would fail on a cycle: the output is a finite copy
    assert value not in rendered
    assert REDACTED in rendered


def test_short_values_are_not_registered() -> None:
    registry = SecretRegistry()
    registry.register("abc")
    registry.register("")
    assert len(registry) == 0
    assert registry.scrub("abc abc") == "abc abc"


def test_registry_drops_the_oldest_value_past_its_capacity() -> None:
    registry = SecretRegistry(capacity=2)
    first, second, third = "first-value", "second-value", "third-value"
    for value in (first, second, third):
        registry.register(value)
    assert registry.scrub(f"{first} {second} {third}") == f"{first} *** ***"


def test_longer_secret_wins_over_a_registered_prefix_of_it() -> None:
    registry = SecretRegistry()
    registry.register("abcdef")
    registry.register("abcdefghij")
    assert registry.scrub("x abcdefghij y abcdef z") == "x *** y *** z"


@pytest.mark.parametrize("count", [3, 300])
def test_registered_values_are_found_among_few_or_many(count: int) -> None:
    # Few prefixes are searched for directly, many through the text's own prefixes.
    registry = SecretRegistry()
    values = [fresh_secret() for _ in range(count)]
    for value in values:
        registry.register(value)
    text = f"a={values[0]} b={values[-1]} c=not-a-secret"
    assert registry.scrub(text) == "a=*** b=*** c=not-a-secret"


def test_key_seen_clean_is_scrubbed_once_it_becomes_a_secret() -> None:
    value = fresh_secret()
    key = f"user_{value}"
    assert key in redact({"event": "x", key: 1})
    register_secret(value)
    assert redact({"event": "x", key: 1}) == {"event": "x", "user_***": 1}


def test_registry_repr_never_shows_a_value() -> None:
    registry = SecretRegistry()
    registry.register("very-secret-value")
    assert "very-secret-value" not in repr(registry)
    assert "size=1" in repr(registry)


# --- the configured output ---------------------------------------------------------------


def test_json_lines_carry_bound_context_level_and_iso_timestamp() -> None:
    stream = io.StringIO()
    configure_logging("json", "INFO", stream=stream)
    structlog.contextvars.bind_contextvars(
        request_id="req-1", cluster_id="c-9", correlation_id="corr-7"
    )
    structlog.get_logger("service.test").info("cluster_online", attempt=2)
    (line,) = lines_of(stream)
    assert line["event"] == "cluster_online"
    assert line["attempt"] == 2
    assert line["level"] == "info"
    assert line["logger"] == "service.test"
    assert (line["request_id"], line["cluster_id"], line["correlation_id"]) == (
        "req-1",
        "c-9",
        "corr-7",
    )
    # ISO 8601 in UTC, e.g. 2024-05-01T12:00:00.123456Z
    assert line["timestamp"][10] == "T"
    assert line["timestamp"].endswith("Z")


def test_json_output_contains_no_secret_from_keys_values_urls_or_registered_values() -> None:
    token = fresh_secret("dop_v1_")
    password = fresh_secret()
    register_secret(token)
    register_secret(password)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    log = structlog.get_logger("service.test")
    log.info("starting", token=token, amqp_url="amqp://svc:hunter2pw@rabbit:5672/")
    log.info(f"free text mentions {password} inline", note=["nested", {"deep": password}])
    log.warning("api answered", body={"users": [{"name": "u", "password": password}]})

    output = stream.getvalue()
    assert len(lines_of(stream)) == 3
    for leaked in (token, password, "hunter2pw"):
        assert leaked not in output
    assert "amqp://svc:***@rabbit:5672/" in output


def test_exception_traceback_is_rendered_and_scrubbed() -> None:
    password = fresh_secret()
    register_secret(password)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    log = structlog.get_logger("service.test")
    try:
        raise RuntimeError(f"login failed for postgresql://doadmin:{password}@db:25060/x")
    except RuntimeError:
        log.exception("finish_failed")
    (line,) = lines_of(stream)
    assert password not in stream.getvalue()
    assert "Traceback (most recent call last)" in line["exception"]
    assert "RuntimeError: login failed for postgresql://doadmin:***@db:25060/x" in line["exception"]


def test_stdlib_library_logs_go_through_the_same_chain_and_redaction() -> None:
    password = fresh_secret()
    register_secret(password)
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    structlog.contextvars.bind_contextvars(request_id="req-42")
    logging.getLogger("aio_pika.robust_connection").warning(
        "Connection attempt to %s failed", "amqp://guest:guestpw@127.0.0.1:5672/"
    )
    try:
        raise ConnectionError(f"server said {password}")
    except ConnectionError:
        logging.getLogger("aiormq.connection").exception("Unexpected connection close")

    first, second = lines_of(stream)
    assert first["event"] == "Connection attempt to amqp://guest:***@127.0.0.1:5672/ failed"
    assert first["logger"] == "aio_pika.robust_connection"
    assert first["level"] == "warning"
    assert first["request_id"] == "req-42"
    assert "timestamp" in first
    assert second["level"] == "error"
    assert "ConnectionError: server said ***" in second["exception"]
    assert password not in stream.getvalue()
    assert "guestpw" not in stream.getvalue()


def test_configuring_twice_writes_each_line_once_to_the_latest_stream() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", stream=first)
    configure_logging("json", stream=second)
    structlog.get_logger("service.test").info("once")
    logging.getLogger("aiohttp.client").info("once too")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines_of(second)] == ["once", "once too"]


def test_level_filters_structlog_and_stdlib_lines() -> None:
    stream = io.StringIO()
    configure_logging("json", "warning", stream=stream)
    structlog.get_logger("service.test").info("dropped")
    logging.getLogger("aio_pika").info("dropped too")
    structlog.get_logger("service.test").warning("kept")
    assert [line["event"] for line in lines_of(stream)] == ["kept"]


def test_console_format_is_readable_text_and_redacted() -> None:
    password = fresh_secret()
    register_secret(password)
    stream = io.StringIO()
    configure_logging("console", stream=stream)
    structlog.contextvars.bind_contextvars(request_id="req-5")
    structlog.get_logger("service.test").info("cluster_online", note=f"pw {password}")
    output = stream.getvalue()
    assert "cluster_online" in output
    assert "request_id=req-5" in output
    assert password not in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


def test_bad_format_or_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", stream=io.StringIO())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "LOUD", stream=io.StringIO())


def test_capture_logs_with_the_redaction_processor_sees_redacted_events() -> None:
    password = fresh_secret()
    register_secret(password)
    configure_logging("json", stream=io.StringIO())
    with capture_logs(processors=[redact_secrets]) as captured:
        structlog.get_logger("service.test").info("user_created", detail=f"pw={password}")
    assert captured == [{"event": "user_created", "detail": "pw=***", "log_level": "info"}]


def test_a_line_that_cannot_be_written_never_fails_the_caller() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    stream.close()
    structlog.get_logger("service.test").info("lost")  # no exception, as with logging
    logging.getLogger("aiohttp.client").info("lost too")


@pytest.mark.parametrize(
    "value",
    ['pa"ss\\wörd-' + "x" * 8, "tab\there\u00e9\u2603" + "y" * 6, "space and+plus/" + "z" * 6],
)
def test_registered_secret_is_scrubbed_json_escaped_and_percent_encoded(value: str) -> None:
    register_secret(value)
    forms = {
        json.dumps(value)[1:-1],  # \" \\ \u00e9
        json.dumps(value, ensure_ascii=False)[1:-1],  # \" \\ and é as is
        msgspec.json.encode(value).decode()[1:-1],
        quote(value, safe=""),
        quote_plus(value, safe=""),
    }
    for form in forms:
        out = scrub_text(f'body {{"password_hint": "{form}"}} end')
        assert form not in out, form
        assert "***" in out


def test_library_frames_are_logged_without_their_bodies_at_any_level() -> None:
    # aiormq logs each frame it sends and receives at DEBUG: a connection_ready body is one.
    body = b'{"data": {"users": [{"name": "app", "password": "' + b"q" * 20 + b'"}]}}'
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    logging.getLogger("aiormq.connection").debug(
        "Prepare to send %r", ChannelFrame(payload=b"\x03\x00\x01" + body, should_close=False)
    )
    logging.getLogger("aiormq.connection").debug(
        "Received frame %r in channel #%d", ContentBody(body), 1
    )
    logging.getLogger("aiormq.channel").error("Got frame for closed channel %d: %r", 1, body)
    logging.getLogger("aio_pika.queue").warning("returned %r", aio_pika.Message(body))
    text = stream.getvalue()
    assert len(lines_of(stream)) == 4
    assert "q" * 20 not in text
    assert "password" not in text
    assert f"<ContentBody of {len(body)} bytes>" in text
    assert f"<{len(body)} bytes>" in text
