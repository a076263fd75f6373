"""``TagIndex``: which cluster carries a tag, kept flat (see docs/benchmarks.md)."""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Mapping

__all__ = ["TagIndex"]


class TagIndex(Mapping[int, str]):
    """``hash(tag)`` -> cluster id, kept flat: the hashes in one array of machine integers and
    the ids in one list, a table with open addressing (linear probing) at most two thirds
    full: 24 to 48 bytes a cluster, where a dict with ``int`` keys takes about 64 (a number
    object of 48 bytes for each key, besides the dict's own table); in a lean list of
    thousands of clusters this index was the largest part. As in a dict, a key added again
    takes the new value."""

    __slots__ = ("_count", "_hashes", "_ids", "_mask")

    def __init__(self) -> None:
        self._hashes = array("q", bytes(8 * 8))
        self._ids: list[str | None] = [None] * 8
        self._mask = 7
        self._count = 0

    def add(self, key: int, cluster_id: str) -> None:
        """Map ``key`` (a ``hash()``) to ``cluster_id``."""
        if 3 * (self._count + 1) > 2 * len(self._ids):
            self._grow()
        slot = self._slot(key)
        if self._ids[slot] is None:
            self._count += 1
            self._hashes[slot] = key
        self._ids[slot] = cluster_id

    def _slot(self, key: int) -> int:
        """Where ``key`` is, or the empty slot where it would go."""
        hashes, ids, mask = self._hashes, self._ids, self._mask
        slot = key & mask
        while ids[slot] is not None and hashes[slot] != key:
            slot = (slot + 1) & mask
        return slot

    def _grow(self) -> None:
        hashes, ids = self._hashes, self._ids
        size = 2 * len(ids)
        self._hashes = array("q", bytes(8 * size))
        self._ids = [None] * size
        self._mask = size - 1
        self._count = 0
        for key, cluster_id in zip(hashes, ids, strict=True):
            if cluster_id is not None:
                self.add(key, cluster_id)

    def __getitem__(self, key: int) -> str:
        cluster_id = self._ids[self._slot(key)]
        if cluster_id is None:
            raise KeyError(key)
        return cluster_id

    def __iter__(self) -> Iterator[int]:
        return (key for key, i in zip(self._hashes, self._ids, strict=True) if i is not None)

    def __len__(self) -> int:
        return self._count
