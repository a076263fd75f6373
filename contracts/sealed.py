"""Credentials only the requester can read: libsodium sealed boxes (``crypto_box_seal``).

A command that carries ``recipient_public_key`` (the standard, padded base64 of a 32-byte
X25519 public key) gets a ``connection_ready`` without any plaintext secret, as with
``PROVISIONER_EVENT_SECRETS=omit``, plus ``sealed_secrets``: the base64 of a sealed box, made
for that key, whose plaintext is the JSON of a :class:`SealedSecrets`. That object holds every
secret the omit mode removed, at the same paths as in the event's ``data``::

    {"connection": {"password": "...", "uri": "postgresql://doadmin:...@host/db"},
     "users": [{"name": "doadmin", "password": "..."}, {"name": "app", "password": "..."}]}

``users[i]`` is ``data.users[i]`` (same name). Only the holder of the private key can open it:
``open_sealed_secrets(event, private_key)`` returns the event's data with the secrets back in
place. Any libsodium binding opens it too (``crypto_box_seal_open``); the Node example uses
``libsodium-wrappers``. ``new_keypair`` (or ``provisioner keygen``) makes a key pair.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final, TypeVar
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Struct

from contracts.digitalocean import DatabaseConnection, DatabaseUser, ServiceConnection
from contracts.events import ConnectionReady, ConnectionReadyData

__all__ = [
    "PUBLIC_KEY_PATTERN",
    "SealedSecrets",
    "SealedSecretsError",
    "SecretConnection",
    "SecretUser",
    "new_keypair",
    "open_sealed_secrets",
    "seal_secrets",
    "strip_uri_password",
    "without_secrets",
]

KEY_BYTES: Final = 32
# The standard, padded base64 of exactly 32 bytes: 43 characters whose last one carries only
# 4 bits of the key (its 2 low bits are zero), then one "=".
PUBLIC_KEY_PATTERN: Final = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"


class SealedSecretsError(ValueError):
    """A sealed box could not be opened (wrong key, damaged data) or a key is not usable."""


class SecretConnection(Struct, omit_defaults=True):
    """The secret parts of one connection: its password and the URI that embeds it."""

    uri: str | None = None
    password: str | None = None


class SecretUser(Struct, omit_defaults=True):
    """The secret parts of one user: ``users[i]`` of the event's data, named for clarity."""

    name: str
    password: str | None = None
    access_key: str | None = None


class SealedSecrets(Struct, omit_defaults=True):
    """The plaintext of ``sealed_secrets``: what the omit mode removed, at the same paths, and
    the request and cluster they belong to (a box moved into another event does not open)."""

    request_id: str = ""
    cluster_id: str = ""
    connection: SecretConnection | None = None
    private_connection: SecretConnection | None = None
    standby_connection: SecretConnection | None = None
    standby_private_connection: SecretConnection | None = None
    ui_connection: SecretConnection | None = None
    schema_registry_connection: SecretConnection | None = None
    users: list[SecretUser] = []


_CONNECTIONS: Final = (
    "connection",
    "private_connection",
    "standby_connection",
    "standby_private_connection",
    "ui_connection",
    "schema_registry_connection",
)

_Conn = TypeVar("_Conn", DatabaseConnection, ServiceConnection)
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(SealedSecrets)


