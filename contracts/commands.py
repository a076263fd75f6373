"""``ProvisionDatabase``: the one message a producer sends, and its decoder."""

from __future__ import annotations

import json
from typing import Annotated, Any, Final

import msgspec
from msgspec import Meta, Struct

from contracts import rules
from contracts._structure import StructureChecker
from contracts.digitalocean import ENGINES, HOSTNAME, UUID_OR_EMPTY, DatabaseClusterCreate
from contracts.errors import FieldError, InvalidCommand
from contracts.sealed import PUBLIC_KEY_PATTERN

__all__ = [
    "COMMAND_CONTENT_TYPE",
    "MAX_COMMAND_BYTES",
    "ProvisionDatabase",
    "decode_command",
    "encode_command",
]

COMMAND_CONTENT_TYPE: Final = "application/json"
# A create body is a few KiB; 1 MiB leaves room for many users and rules while keeping
# a hostile producer from making the service parse megabytes.
MAX_COMMAND_BYTES: Final = 1024 * 1024
MAX_ERRORS: Final = 200

REQUEST_ID_PATTERN: Final = f"^[^{rules.UNSAFE_CHARACTERS}]+$"
RequestId = Annotated[str, Meta(min_length=1, max_length=128, pattern=REQUEST_ID_PATTERN)]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=128, pattern=REQUEST_ID_PATTERN)]
MetadataValue = Annotated[str, Meta(max_length=1024)]


