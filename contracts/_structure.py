"""Check a decoded JSON value against a msgspec type and report *every* mismatch.

msgspec stops at the first error. A producer fixing a command wants them all at once,
so this walks the value beside ``msgspec.inspect.type_info`` of the target type. It
uses the constraints the types declare (so they stay the single source) and the
messages read like msgspec's own. After it passes, ``msgspec.convert`` builds the typed
value.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import re
import uuid
from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

from contracts.errors import FieldError

# Per Struct class: field names the API documents as read-only on that object. Sending
# one gets "read-only" instead of "unknown field", which is what a producer needs to hear.
ReadOnlyFields = Mapping[type, frozenset[str]]
# Where the walk reports an error.
Add = Callable[[FieldError], None]

_JSON_NAMES: dict[type[mi.Type], str] = {
    mi.StrType: "str",
    mi.IntType: "int",
    mi.FloatType: "float",
    mi.BoolType: "bool",
    mi.NoneType: "null",
    mi.ListType: "array",
    mi.DictType: "object",
    mi.StructType: "object",
    mi.DateTimeType: "datetime",
    mi.UUIDType: "uuid",
}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _describe(t: mi.Type) -> str:
    if isinstance(t, mi.LiteralType):
        return " | ".join(repr(v).replace("'", '"') for v in t.values)
    if isinstance(t, mi.UnionType):
        return " | ".join(_describe(x) for x in t.types)
    return _JSON_NAMES.get(type(t), type(t).__name__)


@cache
def _type_info(target: Any) -> mi.Type:
    # Building it walks every contract type: about 3 ms, paid once instead of per message.
    return mi.type_info(target)


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    # JSON Schema patterns are ECMA-262, where `$` is the end of the input; Python's `$`
    # also matches before a trailing newline, which would let "name\n" through.
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def _bounds(value: float, t: mi.IntType | mi.FloatType) -> str | None:
    if t.ge is not None and value < t.ge:
        return f"Expected `{_describe(t)}` >= {t.ge}"
    if t.gt is not None and value <= t.gt:
        return f"Expected `{_describe(t)}` > {t.gt}"
    if t.le is not None and value > t.le:
        return f"Expected `{_describe(t)}` <= {t.le}"
    if t.lt is not None and value >= t.lt:
        return f"Expected `{_describe(t)}` < {t.lt}"
    return None


def _length(n: int, lo: int | None, hi: int | None, what: str) -> str | None:
    if lo is not None and n < lo:
        return f"Expected `{what}` of length >= {lo}"
    if hi is not None and n > hi:
        return f"Expected `{what}` of length <= {hi}"
    return None


class _Enough(Exception):
    """Raised inside the walk once the error limit is reached."""


class StructureChecker:
    """Collects every way a JSON value differs from a msgspec type."""

    def __init__(
        self,
        read_only: ReadOnlyFields,
        pattern_help: Mapping[str, str] | None = None,
        limit: int = 200,
    ) -> None:
        self._read_only = read_only
        self._pattern_help = pattern_help or {}
        self._limit = limit

    def check(self, value: Any, target: Any, path: str = "$") -> list[FieldError]:
        """Every mismatch between ``value`` and ``target``, up to the checker's limit."""
        errors: list[FieldError] = []

        def add(error: FieldError) -> None:
            errors.append(error)
            if len(errors) >= self._limit:
                raise _Enough

        with contextlib.suppress(_Enough):
            self._walk(value, _type_info(target), path, add)
        return errors

    def _walk(self, v: Any, t: mi.Type, path: str, add: Add) -> None:
        # One lookup by the type's class instead of a chain of isinstance checks: the walk
        # visits every value of every command.
        step = _STEPS.get(type(t))
        if step is None:
            # Only reachable when a contract starts using a type this walker does not know;
            # the property tests exercise every contract type, so they catch it first.
            raise TypeError(f"StructureChecker cannot check {type(t).__name__}")
        step(self, v, t, path, add)

    def _walk_any(self, v: Any, t: mi.AnyType, path: str, add: Add) -> None:
        return

    def _walk_described(self, v: Any, t: mi.Metadata, path: str, add: Add) -> None:
        # A type with a description or a title for its schema: check the type it wraps.
        self._walk(v, t.type, path, add)

    def _walk_none(self, v: Any, t: mi.NoneType, path: str, add: Add) -> None:
        if v is not None:
            add(FieldError(path, f"Expected `null`, got `{_json_type(v)}`"))

    def _walk_literal(self, v: Any, t: mi.LiteralType, path: str, add: Add) -> None:
        if isinstance(v, bool) or not isinstance(v, str | int) or v not in t.values:
            got = _quote(v)[:80] if isinstance(v, str | int) else f"`{_json_type(v)}`"
            add(FieldError(path, f"Expected one of {_describe(t)}, got {got}"))

    def _walk_str(self, v: Any, t: mi.StrType, path: str, add: Add) -> None:
        if not isinstance(v, str):
            add(FieldError(path, f"Expected `str`, got `{_json_type(v)}`"))
            return
        problem = _length(len(v), t.min_length, t.max_length, "str")
        if problem is None and t.pattern is not None and not _compiled(t.pattern).search(v):
            problem = self._pattern_help.get(
                t.pattern, f"Expected `str` matching regex {t.pattern!r}"
            )
        if problem:
            add(FieldError(path, problem))

    def _walk_bool(self, v: Any, t: mi.BoolType, path: str, add: Add) -> None:
        if not isinstance(v, bool):
            add(FieldError(path, f"Expected `bool`, got `{_json_type(v)}`"))

    def _walk_int(self, v: Any, t: mi.IntType, path: str, add: Add) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            add(FieldError(path, f"Expected `int`, got `{_json_type(v)}`"))
            return
        problem = _bounds(v, t)
        if problem:
            add(FieldError(path, problem))

    def _walk_float(self, v: Any, t: mi.FloatType, path: str, add: Add) -> None:
        if isinstance(v, bool) or not isinstance(v, int | float):
            add(FieldError(path, f"Expected `float`, got `{_json_type(v)}`"))
            return
        problem = _bounds(v, t)
        if problem:
            add(FieldError(path, problem))

    def _walk_stamp(self, v: Any, t: mi.DateTimeType | mi.UUIDType, path: str, add: Add) -> None:
        if not isinstance(v, str):
            add(FieldError(path, f"Expected `{_describe(t)}`, got `{_json_type(v)}`"))
            return
        try:
            if isinstance(t, mi.UUIDType):
                uuid.UUID(v)
            else:
                msgspec.convert(v, dt.datetime)
        except (ValueError, msgspec.ValidationError):
            add(FieldError(path, f"Invalid RFC3339 encoded {_describe(t)}"))

    def _walk_list(self, v: Any, t: mi.ListType, path: str, add: Add) -> None:
        if not isinstance(v, list):
            add(FieldError(path, f"Expected `array`, got `{_json_type(v)}`"))
            return
        problem = _length(len(v), t.min_length, t.max_length, "array")
        if problem:
            add(FieldError(path, problem))
        for i, item in enumerate(v):
            self._walk(item, t.item_type, f"{path}[{i}]", add)

    def _walk_dict(self, v: Any, t: mi.DictType, path: str, add: Add) -> None:
        if not isinstance(v, dict):
            add(FieldError(path, f"Expected `object`, got `{_json_type(v)}`"))
            return
        problem = _length(len(v), t.min_length, t.max_length, "object")
        if problem:
            add(FieldError(path, problem))
        for key, item in v.items():
            self._walk(key, t.key_type, f"{path}[{_quote(key)}]", add)
            self._walk(item, t.value_type, f"{path}[{_quote(key)}]", add)

    def _walk_union(self, v: Any, t: mi.UnionType, path: str, add: Add) -> None:
        if v is None and any(isinstance(x, mi.NoneType) for x in t.types):
            return
        options = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(options) == 1:
            self._walk(v, options[0], path, add)
            return
        for option in options:
            found: list[FieldError] = []
            self._walk(v, option, path, found.append)
            if not found:
                return
        add(FieldError(path, f"Expected `{_describe(t)}`, got `{_json_type(v)}`"))

    def _walk_struct(self, v: Any, t: mi.StructType, path: str, add: Add) -> None:
        if not isinstance(v, dict):
            add(FieldError(path, f"Expected `object`, got `{_json_type(v)}`"))
            return
        fields, names = _fields(t)
        read_only = self._read_only.get(t.cls, frozenset())
        for key in v:
            if key in fields:
                continue
            where = _child(path, key)
            if key in read_only:
                add(FieldError(where, f"`{key}` is read-only: DigitalOcean sets it; remove it"))
            else:
                close = _close_match(key[:MAX_SHOWN], names)
                hint = f" (did you mean `{close}`?)" if close else ""
                add(FieldError(where, f"unknown field `{_shown(key)}`{hint}"))
        for name, field in fields.items():
            if name in v:
                self._walk(v[name], field.type, _child(path, name), add)
            elif field.required:
                add(FieldError(_child(path, name), f"required field `{name}` is missing"))


