"""Secrets out of log lines: the structlog processor every line passes before it is written.

Two kinds of redaction:

* by shape, always on: values of sensitive keys (``password``, ``token``, ``authorization``...),
  the password in ``scheme://user:password@host`` URLs, ``Bearer`` credentials, DigitalOcean
  tokens (``dop_v1_...``) and PEM private keys, wherever they appear;
* by value: every exact secret the service has seen (the API token, each generated database
  password) registered with :func:`register_secret`, scrubbed from any string, keys included.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, quote_plus

import msgspec
from structlog.typing import EventDict, WrappedLogger

__all__ = [
    "REDACTED",
    "SecretRegistry",
    "redact_secrets",
    "register_secret",
    "scrub_text",
    "secret_registry",
]

REDACTED: Final = "***"
"""What a secret is replaced with."""

# Key fragments that mark a value as a secret whatever it holds. Matched against the key
# lower-cased with "-" read as "_", so `Authorization`, `api-key` and `db_password` all match.
_SENSITIVE_KEY = re.compile(
    r"pass(?:word|wd|phrase)|secret|token|authorization|api_?key|access_key|access_cert"
    r"|private_key|certificate|cookie|credential"
)
# Values that cannot hold a secret, kept even under a sensitive key (`api_token_accepted: false`).
_NOT_SECRET_VALUE_TYPES: Final = (bool, int, float, type(None))

# `scheme://user:password@` -> `scheme://user:***@`; the user name is not a secret.
# The password part is greedy up to the last "@" of the authority: an unencoded "@" in a
# password must not leave its tail in the line.
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):[^/?#\s]*@")
_BEARER = re.compile(r"(?P<head>\b(?:[Bb]earer|BEARER)\s+)[A-Za-z0-9._~+/=\-]+")
# DigitalOcean personal access, OAuth and refresh tokens.
_DO_TOKEN = re.compile(r"\bdo[opr]_v1_[0-9a-fA-F]{16,}")
_PRIVATE_KEY_PEM = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)

# Containers nested deeper than this are replaced wholesale: a log event is not a data dump,
# and a bounded walk cannot be turned into a slow (or recursive) one by a hostile structure.
_MAX_DEPTH: Final = 8


# Shared by every registry, so a generation number never means two different states.
_generations = itertools.count(1)


class SecretRegistry:
    """Exact secret values to scrub from every log line.

    Values shorter than :attr:`min_length` are ignored: scrubbing "ab" would mangle every line
    and such a value is no credential. The registry is bounded (``capacity``; the value
    registered longest ago goes first) because a long-running service sees a password for every
    user of every cluster, and a secret is most likely to be logged near the time it was seen.

    Values are indexed by their first :attr:`min_length` characters, and only the values whose
    prefix occurs in the text are searched for. With few prefixes each is looked for directly
    (a C-speed substring search); with many, the text's own prefixes are looked up instead, so a
    scan costs one set lookup per character however many secrets there are. Registering is
    O(1); nothing is recompiled.
    """

    min_length: Final = 4
    # Below this many distinct prefixes, `prefix in text` per prefix beats walking the text.
    _direct_search_limit: Final = 24

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._values: OrderedDict[str, None] = OrderedDict()
        self._by_prefix: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._generation = next(_generations)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def generation(self) -> int:
        """Changes whenever a value is added or forgotten: a text clean before may not be now."""
        return self._generation

    def __repr__(self) -> str:
        # Never the values themselves.
        return f"SecretRegistry(size={len(self._values)}, capacity={self._capacity})"

    def register(self, value: str) -> None:
        """Scrub ``value`` from every line logged from now on, also as it reads inside a JSON
        string (escaped, with or without ``\\uXXXX`` for non-ASCII) and inside a URL
        (percent-encoded)."""
        if not isinstance(value, str) or len(value) < self.min_length:
            return
        forms = {
            value,
            quote(value, safe=""),
            quote_plus(value, safe=""),
            json.dumps(value)[1:-1],
            json.dumps(value, ensure_ascii=False)[1:-1],
        }
        with self._lock:
            for form in forms:
                if form in self._values:
                    self._values.move_to_end(form)
                    continue
                self._values[form] = None
                self._by_prefix.setdefault(form[: self.min_length], set()).add(form)
                self._generation = next(_generations)
            while len(self._values) > self._capacity:
                old, _ = self._values.popitem(last=False)
                same_prefix = self._by_prefix[old[: self.min_length]]
                same_prefix.discard(old)
                if not same_prefix:
                    del self._by_prefix[old[: self.min_length]]

    def clear(self) -> None:
        """Forget every registered value (for tests)."""
        with self._lock:
            self._values.clear()
            self._by_prefix.clear()
            self._generation = next(_generations)

    def scrub(self, text: str) -> str:
        """``text`` with every registered value replaced by :data:`REDACTED`."""
        width = self.min_length
        if not self._by_prefix or len(text) < width:
            return text
        with self._lock:
            by_prefix = self._by_prefix
            if len(by_prefix) <= self._direct_search_limit:
                candidates = [v for prefix, vs in by_prefix.items() if prefix in text for v in vs]
            else:
                grams = {text[i : i + width] for i in range(len(text) - width + 1)}
                candidates = [v for gram in grams if gram in by_prefix for v in by_prefix[gram]]
        if not candidates:
            return text
        # Longest first, so a value that contains another is removed whole.
        for value in sorted(candidates, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text


secret_registry: Final = SecretRegistry()
"""The process-wide registry that :func:`redact_secrets` consults."""


def register_secret(value: str) -> None:
    """Scrub ``value`` from every log line from now on (API token, generated passwords)."""
    secret_registry.register(value)


def scrub_text(text: str, registry: SecretRegistry | None = None) -> str:
    """``text`` with secrets removed: registered values and secret-shaped substrings."""
    text = (registry if registry is not None else secret_registry).scrub(text)
    # Cheap substring checks first: most log strings hold none of these markers.
    if "://" in text:
        text = _URL_USERINFO.sub(rf"\g<head>:{REDACTED}@", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(rf"\g<head>{REDACTED}", text)
    if "_v1_" in text:
        text = _DO_TOKEN.sub(REDACTED, text)
    if "PRIVATE KEY-----" in text:
        text = _PRIVATE_KEY_PEM.sub(rf"-----BEGIN \g<kind>-----{REDACTED}", text)
    return text


def _is_sensitive_key(key: object) -> bool:
    return isinstance(key, str) and _is_sensitive_name(key)


@functools.lru_cache(maxsize=1024)
def _is_sensitive_name(key: str) -> bool:
    # Cached: the same few keys come back on every line.
    return _SENSITIVE_KEY.search(key.lower().replace("-", "_")) is not None


def _redact_value(value: Any, registry: SecretRegistry, depth: int) -> Any:
    """``value`` with secrets removed; containers are copied only where something changed."""
    if isinstance(value, str):
        return scrub_text(value, registry)
    if isinstance(value, _NOT_SECRET_VALUE_TYPES):
        return value
    if depth >= _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return _redact_mapping(value, registry, depth + 1)
    if isinstance(value, list | tuple | set | frozenset):
        items = [_redact_value(item, registry, depth + 1) for item in value]
        if all(new is old for new, old in zip(items, value, strict=True)):
            return value
        return items if isinstance(value, list | set | frozenset) else tuple(items)
    if isinstance(value, msgspec.Struct):
        # A Struct's repr shows every field, passwords included: log its fields instead.
        return _redact_mapping(msgspec.structs.asdict(value), registry, depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _redact_mapping(fields, registry, depth + 1)
    if isinstance(value, bytes | bytearray):
        return scrub_text(value.decode("utf-8", "replace"), registry)
    # Anything else is rendered through its repr (JSON and console renderers both fall back to
    # it), so scrub that and keep the object only when the repr held nothing secret.
    text = repr(value)
    scrubbed = scrub_text(text, registry)
    return value if scrubbed == text else scrubbed


# Keys that the chain itself fills with values that cannot hold a secret: not worth a scan.
_CHAIN_KEYS: Final = frozenset({"timestamp", "level", "logger"})


# Keys found clean, with the registry generation they were checked against: the same few keys
# come back on every line, and need a new scan only after a new secret arrives.
_clean_keys: dict[str, int] = {}
_CLEAN_KEYS_LIMIT: Final = 4096


def _scrub_key(key: str, registry: SecretRegistry) -> str:
    if registry is not secret_registry:
        return scrub_text(key, registry)
    generation = registry.generation
    if _clean_keys.get(key) == generation:
        return key
    scrubbed = scrub_text(key, registry)
    if scrubbed is key:
        if len(_clean_keys) >= _CLEAN_KEYS_LIMIT:
            _clean_keys.clear()  # bounded: keys built from data must not grow it forever
        _clean_keys[key] = generation
    return scrubbed


def _redact_mapping(mapping: Mapping[Any, Any], registry: SecretRegistry, depth: int) -> Any:
    changed = False
    out: dict[Any, Any] = {}
    for key, value in mapping.items():
        if depth == 0 and key in _CHAIN_KEYS:
            out[key] = value
            continue
        new_key = _scrub_key(key, registry) if isinstance(key, str) else key
        if _is_sensitive_key(key) and not isinstance(value, _NOT_SECRET_VALUE_TYPES):
            new_value: Any = REDACTED
        else:
            new_value = _redact_value(value, registry, depth)
        changed = changed or new_key is not key or new_value is not value
        out[new_key] = new_value
    return out if changed or not isinstance(mapping, dict) else mapping


def redact_secrets(_logger: WrappedLogger, _method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: every secret in the event (keys, nested values, exception text) -> ***.

    Place it after exception formatting (``format_exc_info``) and before the renderer.
    """
    redacted = _redact_mapping(event_dict, secret_registry, 0)
    return redacted if isinstance(redacted, dict) else dict(redacted)
