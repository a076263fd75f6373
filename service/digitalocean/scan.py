"""What a lean reading of the cluster list returns (``DigitalOceanClient.scan_clusters``)."""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from contracts.digitalocean import DatabaseCluster

__all__ = ["ClusterScan", "ClusterSummary"]


class ClusterSummary(msgspec.Struct, frozen=True):
    """What a scan reads of every listed cluster: the rest of it is skipped unread."""

    id: str
    status: str | None = None
    tags: list[str] | None = None


class ClusterScan(msgspec.Struct, frozen=True):
    """A lean reading of ``GET /v2/databases`` (see ``DigitalOceanClient.scan_clusters``)."""

    statuses: dict[str, str | None]
    """Every listed cluster: id -> status."""
    tagged: Mapping[int, str]
    """``hash(tag)`` -> cluster id, for the tags that start with the scan's ``tag_prefix``
    (see ``tagged_with``): a number per cluster instead of its 50-character tag."""
    full: dict[str, DatabaseCluster]
    """The clusters the scan was asked to read in full, by id."""
    creating: dict[str, int] = {}
    """How many ``creating`` clusters carry each tag that starts with the scan's
    ``count_prefix``."""

    def tagged_with(self, tag: str) -> str | None:
        """The id of the cluster that carries ``tag``, if any; almost certainly right (the
        key is a hash), so check the cluster's tags before relying on it."""
        return self.tagged.get(hash(tag))