# Struct class -> its fields by JSON name, and those names in order.
_FIELDS: dict[type, tuple[dict[str, mi.Field], tuple[str, ...]]] = {}


def _fields(t: mi.StructType) -> tuple[dict[str, mi.Field], tuple[str, ...]]:
    # Built once per contract type, not per message: the walk meets the same few Structs.
    known = _FIELDS.get(t.cls)
    if known is None:
        fields = {f.encode_name: f for f in t.fields}
        known = _FIELDS[t.cls] = (fields, tuple(fields))
    return known


@lru_cache(maxsize=1024)
def _close_match(key: str, names: tuple[str, ...]) -> str | None:
    # difflib costs more than the rest of a check; producers repeat the same mistakes, and
    # the bound keeps a producer that sends ever new names from growing the cache.
    close = difflib.get_close_matches(key, names, n=1)
    return close[0] if close else None


_Step = Callable[[StructureChecker, Any, Any, str, Add], None]
# The walker's step for each kind of type (``msgspec.inspect`` classes are final).
_STEPS: Final[dict[type[mi.Type], _Step]] = {
    mi.AnyType: StructureChecker._walk_any,
    mi.Metadata: StructureChecker._walk_described,
    mi.UnionType: StructureChecker._walk_union,
    mi.NoneType: StructureChecker._walk_none,
    mi.LiteralType: StructureChecker._walk_literal,
    mi.StrType: StructureChecker._walk_str,
    mi.BoolType: StructureChecker._walk_bool,
    mi.IntType: StructureChecker._walk_int,
    mi.FloatType: StructureChecker._walk_float,
    mi.DateTimeType: StructureChecker._walk_stamp,
    mi.UUIDType: StructureChecker._walk_stamp,
    mi.ListType: StructureChecker._walk_list,
    mi.DictType: StructureChecker._walk_dict,
    mi.StructType: StructureChecker._walk_struct,
}


# A hostile producer can send a field name of any length; errors quote at most this much
# of it, so that an error list (in an event, in a header) stays small.
MAX_SHOWN: Final = 64


def _shown(key: str) -> str:
    return key if len(key) <= MAX_SHOWN else f"{key[: MAX_SHOWN - 1]}…({len(key)} chars)"


def _child(path: str, key: str) -> str:
    return (
        f"{path}.{key}"
        if key.isidentifier() and len(key) <= MAX_SHOWN
        else f"{path}[{_quote(key)}]"
    )


def _quote(key: Any) -> str:
    return msgspec.json.encode(_shown(key)).decode() if isinstance(key, str) else str(key)
