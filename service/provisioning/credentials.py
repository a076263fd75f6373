"""Passwords that only a POST answer carries, kept sealed until ``connection_ready``.

DigitalOcean shows a MongoDB password only in the answer to the POST that made it: the
cluster's create (the admin's), a user's create, a password reset (terraform-provider-
digitalocean PR #614, issue #814); a GET shows it empty. So the service keeps each password
from the answer that carried it until the cluster is finished. Between the create and
``online`` it lives in the watch message, in RabbitMQ: there it is sealed (``CredentialSeal``,
a NaCl secret box, XSalsa20-Poly1305) under a key that every replica derives from the
DigitalOcean token they share, so that anyone who can read the queue but not the token learns
nothing, and anyone with the token could reset the password anyway. A watch whose box no
replica can open any more (the token was rotated) is finished as an adopted cluster is: by a
password reset.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Final, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import msgspec
import nacl.exceptions
import nacl.secret

from contracts.digitalocean import DatabaseCluster, DatabaseConnection, ServiceConnection

__all__ = [
    "CredentialSeal",
    "admin_name",
    "missing_passwords",
    "passwords_of",
    "with_passwords",
]

_PERSON: Final = b"provisioner-kept-passwords"
_passwords = msgspec.json.Decoder(dict[str, str])


class CredentialSeal:
    """Seals passwords for the service itself: a secret key derived from the API token."""

    def __init__(self, token: str) -> None:
        # A keyed hash, not the token: the key says nothing of the token it came from.
        key = hashlib.blake2b(token.encode(), digest_size=32, person=_PERSON[:16]).digest()
        self._box = nacl.secret.SecretBox(key)
        self._mac_key = hashlib.blake2b(key, digest_size=32, person=b"fingerprint").digest()

    def seal(self, passwords: Mapping[str, str]) -> str | None:
        """Base64 of the box holding ``passwords`` (user name -> password); None if empty."""
        if not passwords:
            return None
        box = self._box.encrypt(msgspec.json.encode(dict(passwords)))
        return base64.b64encode(bytes(box)).decode()

    def open(self, sealed: str | None) -> dict[str, str]:
        """The passwords in a box ``seal`` made; empty when there is none or it cannot be
        opened (another token sealed it): those passwords are then had by a reset."""
        if not sealed:
            return {}
        try:
            return _passwords.decode(self._box.decrypt(base64.b64decode(sealed)))
        except (nacl.exceptions.CryptoError, ValueError, msgspec.DecodeError):
            return {}

    def fingerprint(self, passwords: Mapping[str, str]) -> str:
        """A short keyed digest of ``passwords``: the same set gives the same value, and
        the value tells nothing of them to anyone without the token."""
        text = "\x00".join(f"{k}\x00{v}" for k, v in sorted(passwords.items()))
        return hmac.new(self._mac_key, text.encode(), hashlib.sha256).hexdigest()[:16]


def passwords_of(cluster: DatabaseCluster) -> dict[str, str]:
    """The non-empty passwords an answer shows, by user name (the admin's from its
    connection too)."""
    found = {u.name: u.password for u in cluster.users or [] if u.password}
    conn = cluster.connection
    if conn is not None and conn.user and conn.password:
        found.setdefault(conn.user, conn.password)
    return found


def admin_name(cluster: DatabaseCluster) -> str | None:
    """The cluster's admin user: the one its connection names."""
    if cluster.connection is not None and cluster.connection.user:
        return cluster.connection.user
    return next((u.name for u in cluster.users or [] if u.role == "primary"), None)


def missing_passwords(
    cluster: DatabaseCluster, wanted: Iterable[str], kept: Mapping[str, str]
) -> list[str]:
    """Users of ``wanted`` (and the admin) whose password neither the cluster nor ``kept``
    has."""
    shown = {u.name: u.password for u in cluster.users or []}
    names = [n for n in (admin_name(cluster), *wanted) if n is not None]
    return [n for n in dict.fromkeys(names) if not shown.get(n) and not kept.get(n)]


_Conn = TypeVar("_Conn", DatabaseConnection, ServiceConnection)


def _uri_with(uri: str | None, user: str, password: str) -> str | None:
    """``uri`` naming ``user`` with ``password`` (a GET of a MongoDB cluster names the
    user alone)."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    if parts.username is None or parts.hostname is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(parts.username, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _connection_with(conn: _Conn | None, passwords: Mapping[str, str]) -> _Conn | None:
    if conn is None or conn.password or not conn.user or conn.user not in passwords:
        return conn
    password = passwords[conn.user]
    return msgspec.structs.replace(
        conn, password=password, uri=_uri_with(conn.uri, conn.user, password)
    )


def with_passwords(cluster: DatabaseCluster, passwords: Mapping[str, str]) -> DatabaseCluster:
    """``cluster`` with each empty password (users, connections, the URIs that embed them)
    filled from ``passwords``; a password the cluster shows wins over a kept one, and the
    kept one wins only where the cluster shows none."""
    users = [
        msgspec.structs.replace(u, password=passwords[u.name])
        if not u.password and u.name in passwords
        else u
        for u in cluster.users or []
    ]
    return msgspec.structs.replace(
        cluster,
        users=users if cluster.users is not None else None,
        connection=_connection_with(cluster.connection, passwords),
        private_connection=_connection_with(cluster.private_connection, passwords),
        standby_connection=_connection_with(cluster.standby_connection, passwords),
        standby_private_connection=_connection_with(cluster.standby_private_connection, passwords),
        ui_connection=_connection_with(cluster.ui_connection, passwords),
        schema_registry_connection=_connection_with(cluster.schema_registry_connection, passwords),
    )
