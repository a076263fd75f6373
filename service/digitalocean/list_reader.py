"""Reading the cluster list as it arrives, chunk by chunk (``DigitalOceanClient.scan_clusters``)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Final

import msgspec

from contracts.digitalocean import DatabaseCluster
from service.digitalocean.scan import ClusterScan, ClusterSummary

__all__ = ["ClusterListReader"]


class _RawList(msgspec.Struct):
    databases: list[msgspec.Raw] | None = None


_SUMMARY: Final = msgspec.json.Decoder(ClusterSummary)
_FULL_CLUSTER: Final = msgspec.json.Decoder(DatabaseCluster)
_RAW_ITEMS: Final = msgspec.json.Decoder(list[msgspec.Raw])
_RAW_LIST: Final = msgspec.json.Decoder(_RawList)
# The list body as DigitalOcean (and the simulator) sends it: {"databases":[{"id":...},...]}.
_LIST_HEAD: Final = re.compile(rb'\s*\{\s*"databases"\s*:\s*\[')
_BETWEEN_ITEMS: Final = re.compile(rb"\}\s*,\s*(?=\{)")
_HEAD_PEEK: Final = 256
_CUT_TRIES: Final = 8


class ClusterListReader:
    """Reads a list body chunk by chunk, so that memory holds one chunk and the index, never
    the whole body: thousands of clusters make a body of megabytes.

    The elements of the ``databases`` array are cut off the front of the buffer in groups. A
    candidate cut is a ``},{`` (a cluster starting with ``"id"`` is tried first); it is the end
    of a group exactly when ``[`` + the bytes before it + ``]`` decodes, since a cut inside a
    string or a nested object leaves an unterminated string or unbalanced brackets. A body of
    another shape is read whole and decoded at the end, so nothing valid is ever refused.
    """

    def __init__(
        self,
        tag_prefix: str | None,
        full: Callable[[str, str | None], bool],
        count_prefix: str | None = None,
    ) -> None:
        self._tag_prefix = tag_prefix
        self._count_prefix = count_prefix
        self._full = full
        self._buffer = bytearray()
        self._state = "head"  # then "items" (the expected shape) or "whole" (anything else)
        self.statuses: dict[str, str | None] = {}
        self.tagged: dict[int, str] = {}
        self.full: dict[str, DatabaseCluster] = {}
        self.creating: dict[str, int] = {}
        self.error: msgspec.DecodeError | None = None

    def feed(self, chunk: bytes) -> None:
        """Take the next chunk of the body; a decoding error is kept for ``result``."""
        if self.error is not None:
            return
        self._buffer += chunk
        try:
            if self._state == "head":
                head = _LIST_HEAD.match(self._buffer)
                if head is not None:
                    del self._buffer[: head.end()]
                    self._state = "items"
                elif len(self._buffer) >= _HEAD_PEEK:
                    self._state = "whole"
            if self._state == "items":
                self._cut()
        except msgspec.DecodeError as exc:
            self.error = exc

    def result(self) -> ClusterScan:
        """The scan, once the body has ended; raises ``msgspec.DecodeError`` if it was not
        a list of clusters."""
        if self.error is not None:
            raise self.error
        body = self._buffer
        if self._state == "items":
            body = bytearray(b'{"databases":[') + body
        self._take(_RAW_LIST.decode(body).databases or [])
        self._buffer = bytearray()
        return ClusterScan(
            statuses=self.statuses, tagged=self.tagged, full=self.full, creating=self.creating
        )

    def _cut(self) -> None:
        buffer = self._buffer
        cuts = list(_BETWEEN_ITEMS.finditer(buffer))
        # Latest first, and among them the ones followed by a cluster's leading "id".
        cuts.sort(key=lambda m: (buffer.startswith(b'{"id"', m.end()), m.start()), reverse=True)
        for cut in cuts[:_CUT_TRIES]:
            group = bytearray(b"[")
            group += buffer[: cut.start() + 1]
            group += b"]"
            try:
                items = _RAW_ITEMS.decode(group)
            except msgspec.DecodeError:
                continue
            self._take(items)
            del buffer[: cut.end()]
            return

    def _take(self, items: list[msgspec.Raw]) -> None:
        prefix = self._tag_prefix
        for item in items:
            summary = _SUMMARY.decode(item)
            # Interned: a handful of statuses for thousands of clusters, and one string per
            # id across scans and indexes instead of a new copy with each scan.
            cluster_id = sys.intern(summary.id)
            status = sys.intern(summary.status) if summary.status is not None else None
            self.statuses[cluster_id] = status
            if prefix is not None:
                for tag in summary.tags or ():
                    if tag.startswith(prefix):
                        self.tagged[hash(tag)] = cluster_id
            if status == "creating" and self._count_prefix is not None:
                for tag in summary.tags or ():
                    if tag.startswith(self._count_prefix):
                        self.creating[tag] = self.creating.get(tag, 0) + 1
            if self._full(cluster_id, status):
                self.full[cluster_id] = _FULL_CLUSTER.decode(item)
