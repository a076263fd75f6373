"""``TagIndex``: the flat ``hash(tag)`` -> cluster id table of a lean cluster list answers as a
dict built from the same pairs would, and costs less than one."""

from __future__ import annotations

import sys
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from service.digitalocean.tag_index import TagIndex

# Keys that collide in a small table (equal low bits), negative ones and the extremes.
KEYS = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=0, max_value=64).map(lambda k: k * 1024),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63)]),
)


@given(pairs=st.lists(st.tuples(KEYS, st.sampled_from(["a", "b", "c", "d"])), max_size=300))
def test_answers_as_a_dict_of_the_same_pairs(pairs: list[tuple[int, str]]) -> None:
    index = TagIndex()
    expected: dict[int, str] = {}
    for key, cluster_id in pairs:
        index.add(key, cluster_id)
        expected[key] = cluster_id
    assert index == expected
    assert len(index) == len(expected)
    assert sorted(index) == sorted(expected)
    for key, cluster_id in expected.items():
        assert index[key] == cluster_id
    for key in (1, 2**40 + 7, -5):
        assert index.get(key) == expected.get(key)


def test_thousands_of_tags_cost_less_than_half_of_a_dict() -> None:
    ids = [sys.intern(f"{i:08x}-0000-4000-8000-000000000000") for i in range(10_000)]
    keys = [hash(f"provisioner:req:{i}") for i in range(10_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = TagIndex()
        for key, cluster_id in zip(keys, ids, strict=True):
            index.add(key, cluster_id)
        flat = tracemalloc.get_traced_memory()[0] - before
        before = tracemalloc.get_traced_memory()[0]
        as_dict = {hash(f"provisioner:req:{i}"): cluster_id for i, cluster_id in enumerate(ids)}
        dict_cost = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(index) == len(as_dict) == 10_000
    assert flat < dict_cost / 2
