"""Kept passwords (``service.provisioning.credentials``) and the version pre-check's
warnings (``service.provisioning.options``): sealed at rest, filled where a GET shows none,
never stricter than the options."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

import msgspec

from contracts.digitalocean import (
    DatabaseCluster,
    DatabaseClusterCreate,
    DatabaseConnection,
    DatabaseUser,
)
from service.provisioning.credentials import (
    CredentialSeal,
    missing_passwords,
    passwords_of,
    with_passwords,
)
from service.provisioning.messages import WatchState, encode_watch
from service.provisioning.options import availability_warnings, check_against_options
from service.simulator.options import OPTIONS

PASSWORD = "AVNS_s3cr3t/with+odd@chars"


def mongo_as_a_get_shows_it() -> DatabaseCluster:
    conn = DatabaseConnection(
        uri="mongodb+srv://doadmin@docs.example.com/admin?tls=true",
        host="docs.example.com",
        user="doadmin",
        password="",
    )
    return DatabaseCluster(
        id="c1",
        name="docs",
        engine="mongodb",
        region="nyc3",
        num_nodes=3,
        size="db-s-1vcpu-1gb",
        connection=conn,
        private_connection=msgspec.structs.replace(
            conn,
            host="private-docs.example.com",
            uri="mongodb+srv://doadmin@private-docs.example.com/admin?tls=true",
        ),
        users=[
            DatabaseUser(name="doadmin", role="primary", password=""),
            DatabaseUser(name="reader", role="normal", password=""),
        ],
    )


def test_a_sealed_password_is_not_in_the_watch_message_and_opens_with_the_same_token() -> None:
    seal = CredentialSeal("token-a")
    sealed = seal.seal({"doadmin": PASSWORD})
    body = encode_watch(
        WatchState(
            request_id="r",
            cluster_id="c",
            name="n",
            engine="mongodb",
            region="nyc3",
            status="creating",
            deadline=1.0,
            accepted_at=0.0,
            kept=sealed,
        )
    )
    assert PASSWORD.encode() not in body
    assert b"AVNS_" not in body
    assert CredentialSeal("token-a").open(sealed) == {"doadmin": PASSWORD}


def test_a_box_another_token_sealed_opens_empty_so_the_password_is_reset() -> None:
    sealed = CredentialSeal("token-a").seal({"doadmin": PASSWORD})
    assert CredentialSeal("token-b").open(sealed) == {}
    assert CredentialSeal("token-a").open("not base64 at all!") == {}
    assert CredentialSeal("token-a").seal({}) is None


def test_fingerprint_is_stable_per_password_set_and_keyed() -> None:
    seal = CredentialSeal("token-a")
    one = seal.fingerprint({"doadmin": PASSWORD})
    assert one == seal.fingerprint({"doadmin": PASSWORD})
    assert one != seal.fingerprint({"doadmin": PASSWORD + "x"})
    assert one != CredentialSeal("token-b").fingerprint({"doadmin": PASSWORD})
    assert PASSWORD not in one


def test_kept_passwords_fill_every_empty_password_and_uri() -> None:
    cluster = mongo_as_a_get_shows_it()
    kept = {"doadmin": PASSWORD, "reader": "AVNS_reader"}
    assert missing_passwords(cluster, ["reader"], {}) == ["doadmin", "reader"]
    assert missing_passwords(cluster, ["reader"], kept) == []
    filled = with_passwords(cluster, kept)
    for conn in (filled.connection, filled.private_connection):
        assert conn is not None and conn.password == PASSWORD
        assert conn.uri is not None
        parts = urlsplit(conn.uri)
        assert parts.username == "doadmin"
        assert parts.hostname == conn.host
        assert parts.path == "/admin" and parts.query == "tls=true"
    assert filled.connection is not None and filled.connection.uri is not None
    assert "s3cr3t%2Fwith%2Bodd%40chars@docs.example.com" in filled.connection.uri
    assert {u.name: u.password for u in filled.users or []} == kept


def test_a_password_the_cluster_shows_wins_over_a_kept_one() -> None:
    cluster = mongo_as_a_get_shows_it()
    shown = msgspec.structs.replace(
        cluster, users=[DatabaseUser(name="doadmin", role="primary", password="shown")]
    )
    filled = with_passwords(shown, {"doadmin": "kept"})
    assert filled.users == [DatabaseUser(name="doadmin", role="primary", password="shown")]
    assert passwords_of(filled) == {"doadmin": "shown"}


def kafka(version: str | None) -> DatabaseClusterCreate:
    return DatabaseClusterCreate(
        name="k", engine="kafka", region="nyc3", size="db-s-2vcpu-2gb", num_nodes=3, version=version
    )


def test_an_offered_version_past_its_end_of_availability_is_accepted_with_a_warning() -> None:
    # The spec's snapshot offers Kafka 3.8 alone, as default, with an end of availability of
    # 2025-06-03: the API offers it, so the pre-check takes it.
    now = datetime(2026, 12, 3, tzinfo=UTC)
    for version in ("3.8", None):
        assert check_against_options(kafka(version), OPTIONS, now=now) == []
        assert availability_warnings(kafka(version), OPTIONS, now) == [
            "`kafka` version '3.8' is past its end of availability (2025-06-03); DigitalOcean "
            "may stop offering or supporting it"
        ]


def test_a_version_near_its_end_is_announced_and_a_far_one_is_not() -> None:
    pg = DatabaseClusterCreate(
        name="p", engine="pg", region="nyc3", size="db-s-1vcpu-1gb", num_nodes=1, version="15"
    )
    near = datetime(2027, 3, 1, tzinfo=UTC)
    assert availability_warnings(pg, OPTIONS, near) == [
        "`pg` version '15' reaches its end of availability on 2027-05-12"
    ]
    assert availability_warnings(pg, OPTIONS, datetime(2026, 1, 1, tzinfo=UTC)) == []


def test_a_version_the_options_do_not_offer_is_still_refused() -> None:
    errors = check_against_options(kafka("3.7"), OPTIONS)
    assert [e.path for e in errors] == ["$.cluster.version"]
    assert "offered: 3.8" in errors[0].message
