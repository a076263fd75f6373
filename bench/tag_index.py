"""Tag index: ``TagIndex`` (hashes in an array, ids in a list, open addressing) against a plain
``dict[int, str]``, the memory each holds for the request tags of a lean cluster list and the
time to fill it and to look every tag up.

The tags and cluster ids exist before either index is built (the scan interns the ids, so both
indexes point at the same strings, and drops each tag once hashed): the memory figure is the
index's own, its hashes included, measured with tracemalloc. Both are filled and read the way
``ClusterListReader`` and ``ClusterScan.tagged_with`` do.
Ratios are ``TagIndex`` over ``dict``, measured in the same run.

Judged: none. It tells whether the hand-made table still earns its place
(docs/benchmarks.md, "Tag index").
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence

from bench._harness import bench_arguments, emit, print_table
from service.digitalocean.tag_index import TagIndex

QUICK: tuple[int, ...] = (1_000, 10_000)
FULL: tuple[int, ...] = (1_000, 10_000, 100_000)
REPEATS = 5


def _tags(n: int) -> tuple[list[str], list[str]]:
    tags = [f"provisioner:req:{i:032x}" for i in range(n)]
    ids = [sys.intern(f"{i:08x}-0000-4000-8000-{i:012x}") for i in range(n)]
    return tags, ids


def build_tag_index(tags: Sequence[str], ids: Sequence[str]) -> TagIndex:
    index = TagIndex()
    for tag, cluster_id in zip(tags, ids, strict=True):
        index.add(hash(tag), cluster_id)
    return index


def build_dict(tags: Sequence[str], ids: Sequence[str]) -> dict[int, str]:
    index: dict[int, str] = {}
    for tag, cluster_id in zip(tags, ids, strict=True):
        index[hash(tag)] = cluster_id
    return index


def memory(build: Callable[[Sequence[str], Sequence[str]], object], n: int) -> int:
    """Bytes the index holds once built (the hashes it keeps included; the tags and ids,
    which exist before and are not kept by it, not)."""
    tags, ids = _tags(n)
    gc.collect()
    tracemalloc.start()
    index = build(tags, ids)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del index
    return held


def seconds(build: Callable[[Sequence[str], Sequence[str]], Mapping[int, str]], n: int) -> float:
    """The best of ``REPEATS``: fill the index, then look every tag up once, as
    ``ClusterScan.tagged_with`` does."""
    tags, ids = _tags(n)
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        index = build(tags, ids)
        for tag in tags:
            index.get(hash(tag))
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    args = bench_arguments(__doc__ or "")
    sizes = QUICK if args.quick else FULL
    rows = []
    figures: dict[str, object] = {"benchmark": "tag_index"}
    for n in sizes:
        mem_t, mem_d = memory(build_tag_index, n), memory(build_dict, n)
        s_t, s_d = seconds(build_tag_index, n), seconds(build_dict, n)
        rows.append(
            (
                n,
                f"{mem_t / n:.1f}",
                f"{mem_d / n:.1f}",
                f"{mem_t / mem_d:.2f}",
                f"{s_t * 1e3:.2f}",
                f"{s_d * 1e3:.2f}",
                f"{s_t / s_d:.1f}",
            )
        )
        figures[f"memory_ratio_{n}"] = round(mem_t / mem_d, 3)
        figures[f"time_ratio_{n}"] = round(s_t / s_d, 2)
        figures[f"tag_index_bytes_per_tag_{n}"] = round(mem_t / n, 1)
        figures[f"dict_bytes_per_tag_{n}"] = round(mem_d / n, 1)
    print_table(
        "TagIndex against dict[int, str]",
        (
            "tags",
            "TagIndex B/tag",
            "dict B/tag",
            "memory ratio",
            "TagIndex ms",
            "dict ms",
            "time ratio",
        ),
        rows,
    )
    emit(figures)


if __name__ == "__main__":
    main()
