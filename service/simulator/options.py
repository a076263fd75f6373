"""``GET /v2/databases/options``: the engines, regions, versions and layouts on offer.

The data (``options.json`` beside this file) is the example of the official spec
(``resources/databases/responses/options.yml``), copied so that the simulator runs on a clone
without the spec beside it. ``redis`` keeps its ``end_of_availability`` (2025-04-30):
DigitalOcean lists the engine but refuses to create it.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any, Final

import msgspec

from contracts.digitalocean import DatabaseOptions

__all__ = ["OPTIONS", "OPTIONS_BODY", "OPTIONS_DOCUMENT"]

OPTIONS_BODY: Final[bytes] = (files(__package__) / "options.json").read_bytes()
"""The response body exactly as served (key order and nulls included)."""

OPTIONS_DOCUMENT: Final[dict[str, Any]] = msgspec.json.decode(OPTIONS_BODY)
"""The same document, decoded."""

OPTIONS: Final[DatabaseOptions] = msgspec.convert(OPTIONS_DOCUMENT, DatabaseOptions)
"""The same data, typed, for checking create requests."""