class ProvisionDatabase(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Create one DigitalOcean database cluster.

    ``request_id`` is the idempotency key: the same id always means the same cluster.
    ``metadata`` is echoed on every event of the request. ``timeout_s`` bounds how long the
    service waits for ``online`` before it reports ``failed`` (default: the service's
    ``PROVISIONER_CREATE_TIMEOUT_S``). ``recipient_public_key`` (base64 of an X25519 public
    key, see ``contracts.sealed``) makes ``connection_ready`` carry the credentials sealed to
    that key, and no plaintext secret.

    A request belongs to the producer that sent it: the AMQP ``user_id`` property, which
    RabbitMQ checks against the connection's user, is required.
    """

    request_id: RequestId
    cluster: DatabaseClusterCreate
    metadata: Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=64)] | None = None
    timeout_s: Annotated[int, Meta(ge=1, le=7 * 24 * 3600)] | None = None
    recipient_public_key: (
        Annotated[
            str,
            Meta(
                pattern=PUBLIC_KEY_PATTERN,
                description="Standard base64 (padded) of a 32-byte X25519 public key: "
                "connection_ready then carries the credentials only in sealed_secrets, a "
                "libsodium sealed box (crypto_box_seal) for this key.",
            ),
        ]
        | None
    ) = None


_checker = StructureChecker(
    limit=MAX_ERRORS,
    read_only=rules.READ_ONLY_FIELDS,
    pattern_help={
        REQUEST_ID_PATTERN: f"{rules.UNSAFE_HELP} (newlines, tabs, NUL, U+202E, U+200B, ...)",
        UUID_OR_EMPTY: "must be a lowercase UUID such as d455e75d-4858-4eec-8c95-da2f0a5f93a7, "
        "or empty",
        HOSTNAME: "must be an RFC 1123 hostname such as db.example.com",
        PUBLIC_KEY_PATTERN: "must be the standard, padded base64 of a 32-byte X25519 public "
        "key (44 characters ending in '='), as `provisioner keygen` prints it",
    },
)
_encoder = msgspec.json.Encoder()


def decode_command(
    data: bytes | bytearray | memoryview, *, max_bytes: int = MAX_COMMAND_BYTES
) -> ProvisionDatabase:
    """Decode and validate a command; raise ``InvalidCommand`` listing every problem.

    Nothing but ``InvalidCommand`` escapes, whatever the bytes: invalid UTF-8, invalid or
    deeply nested JSON, wrong types, unknown or read-only fields, broken rules.
    """
    size = len(data)
    if size > max_bytes:
        raise InvalidCommand(
            [FieldError("$", f"message is {size} bytes; the limit is {max_bytes}")]
        )
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec words invalid UTF-8 differently from one version to the next (and raised
        # UnicodeDecodeError before 0.23): say it the same way, with the message's offset.
        bad = _bad_utf8(data)
        if bad is not None:
            raise InvalidCommand([FieldError("$", f"invalid UTF-8 at byte {bad}")]) from None
        raise InvalidCommand([FieldError("$", f"invalid JSON: {exc}")]) from None
    except RecursionError:
        raise InvalidCommand([FieldError("$", "JSON is nested too deeply")]) from None
    # Every JSON parser keeps a different one of two equal keys (msgspec the last): a command
    # that means different things to different readers is refused.
    errors = _duplicate_keys(data) + _checker.check(raw, ProvisionDatabase)
    if errors:
        raise InvalidCommand(_capped(errors + _rules_despite(raw, errors)))
    try:
        command = msgspec.convert(raw, ProvisionDatabase)
    except msgspec.ValidationError as exc:  # the checker should have caught it; never crash
        raise InvalidCommand([FieldError("$", str(exc))]) from None
    errors = rules.check_command(command)
    if errors:
        raise InvalidCommand(_capped(errors))
    return command


class _Object(dict[str, Any]):
    """A JSON object as the duplicate-key pass reads it, with the keys it had twice."""

    duplicates: tuple[str, ...] = ()


def _duplicate_keys(data: bytes | bytearray | memoryview) -> list[FieldError]:
    """A field error for each key that appears twice in one object (valid JSON already)."""
    found = False

    def pairs(items: list[tuple[str, Any]]) -> _Object:
        nonlocal found
        obj = _Object(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            twice: dict[str, None] = {}
            for key, _ in items:
                if key in seen:
                    twice[key] = None
                seen.add(key)
            obj.duplicates = tuple(twice)
            found = True
        return obj

    try:
        tree = json.loads(bytes(data), object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return []  # msgspec read it; what the stdlib parser cannot, the other checks report
    if not found:
        return []
    errors: list[FieldError] = []
    stack: list[tuple[str, Any]] = [("$", tree)]
    while stack and len(errors) < MAX_ERRORS:
        path, value = stack.pop()
        if isinstance(value, _Object):
            errors.extend(
                FieldError(f"{path}.{key[:64]}", "duplicate key: each key may appear once")
                for key in value.duplicates
            )
            stack.extend((f"{path}.{k[:64]}", v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return errors


def _capped(errors: list[FieldError]) -> list[FieldError]:
    # A command can break a rule thousands of times (every duplicate name); the first
    # MAX_ERRORS say enough and keep the rejected event small.
    if len(errors) <= MAX_ERRORS:
        return errors
    more = len(errors) - MAX_ERRORS
    return [*errors[:MAX_ERRORS], FieldError("$", f"{more} more errors not shown")]


def _rules_despite(raw: Any, errors: list[FieldError]) -> list[FieldError]:
    """The rule errors of a command that also has type errors, so that one round trip
    tells the producer everything: the rules run on the cluster with every bad part left
    out, and any rule error touching a bad part is dropped (it could be an artefact)."""
    cluster = raw.get("cluster") if isinstance(raw, dict) else None
    if not isinstance(cluster, dict) or cluster.get("engine") not in ENGINES:
        return []
    bad = {e.path for e in errors}
    pruned = _without(cluster, "$.cluster", bad)
    for name, placeholder in _PLACEHOLDERS.items():
        pruned.setdefault(name, placeholder)
    bad |= {f"$.cluster.{name}" for name in _PLACEHOLDERS if name not in cluster}
    try:
        typed = msgspec.convert(pruned, DatabaseClusterCreate)
    except msgspec.ValidationError:
        # A broken user is the usual cause: judge the cluster without its users.
        pruned.pop("users", None)
        bad.add("$.cluster.users")
        try:
            typed = msgspec.convert(pruned, DatabaseClusterCreate)
        except msgspec.ValidationError:
            return []  # too broken to say more; the type errors come first
    return [
        e
        for e in rules.check_cluster(typed, "$.cluster")
        if not any(_related(e.path, b) for b in bad)
    ]


# Stand-ins for missing required fields; no rule reads a value of these, so they cannot
# cause a rule error of their own (num_nodes is checked against them, and dropped).
_PLACEHOLDERS: Final[dict[str, Any]] = {"name": "-", "size": "-", "region": "-", "num_nodes": 1}


def _without(value: Any, path: str, bad: set[str]) -> Any:
    if isinstance(value, dict):
        return {
            k: _without(v, f"{path}.{k}", bad) for k, v in value.items() if f"{path}.{k}" not in bad
        }
    if isinstance(value, list):
        return [_without(v, f"{path}[{i}]", bad) for i, v in enumerate(value)]
    return value


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith((b + ".", b + "[")) or b.startswith((a + ".", a + "["))


def _bad_utf8(data: bytes | bytearray | memoryview) -> int | None:
    """The offset of the first byte that is not UTF-8, or None when the message is UTF-8."""
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return None


def encode_command(command: ProvisionDatabase) -> bytes:
    """The JSON a producer publishes."""
    return _encoder.encode(command)
