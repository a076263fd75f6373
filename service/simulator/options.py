"""``GET /v2/databases/options``: the engines, regions, versions and layouts on offer.

The data (``options.json`` beside this file) is the example of the official spec
(``resources/databases/responses/options.yml``), copied so that the simulator runs on a clone
without the spec beside it. That example is a snapshot, and it ages with the calendar: it
names Kafka 3.8 as the only and default version with an end of availability in 2025, and
PostgreSQL 13 and 14 as offered past theirs. The simulator serves it as of a date
(``options_as_of``), so that what it offers is what DigitalOcean could offer that day:

* a version past its end of availability is not offered and is not the default (its end
  of life alone does not stop creates: MongoDB 7.0 is offered past it);
* the default is always offered: the newest version still offered when the snapshot's
  default has gone;
* an engine DigitalOcean has retired (``RETIRED_ENGINES``: Redis, replaced by Valkey) stays
  listed with no version once all of its versions have ended, and creating it is refused;
* any other engine all of whose versions have ended (Kafka 3.8 today, every engine some
  day) keeps its newest version, offered and default, with the stale date dropped:
  DigitalOcean offers some version of a live engine, and the snapshot cannot know a newer
  one, so the newest it knows stands in.
"""

from __future__ import annotations

import copy
import functools
from datetime import UTC, date, datetime
from importlib.resources import files
from typing import Any, Final

import msgspec

from contracts.digitalocean import DatabaseOptions

__all__ = [
    "OPTIONS",
    "OPTIONS_BODY",
    "OPTIONS_DOCUMENT",
    "RETIRED_ENGINES",
    "document_as_of",
    "options_as_of",
    "past",
]

OPTIONS_BODY: Final[bytes] = (files(__package__) / "options.json").read_bytes()
"""The snapshot exactly as the spec's example has it (key order and nulls included)."""

OPTIONS_DOCUMENT: Final[dict[str, Any]] = msgspec.json.decode(OPTIONS_BODY)
"""The same document, decoded."""

OPTIONS: Final[DatabaseOptions] = msgspec.convert(OPTIONS_DOCUMENT, DatabaseOptions)
"""The same data, typed, unaged."""


RETIRED_ENGINES: Final = frozenset({"redis"})
"""Engines DigitalOcean no longer creates at all (Redis became Valkey in 2025)."""


def past(stamp: str | None, today: date) -> bool:
    """Whether the ISO date-time ``stamp`` (None: no date announced) is on or before
    ``today``."""
    if not stamp:
        return False
    return datetime.fromisoformat(stamp).astimezone(UTC).date() <= today


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def options_as_of(today: date, document: dict[str, Any] | None = None) -> DatabaseOptions:
    """The options (default: the snapshot's) as DigitalOcean could serve them on ``today``
    (see the module docstring for the rules), typed. The snapshot's are worked out once a
    day (every create checks against them, and ageing the document copies all of it); each
    call decodes its own copy."""
    if document is None:
        # Decoded afresh from the day's bytes, so a caller may change what it gets.
        return _options_decoder.decode(_snapshot_as_of(today))
    return msgspec.convert(document_as_of(today, document), DatabaseOptions)


_options_decoder: Final = msgspec.msgpack.Decoder(DatabaseOptions)


@functools.lru_cache(maxsize=4)
def _snapshot_as_of(today: date) -> bytes:
    return msgspec.msgpack.encode(document_as_of(today))


def document_as_of(today: date, document: dict[str, Any] | None = None) -> dict[str, Any]:
    """The options document (default: the snapshot) as DigitalOcean could serve it on
    ``today``, as the JSON object the endpoint sends."""
    doc = copy.deepcopy(OPTIONS_DOCUMENT if document is None else document)
    for engine, offer in doc.get("options", {}).items():
        availability: list[dict[str, Any]] = doc.get("version_availability", {}).get(engine, [])
        dates = {item["version"]: item for item in availability}
        versions: list[str] = list(offer.get("versions") or [])

        offered = [
            v for v in versions if not past(dates.get(v, {}).get("end_of_availability"), today)
        ]
        if not offered and versions and engine not in RETIRED_ENGINES:
            newest = max(versions, key=_version_key)
            offered = [newest]
            if newest in dates:
                dates[newest]["end_of_availability"] = None
        default = offer.get("default_version")
        if default not in offered:
            default = max(offered, key=_version_key) if offered else None
        offer["versions"] = offered
        if default is None:
            offer.pop("default_version", None)  # a retired engine has no default
        else:
            offer["default_version"] = default
        for item in availability:
            item["default"] = item["version"] == default
    return doc