def strip_uri_password(uri: str | None) -> str | None:
    """``scheme://user:secret@host`` -> ``scheme://user@host``; other URIs unchanged."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _split_connection(conn: _Conn | None) -> tuple[_Conn | None, SecretConnection | None]:
    if conn is None:
        return None, None
    stripped = strip_uri_password(conn.uri)
    secret = None
    if conn.password is not None or stripped != conn.uri:
        secret = SecretConnection(
            uri=conn.uri if stripped != conn.uri else None, password=conn.password
        )
    return msgspec.structs.replace(conn, password=None, uri=stripped), secret


def without_secrets(data: ConnectionReadyData) -> tuple[ConnectionReadyData, SealedSecrets]:
    """``data`` without passwords, keys and password-bearing URIs (``secrets: omitted``), and
    what was taken out of it."""
    changes: dict[str, object] = {}
    taken = SealedSecrets(request_id=data.request_id, cluster_id=data.cluster_id)
    for name in _CONNECTIONS:
        kept, secret = _split_connection(getattr(data, name))
        changes[name] = kept
        setattr(taken, name, secret)
    users: list[DatabaseUser] = []
    for user in data.users:
        users.append(msgspec.structs.replace(user, password=None, access_key=None))
        taken.users.append(
            SecretUser(name=user.name, password=user.password, access_key=user.access_key)
        )
    stripped = msgspec.structs.replace(data, users=users, secrets="omitted", **changes)
    return stripped, taken


def _key(value: str | bytes, what: str) -> bytes:
    raw = value
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SealedSecretsError(f"the {what} is not base64") from None
    if len(raw) != KEY_BYTES:
        raise SealedSecretsError(f"the {what} must be {KEY_BYTES} bytes, not {len(raw)}")
    assert isinstance(raw, bytes)
    return raw


def seal_secrets(secrets: SealedSecrets, public_key: str | bytes) -> str:
    """The base64 sealed box of ``secrets`` for ``public_key`` (base64 or 32 raw bytes)."""
    from nacl.exceptions import CryptoError
    from nacl.public import PublicKey, SealedBox

    try:
        box = SealedBox(PublicKey(_key(public_key, "recipient public key")))
        sealed = box.encrypt(_encoder.encode(secrets))
    except CryptoError:
        # libsodium refuses keys that give no shared secret (low-order points).
        raise SealedSecretsError("the recipient public key is not a usable X25519 key") from None
    return base64.b64encode(bytes(sealed)).decode("ascii")


def new_keypair() -> tuple[str, str]:
    """A new X25519 key pair as (private key, public key), each standard base64: give the
    public key to the service in ``recipient_public_key``, keep the private key secret."""
    from nacl.public import PrivateKey

    private = PrivateKey.generate()
    return (
        base64.b64encode(bytes(private)).decode("ascii"),
        base64.b64encode(bytes(private.public_key)).decode("ascii"),
    )


def _restore(conn: _Conn | None, secret: SecretConnection | None) -> _Conn | None:
    if conn is None or secret is None:
        return conn
    return msgspec.structs.replace(
        conn,
        password=secret.password if secret.password is not None else conn.password,
        uri=secret.uri if secret.uri is not None else conn.uri,
    )


def open_sealed_secrets(
    event: ConnectionReady | ConnectionReadyData, private_key: str | bytes
) -> ConnectionReadyData:
    """The event's data with its sealed secrets back in place (``secrets: included``), as the
    service would have published it without a ``recipient_public_key``.

    ``private_key``: base64 (as ``new_keypair`` and ``provisioner keygen`` give it) or the 32
    raw bytes. Raises ``SealedSecretsError`` when the data holds no sealed secrets, the key is
    not the one they were sealed for, or the box was altered.
    """
    from nacl.exceptions import CryptoError
    from nacl.public import PrivateKey, SealedBox

    data = event.data if isinstance(event, ConnectionReady) else event
    if data.sealed_secrets is None:
        raise SealedSecretsError("this connection_ready carries no sealed_secrets")
    try:
        box = base64.b64decode(data.sealed_secrets, validate=True)
    except (binascii.Error, ValueError):
        raise SealedSecretsError("sealed_secrets is not base64") from None
    try:
        plaintext = SealedBox(PrivateKey(_key(private_key, "private key"))).decrypt(box)
    except CryptoError:
        raise SealedSecretsError(
            "sealed_secrets cannot be opened with this private key (wrong key or altered data)"
        ) from None
    try:
        secrets = _decoder.decode(plaintext)
    except msgspec.DecodeError as exc:
        raise SealedSecretsError(f"the sealed plaintext is not SealedSecrets: {exc}") from None
    if (secrets.request_id, secrets.cluster_id) != (data.request_id, data.cluster_id):
        raise SealedSecretsError("these sealed_secrets belong to another request or cluster")
    restored: dict[str, object] = {
        name: _restore(getattr(data, name), getattr(secrets, name)) for name in _CONNECTIONS
    }
    users = list(data.users)
    for i, secret in enumerate(secrets.users):
        if i < len(users) and users[i].name == secret.name:
            users[i] = msgspec.structs.replace(
                users[i], password=secret.password, access_key=secret.access_key
            )
    return msgspec.structs.replace(
        data, users=users, secrets="included", sealed_secrets=None, **restored
    )
