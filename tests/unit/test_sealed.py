"""``contracts.sealed``: credentials sealed to a producer's key, and opened only with it."""

from __future__ import annotations

import base64
import re

import msgspec
import pytest

from contracts import new_keypair, open_sealed_secrets
from contracts.digitalocean import DatabaseConnection, DatabaseUser, ServiceConnection
from contracts.events import ConnectionReady, ConnectionReadyData
from contracts.sealed import (
    PUBLIC_KEY_PATTERN,
    SealedSecrets,
    SealedSecretsError,
    seal_secrets,
    strip_uri_password,
    without_secrets,
)


def data() -> ConnectionReadyData:
    """Every shape a secret takes: URIs with passwords, a dashboard, Kafka keys."""
    uri = "postgresql://doadmin:pw-1@db.example.com:25060/defaultdb?sslmode=require"
    return ConnectionReadyData(
        request_id="r",
        cluster_id="c",
        name="n",
        engine="kafka",
        region="nyc3",
        connection=DatabaseConnection(uri=uri, host="db.example.com", password="pw-1"),
        private_connection=DatabaseConnection(
            uri=uri.replace("db.", "private-db."), password="pw-1"
        ),
        ui_connection=ServiceConnection(uri="https://admin:pw-ui@ui.example.com", password="pw-ui"),
        users=[
            DatabaseUser(name="doadmin", role="primary", password="pw-1"),
            DatabaseUser(name="ingest", password="pw-2", access_key="-----BEGIN KEY-----x"),
        ],
        ca_certificate="CA",
    )


def sealed_event(public_key: str) -> ConnectionReady:
    stripped, taken = without_secrets(data())
    sealed = msgspec.structs.replace(
        stripped, secrets="sealed", sealed_secrets=seal_secrets(taken, public_key)
    )
    return ConnectionReady.of(sealed)


def test_the_requester_opens_exactly_what_was_sealed() -> None:
    private, public = new_keypair()
    event = sealed_event(public)
    opened = open_sealed_secrets(event, private)
    assert opened == data()
    assert open_sealed_secrets(event.data, base64.b64decode(private)) == data()


def test_nothing_secret_is_left_in_the_sealed_event() -> None:
    _, public = new_keypair()
    body = msgspec.json.encode(sealed_event(public))
    for secret in (b"pw-1", b"pw-2", b"pw-ui", b"BEGIN KEY"):
        assert secret not in body
    stripped, _ = without_secrets(data())
    assert stripped.connection is not None
    assert (
        stripped.connection.uri
        == "postgresql://doadmin@db.example.com:25060/defaultdb?sslmode=require"
    )
    assert stripped.ca_certificate == "CA" and stripped.secrets == "omitted"


def test_another_key_cannot_open_it() -> None:
    _, public = new_keypair()
    other, _ = new_keypair()
    with pytest.raises(SealedSecretsError, match="wrong key or altered data"):
        open_sealed_secrets(sealed_event(public), other)


def test_an_altered_box_does_not_open() -> None:
    private, public = new_keypair()
    event = sealed_event(public)
    box = bytearray(base64.b64decode(event.data.sealed_secrets or ""))
    box[-1] ^= 1
    event.data.sealed_secrets = base64.b64encode(box).decode()
    with pytest.raises(SealedSecretsError):
        open_sealed_secrets(event, private)


def test_a_box_moved_into_another_event_does_not_open() -> None:
    private, public = new_keypair()
    event = sealed_event(public)
    other = msgspec.structs.replace(event.data, request_id="someone-elses")
    with pytest.raises(SealedSecretsError, match="belong to another request"):
        open_sealed_secrets(other, private)


def test_an_event_without_sealed_secrets_says_so() -> None:
    private, _ = new_keypair()
    with pytest.raises(SealedSecretsError, match="carries no sealed_secrets"):
        open_sealed_secrets(data(), private)


def test_generated_public_keys_match_the_contract_pattern() -> None:
    for _ in range(50):
        _, public = new_keypair()
        assert re.fullmatch(PUBLIC_KEY_PATTERN, public), public
        assert len(base64.b64decode(public)) == 32


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("A" * 43 + "=", "not a usable X25519 key"),  # the all-zero point
        ("not base64!", "not base64"),
        (base64.b64encode(b"x" * 31).decode(), "must be 32 bytes, not 31"),
    ],
)
def test_an_unusable_recipient_key_is_refused(key: str, words: str) -> None:
    with pytest.raises(SealedSecretsError, match=words):
        seal_secrets(SealedSecrets(), key)


@pytest.mark.parametrize(
    ("uri", "stripped"),
    [
        (
            "mongodb+srv://doadmin:p%40ss@db.example.com/admin",
            "mongodb+srv://doadmin@db.example.com/admin",
        ),
        ("postgresql://u:p@[::1]:5432/db", "postgresql://u@[::1]:5432/db"),
        ("rediss://default:p@h:25061", "rediss://default@h:25061"),
        ("https://h.example.com", "https://h.example.com"),
        (None, None),
    ],
)
def test_strip_uri_password_keeps_everything_but_the_password(
    uri: str | None, stripped: str | None
) -> None:
    assert strip_uri_password(uri) == stripped
