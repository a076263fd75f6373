"""Redaction: secrets by key, by shape and by registered value are out of every log event.

These call the processor and the scrubber directly; ``test_observability.py`` reads what the
configured logging writes.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any
from urllib.parse import quote, quote_plus

import msgspec
import pytest

from contracts.digitalocean import DatabaseConnection, DatabaseUser
from service import redaction
from service.redaction import (
    REDACTED,
    SecretRegistry,
    redact_secrets,
    register_secret,
    scrub_text,
)


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty process-wide registry per test, so what other tests registered (a broker
    password such as "guest") cannot change what this one sees."""
    monkeypatch.setattr(redaction, "secret_registry", SecretRegistry())


def fresh_secret(prefix: str = "") -> str:
    """A unique value, so tests never depend on what another test registered."""
    return prefix + secrets.token_urlsafe(18)


def redact(event: dict[str, Any]) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", event))


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
